"""experiments/confidence.py: 300W's points read as MTFL's five, and the calibration figures."""

import json

import numpy as np
import pytest

from experiments import confidence
from facekp_jax.core.errors import DataError
from facekp_jax.data import pts


def _w300_like(folder, n=6, seed=0):
  """``n`` 200x200 noise photos with 68 points: a face's eyes, nose and mouth where 300W's
  indices put them (jaw and brows anywhere plausible)."""
  rng = np.random.default_rng(seed)
  points = rng.uniform(60, 140, (n, 68, 2))
  for i in range(n):
    shift = rng.uniform(-10, 10, 2)
    points[i, 36:42] = np.array([80, 90]) + shift + rng.normal(0, 2, (6, 2))  # image-left eye
    points[i, 42:48] = np.array([120, 90]) + shift + rng.normal(0, 2, (6, 2))
    points[i, 30] = np.array([100, 112]) + shift
    points[i, 48], points[i, 54] = np.array([86, 130]) + shift, np.array([114, 130]) + shift
  images = rng.integers(0, 256, (n, 200, 200), dtype=np.uint8)
  pts.write_folder(str(folder), images, points, [f"src{i % 2}/face{i}" for i in range(n)])
  return points


def test_300w_points_become_mtfls_five_in_mtfls_framing(tmp_path):
  points = _w300_like(tmp_path)
  images, five, names = confidence.read_w300_as_mtfl5(str(tmp_path))
  assert images.shape == (6, 96, 96) and images.dtype == np.uint8 and five.shape == (6, 5, 2)
  assert names == sorted(names) and names[0].startswith("src0")
  order = [int(n.split("face")[1].split(".")[0]) for n in names]
  for framed, raw in zip(five, points[order]):
    # One similarity (scale and shift) maps the photo's five points to the frame's.
    want = np.array([raw[42:48].mean(0), raw[36:42].mean(0), raw[30], raw[54], raw[48]])
    scale = (framed[0, 0] - framed[1, 0]) / (want[0, 0] - want[1, 0])
    np.testing.assert_allclose(framed, scale * want + (framed[2] - scale * want[2]), atol=1e-6)
    assert framed[0, 0] > framed[1, 0]  # The subject's left eye lies to the image's right.
  (tmp_path / "src0" / "face0.pts").write_text("version: 1\nn_points: 1\n{\n1 2\n}\n")
  with pytest.raises(DataError, match="face0.pts: 1 points, not 300W's 68"):
    confidence.read_w300_as_mtfl5(str(tmp_path))
  with pytest.raises(DataError, match="no image with a .pts"):
    confidence.read_w300_as_mtfl5(str(tmp_path / "src0" / "none"))


def test_calibration_figures():
  assert confidence.rank_correlation([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
  assert confidence.rank_correlation([1, 2, 3, 4], [9, 3, 2, 1]) == pytest.approx(-1.0)
  scores = np.linspace(0, 1, 100)
  errors = np.where(np.arange(100) < 5, 0.2, 0.05 - 0.0002 * np.arange(100))
  # The 5 lowest-scored fail, and 5 others.
  errors[[50, 60, 70, 80, 90]] = 0.15
  got = confidence.calibration(scores, errors)
  assert got["failures"] == 10 and got["failures_in_lowest_10pct"] == pytest.approx(0.5)
  assert got["decile_fr"][0] == pytest.approx(0.5) and len(got["decile_nme"]) == 10
  assert got["spearman"] < 0


def test_the_command_writes_its_table_plot_and_figures(tmp_path):
  _w300_like(tmp_path / "faces", n=4)
  record = confidence.main([f"--w300={tmp_path / 'faces'}", "--radii=4,8",
                            f"--out={tmp_path / 'out'}"])
  assert record["faces"] == 4 and set(record["radii"]) == {"4", "8"}
  saved = json.loads((tmp_path / "out" / "results.json").read_text())
  assert saved["radii"]["8"]["face_mean"]["decile_nme"] == pytest.approx(
      record["radii"]["8"]["face_mean"]["decile_nme"])
  table = (tmp_path / "out" / "table.md").read_text()
  assert "--radii=4,8" in table and (tmp_path / "out" / "deciles.png").stat().st_size > 0
  # The package's own score (disc times the views' agreement) is its first row, apart from
  # the discs alone.
  assert -1 <= record["package"]["face_mean"]["spearman"] <= 1
  assert "| the package's (disc of 8 px x the views' agreement) | mean" in table
  assert saved["package"]["keypoint_spearman"] == pytest.approx(
      record["package"]["keypoint_spearman"])
