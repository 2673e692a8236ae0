"""experiments/cross_source.py: which faces each direction trains on and scores, the table's
ratios, resume, and the command line's refusals."""

import json
import shutil

import pandas as pd
import pytest

from configs import tiny
from experiments import cross_source
from tests.conftest import kaggle_frame, random_faces


@pytest.fixture
def two_sources(tmp_path, monkeypatch):
  """A 40-face file whose first 20 rows are one source and the rest another."""
  monkeypatch.setattr(cross_source, "SOURCES", {"lfw": slice(0, 20), "web": slice(20, None)})
  images, coords = random_faces(40)
  path = tmp_path / "mtfl.csv"
  kaggle_frame(images, coords).to_csv(path, index=False)
  return str(path)


def test_each_source_splits_once_into_disjoint_pool_and_held_out_faces(tmp_path, two_sources):
  data = cross_source.source_files(two_sources, str(tmp_path / "d"))
  whole = pd.read_csv(two_sources)["Image"]
  for name, rows in (("lfw", whole[:20]), ("web", whole[20:])):
    pool, held = (set(pd.read_csv(p)["Image"]) for p in data[name])
    assert len(pool) == 16 and len(held) == 4 and not pool & held
    assert pool | held == set(rows)
  again = cross_source.source_files(two_sources, str(tmp_path / "d"))
  assert again == data


def test_runs_score_both_sources_write_table_and_plot_and_a_rerun_trains_nothing(
    tmp_path, two_sources, monkeypatch):
  # The other arm changes no compiled program: its runs find the reference's in the cache.
  monkeypatch.setattr(cross_source, "ARMS", {"default": {},
                                             "noflip": {"augment.hflip_prob": 0.0}})
  monkeypatch.setattr(cross_source, "TODAY", "default")  # The arm fine-tuned unless told.
  monkeypatch.setattr(cross_source, "FINETUNE_FACES", (8,))
  monkeypatch.setattr(cross_source, "FINETUNE_RECIPES", {
      "mixed": {"num_epochs": 2, "learning_rate": 1e-3, cross_source.MIXED: True},
      "plain": {"num_epochs": 2, "learning_rate": 1e-3}})
  base = tiny.get_config()
  base.eval_batch_size = 4
  logs = []
  kwargs = dict(config_path="configs/tiny.py", arms=["default", "noflip"],
                directions=["lfw-to-web"], seeds=[0], epochs=1,
                mtfl_csv=two_sources, scratch=str(tmp_path / "s"), out=str(tmp_path / "out"),
                command="test", finetune=(8,))
  # The reference arm both ways, the other one way only (the table holds what finished).
  cross_source.benchmark(base, **dict(kwargs, arms=["default"],
                                      directions=list(cross_source.DIRECTIONS)), log=logs.append)
  results = cross_source.benchmark(base, **dict(kwargs, arms=["noflip"]), log=logs.append)
  # 3 runs, and today's default's 2 fine-tuned on 8 faces of the other source.
  assert sum("s)" in line for line in logs) == 5
  assert sum("done before" in line for line in logs) == 4  # The second call read the first's.
  runs = results["runs"]
  assert set(runs["noflip"]) == {"lfw-to-web"}
  for arm, direction in (("default", "lfw-to-web"), ("default", "web-to-lfw"),
                         ("noflip", "lfw-to-web")):
    run = runs[arm][direction][0]
    assert run["num_train"] == 16 and run["in"]["faces"] == 4 and run["cross"]["faces"] == 4
    assert run["in"]["per_face_nme"] == sorted(run["in"]["per_face_nme"])
  # The same faces, scored by either model: web's held-out faces are lfw-to-web's cross set
  # and web-to-lfw's in-source set.
  s = results["summary"]["noflip"]["lfw-to-web"]
  noflip, ref = runs["noflip"]["lfw-to-web"][0], runs["default"]["lfw-to-web"][0]
  assert s["ratio"][0] == pytest.approx(noflip["cross"]["nme"] / noflip["in"]["nme"])
  assert s["cross_nme_change"][0] == pytest.approx(noflip["cross"]["nme"] / ref["cross"]["nme"] - 1)
  web = runs["default"]["web-to-lfw"][0]
  assert results["summary"]["default"]["lfw-to-web"]["vs_native"][0] == pytest.approx(
      ref["cross"]["nme"] / web["in"]["nme"])
  out = tmp_path / "out"
  table = (out / "table.md").read_text()
  assert "| noflip (`augment.hflip_prob=0.0`) | lfw-to-web |" in table
  assert "| default | web-to-lfw |" in table
  assert results["parameters"]["noflip"] == results["parameters"]["default"] > 0
  assert f"| {results['parameters']['noflip'] / 1e6:.2f} M | 0 |" in table
  assert (out / "ced.png").stat().st_size > 0
  saved = json.loads((out / "results.json").read_text())
  assert saved["runs"]["default"]["web-to-lfw"]["0"]["cross"]["nme"] == pytest.approx(
      runs["default"]["web-to-lfw"][0]["cross"]["nme"])
  # Fine-tuned under the first recipe only: started from the run's weights, on 8 faces of web's
  # pool beside 8 of its own (LFW's), scored on both sets.
  tuned = results["finetune"]["default"]["lfw-to-web"]["mixed"][8][0]
  assert tuned["num_train"] == 16 and tuned["steps"] == 4
  assert set(results["finetune"]["default"]["lfw-to-web"]) == {"mixed"}
  f = results["finetune_summary"]["default"]["lfw-to-web"]["mixed"][8]
  before, native = ref["cross"]["nme"], runs["default"]["web-to-lfw"][0]["in"]["nme"]
  assert f["gap_closed"][0] == pytest.approx((before - tuned["cross"]["nme"]) / (before - native))
  assert "## Fine-tuned on a few faces of the other source" in table
  assert "| default | lfw-to-web | mixed | 8 |" in table
  assert "noflip" not in results["finetune"]  # Only today's default is fine-tuned.
  logs.clear()
  cross_source.benchmark(base, **kwargs, log=logs.append)
  assert sum("done before" in line for line in logs) == 5
  # Asked for one arm, the table still holds every finished run.
  logs.clear()
  again = cross_source.benchmark(base, **dict(kwargs, arms=["noflip"]), log=logs.append)
  assert set(again["runs"]) == {"default", "noflip"} and set(again["finetune"]) == {"default"}
  # The scratch folder gone (another machine): the committed figures stay, nothing retrains.
  shutil.rmtree(tmp_path / "s" / "runs")
  logs.clear()
  kept = cross_source.benchmark(base, **kwargs, log=logs.append)
  assert sum("done before" in line for line in logs) == 5
  assert (kept["runs"]["noflip"]["lfw-to-web"][0]["cross"]
          == runs["noflip"]["lfw-to-web"][0]["cross"])
  assert kept["finetune"]["default"]["web-to-lfw"]["mixed"][8][0]["run"].endswith(
      results["finetune"]["default"]["web-to-lfw"]["mixed"][8][0]["run"].split("/")[-1])
  # A run that finishes is written at once, beside every figure finished before it (a run
  # stopped later loses nothing of the table).
  finished = {k: v for k, v in runs["noflip"]["lfw-to-web"][0].items() if k != "run"}
  calls = []

  def one_then_stop(config, workdir, scored):
    calls.append(workdir)
    if len(calls) > 1:
      raise RuntimeError("stopped")
    return dict(finished, skipped=False)

  monkeypatch.setattr(cross_source, "run_one", one_then_stop)
  with pytest.raises(RuntimeError):
    cross_source.benchmark(base, **dict(kwargs, arms=["noflip"], seeds=[0, 1],
                                        directions=list(cross_source.DIRECTIONS)),
                           log=logs.append)
  saved = json.loads((out / "results.json").read_text())
  assert set(saved["runs"]["noflip"]["lfw-to-web"]) == {"0", "1"}
  assert set(saved["runs"]["default"]["web-to-lfw"]) == {"0"}
  assert "8" in saved["finetune"]["default"]["lfw-to-web"]["mixed"]
  # A command for other seeds keeps the finished ones in the table.
  cross_source.benchmark(base, **dict(kwargs, seeds=[2], tables_only=True), log=logs.append)
  saved = json.loads((out / "results.json").read_text())
  assert set(saved["runs"]["default"]["lfw-to-web"]) == {"0"} and saved["seeds"] == [0, 1, 2]
  assert set(saved["runs"]["noflip"]["lfw-to-web"]) == {"0", "1"}


