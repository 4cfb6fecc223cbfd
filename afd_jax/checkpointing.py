"""Orbax checkpoints of the whole train state: the last k, the best, and teachers.

Layout inside a run's workdir::

    checkpoints/<step>/{state,meta}   the last `keep` saves (resume reads the newest)
    best/<step>/{state,meta}          the single best one by eval top-1 (teachers load it)

``state`` is the train-state pytree (orbax `StandardSave`), ``meta`` a small JSON dict
(epoch, best top-1 so far, model name, ...).
"""
from __future__ import annotations

import os
from typing import Any

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
  """A checkpoint is missing, corrupt or does not fit the model it is loaded into."""


def _manager(directory: str, keep: int, best: bool) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=True, enable_async_checkpointing=False,
      best_fn=(lambda m: m["top1"]) if best else None, best_mode="max")
  return ocp.CheckpointManager(os.path.abspath(directory), options=options,
                               item_names=("state", "meta"))


class RunCheckpoints:
  """The last-k and best checkpoint managers of one run."""

  def __init__(self, workdir: str, keep: int = 3):
    self.latest = _manager(os.path.join(workdir, "checkpoints"), keep, best=False)
    self.best = _manager(os.path.join(workdir, "best"), 1, best=True)

  def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
    """Saves `state` and `meta` as the newest checkpoint (no-op if `step` is saved)."""
    if step in self.latest.all_steps():
      return
    self.latest.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))
    self.latest.wait_until_finished()

  def save_best(self, step: int, state: Any, meta: dict[str, Any], top1: float) -> None:
    """Replaces the best checkpoint with this one."""
    if step in self.best.all_steps():
      return
    self.best.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
        metrics={"top1": float(top1)})
    self.best.wait_until_finished()

  def restore_latest(self, abstract_state: Any) -> tuple[Any, dict[str, Any]] | None:
    """(state, meta) of the newest readable checkpoint, or None for a fresh workdir.

    An unreadable newer checkpoint (a crash mid-write on a filesystem without atomic
    renames, a damaged disk) is moved aside to ``checkpoints/unreadable.<step>`` with a
    warning naming it and the one resumed from; nothing is deleted.

    Raises:
      CheckpointError: no checkpoint can be read into `abstract_state`; the message
        names the newest one's path and error.
    """
    failures = []
    for step in sorted(self.latest.all_steps(), reverse=True):
      try:
        out = self.latest.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
      except Exception as e:  # orbax raises many types; all mean "cannot resume from it"
        failures.append((step, e))
        continue
      for bad, e in failures:
        src = os.path.join(str(self.latest.directory), str(bad))
        dst = os.path.join(str(self.latest.directory), f"unreadable.{bad}")
        if jax.process_index() == 0:
          os.replace(src, dst)
        logging.warning("checkpoint %s is unreadable (%s: %s); moved to %s, resuming "
                        "from step %d", src, type(e).__name__, e, dst, step)
      if failures:
        self.latest.reload()
      return out["state"], dict(out["meta"])
    if not failures:
      return None
    step, e = failures[0]
    path = os.path.join(str(self.latest.directory), str(step))
    raise CheckpointError(
        f"cannot resume from checkpoint {path} (nor from any older one): "
        f"{type(e).__name__}: {e}. It is corrupt or was written by a different "
        "model/method config. Use another --workdir; nothing was deleted.") from None

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
  try:
    restored = read_numpy(os.path.join(step_dir, "state"))
  except Exception as e:
    raise CheckpointError(f"cannot read teacher checkpoint {step_dir}: "
                          f"{type(e).__name__}: {e}") from e
  try:
    variables = {"params": restored["params"]["student"],
                 "batch_stats": restored["batch_stats"]["student"]}
  except (KeyError, TypeError) as e:
    raise CheckpointError(f"teacher checkpoint {step_dir} is not a train state written "
                          f"by afd_jax (missing {e})") from e
  want = jax.tree.map(lambda a: tuple(a.shape), abstract_variables)
  got = jax.tree.map(lambda a: tuple(a.shape), variables)
  if jax.tree.structure(want) != jax.tree.structure(got) or want != got:
    raise CheckpointError(
        f"teacher checkpoint {step_dir} does not fit model {model_name!r}: its parameter "
        "tree or shapes differ (was it trained with another model or number of classes?)")
  return variables


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
  manager.save(0, args=ocp.args.Composite(
      state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(dict(meta))))
  manager.wait_until_finished()
  manager.close()
  return os.path.join(workdir, "best", "0")
