"""Measures the photo path's framing: where the face detector's boxes put the eyes, and what
the model's refinement pass (second crop from the first pass's eyes) buys.

Each face of a Kaggle-layout file (with eye labels, e.g. MTFL) is placed in a 384x384 "photo":
enlarged 2x, its surroundings the repeated edge pixels, turned by a random roll in
[-roll, roll] degrees. OpenCV's cascades are run on it, and the box that holds both true eyes
is compared with them. With ``--workdir``, the model then reads every found face through
``detect.find_keypoints`` with and without ``refine``, scored in the photo's pixels against the
labels mapped there: NME (mean point error / true eye distance) over the labelled points, and
the paired change (refined - box only, mean and standard error over faces).

  python -m experiments.faces_align --csv=FACES.csv[.gz] [--rows=600] [--roll=0] [--workdir=W]

Prints one JSON line per cascade (detection rate, false boxes, the box statistics
``detect.BOX_EYE_*`` holds: medians and interquartile ranges) and, with a workdir, one line
with the two NMEs.
"""

import json
import math
import time

import cv2
import jax
import numpy as np
from absl import flags

from facekp_jax import cli
from facekp_jax.core import faces as faces_lib
from facekp_jax.core import keypoints
from facekp_jax.data import kaggle
from facekp_jax.serving import detect, export, predictor

CASCADES = ("haarcascade_frontalface_alt2.xml", "haarcascade_frontalface_default.xml",
            "haarcascade_frontalface_alt.xml")
PHOTO = 384


def placement(roll_deg: float) -> np.ndarray:
  """The similarity (2x3) from the 96x96 frame into the photo: 2x about the centre, rolled."""
  a = math.radians(roll_deg)
  linear = 2.0 * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
  centre_in, centre_out = np.full(2, 47.5), np.full(2, (PHOTO - 1) / 2)
  return np.concatenate([linear, (centre_out - linear @ centre_in)[:, None]], axis=1)


def photos(faces_: faces_lib.Faces, roll: float, seed: int = 0):
  """(photo uint8, its placement, the labels in the photo's pixels) per face."""
  rng = np.random.default_rng(seed)
  labels = np.where(faces_.mask > 0, faces_.targets, np.nan)
  for image, target in zip(faces_.images, labels):
    g = placement(rng.uniform(-roll, roll))
    grey = cv2.warpAffine(image[..., 0], g, (PHOTO, PHOTO), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)
    yield detect.to_uint8(grey), g, detect.to_crop(g, target)


def eyes(coords: np.ndarray):
  left = 2 * keypoints.KAGGLE.names.index("left_eye_center")
  right = 2 * keypoints.KAGGLE.names.index("right_eye_center")
  return coords[left:left + 2], coords[right:right + 2]


def holding_box(boxes, coords):
  """The first box that holds both eye centres."""
  (lx, ly), (rx, ry) = eyes(coords)
  for x, y, w, h in boxes:
    if x <= min(lx, rx) and max(lx, rx) <= x + w and y <= min(ly, ry) and max(ly, ry) <= y + h:
      return (x, y, w, h)
  return None


def box_statistics(faces_: faces_lib.Faces, roll: float, name: str) -> dict:
  cascade = cv2.CascadeClassifier(cv2.data.haarcascades + name)
  stats, false_boxes, t0 = [], 0, time.perf_counter()
  for photo, _, coords in photos(faces_, roll):
    boxes = np.reshape(cascade.detectMultiScale(photo, scaleFactor=1.1, minNeighbors=5,
                                                minSize=(24, 24)), (-1, 4))
    box = holding_box(boxes, coords)
    false_boxes += len(boxes) - (box is not None)
    if box is None:
      continue
    x, y, w, h = box
    left, right = eyes(coords)
    mid = (left + right) / 2
    stats.append(((mid[0] - x) / w, (mid[1] - y) / h, np.hypot(*(left - right)) / w))
  s = np.array(stats)
  q25, q50, q75 = np.percentile(s, [25, 50, 75], axis=0)
  return {"cascade": name, "faces": len(faces_.images), "found": len(s),
          "false_boxes": int(false_boxes), "seconds": round(time.perf_counter() - t0, 1),
          "eye_midpoint_in_box": np.round(q50[:2], 3).tolist(),
          "eye_distance_per_width": round(float(q50[2]), 3),
          "iqr": np.round(q75 - q25, 3).tolist()}


