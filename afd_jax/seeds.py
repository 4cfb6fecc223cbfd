"""N seeds in one program: the device-resident train step vmapped over runs.

The functions behind ``config.vmap_seeds`` (`seed_runs` holds its train loop): the
states of S runs are stacked on a leading axis, and so are their seeds; each keeps its own
initialisation, data order and augmentation (`device_data.Sampler` with that seed), so
seed ``k`` of a vmapped run computes what a run with ``config.seed = seeds[k]`` computes
(to float rounding). Because the seeds' batches differ, the frozen teacher's forward pass
runs once per seed and batch (inside the vmap), not once per batch.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from afd_jax import device_data, multi_step, steps, train_state


def create_states(nets: train_state.Networks, seeds, image_size: int):
  """Fresh `TrainState`s of `seeds`, stacked: leaf shapes (S, ...); seed k's state is
  ``train_state.create(nets, PRNGKey(seeds[k]))``, as `train.open_run` makes it."""
  # A loop, not a vmap: initialisation draws 'rbg' bits, which vmap may change.
  create = jax.jit(functools.partial(train_state.create, nets, image_size=image_size))
  states = [create(jax.random.PRNGKey(s)) for s in seeds]
  return jax.tree.map(lambda *xs: jnp.stack(xs), *states)


def vmapped_train_step(nets: train_state.Networks, sampler: device_data.Sampler, states,
                       data: dict[str, jax.Array], seeds: jax.Array, teacher_vars,
                       batch_sharding=None):
  """One train step of every seed on the device-resident `data`.

  Args:
    nets: the runs' static `train_state.Networks` (one model, method and optimizer).
    sampler: the device-resident split's `device_data.Sampler`.
    states: stacked `TrainState`s (leading axis S).
    data: ``{'image': uint8 (N, H, W, 3), 'label': int32 (N,)}``, shared by all seeds.
    seeds: int32 (S,), each run's seed (its data order and augmentation).
    teacher_vars: the frozen teacher's variables (shared), or None.
    batch_sharding: each seed's batch split over the mesh (as `multi_step.device_steps`),
      or None (left to XLA).

  Returns:
    the new stacked states and metrics of shape (S,).
  """

  def one(state, seed):
    batch = sampler.batch(data, seed, state.step)
    if batch_sharding is not None:
      batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
    return steps.train_step(nets, state, batch, teacher_vars)

  return jax.vmap(one)(states, seeds)


def vmapped_steps(nets, sampler, n: int, states, data, seeds, teacher_vars,
                  batch_sharding=None):
  """`n` vmapped steps in one program (`multi_step.repeat`); metrics (n, S)."""
  return multi_step.repeat(
      lambda s, _: vmapped_train_step(nets, sampler, s, data, seeds, teacher_vars,
                                      batch_sharding),
      states, n)


def unstack(states, k: int):
  """Seed `k`'s state out of the stacked `states`."""
  return jax.tree.map(lambda x: x[k], states)


def summary(values: dict[str, list[float]]) -> str:
  """A Markdown table of ``{metric: one value per seed}`` as mean ± std (ddof 1)."""
  rows = ["| metric | mean ± std | seeds |", "|---|---|---|"]
  for name, v in values.items():
    v = np.asarray(v, np.float64)
    std = float(v.std(ddof=1)) if len(v) > 1 else 0.0
    rows.append(f"| {name} | {v.mean():.4g} ± {std:.2g} | {len(v)} |")
  return "\n".join(rows)
