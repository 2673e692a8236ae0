"""Scores a trained workdir on any labelled Kaggle-layout file.

  python -m facekp_jax.evaluate --workdir=W --csv=FILE [--checkpoint=best|latest] [--tta]
      [--robustness] [--bad_labels=error|mask|drop] [--split=all|val]

``--tta`` / ``--notta``: test-time augmentation (default: the run's ``config.tta``).
``--split=val``: only the run's held-out validation split of its own training file (``--csv``
that file or a copy). What it prints, warns of (a model no better than the mean shape; the
run's own training file) and writes (``W/eval_<file stem>.json`` and its plots):
``serving.scoring``. Bad input: one line, exit code 2.
"""

from absl import flags

from facekp_jax import cli
from facekp_jax.core import host_memory
from facekp_jax.data import kaggle
from facekp_jax.serving import scoring


def main(argv=None) -> None:
  host_memory.reuse_freed_memory()  # Before JAX starts its CPU client (core/host_memory.py).
  fv = cli.command_flags()
  cli.define_model_flags(fv)
  flags.DEFINE_string("csv", None, "labelled faces: a CSV of the model's layout (Kaggle's "
                      "training.csv layout; .csv/.gz) or a folder of images with .pts files",
                      flag_values=fv)
  flags.mark_flag_as_required("csv", flag_values=fv)
  flags.DEFINE_bool("robustness", False, "also score the faces rotated, scaled and shifted",
                    flag_values=fv)
  flags.DEFINE_enum("bad_labels", "error", kaggle.BAD_LABELS, "a coordinate beyond 48 px outside "
                    "the image: refuse the file (default), mask that value, or drop its row",
                    flag_values=fv)
  flags.DEFINE_enum("split", "all", scoring.SPLITS, "all: every face of the file; val: only "
                    "the run's held-out validation split of its own training file (--csv: that "
                    "file or a copy), split as training split it (the run's data.rows and "
                    "data.bad_labels apply)", flag_values=fv)
  cli.parse(fv, "python -m facekp_jax.evaluate", "Score a trained workdir on a "
            "Kaggle-layout file (masked cells not scored).", argv)
  cli.quiet_libraries()
  cli.before_jax()
  with cli.user_errors():
    problem = scoring.split_problem(fv.workdir, fv.csv, fv.split)
    if problem:
      cli.usage_error(problem)
    scoring.run(fv.workdir, fv.csv, fv.checkpoint, fv.tta, fv.robustness, fv.bad_labels,
                cli.tta_rotations(fv), fv.split)


if __name__ == "__main__":
  cli.run_as_process(main)