def refinement(faces_: faces_lib.Faces, roll: float, workdir: str, tta: bool) -> dict:
  model = predictor.load(workdir)
  # The model's function at the exact batch (Predictor.predict pads a call to the next power
  # of two): the export's, same to 1e-4 px.
  fn = jax.jit(export.keypoint_function(model, tta=tta, input_dtype="float32"))
  predict = lambda x: model.only_trained(np.asarray(fn(x[..., 0])))  # As predict reads photos.
  # The model's keypoints among the file's (Kaggle's 15, by name).
  own = [keypoints.KAGGLE.index(n) for n in model.layout.names]
  errors = {False: [], True: []}
  for photo, _, coords in photos(faces_, roll):
    found = detect.detect(photo)
    box = holding_box([f.box for f in found], coords)
    if box is None:
      continue
    face = next(f for f in found if f.box == box)
    left, right = eyes(coords)
    scale = np.hypot(*(left - right))
    xy = coords.reshape(-1, 2)[own]
    present = np.isfinite(xy).all(axis=1)
    truth = xy[present]
    grey = photo.astype(np.float32) / 255.0
    for refine in (False, True):
      got = detect.find_keypoints(predict, grey, [face], refine=refine,
                                  mean_shape=model.mean_shape)[0].keypoints
      point = np.hypot(*(got.reshape(-1, 2)[present] - truth).T)
      errors[refine].append(point.mean() / scale)
  box_only, refined = (np.array(errors[k]) for k in (False, True))
  return {"workdir": workdir, "tta": tta, "roll_deg": roll, "faces": len(box_only),
          "nme_box": round(float(box_only.mean()), 4),
          "nme_refined": round(float(refined.mean()), 4),
          "paired_change": round(float((refined - box_only).mean()), 4),
          "paired_change_se": round(float((refined - box_only).std(ddof=1)
                                          / np.sqrt(len(refined))), 4),
          "refined_better_share": round(float((refined < box_only).mean()), 3),
          "nme_box_p90": round(float(np.percentile(box_only, 90)), 4),
          "nme_refined_p90": round(float(np.percentile(refined, 90)), 4)}


def main(argv=None):
  fv = cli.command_flags()
  flags.DEFINE_string("csv", None, "a Kaggle-layout file of faces", flag_values=fv)
  flags.mark_flag_as_required("csv", flag_values=fv)
  flags.DEFINE_integer("rows", 600, "faces used (the file's first)", lower_bound=1,
                       flag_values=fv)
  flags.DEFINE_float("roll", 0.0, "extra roll, degrees (uniform +-)", flag_values=fv)
  flags.DEFINE_string("workdir", None, "also measure the refinement pass with this model",
                      flag_values=fv)
  flags.DEFINE_bool("tta", False, "flip test-time augmentation in the refinement pass",
                    flag_values=fv)
  flags.DEFINE_list("cascades", list(CASCADES), "OpenCV cascades to compare", flag_values=fv)
  cli.parse(fv, "python -m experiments.faces_align", __doc__.splitlines()[0], argv)
  cli.quiet_libraries()
  with cli.user_errors():
    faces_ = next(iter(kaggle.read_training_chunks(fv.csv, fv.rows)))
    for name in fv.cascades:
      print(json.dumps(box_statistics(faces_, fv.roll, name)), flush=True)
    if fv.workdir:
      print(json.dumps(refinement(faces_, fv.roll, fv.workdir, fv.tta)), flush=True)


if __name__ == "__main__":
  main()
