"""The photo path benchmark's peer: dlib's whole path (HOG detector, then its 5-point predictor).

Runs in a throw-away environment with dlib (no JAX, no facekp_jax), started by
experiments/photo_path.py:

  python3 -m venv /tmp/peers/venv-dlib && /tmp/peers/venv-dlib/bin/pip install dlib-bin numpy
  /tmp/peers/venv-dlib/bin/pip download --no-deps face-recognition-models -d /tmp/peers
  tar xzf /tmp/peers/face_recognition_models-0.3.0.tar.gz -C /tmp/peers --strip-components=3 \
      face_recognition_models-0.3.0/face_recognition_models/models/shape_predictor_5_face_landmarks.dat
  /tmp/peers/venv-dlib/bin/python experiments/photo_path_dlib.py --photos photos.npz \
      --predictor /tmp/peers/shape_predictor_5_face_landmarks.dat --out dlib.json

``--photos`` holds uint8 grey photos ``photo_00000``, ``photo_00001``, ... of any sizes. The
detector is ``dlib.get_frontal_face_detector()`` (HOG; its five sub-detectors: front, left,
right, and front turned by about +-27 degrees) run with ``--upsample`` (1: dlib's examples'
setting, faces down to ~40 px); each box is read by the 5-point shape predictor
(``shape_predictor_5_face_landmarks.dat``, public domain, from the ``face-recognition-models``
sdist: points 0, 1 the image-right eye's corners, 2, 3 the image-left eye's, 4 the nose base).
An eye centre is the mean of its two corners. ``--out`` gets, per photo, each face's box
(x, y, width, height), detector score and eye centres (the subject's left = image right
first), and the seconds the photo took (detection and shapes).
"""

import argparse
import json
import time

import dlib
import numpy as np


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--photos", required=True, help=".npz of uint8 grey photos")
  parser.add_argument("--predictor", required=True, help="shape_predictor_5_face_landmarks.dat")
  parser.add_argument("--upsample", type=int, default=1)
  parser.add_argument("--out", required=True, help="JSON of faces per photo")
  args = parser.parse_args(argv)
  detector = dlib.get_frontal_face_detector()
  shapes = dlib.shape_predictor(args.predictor)
  photos = np.load(args.photos)
  out = []
  for name in sorted(photos.files):
    image = np.ascontiguousarray(photos[name], np.uint8)
    start = time.perf_counter()
    rects, scores, _ = detector.run(image, args.upsample, 0.0)
    faces = []
    for rect, score in zip(rects, scores):
      p = shapes(image, rect)
      pts = np.array([[p.part(i).x, p.part(i).y] for i in range(5)], np.float64)
      faces.append({"box": [rect.left(), rect.top(), rect.width(), rect.height()],
                    "score": float(score),
                    "left_eye_center": pts[0:2].mean(0).tolist(),
                    "right_eye_center": pts[2:4].mean(0).tolist()})
    out.append({"photo": name, "seconds": time.perf_counter() - start, "faces": faces})
  with open(args.out, "w") as f:
    json.dump({"dlib": dlib.__version__, "upsample": args.upsample, "photos": out}, f)


if __name__ == "__main__":
  main()
