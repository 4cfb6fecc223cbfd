"""AFD's link analysis: a heatmap of the mean attention, teacher layers × student layers.

The paper's qualitative figure: rows are teacher features, columns student features, and a
cell's colour is the attention ``att[b, t, s]`` averaged over a set of images, i.e. how
strongly teacher feature t is distilled into student feature s (each row sums to 1).
Rendering draws on matplotlib's Agg canvas directly (no pyplot, no global backend
switch), so it works without a display.
"""
from __future__ import annotations

import os
from typing import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np


def _links_figure(att_mean: np.ndarray, teacher_names: Sequence[str],
                  student_names: Sequence[str], title: str) -> Figure:
  """The heatmap figure (attached to an Agg canvas); see `render_links` for arguments."""
  att_mean = np.asarray(att_mean, np.float32)
  nt, ns = len(teacher_names), len(student_names)
  if att_mean.shape != (nt, ns):
    raise ValueError(f"att_mean has shape {att_mean.shape}, expected "
                     f"(len(teacher_names), len(student_names)) = ({nt}, {ns})")
  # Grow with the number of layers so that every tick label stays legible.
  fig = Figure(figsize=(2.8 + 0.32 * ns, 1.9 + 0.26 * nt), dpi=100)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  image = ax.imshow(att_mean, cmap="viridis", vmin=0.0, aspect="auto",
                    interpolation="nearest")
  font = 7 if max(nt, ns) > 12 else 8
  ax.set_xticks(np.arange(ns), labels=list(student_names), rotation=90, fontsize=font)
  ax.set_yticks(np.arange(nt), labels=list(teacher_names), fontsize=font)
  ax.set_xlabel("student feature")
  ax.set_ylabel("teacher feature")
  ax.set_title(title, fontsize=9)
  fig.colorbar(image, ax=ax, label="mean attention")
  fig.tight_layout()
  return fig


def render_links(att_mean: np.ndarray, teacher_names: Sequence[str],
                 student_names: Sequence[str], title: str = "") -> np.ndarray:
  """Renders the link heatmap to an image.

  Args:
    att_mean: (nt, ns) attention averaged over images (e.g. ``att.mean(0)`` of AFD's sown
      ``attention`` (B, nt, ns)).
    teacher_names: nt row labels, e.g. ``'stage1.block2'``.
    student_names: ns column labels.
    title: figure title.

  Returns:
    (H, W, 3) uint8 RGB image.

  Raises:
    ValueError: `att_mean`'s shape does not match the name lists.
  """
  fig = _links_figure(att_mean, teacher_names, student_names, title)
  fig.canvas.draw()
  return np.array(fig.canvas.buffer_rgba())[..., :3]


def save_links_png(path: str, att_mean: np.ndarray, teacher_names: Sequence[str],
                   student_names: Sequence[str], title: str = "") -> str:
  """Writes the heatmap of `render_links` to the PNG file `path` (parents created).

  Returns:
    `path`.
  """
  fig = _links_figure(att_mean, teacher_names, student_names, title)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, format="png")
  return path
