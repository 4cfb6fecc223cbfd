"""Which loss term dominates a run: each term's weighted share of the loss, from metrics.jsonl.

    python experiments/loss_terms.py runs/compare_digits            # every run under it
    python experiments/loss_terms.py runs/quickstart/vmapped_<id>   # one run or group

A run logs its loss and its raw (unweighted) terms, averaged over the same steps, so
``loss = Σ w_i · term_i`` on every logged row. The weights are recovered by least squares
over the rows (exact for fixed weights; a method whose weights change during training,
e.g. a warm-up, shows a residual, printed) and each term is shown as ``w·term`` at the
first and last logged row, with its share of the loss (weights a method logs itself,
``train/w_<term>``, are used as logged). A vmapped group's members are
averaged (``train/<term>`` is their mean). Init phases (``init_phase/``) are runs too.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

NOT_TERMS = {"loss", "grad_norm", "lr", "top1", "images_per_sec"}


def terms_of(path: str) -> dict | None:
  """``{'terms': [...], 'weights': [...], 'residual': r, 'first'/'last': (step, [w·t])}``
  of the run whose ``metrics.jsonl`` is in `path`, or None without loss terms."""
  with open(os.path.join(path, "metrics.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f if line.strip()]
  rows = [r for r in rows if "train/loss" in r]
  if not rows:
    return None
  logged = {k[len("train/"):] for k in rows[0] if k.startswith("train/")} - NOT_TERMS
  # A method with adaptive weights (AFT-KD) logs them as ``w_<term>``: its term enters as
  # w·term with a fitted constant factor; a term's parts (``<term>_att``) are left out.
  adaptive = {n for n in logged if f"w_{n}" in logged}
  names = sorted(n for n in logged if not n.startswith("w_")
                 and not any(n.startswith(f"{t}_") for t in adaptive))
  if not names:
    return None

  def column(r, n):
    return r[f"train/{n}"] * (r[f"train/w_{n}"] if n in adaptive else 1.0)

  a = np.array([[column(r, n) for n in names] for r in rows], np.float64)
  y = np.array([r["train/loss"] for r in rows], np.float64)
  w, *_ = np.linalg.lstsq(a, y, rcond=None)
  residual = float(np.abs(a @ w - y).max() / max(np.abs(y).max(), 1e-12))
  weights = [f"{x:.3g}" + (f"·w_{n} (logged)" if n in adaptive else "")
             for n, x in zip(names, w)]
  return {"terms": names, "weights": weights, "residual": residual,
          "first": (rows[0]["step"], (a[0] * w).tolist(), y[0]),
          "last": (rows[-1]["step"], (a[-1] * w).tolist(), y[-1])}


def _describe(name: str, info: dict) -> str:
  out = [f"{name}: weights " + ", ".join(f"{t} {w}" for t, w in
                                          zip(info["terms"], info["weights"]))
         + (f" (fit residual {info['residual']:.1%}: weights change during training)"
            if info["residual"] > 1e-3 else "")]
  for label in ("first", "last"):
    step, parts, loss = info[label]
    out.append(f"  step {step:>5}: loss {loss:.4g} = " + " + ".join(
        f"{t} {p:.4g} ({p / loss:.0%})" if loss else f"{t} {p:.4g}"
        for t, p in zip(info["terms"], parts)))
  return "\n".join(out)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("workdir", help="a run, a group or a plan's workdir")
  args = parser.parse_args(argv)
  if not os.path.isdir(args.workdir):
    sys.exit(f"error: {args.workdir!r} is not a directory; accepted: a run's or plan's "
             "workdir")
  found = 0
  for root, _, files in sorted(os.walk(args.workdir)):
    if "metrics.jsonl" in files and "tensorboard" not in root:
      info = terms_of(root)
      if info is not None:
        found += 1
        config = os.path.join(root, "config.json")
        label = os.path.relpath(root, args.workdir)
        if os.path.exists(config):
          with open(config, encoding="utf-8") as f:
            label += f" [{json.load(f)['method']['name']}]"
        print(_describe(label, info))
  if not found:
    sys.exit(f"error: no metrics.jsonl with loss terms under {args.workdir!r}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
