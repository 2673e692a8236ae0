"""Every command README.md shows is run here, as written but small.

The README's commands are read from its code blocks (indented or fenced) and from inline code
spans: every ``python -m MODULE ...`` (also ``python3``, ``.venv/bin/python``) and
``.venv/bin/pip ...``, continuation lines joined, ending at ``&&``, ``;``, ``|`` or a comment.
Each is reduced to a key, its module and the sorted set of flag names it writes (values
ignored), and COMMANDS says how the suite exercises it:

  RUN    run here, in a tmp dir (also its working folder), after the substitutions below;
         every ``--out`` / ``--out_dir`` it names and the entry's other outputs must exist
         afterwards
  TRAIN  the training: the flags of every TRAIN command, merged, make one run (configs/tiny.py,
         one epoch): the workdir W that the RUN commands use
  PARSE  parsed by ``facekp_jax.main``'s own flags and config file, not run: the full main job
         (50 epochs of configs/resnet.py) and the several-hosts commands (``--distributed``);
         each flag must come out with the README's value
  CI     set-up and test commands: each must be a command ``.ci/run`` runs

A README command not in COMMANDS, an entry no README command has any more, or a command with
``[optional]`` parts fails ``test_every_readme_command_is_in_the_table``. The README's Python
blocks (a code block starting with ``import``) run after the exports, beside their files.
"""

import json
import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest

from tests.conftest import HAS_ONNX, kaggle_frame, random_faces

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")

RUN, TRAIN, PARSE, CI = "run", "train", "parse", "ci"

# (module, sorted flag names) -> (how, outputs besides --out / --out_dir). Outputs are paths in
# the tmp dir (W: the workdir); "{out}" is the command's --out.
COMMANDS = {
    # The two commands.
    ("venv", ()): (CI,),
    ("pip", ("e",)): (CI,),
    ("facekp_jax.main", ("config",)): (PARSE,),  # The full main job: 12 epochs.
    ("pytest", ("n", "q")): (CI,),
    # Train; Data.
    ("facekp_jax.main", ("config", "config.learning_rate", "config.num_epochs", "workdir")):
        (TRAIN,),
    ("facekp_jax.main", ("config", "config.data.train_csv", "workdir")): (TRAIN,),
    # Fine-tuning the shipped (full-size) model: parsed (tests/training/test_weights.py tests
    # init_from, the shipped model included).
    ("facekp_jax.main", ("config", "config.data.train_csv", "config.init_from",
                         "config.learning_rate", "workdir")): (PARSE,),
    ("facekp_jax.synthesize", ("missing", "n", "out", "seed")): (RUN,),
    # Evaluate.
    ("facekp_jax.evaluate", ("csv", "workdir")):
        (RUN, "W/eval_FILE.json", "W/eval_FILE.png", "W/eval_FILE_ced.png"),
    ("facekp_jax.evaluate", ("csv", "robustness", "tta_rotations", "workdir")):
        (RUN, "W/eval_FILE.json", "W/eval_FILE_robustness.png"),
    # Predict (without --workdir: the shipped model, overlays into the current folder).
    ("facekp_jax.predict", ()): (RUN, "photo_keypoints.png", "faces.csv"),
    ("facekp_jax.predict", ("csv", "lookup", "out", "workdir")): (RUN,),
    ("facekp_jax.predict", ("out", "out_dir", "workdir")):
        (RUN, "DIR/photo_keypoints.png", "faces.json"),
    ("facekp_jax.predict", ("crop", "nodetect", "workdir")):
        (RUN, "W/face1_keypoints.png", "W/face2_keypoints.png"),
    # Export (StableHLO and ONNX: one key, both run).
    ("facekp_jax.export", ("format", "out", "workdir")): (RUN, "{out}.json"),
    # Several hosts.
    ("facekp_jax.main", ("config", "config.batch_size", "distributed", "workdir")): (PARSE,),
    ("facekp_jax.main", ("config", "distributed", "workdir")): (PARSE,),
    ("facekp_jax.main", ("config", "coordinator_address", "distributed", "num_processes",
                         "process_id", "workdir")): (PARSE,),
}

