"""The photo path, measured whole: faces placed in photos at rolls 0-60 degrees, and photos
without faces, through facekp_jax's path and dlib's.

  python -m experiments.photo_path                      # 100 faces x 5 rolls, 19 face-free photos
  python -m experiments.photo_path --faces=20 --nodlib  # a quick look, this path only

Faces: ../shared/data/w300_train (300W's Helen, LFPW and AFW crops, 256x256, the face in the
middle half; sources the shipped model never trained on), ``--faces`` drawn with a fixed seed.
Each is read through its 5 points shared with MTFL's layout (eye centres = the mean of each
eye's 6 points) and placed in a 480x640 photo: a face-free picture of scikit-image's as the
background (grey, resized), the crop scaled by 0.6, 1.0 or 1.4 (the face ~75 to ~180 px wide)
at a random position, then the whole photo turned about the eye midpoint by each roll of
``--rolls`` (the sign drawn per face; edges reflected) -- the same face and place at every
roll, so the rolls are paired. Face-free photos: scikit-image's pictures without people
(``FACE_FREE``), each at every roll.

Per roll and path: the share of faces found (a returned box holds the true eye midpoint),
false boxes (boxes holding no face's eye midpoint: per face photo, and on the face-free
photos), the eye-centre error of the faces found (each eye's distance to the truth over the
true eye distance, both eyes' mean, in % ), and the seconds per photo (wall, this process).
Paths: ``facekp_jax`` (``Predictor.find`` as it is: the shipped model, Haar upright and in
turned views, refinement, TTA, faces under ``detect.MIN_FACE_SCORE`` dropped), the same
without that face-score filter, ``facekp_jax-upright`` (``rolls=()``, no filter: the path
before issue 29), and ``dlib`` (``photo_path_dlib.py`` under ``--dlib_python``: HOG, then its
5-point predictor; eye centre = the mean of its two corners). ``--min_scores``: more rows,
keeping the faces whose face score (mean keypoint confidence) is at least each.
Writes ``results/photo_path/{table.md, photo_path.png, results.json}``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import cv2
import numpy as np
from absl import flags
from skimage import data as skimage_data

from experiments import ablate, confidence
from facekp_jax import cli
from facekp_jax.core import files, plots
from facekp_jax.core.errors import DataError
from facekp_jax.serving import detect, predictor

OUT = os.path.join(ablate.DEFAULT_OUT, "photo_path")
DLIB_PYTHON = "/tmp/peers/venv-dlib/bin/python"
DLIB_PREDICTOR = "/tmp/peers/shape_predictor_5_face_landmarks.dat"
DLIB_SCRIPT = os.path.join(ablate.ROOT, "experiments", "photo_path_dlib.py")
# scikit-image's bundled pictures without a person in them (astronaut and camera have one).
FACE_FREE = ("coffee", "chelsea", "rocket", "horse", "coins", "moon", "hubble_deep_field",
             "immunohistochemistry", "page", "text", "brick", "grass", "gravel", "colorwheel",
             "logo", "retina", "clock", "cell", "checkerboard")
HEIGHT, WIDTH = 480, 640
SCALES = (0.6, 1.0, 1.4)


def _grey(picture: np.ndarray) -> np.ndarray:
  """A scikit-image picture as uint8 grey."""
  x = np.asarray(picture)
  if x.dtype == bool:
    x = x.astype(np.uint8) * 255
  if x.ndim == 3:
    x = cv2.cvtColor(np.ascontiguousarray(x[..., :3]), cv2.COLOR_RGB2GRAY)
  if x.dtype != np.uint8:
    x = np.round(255 * (x - x.min()) / max(float(x.max() - x.min()), 1e-9)).astype(np.uint8)
  return x


def backgrounds() -> dict[str, np.ndarray]:
  """Every ``FACE_FREE`` picture, grey, resized to the photos' 480x640."""
  return {name: cv2.resize(_grey(getattr(skimage_data, name)()), (WIDTH, HEIGHT),
                           interpolation=cv2.INTER_AREA) for name in FACE_FREE}


def _turn(photo: np.ndarray, centre, roll: float) -> tuple[np.ndarray, np.ndarray]:
  m = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), roll, 1.0)
  return cv2.warpAffine(photo, m, (photo.shape[1], photo.shape[0]), flags=cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_REFLECT_101), m


