"""A workdir's own records: the config that created it, its history, its result.

A workdir is one run. ``config.json`` records the config that created it (every method
field resolved); resuming with a config that differs in anything that changes the result
is an error listing the differing fields, unless the caller allows the change, which is
then recorded in ``config_history.jsonl``. Bookkeeping fields (logging cadence,
``max_steps``, eval batch size, device count) may change freely.
"""
from __future__ import annotations

import errno
import json
import os
import time
from typing import Any

from absl import logging
import ml_collections

from afd_jax import methods

CONFIG_FILE, HISTORY_FILE, RESULT_FILE = "config.json", "config_history.jsonl", "result.json"
# Fields that change what is logged or when the run stops, never what it computes.
# steps_per_dispatch only regroups the same steps (results equal to float rounding).
BOOKKEEPING = ("max_steps", "logging", "eval_batch_size", "num_devices", "data.prefetch",
               "steps_per_dispatch")
# Fields added after workdirs were written: absent from an older config.json means these.
ADDED_FIELDS = {"seeds": None, "vmap_seeds": False, "model.init": "",
                "optim.head_lr_multiplier": 1.0, "schedule.power": 0.9,
                "data.base_size": None, "method.batch_average": True,
                "optim.name": "sgd", "data.last_batch": "drop"}


class ConfigMismatchError(ValueError):
  """The workdir was created by a config that differs in fields that change the result."""


def resolved(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """`config` as JSON-ready dicts, with every field of its method resolved."""
  d = config.to_dict()
  d["method"] = methods.resolved_fields(config.method)
  return json.loads(json.dumps(d, default=str))


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict) and key != "method":
      out.update(_flatten(v, key + "."))
    elif key == "method":
      out.update({f"method.{f}": x for f, x in v.items()})
    else:
      out[key] = v
  return out


def differences(old: dict, new: dict) -> dict[str, tuple[Any, Any]]:
  """``{field: (old, new)}`` for every non-bookkeeping field that differs."""
  a, b = {**ADDED_FIELDS, **_flatten(old)}, {**ADDED_FIELDS, **_flatten(new)}
  keep = lambda k: not any(k == f or k.startswith(f + ".") for f in BOOKKEEPING)  # noqa
  return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
          if keep(k) and a.get(k) != b.get(k)}


def check_config(workdir: str, config: ml_collections.ConfigDict, step: int,
                 allow_change: bool, write: bool) -> None:
  """Records `config` in a new workdir, or checks it against the recorded one.

  A workdir is bound to its config by its first checkpoint: until one is saved (a start
  that failed), a different config simply replaces the recorded one.

  Args:
    workdir: the run's directory.
    config: the config about to train there.
    step: the step the run resumes from (for the history).
    allow_change: continue with a changed config (recorded in the history).
    write: whether this process writes files (the chief).

  Raises:
    ConfigMismatchError: the workdir's config differs and `allow_change` is False.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  new = resolved(config)
  if not os.path.exists(path):
    if write:
      _create(workdir)
      _write_json(path, new)
    return
  with open(path, encoding="utf-8") as f:
    old = json.load(f)
  diff = differences(old, new)
  if not diff:
    return
  if not has_checkpoint(workdir):  # a start that failed before saving binds nothing
    logging.info("workdir %s has no checkpoint yet: now recorded for this config", workdir)
    if write:
      _write_json(path, new)
    return
  listed = "\n".join(f"  {k}: {a!r} (workdir) -> {b!r} (now)" for k, (a, b) in diff.items())
  if not allow_change:
    raise ConfigMismatchError(
        f"workdir {workdir} was created by another config; these fields differ:\n{listed}\n"
        "Use another --workdir for a new experiment, or pass --allow_config_change to "
        "continue this run with the new values (recorded in its config_history.jsonl).")
  if write:
    with open(os.path.join(workdir, HISTORY_FILE), "a", encoding="utf-8") as f:
      f.write(json.dumps({"step": step, "time": time.time(),
                          "changed": {k: list(v) for k, v in diff.items()}}) + "\n")
    _write_json(path, new)


def has_checkpoint(workdir: str) -> bool:
  """Whether any checkpoint was saved under `workdir` (its own, an init phase's, a
  seed's, or one moved aside as unreadable): what binds a workdir to its config."""
  for root, dirs, _ in os.walk(workdir):
    if os.path.basename(root) in ("checkpoints", "best") and any(
        d.isdigit() or d.startswith("unreadable.") for d in dirs):
      return True
    deep = os.path.relpath(root, workdir).count(os.sep) >= 2  # <wd>/<a>/<b>/checkpoints
    dirs[:] = [] if deep else [d for d in dirs if d != "tensorboard" and not d.isdigit()]
  return False


def _create(workdir: str) -> None:
  """Creates `workdir`, with an error naming it when that is impossible."""
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise OSError(e.errno, f"cannot create workdir {workdir}: {e.strerror}; pass a "
                  "--workdir you can write to") from None
  if not os.access(workdir, os.W_OK | os.X_OK):
    raise PermissionError(errno.EACCES, f"workdir {workdir} is not writable; pass a "
                          "--workdir you can write to")


def _write_json(path: str, value: Any) -> None:
  """Writes `value` atomically: a crash leaves the old file or the new one."""
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(value, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def write_result(workdir: str, result: dict[str, Any]) -> None:
  """``result.json`` (atomically; unchanged files are not rewritten)."""
  path = os.path.join(workdir, RESULT_FILE)
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      if json.load(f) == json.loads(json.dumps(result)):
        return
  _write_json(path, result)
