"""The bottom layer: the keypoints, the faces container, geometry, metrics, files, errors, plots."""
