"""Writes built-in synthetic faces as a Kaggle training.csv-layout file.

  python -m facekp_jax.synthesize --out faces.csv --n 2140 [--seed 0] [--missing]

(This command was ``python -m facekp_jax.synthetic`` before the package was layered.)
"""

from absl import flags

from facekp_jax import cli
from facekp_jax.data import synthetic


def main(argv=None) -> None:
  fv = cli.command_flags()
  flags.DEFINE_string("out", None, "output path, .csv or .csv.gz", flag_values=fv)
  flags.DEFINE_integer("n", None, "number of faces", lower_bound=1, flag_values=fv)
  flags.DEFINE_integer("seed", 0, "generator seed", lower_bound=0, flag_values=fv)
  flags.DEFINE_bool("missing", False, "Kaggle's missing-label patterns", flag_values=fv)
  flags.mark_flags_as_required(["out", "n"], flag_values=fv)
  cli.parse(fv, "python -m facekp_jax.synthesize",
            "Write built-in synthetic faces as a Kaggle CSV.", argv)
  with cli.user_errors():
    synthetic.write_csv(fv.out, fv.n, seed=fv.seed, missing=fv.missing)
  labels = "Kaggle-pattern missing labels" if fv.missing else "all 30 labels"
  print(f"wrote {fv.n} synthetic faces (seed {fv.seed}, {labels}) to {fv.out}")


if __name__ == "__main__":
  main()