# The files README commands name, all in the tmp dir: inputs the test makes, then outputs.
INPUTS = ("W", "training.csv", "FILE.csv", "test.csv", "IdLookupTable.csv", "photo.jpg",
          "photos/", "face1.png", "face2.jpg")
OUTPUTS = ("built_in.csv", "submission.csv", "DIR", "faces.csv", "model.stablehlo", "model.onnx")
CONFIGS = {"configs/resnet.py": "configs/tiny.py"}
FLAG_VALUES = {"config.num_epochs": "1", "n": "40"}  # Small, whatever the README says.
SEPARATORS = ("&&", "||", ";", "|")
COMMAND = re.compile(r"(^|[\s'\"])(\S*/)?(python3?\s+-m|pip3?)\s")


def _code(text):
  """README.md's code: the code blocks' texts, and the prose's inline code spans."""
  blocks, prose, block, fenced, blank = [], [], [], False, True
  for line in text.splitlines():
    if line.startswith("```"):
      if fenced:
        blocks.append("\n".join(block))
        block = []
      fenced = not fenced
    elif fenced or (line.startswith("    ") and (blank or block)):
      block.append(line[0 if fenced else 4:])
    elif not line.strip() and block and not fenced:
      block.append("")
    else:
      if block:
        blocks.append("\n".join(block).strip("\n"))
        block = []
      prose.append(line)
    blank = not line.strip()
  if block:
    blocks.append("\n".join(block).strip("\n"))
  spans = [s for s in re.findall(r"`([^`]+)`", "\n".join(prose)) if re.search(r"\s-m\s", s)]
  return blocks, spans


def _commands_in(code):
  """The commands of a piece of shell: [(module, args)], a quoted shell command included."""

  def tokens(text):
    out = []
    for token in shlex.split(text, comments=True):
      out.extend(tokens(token) if re.search(r"\s", token) else [token])
    return out

  lines = re.sub(r"\\\n", " ", code).splitlines()  # Continuation lines joined.
  words = [w for line in lines if COMMAND.search(line) for w in tokens(line) + [";"]]
  found = []
  for i, word in enumerate(words):
    if re.fullmatch(r"(\S*/)?python3?", word) and words[i + 1:i + 2] == ["-m"]:
      module, start = words[i + 2], i + 3
    elif re.fullmatch(r"(\S*/)?pip3?", word):
      module, start = "pip", i + 1
    else:
      continue
    end = next((j for j in range(start, len(words)) if words[j] in SEPARATORS), len(words))
    found.append((module, words[start:end]))
  return found


def _readme():
  """[(module, args)] for every command README.md shows, in its order."""
  with open(README) as f:
    blocks, spans = _code(f.read())
  return [c for code in blocks + spans for c in _commands_in(code)]


def _key(module, args):
  return module, tuple(sorted({a.lstrip("-").split("=", 1)[0] for a in args
                               if a.startswith("-")}))


def _show(module, args):
  return " ".join(["python -m", module, *args])


def _python_blocks():
  with open(README) as f:
    blocks, _ = _code(f.read())
  return [b for b in blocks if re.match(r"(import|from) ", b)]


def test_every_readme_command_is_in_the_table():
  commands = _readme()
  keys = {_key(m, a) for m, a in commands}
  assert keys - set(COMMANDS) == set(), (
      "README commands no test runs: add them to COMMANDS: "
      + "; ".join(_show(m, a) for m, a in commands if _key(m, a) not in COMMANDS))
  assert set(COMMANDS) - keys == set(), "COMMANDS entries the README no longer shows"
  for module, args in commands:
    assert not any(a.startswith("[") for a in args), f"not runnable as written: {args}"
    if COMMANDS[_key(module, args)][0] == PARSE:
      assert module == "facekp_jax.main", "PARSE checks facekp_jax.main's flags only"
  assert _python_blocks(), "the README's Python example is gone (or no longer starts with import)"


