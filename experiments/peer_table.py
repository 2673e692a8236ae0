"""The speed table of experiments/compare_peers.sh: medians, ranges and round-by-round ratios.

Reads the script's lines (``round R batch B project {json}``, ``round R batch B keras
images_per_s N``, ``round R batch B torch images_per_s N (channels-last)``) from stdin
or files and prints, per batch size, each system's median and min-max train images/s
over the rounds, and per peer the project's ratio in each round (same round, same
sitting) and its median: a ratio is only meaningful between runs of one sitting.

  bash experiments/compare_peers.sh 5 | tee peers.txt; python -m experiments.peer_table peers.txt
"""

from __future__ import annotations

import collections
import fileinput
import json
import re
import statistics
import sys

_LINE = re.compile(r"round (\d+) batch (\d+) (.*)")


def parse(lines) -> dict:
  """{batch: {system: {round: images/s}}} from the script's output (other lines ignored)."""
  table: dict = collections.defaultdict(lambda: collections.defaultdict(dict))
  for line in lines:
    m = _LINE.match(line.strip())
    if not m:
      continue
    rnd, batch, rest = int(m.group(1)), int(m.group(2)), m.group(3)
    if rest.startswith("project "):
      try:
        value = json.loads(rest[len("project "):])["train_images_per_s"]
      except (ValueError, KeyError):
        continue
      table[batch]["facekp_jax"][rnd] = float(value)
      continue
    m2 = re.match(r"(\w+) images_per_s ([\d.]+)(.*)", rest)
    if m2:
      name = m2.group(1) + (" channels-last" if "channels-last" in m2.group(3) else "")
      table[batch][name][rnd] = float(m2.group(2))
  return table


def summarise(table: dict, reference: str = "facekp_jax", per_reference: bool = True) -> dict:
  """Per batch: per system median/min/max/n; per other system the ratios by round and their
  median: ``reference / system`` (``per_reference``, the peers' table) or ``system /
  reference`` (experiments/compare_flags.py: each flag set over the default), same round only."""
  out = {}
  for batch, systems in sorted(table.items()):
    entry = {"systems": {}, "ratios": {}}
    for name, rounds in systems.items():
      values = list(rounds.values())
      entry["systems"][name] = {"median": statistics.median(values), "min": min(values),
                                "max": max(values), "n": len(values)}
    ours = systems.get(reference, {})
    for name, rounds in systems.items():
      if name == reference:
        continue
      by_round = {r: (ours[r] / v if per_reference else v / ours[r])
                  for r, v in sorted(rounds.items()) if r in ours and v > 0 and ours[r] > 0}
      if by_round:
        entry["ratios"][name] = {"by_round": by_round,
                                 "median": statistics.median(by_round.values())}
    out[batch] = entry
  return out


def markdown(summary: dict, ratio: str = "facekp_jax / system") -> str:
  lines = ["| batch | system | median img/s | min-max | rounds | " + ratio + ", by round "
           "| median ratio |", "|---|---|---|---|---|---|---|"]
  for batch, entry in summary.items():
    for name, s in entry["systems"].items():
      ratio = entry["ratios"].get(name)
      rounds = ", ".join(f"{v:.2f}" for v in ratio["by_round"].values()) if ratio else "—"
      median = f"{ratio['median']:.2f}x" if ratio else "—"
      lines.append(f"| {batch} | {name} | {s['median']:.0f} | {s['min']:.0f}-{s['max']:.0f} | "
                   f"{s['n']} | {rounds} | {median} |")
  return "\n".join(lines)


def main(argv=None) -> None:
  summary = summarise(parse(fileinput.input(argv if argv is not None else sys.argv[1:])))
  print(markdown(summary))


if __name__ == "__main__":
  main()
