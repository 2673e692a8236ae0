"""The fault matrix: every file a workdir holds, damaged every way, under every command; and
a failing disk at every write a training makes.

Each cell ends in one of two ways: a correct run (the command's output whole, the workdir's
other files untouched), or one line on stderr, ``error: ...``, that names the workdir and says
what to do, with exit code 2 and nothing else lost. Cells run in-process on copies of one
finished tiny run, so most cost a fraction of a second. A new file joins the matrix by one line
in ``ENTRIES``, a new command by one in ``COMMANDS``, a new damage by one in ``DAMAGES``.
Kills at a write are ``test_checkpoint``'s (real SIGKILLs, resumed bit-identically); a real full
disk is its tmpfs test.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import os
import re
import shutil
import sys
import threading
import time

import pytest

from configs import tiny
from facekp_jax import evaluate, export, main, predict
from tests.conftest import kaggle_frame, random_faces

EPOCHS, FACES = 2, 24  # 19 training faces, batch 8: 2 steps an epoch, checkpoints at 2 and 4.


def _config():
  config = tiny.get_config()
  config.num_epochs = EPOCHS
  config.data.synthetic_n = FACES
  return config


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """A finished tiny run (the matrix's every cell starts from a copy) and the readers' files."""
  root = tmp_path_factory.mktemp("faults")
  workdir = str(root / "run")
  main.train(_config(), workdir)
  images, coords = random_faces(6, seed=3)
  kaggle_frame(images, coords).to_csv(root / "labelled.csv", index=False)
  test = kaggle_frame(images, coords)[["Image"]]
  test.insert(0, "ImageId", range(1, 7))
  test.to_csv(root / "test.csv", index=False)
  return root, workdir


def _newest(workdir: str) -> str:
  steps = [int(n) for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit()]
  return os.path.join(workdir, "checkpoints", str(max(steps)))


def _largest(folder: str) -> str:
  return max((os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs),
             key=os.path.getsize)


# Every entry of a workdir: name -> (its path in a workdir, its kind: json, jsonl, bytes, folder).
ENTRIES = {
    "config.json": (lambda w: os.path.join(w, "config.json"), "json"),
    "trained_keypoints.json": (lambda w: os.path.join(w, "trained_keypoints.json"), "json"),
    "metrics.jsonl": (lambda w: os.path.join(w, "metrics.jsonl"), "jsonl"),
    "results.json": (lambda w: os.path.join(w, "results.json"), "json"),
    "predictions.png": (lambda w: os.path.join(w, "predictions.png"), "bytes"),
    ".lock": (lambda w: os.path.join(w, ".lock"), "bytes"),
    "tensorboard events": (lambda w: glob.glob(os.path.join(w, "tensorboard", "*"))[0], "bytes"),
    "tensorboard/": (lambda w: os.path.join(w, "tensorboard"), "folder"),
    "newest checkpoint's arrays": (lambda w: _largest(os.path.join(_newest(w), "state")),
                                   "bytes"),
    "newest checkpoint's array metadata": (
        lambda w: os.path.join(_newest(w), "state", "_METADATA"), "json"),
    "newest checkpoint's progress": (
        lambda w: _largest(os.path.join(_newest(w), "progress")), "json"),
    "newest checkpoint's _CHECKPOINT_METADATA": (
        lambda w: os.path.join(_newest(w), "_CHECKPOINT_METADATA"), "json"),
    "newest checkpoint/": (_newest, "folder"),
    "checkpoints/": (lambda w: os.path.join(w, "checkpoints"), "folder"),
}


def _remove(path: str) -> None:
  shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)


def _truncate(path: str) -> None:
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


def _garbage(path: str) -> None:
  with open(path, "wb") as f:
    f.write(bytes(range(256)) * max(1, os.path.getsize(path) // 256))


def _wrong_json(path: str) -> None:
  with open(path, "w") as f:
    f.write("[1, 2]\n")


def _folder(path: str) -> None:
  _remove(path)
  os.mkdir(path)


def _file(path: str) -> None:
  _remove(path)
  with open(path, "w") as f:
    f.write("not a folder\n")


def _dangling(path: str) -> None:
  _remove(path)
  os.symlink(path + ".gone", path)


# Every damage: name -> (what it does, the kinds of entry it applies to).
DAMAGES = {
    "deleted": (_remove, ("json", "jsonl", "bytes", "folder")),
    "truncated": (_truncate, ("json", "jsonl", "bytes")),
    "garbage": (_garbage, ("json", "jsonl", "bytes")),
    "wrong JSON shape": (_wrong_json, ("json", "jsonl")),
    "a folder": (_folder, ("json", "jsonl", "bytes")),
    "a file": (_file, ("folder",)),
    "a dangling symlink": (_dangling, ("json", "jsonl", "bytes", "folder")),
}


def _train(root, workdir):
  main.train(_config(), workdir)
  return []


def _evaluate(root, workdir):
  evaluate.main([f"--workdir={workdir}", f"--csv={root / 'labelled.csv'}",
                 "--checkpoint=latest"])
  return [os.path.join(workdir, "eval_labelled.json")]


def _predict(root, workdir):
  out = root / "out" / "predictions.csv"
  predict.main([f"--workdir={workdir}", f"--csv={root / 'test.csv'}", f"--out={out}",
                "--checkpoint=latest"])
  return [str(out)]


def _export(root, workdir):
  out = root / "out" / "model.stablehlo"
  export.main([f"--workdir={workdir}", "--format=stablehlo", f"--out={out}",
               "--checkpoint=latest"])
  return [str(out), f"{out}.json"]


# Every command, in-process: name -> run(root, workdir) -> the files it promises to write.
COMMANDS = {"train": _train, "evaluate": _evaluate, "predict": _predict, "export": _export}

# The cells that must come out as a correct run, not as an error: (entry, command) for every
# damage of the file's content (deleted, truncated, garbage, wrong JSON shape). A training
# rewrites what it can rebuild, and passes a damaged checkpoint over for the one before; a
# reader reads only config.json, trained_keypoints.json and the checkpoints.
_REBUILT = ("trained_keypoints.json", "metrics.jsonl", "results.json", "predictions.png", ".lock",
            "tensorboard events")
_READ = ("config.json", "trained_keypoints.json")
_CHECKPOINT = ("newest checkpoint's arrays", "newest checkpoint's array metadata",
               "newest checkpoint's progress", "newest checkpoint's _CHECKPOINT_METADATA")


def _must_run(entry: str, damage: str, command: str) -> bool:
  if damage not in ("deleted", "truncated", "garbage", "wrong JSON shape"):
    return False  # Another kind of file where a run keeps one: a line may refuse it.
  if entry in _CHECKPOINT or entry == "newest checkpoint/":
    return True
  if command == "train":
    return entry in _REBUILT or (entry, damage) == ("config.json", "deleted")
  return entry not in _READ + ("checkpoints/",) or (entry, damage) == (
      "trained_keypoints.json", "deleted")


CELLS = [(e, d, c) for e, (_, kind) in ENTRIES.items() for d, (_, kinds) in DAMAGES.items()
         if kind in kinds for c in COMMANDS]


def _digests(workdir: str, skip: str) -> dict[str, str]:
  """sha256 of every file under ``workdir`` but ``skip`` (and what lies under it)."""
  out = {}
  for d, _, fs in os.walk(workdir):
    for f in fs:
      path = os.path.join(d, f)
      if not (path == skip or path.startswith(skip + os.sep)) and os.path.isfile(path):
        with open(path, "rb") as fh:
          out[os.path.relpath(path, workdir)] = hashlib.sha256(fh.read()).hexdigest()
  return out


def _rewritten(relpath: str) -> bool:
  """Files a training writes again (a resumed run's figures, plots and records)."""
  name = os.path.basename(relpath)
  return (not relpath.startswith("checkpoints")) and not name.startswith("eval_")


@pytest.mark.parametrize("entry,damage,command", CELLS)
def test_cell(finished, tmp_path, capsys, entry, damage, command):
  root, original = finished
  workdir = str(tmp_path / "w")
  shutil.copytree(original, workdir, symlinks=True)
  path_of, _ = ENTRIES[entry]
  path = path_of(workdir)
  DAMAGES[damage][0](path)
  before = _digests(workdir, path)
  (root / "out").mkdir(exist_ok=True)
  for leftover in glob.glob(str(root / "out" / "*")):
    os.remove(leftover)
  capsys.readouterr()
  try:
    promised = COMMANDS[command](root, workdir)
    code = 0
  except SystemExit as e:
    code = e.code
  err = capsys.readouterr().err
  assert "Traceback" not in err, err
  after = _digests(workdir, path)
  if code == 0:
    for out in promised:
      assert os.path.isfile(out) and os.path.getsize(out) > 0, out
    if command == "train":
      results = json.load(open(os.path.join(workdir, "results.json")))
      assert results["steps"] == EPOCHS * 2
      lines = open(os.path.join(workdir, "metrics.jsonl")).read().splitlines()
      assert [json.loads(l)["epoch"] for l in lines] == list(range(1, EPOCHS + 1))
      kept = {k: v for k, v in before.items() if not _rewritten(k)}
      assert {k: after.get(k) for k in kept if not k.startswith("checkpoints")} == {
          k: v for k, v in kept.items() if not k.startswith("checkpoints")}
    else:  # A reader changes nothing in the workdir but its own outputs.
      assert {k: v for k, v in after.items() if not k.startswith("eval_")} == before
    assert all(l.startswith(("note: ", "warning: ")) for l in err.splitlines()
               if l.strip() and not l.startswith(" ")), err
  else:
    assert not _must_run(entry, damage, command), f"refused: {err.strip()}"
    assert code == 2, (code, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert workdir in lines[0], lines[0]
    assert re.search(r"\b(use|restore|delete|move|train|free|run|mend|remove|make|wait)\b",
                     lines[0]), f"does not say what to do: {lines[0]}"
    assert after == before, "a refused command changed the workdir"
  if _must_run(entry, damage, command):
    assert code == 0, err


def test_the_matrix_covers_every_file_a_run_writes(finished):
  """A new kind of file in a workdir must join ENTRIES (one line)."""
  _, workdir = finished
  covered = {os.path.relpath(ENTRIES[e][0](workdir), workdir).split(os.sep)[0] for e in ENTRIES}
  names = set(os.listdir(workdir)) - {"learning_curves.png", "per_keypoint_rmse.png"}
  assert names <= covered, names - covered


# ---- A failing disk at every write of a training ---------------------------------------------
# An audit hook (sys.addaudithook: Python's own open, mkdir, rename and remove events, Orbax's
# writer threads included) fails the first write of each kind of file a run makes with ENOSPC or
# EIO, as a full or failing disk would; the run must end in one line that names the workdir, with
# every file it left whole, and the same command must then finish the run.

_inject = {"target": None, "errno": None, "seen": []}


def _writes(event: str, args) -> str | None:
  """The path a write-like audit event is about to change, or None."""
  if event == "open":
    path, mode, flags = args
    writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
        isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
    return path if writing and isinstance(path, (str, bytes, os.PathLike)) else None
  if event in ("os.mkdir", "os.rename", "os.replace"):
    return args[0]
  return None


def _hook(event, args):
  target = _inject["target"]
  if target is None:
    return
  path = _writes(event, args)
  if path is None:
    return
  path = os.fsdecode(path)
  workdir, pattern = target
  if not path.startswith(workdir):
    return
  where = _kind(os.path.relpath(path, workdir))
  _inject["seen"].append(where)
  if re.fullmatch(pattern, where):
    _inject["target"] = None  # Once: the disk is failing, the run must stop on its own.
    code = _inject["errno"]
    raise OSError(code, os.strerror(code), path)


def _kind(relpath: str) -> str:
  """A write's place, step numbers and temporary names normalised: the matrix's rows."""
  relpath = re.sub(r"\.tmp-[^.]+", ".tmp", relpath)
  relpath = re.sub(r"^checkpoints/\d+", "checkpoints/<step>", relpath)
  return re.sub(r"events\.out\.tfevents\..*", "events", relpath)


sys.addaudithook(_hook)  # For good (hooks cannot be removed): inactive while target is None.


@pytest.fixture(scope="module")
def write_points(tmp_path_factory):
  """Every kind of write a clean run makes, in order (a dry run with the hook listening)."""
  workdir = str(tmp_path_factory.mktemp("points") / "w")
  _inject.update(target=(workdir, r"(?!)"), errno=errno.ENOSPC, seen=[])
  try:
    main.train(_config(), workdir)
  finally:
    _inject["target"] = None
  points = list(dict.fromkeys(_inject["seen"]))
  assert {".", ".lock", ".tmp.json", ".tmp.jsonl", "metrics.jsonl", "tensorboard/events",
          ".tmp.png", "checkpoints/<step>.orbax-checkpoint-tmp"} <= set(points), points
  return points


# One cell per kind of write (the first of its kind) and errno: ENOSPC everywhere, EIO at the
# run's own files and the first checkpoint's commit.
_POINTS = [".", ".lock", ".tmp.json", "checkpoints", ".tmp.jsonl",
           "checkpoints/<step>.orbax-checkpoint-tmp",
           "checkpoints/<step>.orbax-checkpoint-tmp/_CHECKPOINT_METADATA",
           "checkpoints/<step>.orbax-checkpoint-tmp/progress.orbax-checkpoint-tmp/metadata",
           "checkpoints/<step>.orbax-checkpoint-tmp/state.orbax-checkpoint-tmp/_METADATA",
           "checkpoints/<step>.orbax-checkpoint-tmp/state.orbax-checkpoint-tmp",
           "metrics.jsonl", "tensorboard", "tensorboard/events", ".tmp.png"]
WRITE_CELLS = [(p, errno.ENOSPC) for p in _POINTS] + [
    (p, errno.EIO) for p in (".lock", ".tmp.json", "metrics.jsonl",
                             "checkpoints/<step>.orbax-checkpoint-tmp")]


def test_the_write_cells_cover_every_kind_of_write(write_points):
  """A new kind of write joins _POINTS (or is one of the kinds below it: every file inside a
  checkpoint folder fails the same save)."""
  inside = re.compile(r"checkpoints/<step>\.orbax-checkpoint-tmp/.+")
  missing = [p for p in write_points if p not in _POINTS and not inside.fullmatch(p)]
  assert not missing, missing


@pytest.mark.parametrize("point,code", WRITE_CELLS,
                         ids=[f"{p}-{errno.errorcode[c]}" for p, c in WRITE_CELLS])
def test_a_failing_write(tmp_path, capsys, point, code):
  workdir = str(tmp_path / "w")
  threads = set(threading.enumerate())
  _inject.update(target=(workdir, re.escape(point)), errno=code, seen=[])
  try:
    with pytest.raises(SystemExit) as e:
      main.train(_config(), workdir)
  finally:
    hit, _inject["target"] = _inject["target"] is None, None
  # The command's process ends here, Orbax's writer threads with it; in-process they finish the
  # failed save's other files for a moment (< 1 s), which the next run's cleanup would race.
  # (Those that wait for a step folder that was never made stay blocked, writing nothing.)
  deadline = time.time() + 5
  for thread in set(threading.enumerate()) - threads:
    if not thread.daemon:
      with contextlib.suppress(TimeoutError):  # Orbax's threads raise it from join.
        thread.join(timeout=max(0.01, deadline - time.time()))
  assert hit, f"the run never wrote {point}"
  err = capsys.readouterr().err
  assert e.value.code == 2 and "Traceback" not in err, err
  [line] = err.strip().splitlines()
  assert line.startswith("error: workdir ") and workdir in line, line
  assert os.strerror(code) in line, line
  if not os.path.exists(workdir):
    return  # Nothing was written (the workdir itself could not be made).
  assert not glob.glob(os.path.join(workdir, ".tmp-*")), os.listdir(workdir)
  for name in ("config.json", "trained_keypoints.json", "results.json"):
    if os.path.exists(os.path.join(workdir, name)):
      json.load(open(os.path.join(workdir, name)))  # Whole, or not there.
  if os.path.exists(os.path.join(workdir, "metrics.jsonl")):
    for l in open(os.path.join(workdir, "metrics.jsonl")):
      json.loads(l)  # Whole lines only.
  if code == errno.ENOSPC:  # Space freed: the same command finishes the run.
    main.train(_config(), workdir)
    results = json.load(open(os.path.join(workdir, "results.json")))
    assert results["steps"] == EPOCHS * 2


# ---- One line means one line, at a real terminal ------------------------------------------------


def test_a_handled_error_is_the_last_line_a_process_prints(finished, tmp_path):
  """A checkpoint of another model (the config changed after training) made Orbax's and
  asyncio's half-done reads print thousands of lines at the interpreter's shutdown, after the
  one line; real processes, as a user runs them."""
  import subprocess
  root, original = finished
  workdir = tmp_path / "w"
  shutil.copytree(original, workdir)
  saved = json.loads((workdir / "config.json").read_text())
  saved["model"]["stem_filters"] *= 2
  (workdir / "config.json").write_text(json.dumps(saved))
  env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
             JAX_PLATFORMS="cpu")
  commands = {
      "evaluate": ["facekp_jax.evaluate", f"--workdir={workdir}", f"--csv={root / 'labelled.csv'}"],
      "train": ["facekp_jax.main", "--config=configs/tiny.py", f"--workdir={workdir}",
                f"--config.num_epochs={EPOCHS}", f"--config.data.synthetic_n={FACES}",
                f"--config.model.stem_filters={saved['model']['stem_filters']}"],
  }
  for name, command in commands.items():
    proc = subprocess.run([sys.executable, "-m", *command], capture_output=True, text=True,
                          env=env, cwd=env["PYTHONPATH"], timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (name, proc.stderr[-3000:])
    assert lines[-1].startswith(f"error: workdir {workdir}: a checkpoint does not fit"), name
    assert not [l for l in lines if not l.startswith(("I", "error: "))], (name, lines[:20])
