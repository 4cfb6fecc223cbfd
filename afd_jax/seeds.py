"""N runs in one program: the device-resident train step vmapped over a group's members.

The step functions of a vmapped group (`afd_jax.group` holds its loop): the states of S
runs are stacked on a leading axis, and so are their seeds and their traced
hyperparameters (``{'method.beta': (S,), 'optim.lr': (S,), ...}``); each keeps its own
initialisation, data order and augmentation (`device_data.Sampler` with that seed), so
member ``k`` computes what its own run computes (to float rounding). Members that share a
seed share their batches, and the frozen teacher's forward pass on a batch runs once for
all the members that share it (``batch_of``).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

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
                       batch_sharding=None, member_nets=None, hparams=None,
                       map_members=False, size=None, batch_of=None):
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
    member_nets: ``member_nets(hparams of one member) -> Networks`` with those (traced)
      values (`train_state.build_networks`' ``hparams``); None: every member is `nets`.
    hparams: ``{path: (S,) array}``, the members' values (with `member_nets`).
    map_members: the members side by side (see `vmapped_steps`) instead of `jax.vmap`.
    size: the step's batch size (`device_data.Sampler.size`; None: the full batch).
    batch_of: static, ``batch_of[k]`` the first member with member k's seed: the batch
      and the teacher's forward on it are computed once per distinct seed and shared
      (the teacher in eval mode); None: each member draws its own.

  Returns:
    the new stacked states and metrics of shape (S,).
  """

  def draw(seed, step):
    batch = sampler.batch(data, seed, step, size)
    if batch_sharding is not None:
      batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
    return batch

  def one(state, seed, hp, shared=None):
    member = nets if member_nets is None or not hp else member_nets(hp)
    if shared is None:
      return steps.train_step(member, state, draw(seed, state.step), teacher_vars)
    batch, teacher_out = shared
    return steps.train_step(member, state, batch, teacher_vars, teacher_out)

  hp, shared = hparams or {}, None
  if batch_of is not None:
    if getattr(nets.distiller, "teacher_train_mode", False):
      raise ValueError("batch_of shares the teacher's eval-mode forward; this method "
                       "runs its teacher in train mode")
    firsts = sorted(set(batch_of))
    step = states.step[0]  # a group's members are always at the same step
    drawn = {u: draw(seeds[u], step) for u in firsts}
    drawn = {u: (b, steps.teacher_outputs(nets, teacher_vars, b["image"]))
             for u, b in drawn.items()}
    shared = [drawn[u] for u in batch_of]
  if map_members:  # one member after another inside the program (see `vmapped_steps`)
    outs = [one(unstack(states, k), seeds[k], {p: v[k] for p, v in hp.items()},
                None if shared is None else shared[k]) for k in range(len(seeds))]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)
  if shared is None:
    return jax.vmap(one)(states, seeds, hp)
  return jax.vmap(one)(states, seeds, hp, jax.tree.map(lambda *xs: jnp.stack(xs), *shared))


def vmapped_steps(nets, sampler, n: int, states, data, seeds, teacher_vars,
                  batch_sharding=None, member_nets=None, hparams=None, map_members=None,
                  size=None, batch_of=None):
  """`n` vmapped steps in one program (`multi_step.repeat`); metrics (n, S).

  `map_members`: the members' steps side by side in the program (unrolled: S copies of
  the step) instead of batched (`jax.vmap`); None: on CPU only, where XLA's batched
  convolutions (one weight per member) are many times slower than S plain ones.
  """
  if map_members is None:
    map_members = jax.default_backend() == "cpu"
  return multi_step.repeat(
      lambda s, _: vmapped_train_step(nets, sampler, s, data, seeds, teacher_vars,
                                      batch_sharding, member_nets, hparams, map_members,
                                      size, batch_of),
      states, n)


def unstack(states, k: int):
  """Seed `k`'s state out of the stacked `states`."""
  return jax.tree.map(lambda x: x[k], states)
