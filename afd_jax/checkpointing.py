"""Orbax checkpoints of the whole train state: the last k, the best, and teachers.

Layout inside a run's workdir::

    checkpoints/<step>/{state,meta}   the last `keep` saves (resume reads the newest)
    best/<step>/{state,meta}          the single best one by eval top-1 (teachers load it)

``state`` is the train-state pytree (orbax `StandardSave`), ``meta`` a small JSON dict
(epoch, best top-1 so far, model name, ...). Each step directory also holds
``digest.json``, the SHA-256 of every file orbax wrote, checked before the step is read:
a checkpoint whose bytes changed (a damaged disk, a partial copy) is treated as unreadable
instead of resuming from garbage.
"""
from __future__ import annotations

import asyncio
import contextlib
import errno
import glob
import hashlib
import json
import logging as std_logging
import os
import shutil
from typing import Any

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
  """A checkpoint is missing, corrupt or does not fit the model it is loaded into."""


DIGEST_FILE = "digest.json"
_CHUNK = 1 << 22


def file_digests(step_dir: str) -> dict[str, str]:
  """``{path relative to step_dir: sha256 hex}`` of every file in a step directory (but
  `DIGEST_FILE`), in sorted order."""
  out = {}
  for root, dirs, files in os.walk(step_dir):
    dirs.sort()
    for name in sorted(files):
      path = os.path.join(root, name)
      rel = os.path.relpath(path, step_dir)
      if rel.startswith(DIGEST_FILE):  # the digest itself, or its temporary
        continue
      h = hashlib.sha256()
      with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):  # noqa: B023
          h.update(chunk)
      out[rel] = h.hexdigest()
  return out


def write_digest(step_dir: str) -> None:
  """Records `file_digests` in ``<step_dir>/digest.json`` (atomically)."""
  record = {"algorithm": "sha256", "files": file_digests(step_dir)}
  tmp = os.path.join(step_dir, DIGEST_FILE + ".tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(record, f, indent=1, sort_keys=True)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, os.path.join(step_dir, DIGEST_FILE))


def verify_digest(step_dir: str) -> None:
  """Checks a step directory against its ``digest.json``.

  A checkpoint written before digests were recorded (or killed between orbax's commit and
  the digest write) has none and passes.

  Raises:
    CheckpointError: a file is missing or its content differs from the one saved; the
      message names it.
  """
  path = os.path.join(step_dir, DIGEST_FILE)
  if not os.path.exists(path):
    return
  try:
    with open(path, encoding="utf-8") as f:
      want = json.load(f)["files"]
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise CheckpointError(f"checksum file {path} is unreadable ({type(e).__name__}: {e})"
                          ) from None
  got = file_digests(step_dir)
  for rel, digest in sorted(want.items()):
    if rel not in got:
      raise CheckpointError(f"{os.path.join(step_dir, rel)} is missing (listed in "
                            f"{DIGEST_FILE})")
    if got[rel] != digest:
      raise CheckpointError(f"{os.path.join(step_dir, rel)} does not match its checksum "
                            f"in {DIGEST_FILE}: its content changed after it was saved")


def _move_aside(directory: str, step: int) -> tuple[str, str]:
  """Renames ``<directory>/<step>`` to ``<directory>/unreadable.<step>`` (a free name;
  process 0 renames). Returns (old path, new path)."""
  src = os.path.join(directory, str(step))
  dst, n = os.path.join(directory, f"unreadable.{step}"), 1
  while os.path.exists(dst):  # damaged twice at the same step: both kept
    dst, n = os.path.join(directory, f"unreadable.{step}.{n}"), n + 1
  if jax.process_index() == 0:
    os.replace(src, dst)
  return src, dst


def remove_temporary(directory: str) -> list[str]:
  """Deletes orbax's unfinished ``*.orbax-checkpoint-tmp*`` step directories in
  `directory` (a write that failed, e.g. on a full disk; never a committed checkpoint).
  Returns the paths removed."""
  removed = []
  if jax.process_index() != 0:
    return removed
  for path in glob.glob(os.path.join(glob.escape(directory), "*.orbax-checkpoint-tmp*")):
    shutil.rmtree(path, ignore_errors=True)
    removed.append(path)
  return removed


def _manager(directory: str, keep: int, best: bool) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=True, enable_async_checkpointing=False,
      cleanup_tmp_directories=True,
      best_fn=(lambda m: m["top1"]) if best else None, best_mode="max")
  return ocp.CheckpointManager(os.path.abspath(directory), options=options,
                               item_names=("state", "meta"))


