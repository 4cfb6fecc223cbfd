"""A method comparison as a table and a bar chart: pure functions of collected results.

`afd_jax.plan` trains a plan's runs (methods × teacher→student pairs × seeds × sweeps) and
collects

    {"dataset": "cifar100",
     "pairs": [{"teacher": "wrn_40_2", "student": "wrn_16_2",
                "runs": {"teacher": RUN, "none": RUN, "kd": RUN, ...}}]}

in run order, where a RUN is ``{"model": name, "seeds": [k...], "top1": [per seed],
"best_top1": [per seed or None], "train_seconds": [...]}`` or, for a method that could
not run the pair, ``{"model": name, "error": reason}``. ``"teacher"`` is the teacher
(one seed), ``"none"`` the student trained alone.

The published number beside each row comes from ``paper(dataset, method, model,
teacher)`` -> ``(top-1, source)`` or None, the signature of
``configs.pairs.expected_top1`` (``method='none'`` asks for a model trained alone); a
plan's is `published_lookup` over its config's ``published`` entries (configs/compare.py
copies them from configs/pairs.py).
Rendering draws on matplotlib's Agg canvas directly (no pyplot), as `curves` does.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np
from scipy import stats

from afd_jax import tasks

TEACHER, BASELINE = "teacher", "none"
DASH = "–"
# ``paper(dataset, method, model, teacher) -> (top-1, source) | None``.
PaperLookup = Callable[[str, str, str, str | None], tuple[float, str] | None]
REASON_CHARS = 120  # a failed row's reason in the table; the JSON keeps all of it
# A row's difference to the student alone is marked when Welch's t-test gives p below this.
SIGNIFICANCE = 0.05
MARK = "*"


@dataclasses.dataclass(frozen=True)
class Row:
  """One line of a pair's table.

  Attributes:
    method: ``'teacher'``, ``'none'`` (the student alone) or a method name.
    model: the network trained in this row.
    n: number of seeds with a result (0 for a failed row).
    top1, top1_std: mean and sample std (ddof 1; 0 for one seed) of the final top-1.
    best, best_std: the same for the best top-1 over evaluations (None if unknown).
    paper: (published top-1, source) or None.
    error: why the method could not run the pair, or None.
    delta, delta_se, p_value: the mean top-1 minus the student alone's, its standard
      error and Welch's two-sided p (None where a side has fewer than two seeds; the
      teacher's row has only `delta`).
  """
  method: str
  model: str
  n: int
  top1: float | None = None
  top1_std: float | None = None
  best: float | None = None
  best_std: float | None = None
  paper: tuple[float, str] | None = None
  error: str | None = None
  delta: float | None = None
  delta_se: float | None = None
  p_value: float | None = None

  @property
  def significant(self) -> bool:
    """Its difference to the student alone passes Welch's t-test at `SIGNIFICANCE`."""
    return self.p_value is not None and self.p_value < SIGNIFICANCE


def mean_std(values: Sequence[float]) -> tuple[float, float]:
  """(mean, sample standard deviation with ddof 1; 0 for a single value)."""
  values = np.asarray(values, np.float64)
  return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else 0.0


