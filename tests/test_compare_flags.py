"""The XLA-flag comparison's table: medians, ranges and ratios to the same round's default."""

import pytest

from experiments import compare_flags


def test_ratios_are_to_the_default_of_the_same_round_and_failed_rounds_are_left_out():
  runs = {"default": {1: {32: 100.0, 64: 120.0}, 2: {32: 50.0, 64: 60.0}, 3: {32: 80.0}},
          "onednn": {1: {32: 110.0, 64: 90.0}, 2: {32: 60.0, 64: 66.0}},  # Round 3 failed.
          "ynn": {3: {32: 40.0, 64: 70.0}}}  # No default at batch 64 in round 3.
  rows = {(r["batch"], r["arm"]): r for r in compare_flags.summarise(runs)}
  base = rows[32, "default"]
  assert (base["median"], base["min"], base["max"], base["rounds"]) == (80.0, 50.0, 100.0, 3)
  assert base["ratios"] == [] and base["median_ratio"] is None
  assert rows[32, "onednn"]["ratios"] == pytest.approx([1.1, 1.2])
  assert rows[32, "onednn"]["median_ratio"] == pytest.approx(1.15)
  assert rows[64, "onednn"]["ratios"] == pytest.approx([0.75, 1.1])
  assert rows[32, "ynn"]["ratios"] == [0.5] and rows[64, "ynn"]["ratios"] == []
  table = compare_flags.markdown(compare_flags.summarise(runs))
  assert "| 32 | onednn | 85 | 60-110 | 2 | 1.10, 1.20 | 1.15x |" in table
  assert "| 64 | ynn | 70 | 70-70 | 1 | — | — |" in table
