"""Evaluation of a model over the whole eval split, on the mesh.

The dataset's task (`afd_jax.tasks`) gives the jitted step whose sums (each eval image
once, padding masked out; reduced across devices and processes by the jitted step) are
added over the split, and the metrics made of them: classification's top-1 / top-5 and
CE; segmentation's confusion matrix over every valid pixel, scored as the TaT-seg
release's ``utils/metrics.py`` ``Evaluator`` (`segmentation_scores`).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh
import numpy as np

from afd_jax import parallel, tasks


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
  def task(self) -> tasks.Task:
    """The dataset's task."""
    return tasks.get(getattr(self.dataset.info, "task", tasks.DEFAULT))

  @property
  def score(self) -> str:
    """The metric that picks the best checkpoint (the task's, e.g. ``'top1'``)."""
    return self.task.score

  def __call__(self, model: nn.Module, variables) -> dict[str, float]:
    """The task's metrics over the split, ``'loss'`` and the score among them
    (classification: ``{'top1', 'top5'}`` in percent and the mean CE; segmentation:
    `segmentation_scores` of the summed confusion matrix and the mean per-pixel CE)."""
    if model not in self._steps:
      self._steps[model] = jax.jit(self.task.eval_step(model, self.dataset.info))
    step, totals = self._steps[model], None
    for batch in parallel.prefetch_to_device(self.dataset.eval_iterator(self.batch_size), 2,
                                             self.sharding):
      out = step(variables, batch)
      totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
    return self.task.eval_metrics(jax.device_get(totals))


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