def test_tables_only_without_finished_runs_is_refused(tmp_path, two_sources):
  with pytest.raises(ValueError, match="no run has finished"):
    cross_source.benchmark(tiny.get_config(), "configs/tiny.py", ["default"], ["lfw-to-web"], [0],
                           1, two_sources, str(tmp_path / "s"), str(tmp_path / "o"), "test",
                           tables_only=True, log=lambda _: None)


@pytest.mark.parametrize("args, words", [
    (["--arms=before-26,nope"], "unknown arm, direction or recipe ['nope']"),
    (["--directions=up"], "unknown arm, direction or recipe ['up']"),
    (["--seeds=-1"], "--seeds=-1"),
    (["--finetune=100,x"], "--finetune=100,x"),
    (["--finetune_recipes=lr9"], "unknown arm, direction or recipe ['lr9']"),
])
def test_bad_command_lines_are_one_line_errors(args, words, capsys, tmp_path):
  with pytest.raises(SystemExit) as e:
    cross_source.main([*args, f"--scratch={tmp_path}"])
  assert e.value.code == 2
  err = capsys.readouterr().err.strip()
  assert words in err and "\n" not in err


def test_scratch_inside_the_repository_is_refused(capsys):
  with pytest.raises(SystemExit) as e:
    cross_source.main([f"--scratch={cross_source.HERE}/scratch"])
  assert e.value.code == 2 and "inside the repository" in capsys.readouterr().err
