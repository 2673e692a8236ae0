"""A trained model loaded for inference, and the package's Python API: faces or photos in,
named keypoints out.

``load`` restores one of a workdir's checkpoints, or reads a packed model (``pack``: the config,
the weights in float16 and the keypoint record in one small folder; the model shipped in the
package, ``SHIPPED``, is one, and ``load()`` without a path reads it). A ``Predictor`` keeps
what inference needs: the model function (``model.apply.Inference``, jitted over this process's
device mesh), the weights ``training.state.inference_variables`` chooses (the EMA where the run
keeps one), the run's test-time augmentation and its keypoint layout. Evaluate, predict and
export all predict through it. A workdir is only read: nothing in it is created, cleaned up or
deleted, so a run can still be training there.

The API::

  p = Predictor.load()                 # the shipped model; or Predictor.load(workdir)
  for face in p.find("photo.jpg"):     # a path or any array: H x W (x 3 or 4), uint8 or float
    print(face.box, face.score, face.keypoints["left_eye_center"],
          face.confidence["left_eye_center"])

``find`` detects the faces (``detect``), reads each in its aligned crop and returns boxes,
scores and named keypoints in the photo's own pixels; ``keypoints`` reads faces already in the
model's 96x96 frame. Both follow the run's TTA setting unless told; bad arrays are a
``ValueError`` naming the problem. A heatmap model also says how sure it is of each keypoint
(``confidences``, ``FoundFace.confidence`` in [0, 1]: the map's mass near the keypoint times
how well the TTA's views agree on it); a regression model has no such score and says None.
"""

from __future__ import annotations

import dataclasses
import json
import os

import ml_collections
import numpy as np

from facekp_jax.core import files, keypoints, sharding
from facekp_jax.core.errors import WorkdirError
from facekp_jax.model import apply, resnet, tta
from facekp_jax.serving import detect, images
from facekp_jax.training import config as config_lib
from facekp_jax.training import weights
from facekp_jax.training import workdir as workdir_lib
from facekp_jax.training.weights import PACKED_WEIGHTS, SHIPPED


