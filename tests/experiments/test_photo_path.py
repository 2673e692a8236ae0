"""experiments/photo_path.py: faces placed and turned with their eyes, the figures per roll."""

import numpy as np
import pytest

from experiments import photo_path
from facekp_jax.core.errors import DataError
from tests.experiments.test_confidence import _w300_like


def test_a_placed_face_turns_with_its_eyes(tmp_path):
  _w300_like(tmp_path, n=3)
  samples = photo_path.face_photos(str(tmp_path), 2, [0.0, 45.0], seed=1)
  assert len(samples) == 4 and [s["roll"] for s in samples] == [0.0, 45.0, 0.0, 45.0]
  for upright, turned in (samples[:2], samples[2:]):
    assert upright["photo"].shape == (photo_path.HEIGHT, photo_path.WIDTH)
    # Turned about the eye midpoint: it stays; the eye line turns by the roll, either way.
    np.testing.assert_allclose(turned["eyes"].mean(0), upright["eyes"].mean(0), atol=1e-6)
    (dx, dy), (ux, uy) = turned["eyes"][0] - turned["eyes"][1], (
        upright["eyes"][0] - upright["eyes"][1])
    angle = np.degrees(np.arctan2(dy, dx) - np.arctan2(uy, ux))
    assert abs(abs((angle + 180) % 360 - 180) - 45.0) < 1e-6
    # What lies under an eye moves with it.
    for s in (upright, turned):
      x, y = np.round(s["eyes"][0]).astype(int)
      assert 0 <= x < photo_path.WIDTH and 0 <= y < photo_path.HEIGHT
    u, t = (np.round(s["eyes"][0]).astype(int) for s in (upright, turned))
    assert abs(int(upright["photo"][u[1], u[0]]) - int(turned["photo"][t[1], t[0]])) < 60


def test_a_photos_figures():
  sample = {"eyes": np.array([[60.0, 50.0], [40.0, 50.0]])}  # Eye distance 20.
  hit = {"box": (30, 30, 40, 40), "eyes": [[61.0, 50.0], [40.0, 52.0]]}
  miss = {"box": (200, 200, 40, 40), "eyes": [[0.0, 0.0], [1.0, 1.0]]}
  got = photo_path.score_photo(sample, [miss, hit])
  assert got["found"] and got["false_boxes"] == 1
  assert got["eye_error"] == pytest.approx((1 + 2) / 2 / 20)
  assert photo_path.score_photo(sample, [miss]) == {"found": False, "false_boxes": 1,
                                                   "eye_error": None}
  assert photo_path.score_photo({"eyes": None}, [miss, hit])["false_boxes"] == 2
  samples = [dict(sample, roll=0.0), {"eyes": None, "roll": 0.0}]
  runs = [{"seconds": 0.2, "faces": [dict(hit, face_score=0.9), dict(miss, face_score=0.2)]},
          {"seconds": 0.4, "faces": [dict(miss, face_score=0.3)]}]
  table = photo_path.summary(samples, runs)["0"]
  assert (table["found"], table["false_per_face_photo"], table["false_on_free"]) == (1.0, 1.0, 1)
  assert table["seconds_median"] == pytest.approx(0.3)
  kept = photo_path.summary(samples, runs, min_score=0.5)["0"]
  assert (kept["found"], kept["false_per_face_photo"], kept["false_on_free"]) == (1.0, 0.0, 0)


def test_dlibs_path_missing_says_how_to_go_on(tmp_path):
  with pytest.raises(DataError, match="--nodlib"):
    photo_path.run_dlib([], str(tmp_path / "python"), str(tmp_path / "shapes.dat"))


def test_the_command_writes_its_table_plot_and_figures(tmp_path):
  _w300_like(tmp_path / "faces", n=2)
  record = photo_path.main([f"--w300={tmp_path / 'faces'}", "--faces=1", "--rolls=0",
                            "--nodlib", f"--out={tmp_path / 'out'}"])
  assert set(record["paths"]) == {"facekp_jax", "facekp_jax, no face-score filter",
                                  "facekp_jax-upright"}
  row = record["paths"]["facekp_jax"]["0"]
  assert row["faces"] == 1 and row["free_photos"] == len(photo_path.FACE_FREE)
  table = (tmp_path / "out" / "table.md").read_text()
  assert "--nodlib" in table and "| facekp_jax-upright | 0 |" in table
  assert (tmp_path / "out" / "photo_path.png").stat().st_size > 0
