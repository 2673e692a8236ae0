"""The accelerator check's smoke mode: every step runs on the CPU and lands in one JSON file."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow  # ~2 min on 2 cores (six processes, each compiling): run with -m slow.
def test_smoke_mode_writes_every_section(tmp_path):
  out = tmp_path / "check.json"
  proc = subprocess.run(["bash", "experiments/accelerator_check.sh", "--smoke", str(out)],
                        capture_output=True, text=True, cwd=ROOT, timeout=600,
                        env=dict(os.environ, PY=sys.executable, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 0, proc.stderr[-2000:]
  report = json.loads(out.read_text())
  assert report["smoke"] is True
  kinds = {(r["input"], r["half_precision"]) for r in report["train"]}
  assert kinds == {(i, h) for i in ("host", "device") for h in (False, True)}
  assert all(r["train_images_per_s"] > 0 for r in report["train"])
  assert report["default_run"]["epochs"] == 1 and report["default_run"]["val_rmse"] > 0
  runtimes = {r.get("runtime") for r in report["inference"]}
  assert len(report["inference"]) >= 3 and len(runtimes) >= 3, report["inference"]