@dataclasses.dataclass
class Predictor:
  """A restored model.

  Attributes:
    workdir: the training workdir it came from.
    config: the run's config (``workdir/config.json``, upgraded by ``training.config``).
    variables: the weights it predicts with (``state.inference_variables``), on the devices.
    inference: the jitted model function over this process's device mesh.
    step: the checkpoint's step.
    checkpoint: which checkpoint was asked for: ``"best"`` or ``"latest"``.
    trained: (2K,) 1 for the coordinates of keypoints the training split labelled
      (``workdir.trained_keypoints``); the others are the model's guesses, never learnt.
    mean_shape: (K, 2) the layout's mean keypoints in the frame, what a photo's second crop
      is fitted to (``detect.shape_transform``): Kaggle's mean shape for layouts of Kaggle's
      points, else the training split's (``workdir.mean_shape``).
    scorer: the jitted per-keypoint confidence (``apply.confidence_forward``) of a heatmap
      model; None for a regression model.
  """

  workdir: str
  config: ml_collections.ConfigDict
  variables: dict
  inference: apply.Inference
  step: int
  checkpoint: str
  trained: np.ndarray
  mean_shape: np.ndarray | None = None
  scorer: apply.Inference | None = None

  @property
  def eval_batch_size(self) -> int:
    return self.inference.eval_batch_size

  @property
  def layout(self) -> keypoints.Layout:
    """The model's keypoint layout (``config.data.keypoints``)."""
    return self.inference.layout

  def trained_names(self) -> list[str]:
    """The keypoints the run had labels for, in the layout's order."""
    return [n for n, t in zip(self.layout.names, self.trained[::2]) if t]

  def untrained_names(self) -> list[str]:
    """The keypoints the run never had labels for, in the layout's order."""
    return [n for n, t in zip(self.layout.names, self.trained[::2]) if not t]

  def only_trained(self, coords: np.ndarray) -> np.ndarray:
    """``coords`` (..., 2K) with the untrained keypoints' coordinates set to NaN."""
    return np.where(self.trained > 0, np.asarray(coords, np.float64), np.nan)

  def predict(self, images: np.ndarray, tta: bool = False) -> np.ndarray:
    """(N, 96, 96, 1) images in [0, 1] -> (N, 2K) keypoints in pixels; ``tta``: the test-time
    average over the flips and the turned views of ``config.tta_rotations``."""
    return self.inference(self.variables, images, self.config.tta_rotations if tta else None)

  def use_tta(self, tta: bool | None = None, rotations=None) -> bool:
    """Whether to use TTA as a command asks: ``tta=None`` follows the run's ``config.tta``;
    ``rotations``, when given, replace ``config.tta_rotations`` (the turned views)."""
    if rotations is not None:
      self.config.tta_rotations = tuple(rotations)
    return self.config.tta if tta is None else tta

  @classmethod
  def load(cls, path: str | None = None, which: str = "best", ema: bool = True) -> Predictor:
    """``load``: a workdir, a packed model, or (None) the model shipped in the package."""
    return load(path, which, ema)

  def keypoints(self, faces, tta: bool | None = None) -> np.ndarray:
    """Keypoints (N, K, 2) in the 96x96 frame's pixels of faces already framed like the
    training faces: (96, 96) one face, (N, 96, 96) or (N, 96, 96, 1); uint8 0..255 or float
    in [0, 1]. NaN for keypoints the run never trained. ``tta=None``: the run's ``config.tta``.

    Raises:
      ValueError: another shape or dtype, no faces, non-finite values, or floats outside
        [0, 1]; the message names the problem.
    """
    x = _frames(faces)
    coords = self.only_trained(self.predict(x, tta=self.use_tta(tta)))
    return coords.reshape(len(x), -1, 2)

  def confidences(self, faces) -> np.ndarray | None:
    """How sure the model is of each keypoint of faces framed as ``keypoints`` takes them:
    (N, K) in [0, 1], the map's mass near its soft-argmax on the face as it is
    (``model.heads.confidence``) times how well the TTA's views agree on the keypoint
    (``model.tta.agreement`` of ``config.tta_rotations``' views, whatever the TTA asked of the
    keypoints); NaN for keypoints the run never trained; None for a regression model, which
    has no score.

    Raises:
      ValueError: as ``keypoints``.
    """
    x = _frames(faces)
    if self.scorer is None:
      return None
    mass = np.asarray(self.scorer(self.variables, x), np.float64)
    every = [self.only_trained(v) for v in tta.views(
        lambda v: self.inference(self.variables, v), x, self.layout, self.config.tta_rotations)]
    scores = mass * tta.agreement(every, self.layout)
    return np.where(self.trained[::2] > 0, scores, np.nan)

  def find(self, photo, tta: bool | None = None, refine: bool = True,
           rolls=None, min_score: float = detect.MIN_FACE_SCORE) -> list[FoundFace]:
    """Every face of a photo (a path, or an H x W, H x W x 1, 3 or 4 array of uint8, uint16 or
    float in [0, 1], any size), left to right: its box and detector score, and its named
    keypoints in the photo's pixels (pixel (row i, column j) centred at (x=j, y=i)).

    ``tta=None``: the run's ``config.tta``; ``refine``: read each face a second time in a crop
    fitted to the first reading (``detect.find_keypoints``); ``rolls``: the turned views
    searched beside the upright photo (None: ``detect.ROLLS``; ``()``: upright only);
    ``min_score``: a heatmap model drops the faces whose ``face_score`` is under this (0 keeps
    every face the detector finds).

    Raises:
      ValueError: an array of the wrong rank, channels or dtype, empty, or non-finite.
      DataError: a path that is missing or not an image.
    """
    grey = images.to_grey(images.as_picture(photo))
    tta = self.use_tta(tta)
    faces = detect.detect(grey, detect.ROLLS if rolls is None else rolls)
    found = detect.find_keypoints(lambda x: self.only_trained(self.predict(x, tta=tta)), grey,
                                  faces, refine=refine, mean_shape=self.mean_shape,
                                  score=self.scorer and self.confidences,
                                  min_score=min_score)
    trained = self.trained_names()
    out = []
    for k in found:
      xy = k.keypoints.reshape(-1, 2)
      named = {n: (float(x), float(y)) for n, (x, y) in zip(self.layout.names, xy)
               if n in trained}
      sure = None if k.confidence is None else {
          n: float(c) for n, c in zip(self.layout.names, k.confidence) if n in trained}
      out.append(FoundFace(tuple(float(v) for v in k.face.box), float(k.face.score), named,
                           sure))
    return out

  def describe(self, tta: bool) -> str:
    rotations = self.config.tta_rotations
    views = f" and turned +-{', +-'.join(f'{a:g}' for a in rotations)} deg" if rotations else ""
    return (f"workdir {self.workdir}, {self.checkpoint} checkpoint (step {self.step}), "
            f"TTA {f'on (flips{views})' if tta else 'off'}")


