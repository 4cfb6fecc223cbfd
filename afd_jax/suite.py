"""Experiment suites: several runs (a teacher, then students) from one config, one table.

A suite config has
* ``runs``: ``{run name: full train config}``, trained in ``run_order`` under
  ``<workdir>/<run name>`` (``.../seed<k>`` when several seeds). A run's
  ``teacher.checkpoint`` may contain ``{workdir}``, replaced by the suite's workdir, so a
  student can name a teacher trained earlier in the same suite;
* ``run_order``: the names in training order;
* ``seeds``: seeds for every run except those in ``single_seed_runs`` (e.g. the teacher,
  trained once and shared by all students).

Each run resumes like any other, so a rerun of a finished suite only re-prints the table.
"""
from __future__ import annotations

import json
import os

import ml_collections
import numpy as np

from afd_jax import train


def score_name(result: dict) -> str:
  """The score a run's result reports: ``'miou'`` (segmentation) or ``'top1'``."""
  return "miou" if "miou" in result else "top1"


def format_result(name: str, result: dict) -> str:
  """One line summarising a single run's result."""
  score = score_name(result)
  parts = [f"{name}: {score} {result.get(score, float('nan')):.2f}",
           f"best {result.get(f'best_{score}', float('nan')):.2f}"]
  if f"teacher_{score}" in result:
    parts.append(f"teacher {result[f'teacher_{score}']:.2f}")
  parts.append(f"{result.get('step', 0)} steps, {result.get('train_seconds', 0):.0f} s")
  return ", ".join(parts)


def _run_config(suite: ml_collections.ConfigDict, name: str, seed: int, workdir: str):
  config = ml_collections.ConfigDict(suite.runs[name].to_dict())
  config.seed = seed
  if config.teacher.checkpoint:
    config.teacher.checkpoint = config.teacher.checkpoint.replace("{workdir}", workdir)
  return config


def run_suite(suite: ml_collections.ConfigDict, workdir: str,
              allow_config_change: bool = False) -> dict[str, dict]:
  """Trains every run of `suite` under `workdir` and prints the results table.

  Returns:
    ``{run name: {'top1': [per seed], 'best_top1': [...], 'teacher_top1': ..., ...}}``.
  """
  workdir = os.path.abspath(os.path.expanduser(workdir))
  order = list(suite.run_order)
  unknown = [n for n in order if n not in suite.runs]
  if unknown:
    raise ValueError(f"suite run_order names {unknown}, not in runs: {list(suite.runs)}")
  results: dict[str, dict] = {}
  for name in order:
    seeds = [0] if name in suite.get("single_seed_runs", ()) else list(suite.seeds)
    per_seed = []
    for seed in seeds:
      run_dir = os.path.join(workdir, name, f"seed{seed}") if len(seeds) > 1 else \
          os.path.join(workdir, name)
      config = _run_config(suite, name, seed, workdir)
      print(f"=== {name} (seed {seed}) -> {run_dir}", flush=True)
      result = train.train_and_evaluate(config, run_dir, allow_config_change)
      print(format_result(name, result), flush=True)
      per_seed.append(result)
    config, score = suite.runs[name], score_name(per_seed[0])
    results[name] = {
        "model": config.model.name, "method": config.method.name,
        "teacher": config.teacher.name if config.method.name != "none" else "",
        "seeds": seeds, "score": score,
        score: [r[score] for r in per_seed],
        f"best_{score}": [r[f"best_{score}"] for r in per_seed],
        "train_seconds": [r["train_seconds"] for r in per_seed]}
  table = results_table(results)
  print(table, flush=True)
  with open(os.path.join(workdir, "results.json"), "w", encoding="utf-8") as f:
    json.dump(results, f, indent=2)
  with open(os.path.join(workdir, "results.md"), "w", encoding="utf-8") as f:
    f.write(table + "\n")
  return results


def _mean_std(values) -> str:
  if len(values) == 1:
    return f"{values[0]:.2f}"
  return f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}"


def results_table(results: dict[str, dict]) -> str:
  """Markdown table: run, student, method, teacher, final and best score (test top-1,
  or mIoU for segmentation)."""
  score = next((r.get("score", "top1") for r in results.values()), "top1")
  label = {"top1": "top-1", "miou": "mIoU"}[score]
  lines = [f"| run | model | method | teacher | test {label} (%) | best {label} (%) | seeds |",
           "|---|---|---|---|---|---|---|"]
  for name, r in results.items():
    lines.append(f"| {name} | {r['model']} | {r['method']} | {r['teacher'] or '-'} | "
                 f"{_mean_std(r[score])} | {_mean_std(r[f'best_{score}'])} | "
                 f"{len(r['seeds'])} |")
  return "\n".join(lines)
