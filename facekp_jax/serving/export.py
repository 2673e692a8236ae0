"""A trained model exported to run without this package: StableHLO (``jax.export``) or ONNX.

The artefact is one function, ``faces (N, 96, 96) -> keypoints (N, 2K)``, any N: grey 96x96
faces framed like Kaggle's (``uint8`` 0..255 by default, or ``float32`` in [0, 1] with
``input_dtype="float32"``; the division by 255 happens inside) to pixel coordinates in the
96x96 frame of the K keypoints the run trained (its layout's, in layout order: x, y of the
first keypoint first), unclipped; ``<out>.json`` names them (``output.keypoints``,
``output.columns``).
The weights (the predictor's, the EMA where the run keeps one) are constants inside it, and
with TTA the very ``model.tta.average`` that evaluate and predict run is traced into it.
StableHLO comes from ``jax.export`` with a symbolic batch dimension and is run by
``jax.export.deserialize(blob).call(faces)`` (jax, nothing else), lowered for CPU, CUDA and
TPU. ONNX comes from jax2onnx (opset 23; dynamic batch ``N``) and runs in onnxruntime.
``<out>.json`` beside it records the input, the output columns and where the weights came
from. ``export`` reloads and runs the artefact on a few built-in faces and returns the largest
difference from the JAX model.
"""

from __future__ import annotations

import contextlib
import os

import jax
import jax.numpy as jnp
import numpy as np

from facekp_jax.core import files, keypoints
from facekp_jax.core.errors import DataError
from facekp_jax.data import synthetic
from facekp_jax.model import resnet
from facekp_jax.model import tta as tta_lib
from facekp_jax.serving import predictor

FORMATS = ("stablehlo", "onnx")
INPUT_DTYPES = ("uint8", "float32")
PLATFORMS = ("cpu", "cuda", "tpu")
SIZE = keypoints.IMAGE_SIZE


class ExportError(DataError):
  """A format whose converter is not installed: one line, exit code 2."""


def keypoint_function(model: predictor.Predictor, tta: bool = False,
                      input_dtype: str = "uint8", fast: bool = False):
  """``faces (N, 96, 96) of input_dtype -> (N, 2K) pixels`` of the K trained keypoints
  (``trained_columns``), the model's weights baked in.

  The same function as ``model.predict`` (with ``tta``: ``model.tta.average`` over the flips
  and the turned views of ``config.tta_rotations``, traced over ``jax.numpy``: constant
  gathers), in float32 and through Flax's own layers (``model.fast_ops=False``: same
  parameters; the fast path's custom gradients mean nothing outside JAX, and converters know
  the plain operations).
  """
  if input_dtype not in INPUT_DTYPES:
    raise ValueError(f"input_dtype must be one of {INPUT_DTYPES}, got {input_dtype!r}")
  variables = jax.device_get(model.variables)
  config = model.config.copy_and_resolve_references()
  config.model.fast_ops = fast
  apply = resnet.create_model(config).apply

  columns = trained_columns(model)
  layout = model.layout

  def read(x):
    return apply(variables, x, train=False).astype(jnp.float32)

  def predict(faces):
    x = faces.astype(jnp.float32)
    if input_dtype == "uint8":
      x = x / 255.0
    x = x[..., None]
    out = tta_lib.average(read, x, layout, config.tta_rotations, xp=jnp) if tta else read(x)
    return out if len(columns) == layout.num_coords else out[:, columns]

  return predict


def trained_columns(model: predictor.Predictor) -> np.ndarray:
  """The indices of the model's outputs that an export keeps: its trained keypoints' x, y."""
  return np.flatnonzero(model.trained > 0)


def export_stablehlo(fn, input_dtype: str = "uint8") -> bytes:
  """Serialised ``jax.export`` of ``fn`` over (N, 96, 96) faces, N symbolic."""
  batch, = jax.export.symbolic_shape("N")
  spec = jax.ShapeDtypeStruct((batch, SIZE, SIZE), jnp.dtype(input_dtype))
  exported = jax.export.export(jax.jit(fn), platforms=PLATFORMS)(spec)
  return bytes(exported.serialize())


