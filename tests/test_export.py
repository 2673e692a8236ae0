"""Exported models (StableHLO, ONNX) run outside the package and equal the JAX model."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from facekp_jax import export as export_command
from facekp_jax.core import keypoints
from facekp_jax.data import synthetic
from facekp_jax.serving import export, predictor
from tests.conftest import HAS_ONNX

needs_onnx = pytest.mark.skipif(not HAS_ONNX, reason="ONNX export needs the [export] extra")


@pytest.fixture(scope="module")
def model(tiny_workdir):
  return predictor.load(tiny_workdir)


@pytest.fixture(scope="module")
def faces_u8():
  return synthetic.generate(9, seed=3)[0]


def _run(fmt, path, x):
  """Runs an artefact as a user would: jax.export or onnxruntime, nothing of facekp_jax."""
  if fmt == "stablehlo":
    with open(path, "rb") as f:
      return np.asarray(jax.export.deserialize(bytearray(f.read())).call(x))
  import onnxruntime  # noqa: PLC0415  # The [export] extra.
  session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
  return session.run(["keypoints"], {"faces": x})[0]


@pytest.mark.parametrize("fmt, tta, rotations, input_dtype", [
    ("stablehlo", False, (), "uint8"), ("stablehlo", True, (), "float32"),
    pytest.param("onnx", True, (10.0,), "uint8", marks=needs_onnx),
    pytest.param("onnx", False, (), "float32", marks=needs_onnx)])
def test_artefact_equals_the_jax_model(model, faces_u8, tmp_path, fmt, tta, rotations,
                                       input_dtype):
  out = tmp_path / f"model.{fmt}"
  images = (faces_u8 / np.float32(255))[..., None].astype(np.float32)
  model.config.tta_rotations = ()  # Whichever test of this module's model ran before.
  flips_only = model.predict(images, tta=tta)
  model.config.tta_rotations = rotations  # The turned views are baked in too.
  try:
    reported = export.export(model, fmt, str(out), tta=tta, input_dtype=input_dtype)
    expected = model.predict(images, tta=tta)
  finally:
    model.config.tta_rotations = ()
  if rotations:  # They change the function, so the comparison below bites.
    assert np.abs(expected - flips_only).max() > 1e-3
  x = faces_u8 if input_dtype == "uint8" else (faces_u8 / np.float32(255)).astype(np.float32)
  for n in (9, 1):  # Any batch size.
    got = _run(fmt, out, x[:n])
    assert got.shape == (n, keypoints.KAGGLE.num_coords) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected[:n], atol=1e-4, rtol=0)
  assert reported < 1e-4
  meta = json.loads((tmp_path / f"model.{fmt}.json").read_text())
  assert meta["input"]["dtype"] == input_dtype and meta["input"]["shape"] == ["N", 96, 96]
  assert meta["output"]["columns"] == list(keypoints.KAGGLE.columns) and meta["tta"] is tta
  assert meta["tta_rotations"] == list(rotations)
  if tta:  # Baked in: the mirror's prediction differs, so the two functions are not the same.
    assert np.abs(expected - model.predict(
        (faces_u8 / np.float32(255))[..., None].astype(np.float32))).max() > 1e-3


def test_command_writes_the_artefact_and_refuses_bad_input(tiny_workdir, tmp_path, capsys):
  out = tmp_path / "m.stablehlo"
  export_command.main([f"--workdir={tiny_workdir}", "--format=stablehlo", f"--out={out}"])
  printed = capsys.readouterr().out
  assert f"wrote {out}" in printed and "largest difference from the JAX model" in printed
  assert out.stat().st_size > 0 and (tmp_path / "m.stablehlo.json").exists()
  for argv, message in [
      ([f"--workdir={tmp_path}", "--format=stablehlo", f"--out={out}"],
       f"error: workdir {tmp_path}: its config.json is missing: give the workdir of a training"),
      ([f"--workdir={tiny_workdir}", "--format=stablehlo", f"--out={tmp_path}/no/m"],
       "error: bad flag: --out"),
      ([f"--workdir={tiny_workdir}", "--format=tflite", f"--out={out}"],
       "error: bad flag: --format=tflite: value should be one of")]:
    with pytest.raises(SystemExit) as e:
      export_command.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and err.startswith(message), err


def test_artefact_has_the_weights_predict_uses(model, faces_u8, tmp_path):
  """A run with a parameter moving average predicts with it; so does its artefact."""
  ema = jax.tree.map(lambda p: p * 1.05, model.variables["params"])
  averaged = dataclasses.replace(model, variables={**model.variables, "params": ema})
  out = tmp_path / "model.stablehlo"
  export.export(averaged, "stablehlo", str(out))
  images = (faces_u8 / np.float32(255))[..., None].astype(np.float32)
  expected = averaged.predict(images)
  assert np.abs(expected - model.predict(images)).max() > 1e-2
  np.testing.assert_allclose(_run("stablehlo", out, faces_u8), expected, atol=1e-4, rtol=0)


@pytest.mark.skipif(HAS_ONNX, reason="the [export] extra is installed")
def test_onnx_without_the_extra_says_how_to_get_it(model, tmp_path):
  out = tmp_path / "model.onnx"
  with pytest.raises(export.ExportError, match=r"pip install 'facekp_jax\[export\]'"):
    export.export(model, "onnx", str(out))
  assert not out.exists() and not (tmp_path / "model.onnx.json").exists()
