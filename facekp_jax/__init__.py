"""facekp_jax: facial keypoint detection with deep residual networks in JAX/Flax."""

from facekp_jax import host_memory

__version__ = "0.1.0"

# Before JAX starts its CPU client: see host_memory.py (opt out with FACEKP_JAX_SYSTEM_MALLOC=1).
HOST_MALLOC_TUNED = host_memory.reuse_freed_memory()
