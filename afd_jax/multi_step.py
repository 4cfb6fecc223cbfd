"""Several train steps per dispatch: `steps.train_step` repeated over k batches (`repeat`).

One call of a compiled program runs ``n <= config.steps_per_dispatch`` steps, so the host
launches work k times less often. With device-resident data (`device_data`) each step
draws its own batch on the devices from ``state.step``, so a dispatch needs nothing from
the host; with tf.data, the n host batches are passed in and stacked on the devices.
The train loop shortens a chunk so that it ends exactly on every log, evaluation,
checkpoint and stop step (`chunk_length`); chunk lengths are k or powers of two, so at
most ``log2(k) + 2`` programs are compiled. Metrics come back stacked, (n,) per name.

With ``data.last_batch='train'`` the last step of every epoch has a smaller batch, a
second shape: the dispatcher runs it as a one-step program of its own and splits the
steps before it into power-of-two programs (`pieces`), so the compiled programs stay
few and every step is the step a one-step-per-dispatch run takes.
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


def pieces(sizes: list[int], n: int) -> list[tuple[int, int]]:
  """``[(length, batch size), ...]``: `n` consecutive steps of batch sizes `sizes` cut
  into runs of one size; a run shorter than `n` is cut into powers of two (largest
  first), so that they reuse few compiled programs. One size throughout: ``[(n, size)]``.
  """
  out, i = [], 0
  while i < len(sizes):
    j = i
    while j < len(sizes) and sizes[j] == sizes[i]:
      j += 1
    length = j - i
    if length == n:
      out.append((length, sizes[i]))
    else:
      for bit in reversed(range(length.bit_length())):
        if length >> bit & 1:
          out.append((1 << bit, sizes[i]))
    i = j
  return out


def device_steps(nets, sampler: device_data.Sampler, batch_sharding, n: int, size: int,
                 state, data, seed, teacher_vars):
  """`n` train steps on device-resident `data`, each a batch of `size`; metrics (n,)."""

  def one(state, _):
    batch = sampler.batch(data, seed, state.step, size)
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

  Raises:
    ValueError: a sampler whose partial last batch does not split over the mesh.
  """

  def __init__(self, nets, mesh, teacher_vars, *, batches: Iterator[Any] | None = None,
               sampler: device_data.Sampler | None = None, data=None, seed: int = 0,
               state_sharding=None):
    self.nets, self.teacher_vars, self.batches = nets, teacher_vars, batches
    self.sampler, self.data = sampler, data
    self.rep, self.sharded = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    self.state = state_sharding if state_sharding is not None else self.rep
    self.seed = jax.device_put(jnp.asarray(seed, jnp.int32), self.rep)
    self.programs: dict[tuple[int, int | None], Any] = {}
    self.step: int | None = None  # the next global step (device path with partial batches)
    if sampler is not None and sampler.has_partial and sampler.last_batch_size % mesh.size:
      raise ValueError(
          f"config.data.last_batch='train': each epoch's last batch holds "
          f"{sampler.last_batch_size} examples ({sampler.num_examples} mod "
          f"{sampler.batch_size}), which do not split evenly over the {mesh.size} "
          "devices; accepted: data.last_batch='drop', or a batch size and device count "
          "for which that remainder is a multiple of the devices")

  def program(self, n: int, size: int | None = None):
    """The jitted program of `n` steps (built once per n and, on the device path, batch
    `size`: None is the full batch); state donated."""
    if (n, size) not in self.programs:
      rep, sharded, st = self.rep, self.sharded, self.state
      if self.sampler is not None:
        fn = functools.partial(device_steps, self.nets, self.sampler, sharded, n,
                               self.sampler.batch_size if size is None else size)
        shardings = (st, rep, rep, rep)
      elif n == 1:  # exactly the one-step program of k = 1
        fn, shardings = functools.partial(steps.train_step, self.nets), (st, sharded, rep)
      else:
        fn, shardings = functools.partial(host_steps, self.nets), (st, sharded, rep)
      self.programs[n, size] = jax.jit(fn, in_shardings=shardings, out_shardings=(st, rep),
                                       donate_argnums=(0,))
    return self.programs[n, size]

  def __call__(self, state, n: int):
    if self.sampler is not None:
      if not self.sampler.has_partial:
        return self.program(n)(state, self.data, self.seed, self.teacher_vars)
      if self.step is None:  # once per dispatcher: where the run starts
        self.step = int(jax.device_get(state.step))
      sizes = [self.sampler.size(s) for s in range(self.step, self.step + n)]
      self.step += n
      out = []
      for length, size in pieces(sizes, n):
        full = None if size == self.sampler.batch_size else size
        state, metrics = self.program(length, full)(state, self.data, self.seed,
                                                     self.teacher_vars)
        out.append(metrics)
      return state, _concat(out)
    if n == 1:
      return self.program(1)(state, next(self.batches), self.teacher_vars)
    batches = [next(self.batches) for _ in range(n)]
    sizes = [len(jax.tree.leaves(b)[0]) for b in batches]
    out, i = [], 0
    for length, _ in pieces(sizes, n):  # a partial last batch: its own one-step program
      chunk = batches[i:i + length]
      i += length
      state, metrics = (self.program(1)(state, chunk[0], self.teacher_vars) if length == 1
                        else self.program(length)(state, tuple(chunk), self.teacher_vars))
      out.append(jax.tree.map(lambda m: m[None], metrics) if length == 1 else metrics)
    return state, _concat(out)


def _concat(metrics: list[Any]) -> Any:
  """Stacked (n_i,) metrics of consecutive programs -> (Σ n_i,)."""
  return metrics[0] if len(metrics) == 1 else jax.tree.map(
      lambda *ms: jnp.concatenate(ms), *metrics)
