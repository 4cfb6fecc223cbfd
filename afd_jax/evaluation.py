"""Evaluation of a model over the whole eval split, on the mesh.

Classification: top-1 / top-5 and CE. Segmentation: a confusion matrix summed over every
valid pixel of every eval image (each image once, padding masked out; the sums are
reduced across devices and processes by the jitted step), then the TaT-seg release's
``utils/metrics.py`` ``Evaluator`` scores (`segmentation_scores`).
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh
import numpy as np

from afd_jax import parallel, steps


class Evaluator:
  """Jitted, sharded evaluation over a dataset opened once for the run.

  Args:
    dataset: an `input_pipeline.Dataset`.
    mesh: the run's mesh.
    batch_size: global eval batch size.
  """

  def __init__(self, dataset, mesh: Mesh, batch_size: int):
    self.dataset, self.batch_size = dataset, batch_size
    self.sharding = parallel.batch_sharded(mesh)
    self._steps = {}

  def first_batch(self) -> dict[str, jax.Array]:
    """The first eval batch on the devices (for analyses such as AFD's link probe)."""
    return next(parallel.prefetch_to_device(
        self.dataset.eval_iterator(self.batch_size), 1, self.sharding))

  @property
  def segmentation(self) -> bool:
    return getattr(self.dataset.info, "task", "classification") == "segmentation"

  @property
  def score(self) -> str:
    """The metric that picks the best checkpoint: ``'miou'`` or ``'top1'``."""
    return score_metric(self.segmentation)

  def __call__(self, model: nn.Module, variables) -> dict[str, float]:
    """Classification: ``{'top1', 'top5'}`` in percent and the mean CE ``'loss'`` over
    the split. Segmentation: `segmentation_scores` of the summed confusion matrix (in
    percent) and the mean per-pixel CE ``'loss'``."""
    if model not in self._steps:
      fn = (functools.partial(steps.segmentation_eval_step, model,
                              num_classes=self.dataset.info.num_classes)
            if self.segmentation else functools.partial(steps.eval_step, model))
      self._steps[model] = jax.jit(fn)
    step, totals = self._steps[model], None
    for batch in parallel.prefetch_to_device(self.dataset.eval_iterator(self.batch_size), 2,
                                             self.sharding):
      out = step(variables, batch)
      totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
    totals = jax.device_get(totals)
    if self.segmentation:
      return dict(segmentation_scores(np.asarray(totals["confusion"], np.float64)),
                  loss=float(totals["loss"] / max(float(totals["pixels"]), 1.0)))
    n = max(float(totals["count"]), 1.0)
    return {"top1": float(100.0 * totals["correct1"] / n),
            "top5": float(100.0 * totals["correct5"] / n), "loss": float(totals["loss"] / n)}


def score_metric(segmentation: bool) -> str:
  """The metric a run of the task is scored by (and keeps its best checkpoint by):
  ``'miou'`` for segmentation, else ``'top1'``."""
  return "miou" if segmentation else "top1"


def segmentation_scores(confusion: np.ndarray) -> dict[str, float]:
  """The release's ``Evaluator`` scores of a (K, K) ``[truth, prediction]`` confusion
  matrix, in percent: ``pixel_acc`` (diagonal / total), ``acc_class`` (nan-mean over
  classes of diagonal / row sum), ``miou`` (nan-mean over classes of the IoU diagonal /
  (row + column − diagonal): a class neither present nor predicted is 0/0 = NaN and left
  out; one predicted but absent counts 0) and ``fwiou`` (IoU weighted by the classes'
  ground-truth frequency, classes with frequency 0 left out)."""
  diag, rows, cols = np.diag(confusion), confusion.sum(1), confusion.sum(0)
  total = confusion.sum()
  with np.errstate(divide="ignore", invalid="ignore"):
    iou = diag / (rows + cols - diag)
    acc_class = diag / rows
    freq = rows / total if total else np.zeros_like(rows)
  def nanmean(x):
    return float(np.nanmean(x)) if np.any(~np.isnan(x)) else 0.0
  return {"miou": 100.0 * nanmean(iou),
          "pixel_acc": 100.0 * float(diag.sum() / total) if total else 0.0,
          "acc_class": 100.0 * nanmean(acc_class),
          "fwiou": 100.0 * float((freq[freq > 0] * iou[freq > 0]).sum())}
