"""The XLA-flag comparison's table: medians, ranges and ratios to the same round's default."""

import pytest

from experiments import compare_flags, peer_table


def test_ratios_are_to_the_default_of_the_same_round_and_failed_rounds_are_left_out():
  runs = {"default": {1: {32: 100.0, 64: 120.0}, 2: {32: 50.0, 64: 60.0}, 3: {32: 80.0}},
          "onednn": {1: {32: 110.0, 64: 90.0}, 2: {32: 60.0, 64: 66.0}},  # Round 3 failed.
          "ynn": {3: {32: 40.0, 64: 70.0}}}  # No default at batch 64 in round 3.
  summary = peer_table.summarise(compare_flags.table(runs), reference="default",
                                 per_reference=False)
  base = summary[32]["systems"]["default"]
  assert (base["median"], base["min"], base["max"], base["n"]) == (80.0, 50.0, 100.0, 3)
  assert "default" not in summary[32]["ratios"]
  onednn = summary[32]["ratios"]["onednn"]
  assert list(onednn["by_round"].values()) == pytest.approx([1.1, 1.2])
  assert onednn["median"] == pytest.approx(1.15)
  assert list(summary[64]["ratios"]["onednn"]["by_round"].values()) == pytest.approx([0.75, 1.1])
  assert summary[32]["ratios"]["ynn"]["by_round"] == {3: 0.5}
  assert "ynn" not in summary[64]["ratios"]
  table = compare_flags.markdown(runs)
  assert "arm / default, by round" in table
  assert "| 32 | onednn | 85 | 60-110 | 2 | 1.10, 1.20 | 1.15x |" in table
  assert "| 64 | ynn | 70 | 70-70 | 1 | — | — |" in table