def face_photos(folder: str, n: int, rolls, seed: int = 0) -> list[dict]:
  """``n`` faces of ``folder`` placed in photos at each roll: dicts of ``photo`` (uint8),
  ``eyes`` (2, 2: the subject's left, then right eye centre), ``face``, ``roll``, ``scale``."""
  names = confidence.image_files(folder)
  rng = np.random.default_rng(seed)
  chosen = sorted(rng.choice(len(names), size=min(n, len(names)), replace=False))
  back = backgrounds()
  out = []
  for i in chosen:
    crop, five = confidence.read_300w_five(folder, names[i])
    scale = float(rng.choice(SCALES))
    side = round(crop.shape[0] * scale)
    small = cv2.resize(crop, (side, side), interpolation=cv2.INTER_AREA if scale < 1 else
                       cv2.INTER_LINEAR)
    x0, y0 = int(rng.integers(0, WIDTH - side + 1)), int(rng.integers(0, HEIGHT - side + 1))
    photo = back[FACE_FREE[int(rng.integers(len(FACE_FREE)))]].copy()
    photo[y0:y0 + side, x0:x0 + side] = small
    eyes = (five[:2] + 0.5) * (side / crop.shape[0]) - 0.5 + (x0, y0)
    sign = float(rng.choice((-1.0, 1.0)))
    for roll in rolls:
      turned, m = _turn(photo, eyes.mean(0), sign * roll)
      out.append({"photo": turned, "eyes": eyes @ m[:, :2].T + m[:, 2], "face": names[i],
                  "roll": float(roll), "scale": scale})
  return out


def free_photos(rolls) -> list[dict]:
  """The face-free pictures, each turned by every roll about its centre."""
  out = []
  for name, picture in backgrounds().items():
    for roll in rolls:
      turned, _ = _turn(picture, ((WIDTH - 1) / 2, (HEIGHT - 1) / 2), roll)
      out.append({"photo": turned, "eyes": None, "face": name, "roll": float(roll)})
  return out


def _holds(box, point) -> bool:
  x, y, w, h = box
  return x <= point[0] <= x + w and y <= point[1] <= y + h


def score_photo(sample: dict, faces: list[dict]) -> dict:
  """One photo's figures from a path's ``faces`` (each ``box``, ``eyes`` (2, 2) or None)."""
  if sample["eyes"] is None:
    return {"found": None, "false_boxes": len(faces), "eye_error": None}
  truth = np.asarray(sample["eyes"])
  mid, distance = truth.mean(0), float(np.linalg.norm(truth[0] - truth[1]))
  hits = [f for f in faces if _holds(f["box"], mid)]
  error = None
  if hits and hits[0]["eyes"] is not None:
    eyes = np.asarray(hits[0]["eyes"], np.float64)
    error = float(np.linalg.norm(eyes - truth, axis=1).mean() / distance)
  return {"found": bool(hits), "false_boxes": len(faces) - len(hits[:1]), "eye_error": error}


def run_facekp(samples: list[dict], model: predictor.Predictor, rolls) -> list[dict]:
  """``Predictor.find`` on each photo, keeping every face the detector finds (``min_score=0``;
  ``summary`` applies the face-score filter): per photo its faces (box, eyes, face score) and
  wall seconds."""
  out = []
  model.find(samples[0]["photo"], rolls=rolls)  # Compiled before the clock starts.
  for sample in samples:
    start = time.perf_counter()
    found = model.find(sample["photo"], rolls=rolls, min_score=0.0)
    seconds = time.perf_counter() - start
    out.append({"seconds": seconds, "faces": [
        {"box": f.box, "eyes": [f.keypoints["left_eye_center"], f.keypoints["right_eye_center"]],
         "face_score": f.face_score} for f in found]})
  return out


def run_dlib(samples: list[dict], python: str, shapes: str) -> list[dict]:
  """dlib's path on each photo (``photo_path_dlib.py`` in its own environment)."""
  for path in (python, shapes):
    if not os.path.exists(path):
      raise DataError(f"{path}: not found; make dlib's environment as "
                      "experiments/photo_path_dlib.py says, or pass --nodlib")
  with tempfile.TemporaryDirectory() as tmp:
    photos, out = os.path.join(tmp, "photos.npz"), os.path.join(tmp, "dlib.json")
    np.savez(photos, **{f"photo_{i:05d}": s["photo"] for i, s in enumerate(samples)})
    subprocess.run([python, DLIB_SCRIPT, "--photos", photos, "--predictor", shapes,
                    "--out", out], check=True)
    with open(out) as f:
      got = json.load(f)
  return [{"seconds": p["seconds"], "faces": [
      {"box": f["box"], "eyes": [f["left_eye_center"], f["right_eye_center"]],
       "face_score": f["score"]} for f in p["faces"]]} for p in got["photos"]]


def summary(samples: list[dict], runs: list[dict], min_score: float | None = None) -> dict:
  """Per roll: faces found, false boxes per face photo and on face-free photos, eye error
  (mean and median, %), seconds per photo (median)."""
  table = {}
  for roll in sorted({s["roll"] for s in samples}):
    rows = [(s, r) for s, r in zip(samples, runs) if s["roll"] == roll]
    scored = []
    for s, r in rows:
      faces = [f for f in r["faces"] if min_score is None or f["face_score"] >= min_score]
      scored.append((s, r, score_photo(s, faces)))
    face = [x for s, _, x in scored if s["eyes"] is not None]
    free = [x for s, _, x in scored if s["eyes"] is None]
    errors = [x["eye_error"] for x in face if x["eye_error"] is not None]
    table[f"{roll:g}"] = {
        "faces": len(face), "found": float(np.mean([x["found"] for x in face])),
        "false_per_face_photo": float(np.mean([x["false_boxes"] for x in face])),
        "false_on_free": int(sum(x["false_boxes"] for x in free)), "free_photos": len(free),
        "eye_error_mean": float(np.mean(errors)) if errors else None,
        "eye_error_median": float(np.median(errors)) if errors else None,
        "seconds_median": float(np.median([r["seconds"] for _, r, _ in scored]))}
  return table