def export_onnx(fn, input_dtype: str = "uint8") -> bytes:
  """The ONNX model (bytes) of ``fn`` over (N, 96, 96) faces, N dynamic (jax2onnx)."""
  try:
    import jax2onnx  # noqa: PLC0415  # The [export] extra: only this format needs it.
  except ImportError:
    raise ExportError("--format=onnx needs jax2onnx: pip install 'facekp_jax[export]'") from None
  batch, = jax.export.symbolic_shape("N")
  spec = jax.ShapeDtypeStruct((batch, SIZE, SIZE), jnp.dtype(input_dtype))
  with _without_onnx_rewrites(("linen.batch_norm", "jax.image.resize")):
    proto = jax2onnx.to_onnx(fn, inputs=[spec], model_name="facekp_jax", input_names=["faces"],
                             output_names=["keypoints"])
  return proto.SerializeToString()


@contextlib.contextmanager
def _without_onnx_rewrites(names):
  """Converts with some of jax2onnx's layer-level rewrites switched off.

  jax2onnx 0.17's rewrite of ``flax.linen.BatchNorm`` stamps NCHW shapes on NHWC values
  (onnxruntime then refuses the graph: "Incompatible dimensions"), and its rewrite of
  ``jax.image.resize`` (the heatmap head's upsampling) needs a fixed batch size. Without
  them, both are converted from the operations they trace to, which come out right.
  jax2onnx has no public switch for this, so the entries leave its plugin registry for the
  conversion only (where the registry is not found, nothing is changed).
  """
  try:
    from jax2onnx.plugins import plugin_system  # noqa: PLC0415
    plugin_system.import_all_plugins()
    registry = plugin_system.PLUGIN_REGISTRY
  except (ImportError, AttributeError):
    yield
    return
  removed = {name: registry.pop(name) for name in names if name in registry}
  try:
    yield
  finally:
    registry.update(removed)


def run_stablehlo(blob: bytes, faces: np.ndarray) -> np.ndarray:
  """Runs a serialised StableHLO artefact, as a user would (``jax.export`` only)."""
  return np.asarray(jax.export.deserialize(bytearray(blob)).call(faces))


def run_onnx(blob: bytes, faces: np.ndarray) -> np.ndarray:
  """Runs an ONNX artefact in onnxruntime on the CPU."""
  try:
    import onnxruntime  # noqa: PLC0415
  except ImportError:
    raise ExportError("checking the ONNX model needs onnxruntime: pip install "
                      "'facekp_jax[export]'") from None
  session = onnxruntime.InferenceSession(blob, providers=["CPUExecutionProvider"])
  return session.run(None, {session.get_inputs()[0].name: faces})[0]


EXPORTERS = {"stablehlo": (export_stablehlo, run_stablehlo), "onnx": (export_onnx, run_onnx)}


def sample_faces(n: int, input_dtype: str) -> np.ndarray:
  """``n`` built-in faces as the artefact takes them."""
  images, _ = synthetic.generate(n, seed=5)
  return images if input_dtype == "uint8" else (images / np.float32(255.0)).astype(np.float32)


def export(model: predictor.Predictor, fmt: str, out: str, tta: bool = False,
           input_dtype: str = "uint8") -> float:
  """Writes the artefact to ``out`` and its description to ``out.json``; reloads and runs it.

  Returns:
    The largest difference (pixels) between the reloaded artefact and ``model.predict`` on
    5 built-in faces.

  Raises:
    ExportError: the format's converter is not installed.
  """
  if fmt not in FORMATS:
    raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
  to_bytes, run = EXPORTERS[fmt]
  blob = to_bytes(keypoint_function(model, tta, input_dtype), input_dtype)
  faces = sample_faces(5, input_dtype)
  got = run(blob, faces)
  scaled = faces.astype(np.float32) / (255.0 if input_dtype == "uint8" else 1.0)
  expected = model.predict(scaled[..., None], tta=tta)[:, trained_columns(model)]
  difference = float(np.abs(got - expected).max())
  files.atomic_write(out, lambda f: f.write(blob))
  files.write_json(out + ".json", {
      "format": fmt, "input": {"name": "faces", "shape": ["N", SIZE, SIZE], "dtype": input_dtype,
                               "range": [0, 255] if input_dtype == "uint8" else [0.0, 1.0]},
      "output": {"name": "keypoints", "shape": ["N", len(trained_columns(model))],
                 "dtype": "float32", "unit": "pixels of the 96x96 frame",
                 "layout": model.layout.name, "keypoints": model.trained_names(),
                 "columns": [model.layout.columns[c] for c in trained_columns(model)]},
      "workdir": os.path.abspath(model.workdir), "checkpoint": model.checkpoint,
      "step": model.step, "tta": tta,
      "tta_rotations": list(model.config.tta_rotations) if tta else [],
      "platforms": list(PLATFORMS) if fmt == "stablehlo" else None,
      "max_difference_px": difference})
  return difference
