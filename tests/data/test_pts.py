import json
import os

import numpy as np
import pandas as pd
import pytest

from facekp_jax.core import errors, keypoints
from facekp_jax.data import pts

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARED = os.path.join(ROOT, "..", "shared", "data")
W300 = os.path.join(SHARED, "w300_train")
EYES_300W = (tuple(range(36, 42)), tuple(range(42, 48)))


def _random_faces(n, k, size=128, seed=0):
  """Random grey images and k points inside a face-sized box of them."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
  return images, rng.uniform(0.25 * size, 0.8 * size, (n, k, 2))


def _write(tmp_path, text, name="face.pts"):
  path = tmp_path / name
  path.write_text(text)
  return str(path)


def test_read_pts_round_trips_write_folder(tmp_path):
  images, coords = _random_faces(2, 68)
  names = pts.write_folder(str(tmp_path), images, coords, names=["a", "sub/b"])
  assert names == ["a.png", "sub/b.png"]
  for name, expected in zip(["a", "sub/b"], coords):
    np.testing.assert_array_equal(pts.read_pts(str(tmp_path / f"{name}.pts")), expected)


def test_read_pts_tolerates_crlf_blank_lines_and_no_version(tmp_path):
  path = _write(tmp_path, "\r\nn_points:  2\r\n{\r\n\r\n1.5 2\r\n  3 4e1  \r\n}\r\n\r\n")
  points = pts.read_pts(path)
  assert points.dtype == np.float64
  np.testing.assert_array_equal(points, [[1.5, 2.0], [3.0, 40.0]])


@pytest.mark.parametrize("text,line,words", [
    ("version: 1\n{\n1 2\n}\n", 2, "n_points"),
    ("version: 1\nn_points: 2\n{\n1 2\n3 x\n}\n", 5, "not a number"),
    ("n_points: 3\n{\n1 2\n3 4\n}\n", 5, "2 points"),
    ("n_points: 1\n{\n1 2\n3 4\n}\n", 5, "2 points"),
    ("n_points: 2\n{\n1 2\n3 4\n", 4, "no closing"),
    ("n_points: 1\n1 2\n}\n", 2, "'{'"),
    ("n_points: 1\n{\nnan 2\n}\n", 3, "not finite"),
    ("n_points: 1\n{\n1 2 3\n}\n", 3, "expected 'x y'"),
    ("n_points: two\n{\n1 2\n}\n", 1, "whole number"),
    ("n_points: 1\n{\n1 2\n}\n4 5\n", 5, "after '}'"),
    ("", 1, "empty"),
], ids=["missing n_points", "non-number", "too few points", "too many points",
        "missing closing brace", "missing opening brace", "non-finite", "three values",
        "bad n_points", "text after the brace", "empty file"])
def test_read_pts_names_file_line_and_problem(tmp_path, text, line, words):
  path = _write(tmp_path, text)
  with pytest.raises(errors.DataError) as e:
    pts.read_pts(path)
  message = str(e.value)
  assert message.startswith(f"{path}: line {line}: ") and words in message, message
  assert "\n" not in message


def test_read_pts_missing_file(tmp_path):
  with pytest.raises(errors.DataError, match="file not found"):
    pts.read_pts(str(tmp_path / "none.pts"))


def _framing(points, name):
  """The framing map by its definition: the points' box's square -> FRAMING's side and centre."""
  return _framing_with(points, pts.FRAMING[name])


def _framing_with(points, framing):
  side, cx, cy = framing
  lo, hi = points.min(0), points.max(0)
  return (points - (lo + hi) / 2) * side / (hi - lo).max() + [cx, cy]


@pytest.mark.parametrize("name", sorted(keypoints.LAYOUTS))
def test_framing_puts_the_box_square_at_the_layouts_side_and_centre(name):
  k = keypoints.LAYOUTS[name].num_keypoints
  _, points = _random_faces(1, k, size=300, seed=k)
  image, framed = pts.frame_face(np.zeros((300, 300), np.uint8), points[0], name)
  assert image.shape == (96, 96) and image.dtype == np.uint8
  side, cx, cy = pts.FRAMING[name]
  lo, hi = framed.min(0), framed.max(0)
  np.testing.assert_allclose((hi - lo).max(), side, rtol=1e-9)
  np.testing.assert_allclose((lo + hi) / 2, [cx, cy], atol=1e-9)
  np.testing.assert_allclose(framed, _framing(points[0], name), atol=1e-9)


