"""The peers' speed table: medians, ranges and the ratios of the same round."""

import pytest

from experiments import peer_table

LINES = """\
round 1 batch 32 project {"train_images_per_s": 150.0, "batch": 32}
round 1 batch 32 keras images_per_s 100.0
round 1 batch 32 torch images_per_s 120.0 (channels-last)
round 2 batch 32 project {"train_images_per_s": 90.0}
round 2 batch 32 keras images_per_s 60.0
round 2 batch 32 torch images_per_s 100.0 (channels-last)
round 3 batch 32 project {"train_images_per_s": 120.0}
round 3 batch 32 keras images_per_s 100.0
round 3 batch 32 torch images_per_s
noise line
""".splitlines()


def test_medians_ranges_and_round_by_round_ratios():
  summary = peer_table.summarise(peer_table.parse(LINES))[32]
  ours = summary["systems"]["facekp_jax"]
  assert (ours["median"], ours["min"], ours["max"], ours["n"]) == (120.0, 90.0, 150.0, 3)
  keras = summary["ratios"]["keras"]
  assert keras["by_round"] == {1: 1.5, 2: 1.5, 3: 1.2} and keras["median"] == 1.5
  torch = summary["ratios"]["torch channels-last"]  # Round 3 printed nothing: left out.
  assert torch["by_round"] == pytest.approx({1: 1.25, 2: 0.9}) and torch["median"] == 1.075
  assert "| 32 | keras | 100 | 60-100 | 3 | 1.50, 1.50, 1.20 | 1.50x |" in peer_table.markdown(
      {32: summary})
