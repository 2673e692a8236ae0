"""Exports a trained workdir's model to run without this package: StableHLO or ONNX.

  python -m facekp_jax.export --workdir=W --format=stablehlo --out=model.stablehlo
  python -m facekp_jax.export --workdir=W --format=onnx --out=model.onnx   # the [export] extra

Common flags: ``--checkpoint=best|latest`` (default best by validation RMSE, as evaluate),
``--tta/--notta`` (bake test-time augmentation in; default: the run's ``config.tta``) and
``--input_dtype=uint8|float32``. The artefact and its ``.json``: ``serving.export``. It is
reloaded and run on a few built-in faces before the command ends, which prints the largest
difference from the JAX model.
"""

import os

from absl import flags

from facekp_jax import cli
from facekp_jax.core import host_memory
from facekp_jax.serving import export, predictor


def main(argv=None) -> None:
  host_memory.reuse_freed_memory()  # Before JAX starts its CPU client (core/host_memory.py).
  fv = cli.command_flags()
  cli.define_model_flags(fv)
  flags.DEFINE_enum("format", None, export.FORMATS, "the artefact's format", flag_values=fv)
  flags.mark_flag_as_required("format", flag_values=fv)
  flags.DEFINE_string("out", None, "the artefact's path", flag_values=fv)
  flags.mark_flag_as_required("out", flag_values=fv)
  flags.DEFINE_enum("input_dtype", "uint8", export.INPUT_DTYPES,
                    "uint8 0..255 (default) or float32 in [0, 1]", flag_values=fv)
  cli.parse(fv, "python -m facekp_jax.export", "Export a trained workdir's model: "
            "StableHLO (jax.export) or ONNX.", argv)
  cli.quiet_libraries()
  cli.before_jax()
  if not os.path.isdir(os.path.dirname(os.path.abspath(fv.out))):
    cli.usage_error(f"--out {fv.out}: its folder does not exist")
  with cli.user_errors():
    model = predictor.load(fv.workdir, fv.checkpoint)
    tta = cli.tta(fv, model)
    difference = export.export(model, fv.format, fv.out, tta, fv.input_dtype)
  print(f"{model.describe(tta)}\nwrote {fv.out} ({os.path.getsize(fv.out) / 1e6:.1f} MB, "
        f"{fv.format}, input (N, 96, 96) {fv.input_dtype}) and {fv.out}.json\n"
        f"reloaded and run: largest difference from the JAX model {difference:.2g} px")


if __name__ == "__main__":
  cli.run_as_process(main)