def _save(manager: ocp.CheckpointManager, step: int, state: Any, meta: dict[str, Any],
          **kwargs) -> None:
  """One orbax save, then its digest. A failed write (a full disk) leaves no temporary
  directory behind and raises OSError; the checkpoints saved before are untouched."""
  directory = str(manager.directory)
  held = _HeldErrors()
  std_logging.getLogger("absl").addFilter(held)
  try:
    with _draining_event_loops():
      manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), **kwargs)
      manager.wait_until_finished()
    if jax.process_index() == 0:
      write_digest(os.path.join(directory, str(step)))
  except Exception as e:
    held.records.clear()  # the error raised here says it once
    remove_temporary(directory)
    if jax.process_index() == 0:  # orbax committed the step; only its digest failed
      tmp = os.path.join(directory, str(step), DIGEST_FILE + ".tmp")
      if os.path.exists(tmp):
        os.remove(tmp)
    no_space = _find_errno(e, errno.ENOSPC)
    if no_space is not None:
      raise OSError(errno.ENOSPC, f"no space left on device while saving checkpoint "
                    f"{os.path.join(directory, str(step))} (partial files removed; the "
                    "checkpoints saved before are kept): free some space and rerun the same "
                    "command to resume") from e
    raise
  finally:
    std_logging.getLogger("absl").removeFilter(held)
    for record in held.records:  # a save that succeeded after all: shown as logged
      std_logging.getLogger("absl").handle(record)


_DRAIN_SECONDS = 120  # per wait: a local or network write that takes longer hangs


class _DrainingLoop(asyncio.SelectorEventLoop):
  """An event loop that, closed with tasks still pending, lets them finish first.

  Orbax runs a save's writes as tasks of a fresh loop and closes it as soon as one fails
  (a full disk), while the others still write into the temporary directory from
  tensorstore's threads, then print tracebacks (the loop is closed) or are reported at
  exit. Drained, they end inside the save, before its temporary directory is removed.
  """

  def close(self) -> None:
    if not self.is_closed() and not self.is_running():
      pending = asyncio.all_tasks(self)
      if pending:
        done, late = self.run_until_complete(asyncio.wait(pending, timeout=_DRAIN_SECONDS))
        for task in late:  # a write that hangs: cancelled rather than waited for forever
          task.cancel()
        if late:
          self.run_until_complete(asyncio.wait(late, timeout=_DRAIN_SECONDS))
        for task in done | late:  # retrieved: asyncio logs none as "never retrieved"
          if task.done() and not task.cancelled():
            task.exception()
    super().close()


class _DrainingPolicy(asyncio.DefaultEventLoopPolicy):

  def new_event_loop(self) -> asyncio.AbstractEventLoop:
    return _DrainingLoop()


@contextlib.contextmanager
def _draining_event_loops():
  """Event loops created inside (orbax's, for one save) are `_DrainingLoop`s."""
  previous = asyncio.get_event_loop_policy()
  asyncio.set_event_loop_policy(_DrainingPolicy())
  try:
    yield
  finally:
    asyncio.set_event_loop_policy(previous)


class _HeldErrors(std_logging.Filter):
  """Holds orbax's error records (each with the traceback of its writer thread: dozens on
  a full disk) while a save runs; the save's own exception reports a failure once."""

  def __init__(self):
    super().__init__()
    self.records = []

  def filter(self, record: std_logging.LogRecord) -> bool:
    if record.levelno >= std_logging.ERROR and "orbax" in record.pathname:
      self.records.append(record)
      return False
    return True


