"""Benchmarks, ablation studies and the Keras parity harness: ``python -m experiments.<name>``
from the repository root (experiments/README.md)."""