def test_set_up_and_test_commands_are_the_ones_ci_runs():
  with open(os.path.join(ROOT, ".ci", "run")) as f:
    ci = [_commands_in(line) for line in f if not line.startswith("#")]
  ci = [c for found in ci for c in found]
  for module, args in _readme():
    if COMMANDS[_key(module, args)][0] == CI:
      assert (module, args) in ci, f"{_show(module, args)} is not what .ci/run runs"
  with open(README) as f:
    assert "\n    .venv/bin/python -m pytest -q -n 2\n" in f.read()  # CI's test command.


def _run(args, cwd=ROOT, timeout=300):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                        cwd=cwd, timeout=timeout)


def _substitute(args, tmp):
  """The README's args with the test's small values and tmp files."""

  def value(text, flag):
    if flag in FLAG_VALUES:
      return FLAG_VALUES[flag]
    if text in CONFIGS:
      return CONFIGS[text]
    if text in INPUTS or text in OUTPUTS:
      return os.path.join(tmp, text)
    assert not (re.search(r"[A-Za-z]\.[A-Za-z]", text) or "/" in text), (
        f"README names the file {text!r}, which the test does not make (INPUTS, OUTPUTS)")
    return text

  out, flag = [], None
  for arg in args:
    if arg.startswith("-"):
      name, eq, text = arg.lstrip("-").partition("=")
      out.append(f"{arg.split('=', 1)[0]}={value(text, name)}" if eq else arg)
      flag = None if eq else name
    else:
      out.append(value(arg, flag))
      flag = None
  return out


def _make_inputs(tmp):
  """The files the README's commands read, small (the README's synthesize command runs too)."""
  import matplotlib.image
  from skimage import data as skimage_data

  images, coords = random_faces(40)
  kaggle_frame(images, coords).to_csv(f"{tmp}/training.csv", index=False)
  kaggle_frame(*random_faces(16, seed=1, missing_every=2)).to_csv(f"{tmp}/FILE.csv", index=False)
  pd.DataFrame({"ImageId": range(1, 6), "Image": kaggle_frame(images[:5], coords[:5])["Image"]}
               ).to_csv(f"{tmp}/test.csv", index=False)
  columns = [c for c in kaggle_frame(images[:1], coords[:1]).columns if c != "Image"]
  lookup = [(i, c) for i in range(1, 6) for c in columns]
  pd.DataFrame({"RowId": range(1, len(lookup) + 1), "ImageId": [i for i, _ in lookup],
                "FeatureName": [c for _, c in lookup], "Location": np.nan}).to_csv(
                    f"{tmp}/IdLookupTable.csv", index=False)
  os.makedirs(f"{tmp}/photos")
  for image, name in zip(images, ("face1.png", "face2.jpg", "photos/face3.png")):
    matplotlib.image.imsave(f"{tmp}/{name}", np.kron(image, np.ones((3, 3), np.uint8)),
                            cmap="gray")  # Pictures of 288x288.
  matplotlib.image.imsave(f"{tmp}/photo.jpg", skimage_data.astronaut())  # A face is found.


PARSE_SCRIPT = """
import json, sys
from absl import flags
import facekp_jax.main  # Defines the command's flags.

FLAGS, results = flags.FLAGS, []
for argv in json.loads(sys.argv[1]):
  FLAGS.unparse_flags()
  for name in [n for n in FLAGS if n.startswith("config.")]:
    delattr(FLAGS, name)  # ml_collections defines the overrides a parse names; drop them.
  sys.argv = ["main", *argv]  # ml_collections reads the overrides from sys.argv.
  FLAGS(sys.argv)
  values = {}
  for arg in argv:
    name = arg.lstrip("-").split("=", 1)[0]
    value = FLAGS.config if name.startswith("config.") else FLAGS[name].value
    for part in name.split(".")[1:]:
      value = value[part]
    values[name] = str(value)
  results.append(values)
print(json.dumps(results))
"""