def _find_errno(e: BaseException, code: int) -> BaseException | None:
  """`e` or an exception in its cause/context chain (or its message) with errno `code`."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if getattr(e, "errno", None) == code or os.strerror(code) in str(e):
      return e
    e = e.__cause__ or e.__context__
  return None


class RunCheckpoints:
  """The last-k and best checkpoint managers of one run."""

  def __init__(self, workdir: str, keep: int = 3):
    self.latest = _manager(os.path.join(workdir, "checkpoints"), keep, best=False)
    self.best = _manager(os.path.join(workdir, "best"), 1, best=True)

  def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
    """Saves `state` and `meta` as the newest checkpoint (no-op if `step` is saved)."""
    if step in self.latest.all_steps():
      return
    _save(self.latest, step, state, meta)

  def save_best(self, step: int, state: Any, meta: dict[str, Any], top1: float) -> None:
    """Replaces the best checkpoint with this one."""
    if step in self.best.all_steps():
      return
    _save(self.best, step, state, meta, metrics={"top1": float(top1)})

  def restore_latest(self, abstract_state: Any) -> tuple[Any, dict[str, Any]] | None:
    """(state, meta) of the newest readable checkpoint, or None for a fresh workdir.

    Every kept checkpoint, ``best/`` included, is first checked against its digest. One
    that cannot be used (bytes that differ from their digest: a damaged disk, a partial
    copy; or, in ``checkpoints/``, one orbax cannot read: a crash mid-write on a
    filesystem without atomic renames) is moved aside to ``<dir>/unreadable.<step>``
    with a warning naming it; nothing is deleted. A best moved aside leaves the run
    without one (`has_best`): its next evaluation saves a new best.

    Raises:
      CheckpointError: no checkpoint can be read into `abstract_state`; the message
        names the newest one's path and error (and nothing is moved).
    """
    failures, out = [], None
    for step in sorted(self.latest.all_steps(), reverse=True):
      try:
        verify_digest(os.path.join(str(self.latest.directory), str(step)))
        if out is None:
          out = step, self.latest.restore(step, args=ocp.args.Composite(
              state=ocp.args.StandardRestore(abstract_state),
              meta=ocp.args.JsonRestore()))
      except Exception as e:  # orbax raises many types; all mean "cannot resume from it"
        failures.append((step, e))
    if out is None and failures:
      step, e = failures[0]
      path = os.path.join(str(self.latest.directory), str(step))
      raise CheckpointError(
          f"cannot resume from checkpoint {path} (nor from any older one): "
          f"{type(e).__name__}: {e}. It is corrupt or was written by a different "
          "model/method config. Use another --workdir; nothing was deleted.") from None
    damaged_best = []
    for step in self.best.all_steps():
      try:
        verify_digest(os.path.join(str(self.best.directory), str(step)))
      except CheckpointError as e:
        damaged_best.append((step, e))
    if (failures or damaged_best) and jax.process_count() > 1:
      # Every process has read the files before process 0 moves any.
      multihost_utils.sync_global_devices("afd_jax: checkpoints verified")
    for bad, e in failures:
      src, dst = _move_aside(str(self.latest.directory), bad)
      logging.warning("checkpoint %s is unreadable (%s: %s); moved to %s, resuming "
                      "from step %d", src, type(e).__name__, e, dst, out[0])
    for bad, e in damaged_best:
      src, dst = _move_aside(str(self.best.directory), bad)
      logging.warning("best checkpoint %s is damaged (%s); moved to %s", src, e, dst)
    if failures or damaged_best:
      if jax.process_count() > 1:  # and see them moved before listing the steps again
        multihost_utils.sync_global_devices("afd_jax: checkpoints moved aside")
      self.latest.reload()
      self.best.reload()
    if out is None:
      return None
    return out[1]["state"], dict(out[1]["meta"])

  def close(self) -> None:
    """Waits for pending writes and releases the managers."""
    self.latest.close()
    self.best.close()


def load_teacher_variables(path: str, abstract_variables: dict[str, Any],
                           model_name: str) -> dict[str, Any]:
  """Loads a teacher's ``{'params', 'batch_stats'}`` from a run written by this codebase.

  Args:
    path: a teacher run's workdir (its ``best/`` checkpoint is used, else the newest of
      ``checkpoints/``), or one step directory of such a run.
    abstract_variables: the teacher model's variables as ShapeDtypeStructs, to check fit.
    model_name: for error messages.

  Raises:
    CheckpointError: nothing found at `path`, an unreadable checkpoint, or parameters
      that do not fit `model_name`.
  """
  step_dir = _find_step_dir(path)
  variables = read_run_variables(step_dir)
  _check_fit(variables, abstract_variables, step_dir, model_name)
  return variables


def read_run_variables(path: str) -> dict[str, Any]:
  """A run's model ``{'params', 'batch_stats'}`` as host arrays, whatever its model (no
  fit check; `load_teacher_variables` checks it against a model).

  Raises:
    CheckpointError: as `load_teacher_variables`.
  """
  step_dir = _find_step_dir(path)
  _verify_teacher(step_dir)
  try:
    restored = read_numpy(os.path.join(step_dir, "state"))
  except Exception as e:
    raise CheckpointError(f"cannot read teacher checkpoint {step_dir}: "
                          f"{type(e).__name__}: {e}") from e
  return _teacher_part(restored, step_dir)


def check_teacher(path: str, abstract_variables: dict[str, Any], model_name: str) -> None:
  """`load_teacher_variables`'s checks without reading the arrays: the checkpoint exists,
  matches its digest, and its tree and shapes (from orbax's metadata) fit `model_name`.

  Raises:
    CheckpointError: as `load_teacher_variables`.
  """
  step_dir = _find_step_dir(path)
  _verify_teacher(step_dir)
  try:
    metadata = ocp.PyTreeCheckpointer().metadata(os.path.join(step_dir, "state"))
    tree = getattr(metadata, "item_metadata", metadata)
    tree = getattr(tree, "tree", tree)
  except Exception as e:
    raise CheckpointError(f"cannot read teacher checkpoint {step_dir}: "
                          f"{type(e).__name__}: {e}") from e
  _check_fit(_teacher_part(tree, step_dir), abstract_variables, step_dir, model_name)


def _verify_teacher(step_dir: str) -> None:
  try:
    verify_digest(step_dir)
  except CheckpointError as e:
    raise CheckpointError(f"teacher checkpoint {step_dir} is corrupt: {e}. Retrain or "
                          "copy the teacher again; nothing was changed.") from None


def _teacher_part(tree: Any, step_dir: str) -> dict[str, Any]:
  try:
    return {"params": tree["params"]["student"],
            "batch_stats": tree["batch_stats"]["student"]}
  except (KeyError, TypeError) as e:
    raise CheckpointError(f"teacher checkpoint {step_dir} is not a train state written "
                          f"by afd_jax (missing {e})") from e


def _check_fit(variables: Any, abstract_variables: Any, step_dir: str,
               model_name: str) -> None:
  want = jax.tree.map(lambda a: tuple(a.shape), abstract_variables)
  got = jax.tree.map(lambda a: tuple(a.shape), variables)
  if jax.tree.structure(want) != jax.tree.structure(got) or want != got:
    raise CheckpointError(
        f"teacher checkpoint {step_dir} does not fit model {model_name!r}: its parameter "
        "tree or shapes differ (was it trained with another model or number of classes?)")


def damaged_checkpoints(workdir: str) -> list[str]:
  """The step directories of ``<workdir>/checkpoints`` and ``<workdir>/best`` whose bytes
  differ from their digest (read only: opening the run moves them aside)."""
  out = []
  for sub in ("checkpoints", "best"):
    d = os.path.join(workdir, sub)
    for step in sorted(s for s in os.listdir(d) if s.isdigit()) if os.path.isdir(d) else ():
      try:
        verify_digest(os.path.join(d, step))
      except CheckpointError:
        out.append(os.path.join(d, step))
  return out


def has_best(workdir: str) -> bool:
  """Whether ``<workdir>/best`` holds a checkpoint, without orbax."""
  d = os.path.join(workdir, "best")
  return os.path.isdir(d) and any(s.isdigit() for s in os.listdir(d))


def best_meta(workdir: str) -> dict[str, Any] | None:
  """The ``meta`` saved with ``<workdir>/best``'s checkpoint (None without one)."""
  if not has_best(workdir):
    return None
  d = os.path.join(workdir, "best")
  step = max(int(s) for s in os.listdir(d) if s.isdigit())
  with open(os.path.join(d, str(step), "meta", "metadata"), encoding="utf-8") as f:
    return json.load(f)


def latest_step(workdir: str) -> int:
  """The newest step saved in ``<workdir>/checkpoints`` (0 for none), without orbax."""
  d = os.path.join(workdir, "checkpoints")
  steps = [int(s) for s in os.listdir(d) if s.isdigit()] if os.path.isdir(d) else []
  return max(steps, default=0)


def read_numpy(state_dir: str) -> Any:
  """A saved pytree as host numpy arrays, whatever devices or hosts wrote it (a teacher
  trained on a pod loads on one GPU)."""
  checkpointer = ocp.PyTreeCheckpointer()
  metadata = checkpointer.metadata(state_dir)
  tree = getattr(metadata, "item_metadata", metadata)
  tree = getattr(tree, "tree", tree)
  args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  return checkpointer.restore(state_dir, restore_args=args)


def _find_step_dir(path: str) -> str:
  """Resolves a run workdir or a step directory to one step directory."""
  path = os.path.abspath(os.path.expanduser(path))
  if os.path.isdir(os.path.join(path, "state")):
    return path
  for sub in ("best", "checkpoints"):
    d = os.path.join(path, sub)
    steps = [int(s) for s in os.listdir(d) if s.isdigit()] if os.path.isdir(d) else []
    if steps:
      return os.path.join(d, str(max(steps)))
  raise CheckpointError(
      f"no teacher checkpoint found at {path!r}: expected a run workdir containing best/ "
      "or checkpoints/ (train one with its teacher config, e.g. python -m afd_jax.main "
      "--config=configs/cifar100/teacher.py:model=wrn_40_2 --workdir=runs/cifar100/wrn_40_2), or a step "
      "directory containing state/")


def write_teacher_checkpoint(workdir: str, variables: dict[str, Any],
                             meta: dict[str, Any]) -> str:
  """Writes ``variables`` as a teacher run that `load_teacher_variables` reads.

  Layout: ``<workdir>/best/0/state`` (orbax `StandardSave` of ``{'params': {'student':
  params}, 'batch_stats': {'student': batch_stats}}``, the parts of a train state a
  teacher needs) and ``<workdir>/best/0/meta`` (JSON, e.g. model name, source checkpoint,
  num_classes), as a training run's best checkpoint.

  Args:
    workdir: the teacher directory to create (distillation configs'
      ``teacher.checkpoint``).
    variables: ``{'params': ..., 'batch_stats': ...}`` of the teacher model.
    meta: JSON-serialisable description.

  Returns:
    the step directory written, ``<workdir>/best/0``.

  Raises:
    CheckpointError: `workdir` already holds a non-empty ``best/`` or ``checkpoints/``
      (nothing is overwritten or deleted).
  """
  workdir = os.path.abspath(os.path.expanduser(workdir))
  for sub in ("best", "checkpoints"):
    d = os.path.join(workdir, sub)
    if os.path.isdir(d) and os.listdir(d):
      raise CheckpointError(
          f"{d} already exists and is not empty; refusing to overwrite a run's "
          "checkpoints. Choose another --workdir or move it away.")
  tree = {"params": {"student": variables["params"]},
          "batch_stats": {"student": variables["batch_stats"]}}
  manager = _manager(os.path.join(workdir, "best"), 1, best=False)
  _save(manager, 0, tree, dict(meta))
  manager.close()
  return os.path.join(workdir, "best", "0")