def welch(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float]:
  """Welch's unequal-variance t-test of mean(a) - mean(b), two-sided.

  Returns:
    (difference of the means, its standard error sqrt(s_a²/n_a + s_b²/n_b), p). With
    both variances zero the test is degenerate: p is 0 for a nonzero difference, else 1.

  Raises:
    ValueError: a side with fewer than two values (no variance to test against).
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.size < 2 or b.size < 2:
    raise ValueError(f"Welch's t-test needs two or more values per side; got {a.size} "
                     f"and {b.size}")
  va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
  diff, se = float(a.mean() - b.mean()), float(np.sqrt(va + vb))
  if se == 0.0:
    return diff, 0.0, 0.0 if diff != 0.0 else 1.0
  dof = (va + vb) ** 2 / (va ** 2 / (a.size - 1) + vb ** 2 / (b.size - 1))
  return diff, se, float(2 * stats.t.sf(abs(diff) / se, dof))


def published_lookup(entries) -> PaperLookup | None:
  """A `PaperLookup` over a suite config's ``published`` entries ``(method, model,
  teacher, top-1, source)`` (teacher ``''`` for a model trained alone, method ``'none'``),
  whatever the dataset; None without entries."""
  table = {(m, model, t): (float(v), source) for m, model, t, v, source in entries}
  if not table:
    return None
  return lambda dataset, method, model, teacher: table.get((method, model, teacher or ""))


def summarize(dataset: str, pair: dict[str, Any],
              paper: PaperLookup | None = None) -> list[Row]:
  """The rows of one pair (see the module docstring for `pair`), in run order."""
  rows = []
  alone = pair["runs"].get(BASELINE, {})
  base = None if alone.get("error") or not alone.get("top1") else alone["top1"]
  for method, run in pair["runs"].items():
    published = None
    if paper is not None:
      if method == TEACHER:
        published = paper(dataset, BASELINE, run["model"], None)
      elif method == run.get("method", method):  # (a swept row has no published number)
        published = paper(dataset, method, run["model"], pair["teacher"] or None)
    if run.get("error"):
      rows.append(Row(method, run["model"], 0, paper=published, error=run["error"]))
      continue
    top1, top1_std = mean_std(run["top1"])
    best = [b for b in run.get("best_top1", ()) if b is not None]
    best, best_std = mean_std(best) if best else (None, None)
    delta = se = p = None
    if base is not None and method != BASELINE:
      if len(run["top1"]) > 1 and len(base) > 1:
        delta, se, p = welch(run["top1"], base)
      else:
        delta = top1 - float(np.mean(base))
    rows.append(Row(method, run["model"], len(run["top1"]), top1, top1_std, best,
                    best_std, published, delta=delta, delta_se=se, p_value=p))
  return rows


def format_mean_std(mean: float | None, std: float | None, n: int) -> str:
  """``'74.92 ± 0.31'``; one seed: ``'74.92'``; no value: ``'–'``."""
  if mean is None:
    return DASH
  return f"{mean:.2f}" if n <= 1 else f"{mean:.2f} ± {std:.2f}"


def _reason(error: str) -> str:
  """The first line of `error`, shortened, safe inside a Markdown table cell."""
  text = error.strip().splitlines()[0] if error.strip() else "failed"
  if len(text) > REASON_CHARS:
    text = text[:REASON_CHARS - 1].rstrip() + "…"
  return text.replace("|", "\\|")


def format_delta(row: Row) -> str:
  """``'+2.40 ± 0.81 *'`` (± the standard error; * where Welch's p < `SIGNIFICANCE`),
  ``'+4.44'`` without seeds to test, ``'–'`` without a baseline."""
  if row.delta is None:
    return DASH
  if row.delta_se is None:
    return f"{row.delta:+.2f}"
  return f"{row.delta:+.2f} ± {row.delta_se:.2f}" + (f" {MARK}" if row.significant else "")


def _label(method: str) -> str:
  return {TEACHER: "teacher", BASELINE: "none (student alone)"}.get(method, method)


def pair_table(dataset: str, pair: dict[str, Any], paper: PaperLookup | None = None,
               score: str = "top1") -> str:
  """One pair's Markdown table: method, model, score and best score (mean ± std over
  seeds), the change of the mean score against the student alone (± its standard error,
  marked where Welch's t-test finds it, `format_delta`), seeds, paper number.
  `score`: ``'top1'`` or ``'miou'`` (the runs' values are under ``top1``/``best_top1``
  either way)."""
  rows = summarize(dataset, pair, paper)
  name = tasks.of_score(score).score_label
  lines = [f"| method | model | {name} (%) | best {name} (%) | Δ vs none | seeds | "
           f"paper {name} (%) |", "|---|---|---|---|---|---|---|"]
  for r in rows:
    published = DASH if r.paper is None else f"{r.paper[0]:.2f} ({r.paper[1]})"
    if r.error is not None:
      cells = [f"n/a ({_reason(r.error)})", DASH, DASH, "0"]
    else:
      cells = [format_mean_std(r.top1, r.top1_std, r.n),
               format_mean_std(r.best, r.best_std, r.n), format_delta(r), str(r.n)]
    lines.append(f"| {_label(r.method)} | {r.model} | " + " | ".join(cells) +
                 f" | {published} |")
  return "\n".join(lines)


def markdown(results: dict[str, Any], paper: PaperLookup | None = None) -> str:
  """The whole comparison: one section and table per pair (see `pair_table`)."""
  dataset, score = results["dataset"], results.get("score", "top1")
  label = tasks.of_score(score).score_label
  parts = [f"## Comparison on {dataset}", "",
           f"{label}: the final evaluation of each run; best: the best "
           "evaluation during training; mean ± std (ddof 1) over seeds. Δ vs none: the "
           "mean's difference to the student alone ± its standard error; "
           f"{MARK} where Welch's two-sided t-test over the seeds gives p < "
           f"{SIGNIFICANCE:g} (a difference larger than the seeds' spread; none is "
           "tested with fewer than two seeds a side). Paper: the published number "
           "(configs/pairs.py), – where none."]
  for pair in results["pairs"]:
    parts += ["", f"### {pair_title(pair)}", "", pair_table(dataset, pair, paper, score)]
  return "\n".join(parts) + "\n"


def summary_json(results: dict[str, Any], paper: PaperLookup | None = None
                 ) -> dict[str, Any]:
  """`results` with each pair's `summarize` rows added (``'summary'``), JSON-ready."""
  out = {"dataset": results["dataset"], "pairs": []}
  for pair in results["pairs"]:
    rows = [dataclasses.asdict(r) for r in summarize(results["dataset"], pair, paper)]
    out["pairs"].append(dict(pair, summary=rows))
  return out


def pair_title(pair: dict[str, Any]) -> str:
  """``'wrn_40_2 → wrn_16_2'``; a section without a teacher (or student): the one model."""
  return " → ".join(filter(None, (pair["teacher"], pair["student"])))


def _colour(method: str) -> str:
  return {TEACHER: "tab:gray", BASELINE: "tab:orange"}.get(method, "tab:blue")


def comparison_figure(results: dict[str, Any], paper: PaperLookup | None = None) -> Figure:
  """One bar panel per pair (attached to an Agg canvas).

  Each row with a result is a bar at its mean top-1 with a ±std error bar (0 for one
  seed); a published number is a black diamond (label ``'paper'``); a failed row has no
  bar, only ``'n/a'`` written at its place. The y axis spans the values, not 0-100, so
  that differences of a point stay visible.
  """
  pairs = results["pairs"]
  label = tasks.of_score(results.get("score", "top1")).score_label
  widths = [max(3.0, 0.75 * len(p["runs"]) + 1.0) for p in pairs] or [3.0]
  fig = Figure(figsize=(sum(widths), 4.2), dpi=100)
  FigureCanvasAgg(fig)
  axes = fig.subplots(1, max(1, len(pairs)), squeeze=False,
                      gridspec_kw={"width_ratios": widths})[0]
  for ax, pair in zip(axes, pairs):
    rows = summarize(results["dataset"], pair, paper)
    x = np.arange(len(rows))
    done = [i for i, r in enumerate(rows) if r.error is None]
    means = np.array([rows[i].top1 for i in done])
    stds = np.array([rows[i].top1_std for i in done])
    ax.bar(x[done], means, width=0.7, color=[_colour(rows[i].method) for i in done],
           yerr=stds, capsize=4, error_kw={"elinewidth": 1.2})
    marked = [(i, r.paper[0]) for i, r in enumerate(rows) if r.paper is not None]
    if marked:
      mx, my = zip(*marked)
      ax.plot(mx, my, linestyle="none", marker="D", color="black", markersize=6,
              label="paper")
    values = list(means + stds) + list(means - stds) + [v for _, v in marked]
    lo, hi = (min(values), max(values)) if values else (0.0, 100.0)
    pad = max(1.0, 0.15 * (hi - lo))
    bottom = max(0.0, lo - 2 * pad)
    ax.set_ylim(bottom, min(100.0, hi + pad) if hi + pad > bottom else bottom + 1)
    for i, mean, std in zip(done, means, stds):
      ax.annotate(f"{mean:.1f}", (i, mean + std), xytext=(0, 2),
                  textcoords="offset points", ha="center", va="bottom", fontsize=7)
    for i, r in enumerate(rows):
      if r.error is not None:
        ax.text(i, 0.5, "n/a", transform=ax.get_xaxis_transform(), ha="center",
                va="center", fontsize=9, color="tab:red")
    ax.set_xticks(x, labels=[r.method for r in rows], rotation=45, ha="right")
    ax.set(title=pair_title(pair),
           ylabel=f"{label} (%)")
    if marked:
      ax.legend(fontsize=7, loc="best")
  fig.suptitle(f"{results['dataset']}: mean {label} over seeds", fontsize=10)
  fig.tight_layout()
  return fig


def save_png(results: dict[str, Any], path: str, paper: PaperLookup | None = None) -> str:
  """Writes `comparison_figure` as a PNG at `path` (parents created); returns `path`."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  comparison_figure(results, paper).savefig(path, format="png")
  return path
