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

# Launchers that tell `jax.distributed.initialize()` the coordinator, the process count and
# this process's id by themselves (SLURM, Open MPI, TPU pods).
_LAUNCHER_ENV = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES",
                 "MEGASCALE_COORDINATOR_ADDRESS")
# An explicit launch (by hand, ssh, Kubernetes): each value from its flag, else its
# variable (jax itself reads only the first of them).
_EXPLICIT = (("coordinator_address", "JAX_COORDINATOR_ADDRESS"),
             ("num_processes", "JAX_NUM_PROCESSES"), ("process_id", "JAX_PROCESS_ID"))


def _launcher_detected() -> bool:
  def several(var):
    value = os.environ.get(var, "")
    return "," in value if var == "TPU_WORKER_HOSTNAMES" else (
        value not in ("", "1") if var.endswith(("NTASKS", "SIZE")) else bool(value))
  return any(several(v) for v in _LAUNCHER_ENV)


def explicit_launch(coordinator_address: str | None = None,
                    num_processes: int | None = None,
                    process_id: int | None = None) -> dict[str, Any]:
  """The explicit launch's arguments for `jax.distributed.initialize`: each from its
  argument (a flag), else its environment variable (`_EXPLICIT`); ``{}`` when none is
  given.

  Raises:
    ValueError: only some are given and no launcher (SLURM, Open MPI, TPU pod) supplies
      the others, or a count or id out of range; the message names them.
  """
  given, named = {}, {}
  for (name, var), value in zip(_EXPLICIT, (coordinator_address, num_processes,
                                            process_id)):
    if value is None and os.environ.get(var):
      value, named[name] = os.environ[var], var
    elif value is not None:
      named[name] = f"--{name}"
    if value is not None:
      given[name] = value
  for name, least in (("num_processes", 1), ("process_id", 0)):
    if name in given:
      try:
        given[name] = int(given[name])
      except ValueError:
        given[name] = None
      if given[name] is None or given[name] < least:
        raise ValueError(f"{named[name]}={os.environ.get(named[name], given[name])!r}; "
                         f"accepted: an integer >= {least}")
  if given and len(given) < len(_EXPLICIT) and not _launcher_detected():
    missing = [n for n, _ in _EXPLICIT if n not in given]
    raise ValueError(
        f"{', '.join(f'{named[n]}={given[n]}' for n in given)} given without "
        f"{' and '.join(f'--{n}' for n in missing)}; accepted: all three of "
        "--coordinator_address (host:port of process 0), --num_processes and "
        "--process_id (or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID), or "
        "none under SLURM, Open MPI or a TPU pod, which supply them")
  n, i = given.get("num_processes"), given.get("process_id")
  if n is not None and i is not None and i >= n:
    raise ValueError(f"{named['process_id']}={i} with {named['num_processes']}={n}; "
                     f"accepted: 0..{n - 1} (one id per process)")
  return given


def maybe_initialize_distributed(mode: str = "auto", coordinator_address: str | None = None,
                                 num_processes: int | None = None,
                                 process_id: int | None = None) -> bool:
  """Calls `jax.distributed.initialize()` when asked to, or (``'auto'``) when this is one
  of several processes: an explicit launch (`explicit_launch`: the three arguments or
  their environment variables) or a launcher jax detects (SLURM, Open MPI, TPU pods).
  Returns whether it did.

  Args:
    mode: ``'auto'``, ``'on'`` or ``'off'`` (never, whatever else is set).
    coordinator_address, num_processes, process_id: an explicit launch's flags.

  Raises:
    ValueError: an unknown `mode`, or an incomplete or invalid explicit launch.
  """
  if mode not in ("auto", "on", "off"):
    raise ValueError(f"--distributed={mode!r}; accepted: auto, on, off")
  if mode == "off":
    return False
  explicit = explicit_launch(coordinator_address, num_processes, process_id)
  if mode == "auto" and not explicit and not _launcher_detected():
    return False
  jax.distributed.initialize(**explicit)
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