@dataclasses.dataclass(frozen=True)
class FoundFace:
  """One face ``Predictor.find`` found: ``box`` (x, y, width, height) and the detector's
  ``score`` (larger: more face-like; not a probability), ``keypoints``: name -> (x, y) in
  the photo's pixels, the run's trained keypoints in its layout's order, and ``confidence``:
  name -> how sure the model is of each (``Predictor.confidences``; None: a regression model)."""

  box: tuple[float, float, float, float]
  score: float
  keypoints: dict[str, tuple[float, float]]
  confidence: dict[str, float] | None = None

  @property
  def face_score(self) -> float | None:
    """The mean of the keypoints' confidences (None: a regression model): how face-like the
    model found it; ``Predictor.find`` drops faces under ``detect.MIN_FACE_SCORE``."""
    return None if self.confidence is None else detect.face_score(
        list(self.confidence.values()))

  def array(self) -> np.ndarray:
    """The keypoints as a (K, 2) array, in ``keypoints``' order."""
    return np.array(list(self.keypoints.values()), np.float64).reshape(-1, 2)


def load(workdir: str | None = None, which: str = "best", ema: bool = True) -> Predictor:
  """Restores the ``best`` (by validation RMSE; else the latest) or ``latest`` checkpoint of a
  workdir; a packed model (``pack``) as it is; ``None``: the shipped model (``SHIPPED``).

  ``ema=False``: the raw parameters even where the run keeps their moving average (for
  comparisons; every command predicts with the average).

  Raises:
    WorkdirError: no config, no checkpoint, or a checkpoint that does not fit the config's
      model; one line.
  """
  if workdir is None:
    workdir = SHIPPED
    if not weights.is_packed(workdir):
      raise WorkdirError(f"the shipped model is missing from the package ({workdir}); give a "
                         "trained workdir (--workdir)")
  config = config_lib.read_config(workdir)
  problems = config_lib.problems(config)
  if problems:  # A hand-edited config.json: name its fields, not a failure deep in Flax.
    raise WorkdirError(f"workdir {workdir}: config.json cannot build a model "
                       f"({'; '.join(problems)})")
  mesh = sharding.make_mesh()
  model = resnet.create_model(config, dtype=resnet.compute_dtype(config))
  layout = keypoints.get(config.data.keypoints)
  variables, step, which = weights.read(workdir, config, model, mesh, which, ema)
  scorer = None
  if config.model.head == "heatmap":
    scorer = apply.Inference(model, mesh, config.eval_batch_size,
                             apply.confidence_forward(model, config.model.heatmap_margin))
  return Predictor(workdir, config, variables,
                   apply.Inference(model, mesh, config.eval_batch_size), step, which,
                   workdir_lib.trained_keypoints(workdir, layout), _mean_shape(workdir, layout),
                   scorer)


def _frames(faces) -> np.ndarray:
  """``Predictor.keypoints``' faces as (N, 96, 96, 1) float in [0, 1], or ValueError."""
  x = np.asarray(faces)
  if x.ndim == 2:
    x = x[None]
  if x.ndim == 4 and x.shape[-1] == 1:
    x = x[..., 0]
  if x.ndim != 3 or x.shape[1:] != (keypoints.IMAGE_SIZE, keypoints.IMAGE_SIZE):
    raise ValueError(f"faces must be 96 x 96, N x 96 x 96 or N x 96 x 96 x 1 (use find() for "
                     f"photos); got shape {np.shape(faces)}")
  if len(x) == 0:
    raise ValueError("no faces given (an empty array)")
  return np.stack([images.as_picture(face) for face in x])[..., None]


def pack(model: Predictor, out_dir: str, note: dict | None = None) -> None:
  """Writes ``model`` as a packed model: ``config.json``, ``trained_keypoints.json`` (copied from
  its workdir) and its inference weights in float16 (``weights.npz``), plus ``model.json``
  (step, checkpoint and ``note``). ``load(out_dir)`` reads it back."""
  os.makedirs(out_dir, exist_ok=True)
  flat = {k: v.astype(np.float16) for k, v in weights.flat(model.variables).items()}
  files.atomic_write(os.path.join(out_dir, PACKED_WEIGHTS),
                     lambda f: np.savez_compressed(f, **flat))
  files.write_json(os.path.join(out_dir, "config.json"), model.config.to_dict())
  record = os.path.join(model.workdir, workdir_lib.TRAINED_KEYPOINTS)
  with open(record) as f:
    files.write_json(os.path.join(out_dir, workdir_lib.TRAINED_KEYPOINTS), json.load(f))
  files.write_json(os.path.join(out_dir, "model.json"), {
      "step": model.step, "checkpoint": model.checkpoint, **(note or {})})


def _mean_shape(workdir: str, layout: keypoints.Layout) -> np.ndarray | None:
  """``Predictor.mean_shape``: Kaggle's by name where the layout's points are all Kaggle's."""
  kaggle = keypoints.KAGGLE.names
  if set(layout.names) <= set(kaggle):
    return detect.MEAN_SHAPE[[kaggle.index(n) for n in layout.names]]
  return workdir_lib.mean_shape(workdir, layout)
