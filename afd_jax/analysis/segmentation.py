"""Segmentation pictures: validation images with ground truth, teacher and student
predictions in the Pascal VOC palette, as one PNG grid written at evaluation time.

Rows are images (the first ones of the eval split); columns are the image, the ground
truth, the teacher's prediction (when the run has a teacher) and the student's. Ignored
pixels (label 255) are drawn in the VOC boundary colour (224, 224, 192), as in the VOC
annotations. The grid is assembled as a uint8 array (no plotting library), so that a test
can read every pixel back.
"""
from __future__ import annotations

import os

import jax
import numpy as np

from afd_jax.analysis import AnalysisContext

PREDICTIONS_PNG = "predictions.png"
IGNORE_COLOUR = (224, 224, 192)
# The smallest panel side of predictions.png, in pixels.
MIN_PANEL = 160
MAX_ROWS = 4
_GAP = 2  # white pixels between panels


def voc_palette(n: int = 256) -> np.ndarray:
  """(n, 3) uint8: the Pascal VOC colour map (class c's bits spread over R, G, B from the
  most significant bit down: 0 black, 1 (128, 0, 0), 2 (0, 128, 0), 3 (128, 128, 0), ...)."""
  palette = np.zeros((n, 3), np.uint8)
  for c in range(n):
    r = g = b = 0
    label = c
    for shift in range(7, -1, -1):
      r |= ((label >> 0) & 1) << shift
      g |= ((label >> 1) & 1) << shift
      b |= ((label >> 2) & 1) << shift
      label >>= 3
    palette[c] = (r, g, b)
  return palette


def colourise(labels: np.ndarray, ignore_label: int = 255) -> np.ndarray:
  """(H, W) class ids -> (H, W, 3) uint8 in the VOC palette, `ignore_label` in the
  boundary colour."""
  labels = np.asarray(labels)
  out = voc_palette()[np.clip(labels, 0, 255).astype(np.int64)]
  out[labels == ignore_label] = IGNORE_COLOUR
  return out


def _display(image: np.ndarray) -> np.ndarray:
  """A normalised (H, W, 3) float image stretched to uint8 for display (per image)."""
  lo, hi = float(image.min()), float(image.max())
  return np.uint8(np.round(255.0 * (image - lo) / max(hi - lo, 1e-6)))


def prediction_grid(images: np.ndarray, labels: np.ndarray, student: np.ndarray,
                    teacher: np.ndarray | None = None) -> np.ndarray:
  """The picture as an array.

  Args:
    images: (N, H, W, 3) float (normalised) images.
    labels: (N, H, W) ground truth (255 = ignore).
    student: (N, H, W) student predictions (class ids).
    teacher: (N, H, W) teacher predictions, or None.

  Returns:
    (N·(H + gap) − gap, C·(W + gap) − gap, 3) uint8, C = 4 panels (3 without teacher),
    white between panels.
  """
  n, h, w = labels.shape
  panels = [lambda i: _display(images[i]), lambda i: colourise(labels[i])]
  if teacher is not None:
    panels.append(lambda i: colourise(teacher[i]))
  panels.append(lambda i: colourise(student[i]))
  cols = len(panels)
  grid = np.full((n * (h + _GAP) - _GAP, cols * (w + _GAP) - _GAP, 3), 255, np.uint8)
  for i in range(n):
    for j, panel in enumerate(panels):
      grid[i * (h + _GAP):i * (h + _GAP) + h, j * (w + _GAP):j * (w + _GAP) + w] = panel(i)
  return grid


def enlarged(grid: np.ndarray, side: int) -> np.ndarray:
  """`grid` of panels `side` pixels high, each pixel repeated so that a panel is at
  least `MIN_PANEL` pixels (small canvases stay legible; nearest, no blending)."""
  factor = max(1, -(-MIN_PANEL // side))
  return grid.repeat(factor, axis=0).repeat(factor, axis=1)


def save_png(path: str, grid: np.ndarray) -> None:
  """Writes a uint8 (H, W, 3) array as a PNG, atomically (a reader never sees half)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  tmp = f"{path}.tmp"
  Image.fromarray(grid).save(tmp, format="PNG")
  os.replace(tmp, path)


def prediction_grid_hook(ctx: AnalysisContext) -> None:
  """Writes ``<workdir>/predictions.png`` and the TensorBoard image
  ``segmentation/predictions`` from the first eval images, every
  ``logging.heatmap_every_epochs`` epochs."""
  every = ctx.config.logging.heatmap_every_epochs
  if not every or ctx.epoch % every or ctx.predictions is None:
    return
  out = ctx.predictions()  # every process takes part (a sharded computation)
  if not ctx.is_chief:
    return
  out = {k: None if v is None else np.asarray(jax.device_get(v))[:MAX_ROWS]
         for k, v in out.items()}
  keep = out["mask"] > 0
  grid = prediction_grid(out["image"][keep], out["label"][keep], out["student"][keep],
                         None if out["teacher"] is None else out["teacher"][keep])
  ctx.writer.write_images(ctx.step, {"segmentation/predictions": grid[None]})
  save_png(os.path.join(ctx.workdir, PREDICTIONS_PNG),
           enlarged(grid, out["label"].shape[1]))
