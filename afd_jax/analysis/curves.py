"""Training curves of one run, from its ``metrics.jsonl``: loss terms, gradient norm,
learning rate and eval top-1 (with the teacher's top-1 as a reference line), one PNG.

Rendering draws on matplotlib's Agg canvas directly (no pyplot, no global backend
switch), as `afd_jax.analysis.heatmap` does, so it works without a display.
"""
from __future__ import annotations

import os
from typing import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np

from afd_jax import metric_writer

# train/<name> scalars that are not loss terms (they get their own panel, or none).
NOT_LOSS_TERMS = ("lr", "grad_norm", "top1", "top5", "images_per_sec", "skipped")
LOSS_TITLE, GRAD_TITLE, LR_TITLE, TOP1_TITLE = (
    "train loss terms", "gradient norm", "learning rate", "eval top-1")
CURVES_FILE = "curves.png"


def _series(rows: Sequence[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
  """(steps, values) of the rows that hold `key`, in row order."""
  pairs = [(r["step"], r[key]) for r in rows if key in r]
  steps, values = zip(*pairs) if pairs else ((), ())
  return np.asarray(steps, np.int64), np.asarray(values, np.float64)


def loss_terms(rows: Sequence[dict]) -> list[str]:
  """The ``train/<term>`` keys of `rows` that are loss terms, in first-seen order."""
  seen: dict[str, None] = {}
  for r in rows:
    for k in r:
      if k.startswith("train/") and k.split("/", 1)[1] not in NOT_LOSS_TERMS:
        seen.setdefault(k)
  return list(seen)


def curves_figure(rows: Sequence[dict], title: str = "") -> Figure:
  """The four-panel figure (attached to an Agg canvas); see `render_curves`."""
  fig = Figure(figsize=(17, 3.6), dpi=100)
  FigureCanvasAgg(fig)
  ax_loss, ax_grad, ax_lr, ax_top1 = fig.subplots(1, 4)
  for key in loss_terms(rows):
    ax_loss.plot(*_series(rows, key), label=key.split("/", 1)[1])
  if ax_loss.lines:
    ax_loss.legend(fontsize=8)
    # Terms differ by orders of magnitude (AFD's beta-weighted term vs CE).
    if all(np.all(line.get_ydata() > 0) for line in ax_loss.lines):
      ax_loss.set_yscale("log")
  ax_loss.set(title=LOSS_TITLE, xlabel="step", ylabel="loss")
  # The global gradient norm is no loss term: on the loss axes it would read as one.
  steps, grad_norm = _series(rows, "train/grad_norm")
  ax_grad.plot(steps, grad_norm, color="tab:green")
  if grad_norm.size and np.all(grad_norm > 0):
    ax_grad.set_yscale("log")
  ax_grad.set(title=GRAD_TITLE, xlabel="step", ylabel="‖∇‖₂")
  ax_lr.plot(*_series(rows, "train/lr"), color="tab:purple")
  ax_lr.set(title=LR_TITLE, xlabel="step", ylabel="lr")
  steps, top1 = _series(rows, "eval/top1")
  ax_top1.plot(steps, top1, marker="o", markersize=3, label="student")
  _, teacher = _series(rows, "teacher/top1")
  if teacher.size:
    ax_top1.axhline(teacher[-1], color="tab:red", linestyle="--",
                    label=f"teacher ({teacher[-1]:.2f})")
  if ax_top1.lines:
    ax_top1.legend(fontsize=8)
  ax_top1.set(title=TOP1_TITLE, xlabel="step", ylabel="top-1 (%)")
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  return fig


def render_curves(rows: Sequence[dict], title: str = "") -> np.ndarray:
  """Renders the curves of `rows` (`metric_writer.read_metrics` rows) to an image.

  Panels, left to right: every ``train/<term>`` loss term (all but `NOT_LOSS_TERMS`), the
  global gradient norm ``train/grad_norm``, the learning rate ``train/lr``, and
  ``eval/top1`` with ``teacher/top1`` as a dashed horizontal line when the run has a
  teacher. Missing keys leave a panel empty.

  Returns:
    (H, W, 3) uint8 RGB image.
  """
  fig = curves_figure(rows, title)
  fig.canvas.draw()
  return np.array(fig.canvas.buffer_rgba())[..., :3]


def plot_run(workdir: str, out_png: str | None = None) -> str:
  """Writes the curves of the run in `workdir` as a PNG.

  Args:
    workdir: a run written by `afd_jax.train.train_and_evaluate`.
    out_png: output path (default ``<workdir>/curves.png``; parents created).

  Returns:
    The PNG's path.

  Raises:
    FileNotFoundError: `workdir` has no (non-empty) ``metrics.jsonl``.
  """
  rows = metric_writer.read_metrics(workdir)
  if not rows:
    path = os.path.join(workdir, metric_writer.METRICS_FILE)
    raise FileNotFoundError(f"no metrics in {path} (is it a run's workdir?)")
  out_png = out_png or os.path.join(workdir, CURVES_FILE)
  os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
  name = os.path.basename(os.path.normpath(workdir))
  curves_figure(rows, title=name).savefig(out_png, format="png")
  return out_png