@pytest.mark.parametrize("size,lo,hi", [(256, 14, 241), (40, 8, 32)], ids=["shrink", "enlarge"])
def test_frame_face_maps_a_bright_pixel_onto_its_point(size, lo, hi):
  rng = np.random.default_rng(size)
  points = rng.uniform(lo, hi, (68, 2))
  points[:2] = [[lo, lo], [hi, hi]]  # The box is [lo, hi]^2: scale side / (hi - lo).
  bright = np.array([[lo + 0.3 * (hi - lo), lo + 0.25 * (hi - lo)],
                     [lo + 0.7 * (hi - lo), lo + 0.55 * (hi - lo)],
                     [lo + 0.4 * (hi - lo), lo + 0.8 * (hi - lo)]]).round()
  points[2:5] = bright
  image = np.zeros((size, size), np.uint8)
  image[bright[:, 1].astype(int), bright[:, 0].astype(int)] = 255
  framed_image, framed = pts.frame_face(image, points, "300w68")
  scale = pts.FRAMING["300w68"][0] / (hi - lo)
  assert (scale < 1) == (size == 256)
  np.testing.assert_allclose(framed, _framing(points, "300w68"), atol=1e-9)
  values = framed_image.astype(np.float64)
  for x, y in framed[2:5]:
    j, i = int(round(x)), int(round(y))
    window = values[i - 3:i + 4, j - 3:j + 4]
    assert window.sum() > 0
    rows, cols = np.mgrid[i - 3:i + 4, j - 3:j + 4]
    centroid = [(window * cols).sum() / window.sum(), (window * rows).sum() / window.sum()]
    assert np.hypot(centroid[0] - x, centroid[1] - y) < 0.5, (centroid, (x, y))
    peak = np.unravel_index(np.argmax(window), window.shape)
    assert max(abs(cols[peak] - x), abs(rows[peak] - y)) < 1.0


def test_frame_face_of_a_face_past_the_image_border_is_black_there():
  image = np.full((100, 100), 200, np.uint8)
  points = np.array([[-150.0, 20.0], [-50.0, 80.0]])  # The face lies left of the image.
  framed_image, _ = pts.frame_face(image, points, "300w68")
  assert framed_image.max() == 0
  framed_image, _ = pts.frame_face(image, points + [150, 0], "300w68")
  assert framed_image[48, 48] == 200 and framed_image[48, 0] == 0


@pytest.mark.parametrize("name", sorted(keypoints.LAYOUTS))
def test_read_folder_infers_each_built_in_layout(tmp_path, name):
  layout = keypoints.LAYOUTS[name]
  images, coords = _random_faces(3, layout.num_keypoints, seed=len(name))
  pts.write_folder(str(tmp_path), images, coords, names=["b", "a", "sub/c"])
  (tmp_path / "no_points.png").write_bytes((tmp_path / "a.png").read_bytes())
  os.rename(tmp_path / "b.png", tmp_path / "b.PNG")
  faces, found, names = pts.read_folder(str(tmp_path))
  assert found is layout and names == ["a.png", "b.PNG", os.path.join("sub", "c.png")]
  assert faces.images.shape == (3, 96, 96, 1) and faces.targets.shape == (3, layout.num_coords)
  assert faces.mask.all()
  expected = np.stack([_framing(coords[i], name) for i in (1, 0, 2)]).reshape(3, -1)
  np.testing.assert_allclose(faces.targets, expected, atol=1e-4)
  assert pts.read_folder(str(tmp_path), layout)[1] is layout


def test_read_folder_refuses_files_that_disagree_in_point_count(tmp_path):
  images, coords = _random_faces(2, 68)
  pts.write_folder(str(tmp_path), images, coords)
  pts.write_folder(str(tmp_path), images[:1], coords[:1, :5], names=["z"])
  with pytest.raises(errors.DataError, match=r"z\.pts: 5 points, expected 68") as e:
    pts.read_folder(str(tmp_path))
  assert str(tmp_path / "face_00000.pts") in str(e.value)
  with pytest.raises(errors.DataError, match=r"face_00000\.pts: 68 points, expected 98"):
    pts.read_folder(str(tmp_path), keypoints.get("wflw98"))


def test_read_folder_names_an_unsupported_count(tmp_path):
  images, coords = _random_faces(1, 7)
  pts.write_folder(str(tmp_path), images, coords)
  with pytest.raises(errors.DataError, match=r"face_00000\.pts: 7 points.*data\.keypoints"):
    pts.read_folder(str(tmp_path))


def test_read_folder_without_faces_or_folder(tmp_path):
  with pytest.raises(errors.DataError, match="no images with .pts files"):
    pts.read_folder(str(tmp_path))
  images, coords = _random_faces(1, 68)
  pts.write_folder(str(tmp_path), images, coords)
  os.remove(tmp_path / "face_00000.pts")
  with pytest.raises(errors.DataError, match="no images with .pts files"):
    pts.read_folder(str(tmp_path))
  with pytest.raises(errors.DataError, match="not a folder"):
    pts.read_folder(str(tmp_path / "face_00000.png"))
  with pytest.raises(errors.DataError, match="folder not found"):
    pts.read_folder(str(tmp_path / "none"))


def test_read_folder_names_a_bad_image_or_pts(tmp_path):
  images, coords = _random_faces(1, 68)
  pts.write_folder(str(tmp_path), images, coords)
  (tmp_path / "face_00000.png").write_bytes(b"not an image")
  with pytest.raises(errors.DataError, match=r"face_00000\.png: cannot be read as an image"):
    pts.read_folder(str(tmp_path))
  (tmp_path / "face_00000.pts").write_text("n_points: 68\n{\n1 2\n}\n")
  with pytest.raises(errors.DataError, match=r"face_00000\.pts: line 4: "):
    pts.read_folder(str(tmp_path))


