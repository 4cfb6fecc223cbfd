"""A plan's results: one line per run, and the table of all of them (`afd_jax.plan`).

The table (`afd_jax.analysis.comparison`: mean ± std over seeds, Δ vs the student alone,
the published number, the bar chart) is written by the chief process to
``<workdir>/results.{md,json,png}``.
"""
from __future__ import annotations

import json
import os
from typing import Any

from afd_jax import parallel, tasks
from afd_jax.analysis import comparison

RESULTS = "results"  # <workdir>/results.{md,json,png}


def format_result(name: str, result: dict) -> str:
  """One line summarising a single run's result."""
  if "error" in result:
    return f"{name}: n/a ({result['error'].splitlines()[0]})"
  score = result_metric(result)
  parts = [f"{name}: {score} {result.get(score, float('nan')):.2f}",
           f"best {result.get(f'best_{score}', float('nan')):.2f}"]
  if f"teacher_{score}" in result:
    parts.append(f"teacher {result[f'teacher_{score}']:.2f}")
  parts.append(f"{result.get('step', 0)} steps, {result.get('train_seconds', 0):.0f} s")
  return ", ".join(parts)


def result_metric(result: dict) -> str:
  """The score of a finished run's task, read off its result (`tasks.of_result`)."""
  return tasks.of_result(result).score


def collect(plan, results: dict[str, dict]) -> dict[str, Any]:
  """`results` (``{run name: result}``) of the `plan.Plan` `plan` in `comparison`'s
  format: per pair, per row, the runs' seeds."""
  pairs: dict[tuple[str, str], dict] = {}
  tabulated = [results[r.name] for r in plan.runs if r.pairs and r.name in results]
  score = next((result_metric(r) for r in tabulated if "error" not in r), "top1")
  for run in plan.runs:
    result = results.get(run.name)
    if result is None:
      continue
    for pair in run.pairs:
      rows = pairs.setdefault(pair, {})
      model = run.config.model.name
      rec = rows.setdefault(run.row, {"model": model, "method": run.config.method.name,
                                      "score": score, "seeds": [], "top1": [],
                                      "best_top1": [], "train_seconds": []})
      if "error" in result:
        rows[run.row] = {"model": model, "method": run.config.method.name,
                         "error": result["error"]}
        continue
      if "error" in rec:
        continue
      rec["seeds"].append(run.config.seed)
      rec["top1"].append(result.get(score))
      rec["best_top1"].append(result.get(f"best_{score}"))
      rec["train_seconds"].append(result.get("train_seconds"))
  return {"dataset": plan.dataset, "score": score,
          "pairs": [{"teacher": t, "student": s, "runs": rows}
                    for (t, s), rows in pairs.items()]}


def write_table(plan, results: dict[str, dict], workdir: str) -> str:
  """``results.md`` / ``.json`` / ``.png`` in `workdir` (chief only); returns the
  Markdown."""
  collected = collect(plan, results)
  table = comparison.markdown(collected, plan.paper)
  if parallel.is_chief():
    os.makedirs(workdir, exist_ok=True)
    paths = {ext: os.path.join(workdir, f"{RESULTS}.{ext}") for ext in ("md", "json", "png")}
    with open(paths["md"], "w", encoding="utf-8") as f:
      f.write(table)
    summary = comparison.summary_json(collected, plan.paper)
    summary["runs"] = results
    with open(paths["json"], "w", encoding="utf-8") as f:
      json.dump(summary, f, indent=2, default=float)
    comparison.save_png(collected, paths["png"], plan.paper)
  return table