def _parse_checks(commands):
  """Failures of the PARSE commands: each parsed by main's flags, values as the README's."""
  argvs = [args for _, args in commands]
  proc = _run(["-c", PARSE_SCRIPT, json.dumps(argvs)], timeout=120)
  if proc.returncode:
    return [f"PARSE {argvs}: exit {proc.returncode}\n{proc.stderr[-2000:]}"]
  failures = []
  for (module, args), values in zip(commands, json.loads(proc.stdout.splitlines()[-1])):
    for arg in args:
      name, _, text = arg.lstrip("-").partition("=")
      if name != "config" and values[name] != text:
        failures.append(f"{_show(module, args)}: --{name} parses to {values[name]}")
  return failures


def _run_command(module, args, outputs, tmp):
  """Failures of one RUN command: its exit code, the outputs it should have written."""
  argv = _substitute(args, tmp)
  proc = _run(["-m", module, *argv], cwd=tmp)
  if "--format=onnx" in argv and not HAS_ONNX:  # [test] lacks the [export] extra: says so.
    said = proc.stderr.strip()
    return [] if proc.returncode == 2 and "\n" not in said and "[export]" in said else [
        f"{_show(module, argv)} without jax2onnx: exit {proc.returncode}\n{said[-2000:]}"]
  if proc.returncode:
    return [f"{_show(module, argv)}: exit {proc.returncode}\n{proc.stderr[-2000:]}"]
  named = {a.lstrip("-").split("=")[0]: a.split("=", 1)[1] for a in argv if "=" in a}
  return [f"{_show(module, argv)}: wrote no {out}"
          for out in [named.get("out"), named.get("out_dir"), *outputs]
          if out and not os.path.exists(os.path.join(tmp, out.format(out=named.get("out"))))]


def test_readme_commands_run(tmp_path):
  tmp = str(tmp_path)
  before = set(os.listdir(ROOT))
  commands = _readme()
  kind = {i: COMMANDS[_key(m, a)][0] for i, (m, a) in enumerate(commands)}
  runs = [(m, a, COMMANDS[_key(m, a)][1:]) for i, (m, a) in enumerate(commands) if kind[i] == RUN]
  # Two at a time (2 cores): what needs no workdir first, beside the training; then the rest,
  # exports (the longest) first. The Python blocks read the exports: last.
  with ThreadPoolExecutor(max_workers=2) as pool:
    jobs = [pool.submit(_parse_checks, [c for i, c in enumerate(commands) if kind[i] == PARSE])]
    jobs += [pool.submit(_run_command, *r, tmp) for r in runs if "--workdir=W" not in r[1]]
    _make_inputs(tmp)
    train = {}
    for i, (_, args) in enumerate(commands):
      if kind[i] == TRAIN:
        for arg in _substitute(args, tmp):
          name, _, text = arg.partition("=")
          assert train.setdefault(name, text) == text, f"TRAIN commands disagree on {name}"
    argv = ["-m", "facekp_jax.main", *(f"{k}={v}" for k, v in train.items())]
    proc = _run(argv)
    assert proc.returncode == 0, f"TRAIN {argv}:\n{proc.stderr[-3000:]}"
    later = sorted((r for r in runs if "--workdir=W" in r[1]), key=lambda r: "export" not in r[0])
    jobs += [pool.submit(_run_command, *r, tmp) for r in later]
    failures = [f for job in jobs for f in job.result()]
  for block in _python_blocks():
    if "onnxruntime" in block and not HAS_ONNX:
      continue  # The [export] extra's block: .ci/run's second environment runs it.
    proc = _run(["-c", block], cwd=tmp, timeout=120)
    if proc.returncode:
      failures.append(f"README Python block: exit {proc.returncode}\n{proc.stderr[-2000:]}")

  ours = {"runs", "faces.json", "model.stablehlo.json", "model.onnx.json",
          *(p.split("/")[0] for p in INPUTS + OUTPUTS)}
  assert (set(os.listdir(ROOT)) - before) & ours == set(), "a command wrote into the repository"
  assert not failures, "\n\n".join(failures)


if __name__ == "__main__":
  sys.exit(pytest.main([__file__, "-q"]))
