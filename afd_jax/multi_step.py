"""Several train steps per dispatch: `steps.train_step` repeated over k batches (`repeat`).

One call of a compiled program runs ``n <= config.steps_per_dispatch`` steps, so the host
launches work k times less often. With device-resident data (`device_data`) each step
draws its own batch on the devices from ``state.step``, so a dispatch needs nothing from
the host; with tf.data, the n host batches are passed in and stacked on the devices.
The train loop shortens a chunk so that it ends exactly on every log, evaluation,
checkpoint and stop step (`chunk_length`); chunk lengths are k or powers of two, so at
most ``log2(k) + 2`` programs are compiled. Metrics come back stacked, (n,) per name.
"""
from __future__ import annotations

import functools
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import ml_collections

from afd_jax import device_data, parallel, steps


def steps_per_dispatch(config: ml_collections.ConfigDict) -> int:
  """``config.steps_per_dispatch`` validated (1 when absent)."""
  k = config.get("steps_per_dispatch", 1)
  if not isinstance(k, int) or k < 1:
    raise ValueError(f"config.steps_per_dispatch={k!r} is out of range; accepted: an "
                     "integer >= 1")
  return k


def chunk_length(step: int, stop: int, k: int, periods) -> int:
  """Steps of the next dispatch after `step`: at most `k`, never past `stop` nor past
  the next multiple of any of `periods` (0 or None: no such period); k itself or a
  power of two."""
  n = min(k, stop - step)
  for period in periods:
    if period:
      n = min(n, period - step % period)
  return n if n == k else 1 << (n.bit_length() - 1)


def device_steps(nets, sampler: device_data.Sampler, batch_sharding, n: int, state,
                 data, seed, teacher_vars):
  """`n` train steps on device-resident `data`; metrics stacked (n,)."""

  def one(state, _):
    batch = sampler.batch(data, seed, state.step)
    batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
    return steps.train_step(nets, state, batch, teacher_vars)

  return repeat(one, state, n)


def host_steps(nets, state, batches, teacher_vars):
  """``len(batches)`` train steps on host-fed batches; metrics stacked."""
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *batches)
  return repeat(lambda s, b: steps.train_step(nets, s, b, teacher_vars), state,
                len(batches), stacked)


def repeat(body, state, n: int, xs=None, unroll: bool | None = None):
  """`n` times ``body(state, x) -> (state, metrics)``, x the slices of `xs`' leading axis
  (or None); metrics stacked, (n,) per name.

  A `jax.lax.scan` on GPU/TPU. On CPU the n steps are unrolled into straight-line code
  instead: XLA:CPU runs the convolutions of a loop body far slower than the same ops
  outside a loop (resnet8, batch 64, 2 cores: 3.1 s vs 0.15 s a step, even in a loop of
  one trip), so a CPU program holds n copies of the step (compile time grows with n).
  `unroll` overrides that choice (None: unrolled on CPU only).
  """
  if not (jax.default_backend() == "cpu" if unroll is None else unroll):
    return jax.lax.scan(body, state, xs, length=n)
  metrics = []
  for i in range(n):
    state, m = body(state, None if xs is None else jax.tree.map(lambda x: x[i], xs))
    metrics.append(m)
  return state, jax.tree.map(lambda *ms: jnp.stack(ms), *metrics)


class Dispatcher:
  """``dispatcher(state, n) -> (state, metrics)``: the next `n` steps in one call.

  Args:
    nets: the run's `train_state.Networks`.
    mesh: the run's mesh.
    teacher_vars: the frozen teacher's variables (or None).
    batches: host batches on the devices (tf.data path), or None with `sampler`.
    sampler, data, seed: the device-resident path (`device_data.load`, the run's seed).
    state_sharding: the train state's shardings (`parallel.state_sharding`); None:
      replicated.
  """

  def __init__(self, nets, mesh, teacher_vars, *, batches: Iterator[Any] | None = None,
               sampler: device_data.Sampler | None = None, data=None, seed: int = 0,
               state_sharding=None):
    self.nets, self.teacher_vars, self.batches = nets, teacher_vars, batches
    self.sampler, self.data = sampler, data
    self.rep, self.sharded = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    self.state = state_sharding if state_sharding is not None else self.rep
    self.seed = jax.device_put(jnp.asarray(seed, jnp.int32), self.rep)
    self.programs: dict[int, Any] = {}

  def program(self, n: int):
    """The jitted program of `n` steps (built once per n); state donated."""
    if n not in self.programs:
      rep, sharded, st = self.rep, self.sharded, self.state
      if self.sampler is not None:
        fn = functools.partial(device_steps, self.nets, self.sampler, sharded, n)
        shardings = (st, rep, rep, rep)
      elif n == 1:  # exactly the one-step program of k = 1
        fn, shardings = functools.partial(steps.train_step, self.nets), (st, sharded, rep)
      else:
        fn, shardings = functools.partial(host_steps, self.nets), (st, sharded, rep)
      self.programs[n] = jax.jit(fn, in_shardings=shardings, out_shardings=(st, rep),
                                 donate_argnums=(0,))
    return self.programs[n]

  def __call__(self, state, n: int):
    if self.sampler is not None:
      return self.program(n)(state, self.data, self.seed, self.teacher_vars)
    if n == 1:
      return self.program(1)(state, next(self.batches), self.teacher_vars)
    batches = tuple(next(self.batches) for _ in range(n))
    return self.program(n)(state, batches, self.teacher_vars)
