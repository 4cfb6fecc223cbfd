"""Devices, processes and preemption: the mesh, batch sharding, multi-host helpers.

The train step runs on a 1-D ``('data',)`` mesh over all devices of all processes: the
batch is sharded along it and everything else is replicated, so XLA computes BatchNorm
statistics over the *global* batch and N devices give the same update as one device.
"""
from __future__ import annotations

import collections
import itertools
import os
import signal
import threading
from typing import Any, Iterable, Iterator

from absl import logging
import jax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

# Variables that mean "this process is one of several": the launchers JAX's
# `jax.distributed.initialize()` detects by itself (SLURM, Open MPI, TPU pods), or an
# explicit coordinator.
_MULTIPROCESS_ENV = ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE",
                     "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS")


def maybe_initialize_distributed(mode: str = "auto") -> bool:
  """Calls `jax.distributed.initialize()` when asked to, or (``'auto'``) when the
  environment shows several processes. Returns whether it did.

  Args:
    mode: ``'auto'``, ``'on'`` or ``'off'``.
  """
  if mode not in ("auto", "on", "off"):
    raise ValueError(f"--distributed={mode!r}; accepted: auto, on, off")
  if mode == "off":
    return False
  if mode == "auto":
    def several(var):
      value = os.environ.get(var, "")
      return "," in value if var == "TPU_WORKER_HOSTNAMES" else (
          value not in ("", "1") if var.endswith(("NTASKS", "SIZE")) else bool(value))
    if not any(several(v) for v in _MULTIPROCESS_ENV):
      return False
  jax.distributed.initialize()
  logging.info("jax.distributed: process %d of %d", jax.process_index(),
               jax.process_count())
  return True


def is_chief() -> bool:
  """Whether this process writes the run's files (config, results, logs)."""
  return jax.process_index() == 0


def make_mesh(num_devices: int | None) -> Mesh:
  """A 1-D ``('data',)`` mesh over all devices, or the first `num_devices` local ones."""
  if num_devices is None:
    devices = jax.devices()
  else:
    if jax.process_count() > 1 or not 1 <= num_devices <= jax.local_device_count():
      raise ValueError(f"config.num_devices={num_devices}, but this host has "
                       f"{jax.local_device_count()} local devices and there are "
                       f"{jax.process_count()} processes (accepted: 1.."
                       f"{jax.local_device_count()} on one process, or None for all)")
    devices = jax.local_devices()[:num_devices]
  return Mesh(np.asarray(devices), ("data",))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P("data"))


def state_sharding(mesh: Mesh, state):
  """Shardings of a train state (arrays or ShapeDtypeStructs): replicated, except the
  method's memory banks (``method_state`` leaves named ``memory*``, CRD's (N, d)), whose
  rows are split over the ``data`` axis when N divides evenly (else replicated; stacked
  seeds' (S, N, d) banks too)."""
  def rule(path, leaf):
    keys = [str(getattr(k, "key", getattr(k, "name", ""))) for k in path]
    if ("method_state" in keys and keys[-1].startswith("memory") and len(leaf.shape) == 2
        and leaf.shape[0] % mesh.size == 0):
      return NamedSharding(mesh, P("data"))
    return replicated(mesh)
  return jax.tree_util.tree_map_with_path(rule, state)


def shard_batch(batch: dict[str, np.ndarray],
                sharding: jax.sharding.Sharding) -> dict[str, jax.Array]:
  """This process's numpy batch -> global `jax.Array`s laid out by `sharding`.

  Args:
    batch: arrays with leading dimension b (this process's share).
    sharding: typically ``NamedSharding(mesh, P('data'))``.

  Returns:
    the same keys, as global arrays of leading dimension ``b * jax.process_count()``.
  """
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def prefetch_to_device(iterator: Iterable[dict[str, np.ndarray]], size: int,
                       sharding: jax.sharding.Sharding) -> Iterator[dict[str, jax.Array]]:
  """`shard_batch` over `iterator`, keeping `size` batches on the devices ahead of use."""
  queue: collections.deque[Any] = collections.deque()
  iterator = iter(iterator)

  def enqueue(n: int) -> None:
    for batch in itertools.islice(iterator, n):
      queue.append(shard_batch(batch, sharding))

  enqueue(max(size, 1))
  while queue:
    yield queue.popleft()
    enqueue(1)


class Preemption:
  """Turns SIGTERM / SIGINT into a flag the loop reads between steps.

  Nothing is raised inside a jax call: the signal handler only records the signal.
  `reached(step)` is True at the step where every process should save and exit: with
  several processes, JAX's preemption sync point (its service catches SIGTERM on any
  host and agrees on one step for all), alone, the first step after a signal.
  """

  def __init__(self):
    self.signum: int | None = None
    self._previous = {}

  def _handler(self, signum, frame) -> None:
    del frame
    if self.signum is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt  # a second Ctrl-C: the user insists
    self.signum = signum
    logging.warning("Received signal %d: will save and stop after this step", signum)

  def __enter__(self) -> "Preemption":
    if threading.current_thread() is threading.main_thread():
      # With several processes JAX's preemption service owns SIGTERM.
      signums = [signal.SIGINT] + ([signal.SIGTERM] if jax.process_count() == 1 else [])
      for s in signums:
        self._previous[s] = signal.signal(s, self._handler)
    return self

  def __exit__(self, *exc) -> None:
    for s, handler in self._previous.items():
      signal.signal(s, handler)

  def reached(self, step: int) -> bool:
    """Whether to save at `step` and stop (called after every step, on every process)."""
    if multihost_utils.reached_preemption_sync_point(step):
      self.signum = self.signum or signal.SIGTERM
      return True
    return self.signum is not None and jax.process_count() == 1
