"""facekp_jax: facial keypoint detection with deep residual networks in JAX/Flax.

The Python API (``serving.predictor``)::

  import facekp_jax
  p = facekp_jax.Predictor.load()         # the shipped 5-point model; or .load(workdir)
  faces = p.find("photo.jpg")             # boxes, scores, named keypoints in the photo's pixels

Keypoint layouts: ``facekp_jax.LAYOUTS`` (``core.keypoints``).
"""

from facekp_jax.core.keypoints import LAYOUTS, Layout
from facekp_jax.serving.predictor import FoundFace, Predictor, load

__all__ = ["LAYOUTS", "FoundFace", "Layout", "Predictor", "load"]
__version__ = "0.2.0"