def write(record: dict, out: str) -> None:
  os.makedirs(out, exist_ok=True)
  files.write_json(os.path.join(out, "results.json"), files.jsonable(record))
  lines = ["# The photo path: faces found, false boxes, eye error, time, by roll", "",
           f"- faces: {record['faces']} of 300W's (w300_train), through MTFL's 5 points, each "
           f"placed in a {HEIGHT}x{WIDTH} photo and turned by every roll (paired); "
           f"{record['free']} face-free pictures of scikit-image's at every roll; seed "
           f"{record['seed']}",
           f"- model: `{record['model']}`; machine: {record['machine']}",
           f"- command: `{record['command']}`", "",
           "| path | roll | faces found | false boxes per face photo | false boxes on face-free "
           "photos | eye error mean (%) | median (%) | s/photo (median) |",
           "|---|---|---|---|---|---|---|---|"]
  for path, table in record["paths"].items():
    for roll, r in table.items():
      err = "—" if r["eye_error_mean"] is None else (
          f"{100 * r['eye_error_mean']:.2f} | {100 * r['eye_error_median']:.2f}")
      lines.append(f"| {path} | {roll} | {100 * r['found']:.1f} % | "
                   f"{r['false_per_face_photo']:.3f} | {r['false_on_free']} of "
                   f"{r['free_photos']} | {err if r['eye_error_mean'] is not None else '— | —'} "
                   f"| {r['seconds_median']:.3f} |")
  with open(os.path.join(out, "table.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  plt = plots.pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for path, table in record["paths"].items():
    rolls = [float(r) for r in table]
    axes[0].plot(rolls, [100 * r["found"] for r in table.values()], marker="o", label=path)
    axes[1].plot(rolls, [100 * (r["eye_error_mean"] or np.nan) for r in table.values()],
                 marker="o", label=path)
  axes[0].set(xlabel="roll (degrees)", ylabel="faces found (%)")
  axes[1].set(xlabel="roll (degrees)", ylabel="eye-centre error (% of eye distance)")
  axes[0].legend(fontsize=8)
  plots.save_figure(fig, os.path.join(out, "photo_path.png"))


def main(argv=None) -> dict:
  fv = cli.command_flags()
  flags.DEFINE_integer("faces", 100, "300W faces placed in photos", lower_bound=1,
                       flag_values=fv)
  flags.DEFINE_list("rolls", ["0", "15", "30", "45", "60"], "rolls (degrees)", flag_values=fv)
  flags.DEFINE_list("min_scores", [], "more facekp_jax rows, keeping faces of a face score "
                    "(mean keypoint confidence) at least this", flag_values=fv)
  flags.DEFINE_integer("seed", 0, "the draw of faces, scales, places and backgrounds",
                       flag_values=fv)
  flags.DEFINE_string("model", None, "a workdir or packed model (default: the shipped one)",
                      flag_values=fv)
  flags.DEFINE_string("w300", confidence.W300, "300W's faces", flag_values=fv)
  flags.DEFINE_bool("dlib", True, "run dlib's path too", flag_values=fv)
  flags.DEFINE_string("dlib_python", DLIB_PYTHON, "a python with dlib (photo_path_dlib.py)",
                      flag_values=fv)
  flags.DEFINE_string("dlib_predictor", DLIB_PREDICTOR, "dlib's 5-point shape predictor",
                      flag_values=fv)
  flags.DEFINE_string("out", OUT, "where the table, plot and JSON go", flag_values=fv)
  cli.parse(fv, "python -m experiments.photo_path", __doc__.splitlines()[0], argv)
  cli.quiet_libraries()
  with cli.user_errors():
    rolls = [float(r) for r in fv.rolls]
    samples = face_photos(fv.w300, fv.faces, rolls, fv.seed) + free_photos(rolls)
    model = predictor.load(fv.model)
    ours, upright = run_facekp(samples, model, None), run_facekp(samples, model, ())
    paths = {"facekp_jax": summary(samples, ours, detect.MIN_FACE_SCORE),
             "facekp_jax, no face-score filter": summary(samples, ours),
             "facekp_jax-upright": summary(samples, upright)}
    if fv.dlib:
      paths["dlib"] = summary(samples, run_dlib(samples, fv.dlib_python, fv.dlib_predictor))
    for s in fv.min_scores:
      paths[f"facekp_jax, face score >= {s}"] = summary(samples, ours, float(s))
    record = {"faces": fv.faces, "free": len(FACE_FREE), "seed": fv.seed,
              "model": confidence.shown(model),
              "machine": f"{os.cpu_count()} CPUs",
              "command": " ".join(["python -m experiments.photo_path",
                                   *(sys.argv[1:] if argv is None else argv)]),
              "paths": paths}
    write(record, fv.out)
  print(open(os.path.join(fv.out, "table.md")).read())
  return record


if __name__ == "__main__":
  main()
