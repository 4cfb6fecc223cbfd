"""Do a quickstart's marked conclusions survive other seeds and perturbed float arithmetic?

    python experiments/quickstart_robustness.py                     # configs/quickstart.py
    python experiments/quickstart_robustness.py --config=configs/seg_quickstart.py \\
        --workdir=runs/seg_robustness

Runs the quickstart three times through ``python -m afd_jax.main``, each in its own
workdir under ``--workdir`` (a finished run is skipped, so a rerun only re-reads):

* ``reference``: as the README runs it (its default seeds);
* ``seeds``: with ``--config.seeds=--seeds`` (another draw of every seeded thing: the
  teacher, the students' inits, their batches and augmentations);
* ``perturbed``: the default seeds under other XLA CPU compile flags (``--xla_flags``:
  other fusion and backend optimisation, so other float rounding from the first step on),
  and (``--single_thread``, default) XLA's Eigen ops on one thread; the script reports how many runs' final scores the
  perturbation changed, so that a perturbation that changed nothing is seen as such.

A row's conclusion is the sign of its difference to the student alone where Welch's
t-test over the seeds marks it (p < 0.05, `afd_jax.analysis.comparison`), else "not
marked". The script prints each variant's table, then per row the three conclusions and
whether they agree, and exits 1 when any row's conclusion changed.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from afd_jax.analysis import comparison  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PERTURB_FLAGS = ("--xla_cpu_use_fusion_emitters=false --xla_backend_optimization_level=0 "
                 "--xla_llvm_disable_expensive_passes=true")


def run_variant(config: str, workdir: str, extra: list[str], env: dict[str, str]) -> dict:
  """``python -m afd_jax.main`` on `config` in `workdir`; its ``results.json``."""
  cmd = [sys.executable, "-m", "afd_jax.main", f"--config={config}", f"--workdir={workdir}",
         *extra]
  print("$", " ".join(cmd), flush=True)
  done = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, **env),
                        stdout=subprocess.DEVNULL, check=False)
  if done.returncode:
    sys.exit(f"error: the run above exited with status {done.returncode} (its own error "
             "line is above it)")
  with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
    return json.load(f)


def conclusions(summary: dict) -> dict[str, tuple[str, str]]:
  """``{row: (conclusion, Δ text)}`` of the first pair: ``'+'``/``'-'`` where marked,
  ``'0'`` where not (the teacher and the student alone are not tested)."""
  out = {}
  for row in summary["pairs"][0]["summary"]:
    if row["method"] in (comparison.TEACHER, comparison.BASELINE) or row["error"]:
      continue
    r = comparison.Row(**row)
    sign = ("+" if r.delta > 0 else "-") if r.significant else "0"
    out[r.method] = (sign, comparison.format_delta(r))
  return out


def _scores(summary: dict) -> dict[str, float]:
  score = "miou" if any("miou" in r for r in summary["runs"].values()) else "top1"
  return {n: r.get(score) for n, r in summary["runs"].items() if "error" not in r}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/quickstart.py")
  parser.add_argument("--workdir", default="runs/quickstart_robustness")
  parser.add_argument("--seeds", default="5,6,7,8,9", help="the other seeds")
  parser.add_argument("--xla_flags", default=PERTURB_FLAGS,
                      help="XLA flags of the perturbed variant")
  parser.add_argument("--single_thread", action=argparse.BooleanOptionalAction,
                      default=True, help="the perturbed variant's Eigen ops on one thread")
  args = parser.parse_args(argv)
  base = os.path.abspath(args.workdir)
  perturbed_env = {"XLA_FLAGS": " ".join(filter(None, (
      os.environ.get("XLA_FLAGS", ""), args.xla_flags,
      "--xla_cpu_multi_thread_eigen=false" if args.single_thread else "")))}
  variants = {
      "reference": run_variant(args.config, os.path.join(base, "reference"), [], {}),
      f"seeds {args.seeds}": run_variant(args.config, os.path.join(base, "seeds"),
                                         [f"--config.seeds=({args.seeds})"], {}),
      "perturbed": run_variant(args.config, os.path.join(base, "perturbed"), [],
                               perturbed_env)}
  for name, summary in variants.items():
    print(f"\n## {name}\n")
    print(comparison.pair_table(summary["dataset"], summary["pairs"][0],
                                score=summary.get("score", "top1")))
  ref, per = _scores(variants["reference"]), _scores(variants["perturbed"])
  changed = sum(ref[n] != per.get(n) for n in ref)
  print(f"\nperturbed arithmetic changed the final score of {changed} of {len(ref)} runs")
  marks = {name: conclusions(s) for name, s in variants.items()}
  names = list(variants)
  print("\n| method | " + " | ".join(names) + " | held |")
  print("|---|" + "---|" * (len(names) + 1))
  held_all = True
  for method in marks["reference"]:
    cells = [marks[n].get(method, ("n/a", "n/a")) for n in names]
    held = len({c[0] for c in cells}) == 1
    held_all &= held
    print(f"| {method} | " + " | ".join(f"{text} ({sign})" for sign, text in cells)
          + f" | {'yes' if held else 'NO'} |")
  print("\n(+/-: marked by Welch's t-test at p < 0.05; 0: not marked)")
  if changed == 0:
    print("warning: the perturbation changed no run's score; it tested nothing")
  return 0 if held_all else 1


if __name__ == "__main__":
  sys.exit(main())
