"""Trained models at work: the predictor, scoring, submissions, photos and export."""
