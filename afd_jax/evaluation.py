"""Top-1 / top-5 evaluation of a model over the whole eval split, on the mesh."""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

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

  def __call__(self, model: nn.Module, variables) -> dict[str, float]:
    """``{'top1', 'top5'}`` in percent and the mean CE ``'loss'`` over the split."""
    if model not in self._steps:
      self._steps[model] = jax.jit(functools.partial(steps.eval_step, model))
    step, totals = self._steps[model], None
    for batch in parallel.prefetch_to_device(self.dataset.eval_iterator(self.batch_size), 2,
                                             self.sharding):
      out = step(variables, batch)
      totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
    totals = jax.device_get(totals)
    n = max(float(totals["count"]), 1.0)
    return {"top1": float(100.0 * totals["correct1"] / n),
            "top5": float(100.0 * totals["correct5"] / n), "loss": float(totals["loss"] / n)}
