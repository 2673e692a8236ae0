"""facekp_jax: facial keypoint detection with deep residual networks in JAX/Flax."""

__version__ = "0.1.0"