def _w300_points():
  if not os.path.isdir(W300):
    pytest.skip(f"{W300} is absent")
  files = sorted(os.path.join(folder, f) for folder, _, names in os.walk(W300)
                 for f in names if f.endswith(".pts"))
  return np.stack([pts.read_pts(f) for f in files])


def _inside(points, scale=1.0):
  """Per face: every point inside the frame, after scaling by ``scale`` about its centre."""
  p = (points - 47.5) * scale + 47.5
  return ((p >= -0.5) & (p <= 95.5)).all(axis=(-1, -2))


def test_w300_faces_are_whole_in_the_frame_even_at_the_largest_augmented_scale():
  if not os.path.isdir(W300):
    pytest.skip(f"{W300} is absent")
  faces, layout, names = pts.read_folder(os.path.join(W300, "afw"))
  assert layout.name == "300w68" and len(faces) == len(names) == 337
  points = faces.targets.reshape(len(faces), 68, 2)
  assert _inside(points, 1.2).all()
  a, b = points[:, EYES_300W[0]].mean(1), points[:, EYES_300W[1]].mean(1)
  # AFW has the most turned heads of the three sources (eyes closer in the same box): 30.8 px.
  assert 29.0 < np.median(np.linalg.norm(b - a, axis=1)) < 33.0


# Each of COFW's 29 points as the mean of these 300W points (brow centres top and bottom both
# the brow's middle point; the pupils the eyes' 6-point centres).
COFW29_FROM_300W = (
    (17,), (26,), (21,), (22,), (19,), (19,), (24,), (24,),
    (36,), (45,), (39,), (42,), (37, 38), (40, 41), (43, 44), (46, 47),
    tuple(range(36, 42)), tuple(range(42, 48)),
    (31,), (35,), (30,), (33,), (48,), (54,), (51,), (62,), (66,), (57,), (8,))


def test_kaggles_placement_would_cut_the_chin_off_and_the_whole_face_rule_does_not():
  points = _w300_points()
  assert points.shape == (2012, 68, 2)
  cofw = np.stack([points[:, list(ix)].mean(1) for ix in COFW29_FROM_300W], axis=1)
  for name, faces, eyes, kaggles in [("300w68", points, EYES_300W, (85.18, 48.26, 62.86)),
                                     ("cofw29", cofw, ([16], [17]), (81.45, 48.01, 63.01))]:
    np.testing.assert_allclose(pts.calibrate(faces, eyes), kaggles, rtol=0.01)
    cut = 1 - np.mean([_inside(_framing_with(f, kaggles)) for f in faces])
    assert cut > 0.04, (name, cut)  # 6.4 % of 300W's faces.
    assert all(_inside(_framing(f, name), 1.2) for f in faces), name


def test_calibrate_rederives_the_mtfl_framing():
  path = os.path.join(SHARED, "mtfl_train.csv.gz")
  if not os.path.isfile(path):
    pytest.skip(f"{path} is absent")
  names = keypoints.get("mtfl5").names
  frame = pd.read_csv(path, usecols=[f"{n}_{a}" for n in names for a in "xy"])
  points = np.stack([frame[[f"{n}_x", f"{n}_y"]].to_numpy() for n in names], axis=1)
  np.testing.assert_allclose(pts.calibrate(points, ([0], [1])), pts.FRAMING["mtfl5"], rtol=0.01)


def test_kaggles_mean_shape_frames_onto_itself():
  path = os.path.join(SHARED, "kaggle_keypoint_shape_stats.json")
  if not os.path.isfile(path):
    pytest.skip(f"{path} is absent")
  with open(path) as f:
    stats = json.load(f)
  columns = [f"{n}_{a}" for n in keypoints.get("kaggle15").names for a in "xy"]
  mean = np.array([stats["mean"][stats["columns"].index(c)] for c in columns]).reshape(15, 2)
  np.testing.assert_allclose(_framing(mean, "kaggle15"), mean, atol=0.05)


def test_calibrate_on_faces_already_in_kaggles_framing_is_the_identity_on_them():
  rng = np.random.default_rng(0)
  base = np.array([[30.0, 37.8], [66.6, 37.8], [48.3, 57.0], [35.0, 75.0], [62.0, 75.0]])
  points = base + rng.normal(0, 0.5, (201, 5, 2))
  side, cx, cy = pts.calibrate(points * 3.0 + 7.0, ([0], [1]))  # Any pixels: same constants.
  np.testing.assert_allclose((side, cx, cy), pts.calibrate(points, ([0], [1])), rtol=1e-9)
  lo, hi = points.min(1), points.max(1)
  framed = (points - ((lo + hi) / 2)[:, None]) * (side / (hi - lo).max(1))[:, None, None]
  framed += [cx, cy]
  assert abs(np.median(np.linalg.norm(framed[:, 1] - framed[:, 0], axis=1)) - 36.2) < 1e-9
  np.testing.assert_allclose(np.median((framed[:, 0] + framed[:, 1]) / 2, 0), (48.3, 37.8),
                             atol=1e-9)
