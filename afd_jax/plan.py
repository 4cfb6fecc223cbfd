"""An experiment plan: named runs expanded from axes, validated whole, trained in order, one table.

A plan is a list of runs, each an ordinary single-run config trained in its own resumable
workdir ``<workdir>/<run name>``. Plans come from

* a single config: one run in the workdir itself; with ``config.seeds`` one run per seed
  (``seed_<s>``) and with sweeps (``--config.sweep.method.beta=50,100``) one run per
  value (``beta=50/seed_<s>``) — every combination of the axes;
* a suite config (``runs``, ``run_order``, ``seeds``, ``single_seed_runs``, e.g.
  ``configs/quickstart.py``): each named run, over the seeds (except the single-seed
  runs), over the sweeps of the fields it has; a run's ``teacher.checkpoint`` may say
  ``{workdir}/<run>``: that run of the plan is its teacher, trained first; so may its
  ``model.init`` (pretrained weights, `afd_jax.pretrained`): that run is trained first
  and is not a row of the table (its result is in ``results.json``); its ``published``
  entries put the papers' numbers beside the rows (``configs/compare.py``: methods ×
  teacher→student pairs × seeds).

`run_plan` first validates every run (`validate`: config values, model and method names,
the method's pairing of the networks' features, the dataset, the teacher's checkpoint or
the plan run producing it), so a mistake in the last run fails in seconds, naming the run
and the field, before anything trains. A method that cannot pair the networks
(`methods.PairingError`) or diverges becomes an ``n/a (reason)`` row and the other runs go
on. A finished run (``result.json`` under the same config) is skipped and an interrupted
one resumes, so rerunning a plan only rewrites its table.

With ``config.vmap_seeds=True`` the runs that differ only in seed or in traced scalars
(numeric method fields, ``optim.lr``, ``optim.weight_decay``) train as one vmapped
program (`afd_jax.group`, in ``<workdir>/vmapped_<digest>``); a field that changes a shape
or Python control flow splits the group automatically (its trace fails: `group.traceable`).

The table (`afd_jax.plan_results`, `afd_jax.analysis.comparison`: mean ± std over seeds,
Δ vs the student alone, the published number, the bar chart) is written by the chief
process to ``<workdir>/results.{md,json,png}``.
"""
from __future__ import annotations

import ast
import copy
import dataclasses
import hashlib
import itertools
import json
import os
import time
from typing import Any, Callable

import ml_collections
import numpy as np

from afd_jax import (checkpointing, device_data, faults, group, init_phase, methods,
                     parallel, tasks, train, train_state, validation)
from afd_jax import plan_results
from afd_jax import workdir as workdir_lib
from afd_jax.analysis import comparison
from afd_jax.datasets.availability import DatasetNotAvailableError

TEACHER_REF = "{workdir}/"
# Errors `validate` reports as "run <name>: <message>".
CONFIG_ERRORS = (ValueError, KeyError, TypeError, AttributeError,
                 checkpointing.CheckpointError, DatasetNotAvailableError)


class PlanError(ValueError):
  """A run of the plan cannot run as configured (the message names the run and field)."""


@dataclasses.dataclass
class PlannedRun:
  """One run of a plan.

  Attributes:
    name: its workdir relative to the plan's ('' for the plan's workdir itself).
    config: an ordinary single-run config (``seeds`` None).
    row: its table row within a pair: ``'teacher'``, ``'none'`` (the student alone), a
      method name, with the swept values appended (``'afd beta=50'``).
    pairs: the (teacher, student) table sections it is shown in.
    base: the run's name without its seed part (runs sharing it are one row's seeds).
    hparams: ``{config path: value}`` of the swept fields.
    needs: plan runs that must finish first (its teacher, its ``model.init``).
  """
  name: str
  config: ml_collections.ConfigDict
  row: str
  pairs: tuple[tuple[str, str], ...]
  base: str
  hparams: dict[str, Any] = dataclasses.field(default_factory=dict)
  needs: tuple[str, ...] = ()


@dataclasses.dataclass
class Plan:
  """Runs in training order, and how to tabulate them."""
  runs: list[PlannedRun]
  dataset: str
  vmap: bool = False
  paper: comparison.PaperLookup | None = None

  @property
  def single(self) -> bool:
    """A plan of one run in the workdir itself (no table)."""
    return len(self.runs) == 1 and self.runs[0].name == ""


# ----------------------------------------------------------------------------- axes

def parse_sweep(config: ml_collections.ConfigDict, path: str, text: str | list) -> list:
  """The values of one sweep axis, ``'50,100,200'`` -> [50.0, 100.0, 200.0], typed as the
  field (a method field by the method's type, `methods.parse_field`).

  Raises:
    ValueError: an unknown field (listing the accepted ones), a non-scalar field, or a
      value that does not parse.
  """
  items = text if isinstance(text, (list, tuple)) else [t.strip() for t in
                                                        str(text).split(",") if t.strip()]
  if not items:
    raise ValueError(f"--config.sweep.{path} has no values; accepted: comma-separated "
                     "values, e.g. --config.sweep.method.beta=50,100")
  section, _, field = path.rpartition(".")
  if section == "method" or section.endswith(".method"):
    return [v if not isinstance(v, str) else methods.parse_field(
        config.method.name, field, v) for v in items]
  try:
    current = _get(config, path)
  except (KeyError, AttributeError):
    raise ValueError(f"--config.sweep.{path}: config has no field {path!r}; accepted: a "
                     "scalar field of the config, e.g. optim.lr, method.<field>") from None
  if isinstance(current, ml_collections.ConfigDict) or isinstance(current, (list, tuple)):
    raise ValueError(f"--config.sweep.{path}: {path!r} is not a scalar field; accepted: "
                     "numbers, strings and booleans")
  out = []
  for v in items:
    if isinstance(v, str) and not isinstance(current, str):
      try:
        v = ast.literal_eval(v)
      except (ValueError, SyntaxError):
        raise ValueError(f"--config.sweep.{path}={v!r} does not parse as a "
                         f"{type(current).__name__}") from None
    if isinstance(current, float) and isinstance(v, int) and not isinstance(v, bool):
      v = float(v)
    if current is not None and type(v) is not type(current):
      raise ValueError(f"--config.sweep.{path}={v!r} is a {type(v).__name__}; the field "
                       f"is a {type(current).__name__}")
    out.append(v)
  return out


def _get(config, path: str):
  node = config
  for key in path.split("."):
    node = node[key]
  return node


def _set(config: ml_collections.ConfigDict, path: str, value) -> None:
  *parents, last = path.split(".")
  node = config
  for key in parents:
    node = node[key]
  with node.unlocked():
    node[last] = value


def _short(path: str) -> str:
  """A swept field's name in run names and rows: ``method.beta`` -> ``beta``."""
  return path[len("method."):] if path.startswith("method.") else path


def _value_text(v) -> str:
  return f"{v:g}" if isinstance(v, float) else str(v)


def _single_run_config(config: ml_collections.ConfigDict, seed: int
                       ) -> ml_collections.ConfigDict:
  c = copy.deepcopy(config)
  with c.unlocked():
    c.seed = seed
    if "seeds" in c:
      c.seeds = None
    if "vmap_seeds" in c:
      c.vmap_seeds = False
  return c


def _expand(base_name: str, config, seeds, sweep: dict[str, list], row: str, pairs,
            needs=()) -> list[PlannedRun]:
  """Every combination of `sweep` × `seeds` of one run."""
  paths = list(sweep)
  out = []
  for values in itertools.product(*(sweep[p] for p in paths)):
    hparams = dict(zip(paths, values))
    suffix = ",".join(f"{_short(p)}={_value_text(v)}" for p, v in hparams.items())
    base = "/".join(filter(None, (base_name, suffix)))
    label = " ".join(filter(None, (row, suffix.replace(",", " "))))
    for seed in seeds:
      c = _single_run_config(config, seed)
      for p, v in hparams.items():
        _set(c, p, v)
      name = "/".join(filter(None, (base, f"seed_{seed}" if len(seeds) > 1 else "")))
      out.append(PlannedRun(name, c, label, pairs, base, hparams, needs))
  return out


def _seeds(config) -> list[int]:
  values = config.get("seeds") or (config.get("seed", 0),)
  values = list(values)
  if (len(set(values)) != len(values)
      or not all(isinstance(s, int) and not isinstance(s, bool) for s in values)):
    raise ValueError(f"config.seeds={tuple(values)!r}; accepted: distinct integers, e.g. "
                     "--config.seeds=0,1,2")
  return values


def from_config(config: ml_collections.ConfigDict, sweep: dict[str, Any] | None = None
                ) -> Plan:
  """The plan of a single-run or suite config, with sweeps ``{path: values or text}``.

  Raises:
    ValueError: bad seeds, an unknown or non-scalar sweep field, a suite naming a run it
      does not define.
  """
  sweep = dict(sweep or {})
  if "runs" in config:
    return _suite_plan(config, sweep,
                       comparison.published_lookup(config.get("published") or ()))
  seeds = _seeds(config)
  axes = {p: parse_sweep(config, p, v) for p, v in sweep.items()}
  if not axes and not config.get("seeds"):
    c = _single_run_config(config, config.get("seed", 0))
    return Plan([PlannedRun("", c, c.method.name, (_pair(c),), "")], config.data.name)
  runs = _expand("", config, seeds, axes, config.method.name, (_pair(config),))
  return Plan(runs, config.data.name, bool(config.get("vmap_seeds")))


def _pair(config) -> tuple[str, str]:
  teacher = config.teacher.name if config.method.name != "none" else ""
  return (teacher, config.model.name)


def _suite_plan(suite: ml_collections.ConfigDict, sweep: dict[str, Any], paper) -> Plan:
  order = list(suite.run_order)
  unknown = [n for n in order if n not in suite.runs]
  if unknown:
    raise ValueError(f"suite run_order names {unknown}, not in runs: {list(suite.runs)}")
  single = set(suite.get("single_seed_runs", ()))
  seeds = _seeds(suite)
  configs = {n: suite.runs[n] for n in order}
  teachers = {}  # run name -> the runs it teaches
  inits = {}  # run name -> the runs starting from its weights (model.init)
  for name, c in configs.items():
    for field, found in (("teacher.checkpoint", teachers), ("model.init", inits)):
      source = _plan_ref((_get(c, field) if _has_field(c, field) else "") or "")
      if source is None:
        continue
      if source not in configs:
        raise ValueError(f"suite run {name!r}: {field}={_get(c, field)!r} names run "
                         f"{source!r}, not in run_order: {order}")
      if order.index(source) >= order.index(name):
        raise ValueError(f"suite run {name!r} needs run {source!r} ({field}) first; "
                         f"run_order: {order}")
      found.setdefault(source, []).append(name)
  pretraining = set(inits) - set(teachers)  # not a row of the table
  student_pairs = {n: _pair(c) for n, c in configs.items()
                   if n not in teachers and n not in pretraining}
  used = set()
  runs = []
  for name, c in configs.items():
    if name in pretraining:
      row, pairs = "pretraining", ()
    elif name in teachers:
      row = "teacher"
      pairs = tuple(dict.fromkeys(student_pairs[s] for s in teachers[name]
                                  if s in student_pairs)) or ((c.model.name, ""),)
    else:
      row = c.method.name
      pairs = (student_pairs[name],)
      if row == "none":  # the student alone: a row of every pair of its model
        pairs = tuple(dict.fromkeys(p for p in student_pairs.values()
                                    if p[1] == c.model.name and p[0])) or pairs
    if any((p, row) in used for p in pairs):
      row = name  # two runs of one kind in a pair: the run's own name
    used.update((p, row) for p in pairs)
    axes = {p: parse_sweep(c, p, v) for p, v in sweep.items() if _has_field(c, p)}
    needs = tuple(dict.fromkeys(t for found in (teachers, inits)
                                for t, taught in found.items() if name in taught))
    runs += _expand(name, c, [seeds[0]] if name in single else seeds, axes, row, pairs,
                    needs)
  missing = [p for p in sweep if not any(_has_field(c, p) for c in configs.values())]
  if missing:
    raise ValueError(f"--config.sweep: no run of the suite has field(s) {missing}; runs: "
                     f"{order}")
  dataset = configs[next((n for n in order if n not in pretraining), order[0])].data.name
  return Plan(runs, dataset, bool(suite.get("vmap_seeds")), paper)


def _plan_ref(path: str) -> str | None:
  """The plan run a ``{workdir}/<run>[/...]`` path names, else None."""
  return path[len(TEACHER_REF):].split("/")[0] if path.startswith(TEACHER_REF) else None


def _has_field(config, path: str) -> bool:
  section, _, field = path.rpartition(".")
  if section == "method":
    return field in {f.name for f in
                     dataclasses.fields(methods.hparams_class(config.method.name))}
  try:
    _get(config, path)
    return True
  except (KeyError, AttributeError):
    return False


# ------------------------------------------------------------------------ validation

@dataclasses.dataclass
class Checked:
  """What `validate` learnt of a run: why it cannot run (n/a) and whether it can join a
  vmapped group."""
  error: str | None = None
  groupable: bool = False


def _teacher_dir(run: PlannedRun, workdir: str) -> str:
  ref = run.config.teacher.checkpoint
  return ref.replace("{workdir}", workdir) if ref else ref


def _resolve_teacher(run: PlannedRun, workdir: str) -> None:
  """``{workdir}`` in the run's teacher checkpoint and ``model.init`` -> the plan's
  workdir."""
  if run.config.teacher.get("checkpoint"):
    with run.config.teacher.unlocked():
      run.config.teacher.checkpoint = _teacher_dir(run, workdir)
  if run.config.model.get("init"):
    with run.config.model.unlocked():
      run.config.model.init = run.config.model.init.replace("{workdir}", workdir)


def _produced(path: str, run: PlannedRun, workdir: str) -> bool:
  """Whether `path` (resolved) is the workdir of a plan run `run` needs (not there yet
  while the plan is validated)."""
  rel = os.path.relpath(os.path.abspath(path), workdir) if path else ".."
  return any(rel == d or rel.startswith(d + "/") for d in run.needs)


def validate(plan: Plan, workdir: str, produced: set[str] | None = None
             ) -> dict[str, Checked]:
  """Checks every run of `plan` without training anything (seconds per run).

  Returns:
    ``{run name: Checked}``: an ``error`` for a run whose method cannot pair the
    networks (its n/a row), ``groupable`` for one a vmapped group can hold.

  Raises:
    PlanError: naming the run and the problem (an unknown model, method or field, a
      value out of range, a dataset not found, a missing teacher checkpoint).
  """
  mesh_size = parallel.make_mesh(None).size
  datasets: dict[str, Any] = {}
  out = {}
  for run in plan.runs:
    label = run.name or workdir
    try:
      c = copy.deepcopy(run.config)
      if c.model.get("init") and _produced(c.model.init, run, workdir):
        c.model.init = ""  # trained by an earlier run of the plan (checked when it opens)
      if c.get("num_devices"):
        mesh_size = c.num_devices
      train.validate_config(c, mesh_size)
      methods.resolve(c.method)
      key = json.dumps(c.data.to_dict(), sort_keys=True, default=str)
      datasets[key] = dataset = train.open_dataset(c, datasets.get(key))
      c.data.image_size = dataset.info.image_size
      # The pipeline 'auto' resolves to, as the run's workdir records it (`train.claim`):
      # so that a finished run's recorded config compares equal.
      run.config.data.pipeline = device_data.choose_pipeline(c.data, dataset)
      _check_teacher(run, c, workdir)
      if not _produced(_teacher_dir(run, workdir), run, workdir):
        validation.check_run(c, dataset)  # (a plan run's teacher: when it is trained)
      spe = max(1, dataset.steps_per_epoch(c.batch_size))
      # (the split's labels are read when the run opens; any labels of every class here)
      labels = (np.arange(dataset.info.num_train_examples) % dataset.info.num_classes
                if methods.needs_labels(c.method.name) else None)
      try:
        nets = train_state.build_networks(c, dataset.info.num_classes, spe, labels)
      except methods.PairingError as e:
        out[run.name] = Checked(error=f"{type(e).__name__}: {e}")
        continue
      groupable = (plan.vmap and nets.distiller.init_phase is None
                   and tasks.of_model(c.model.name).seed_groups
                   and not c.model.get("init")
                   and device_data.choose_pipeline(c.data, dataset) == "device")
      out[run.name] = Checked(groupable=groupable)
    except PlanError:
      raise
    except CONFIG_ERRORS as e:
      raise PlanError(f"run {label!r}: {e}") from None
  return out


def _check_teacher(run: PlannedRun, c, workdir: str) -> None:
  if not methods.needs_teacher(c.method.name) or c.teacher.get("random_init"):
    return
  if not c.teacher.name:
    raise ValueError(f"method {c.method.name!r} needs a teacher: config.teacher.name is "
                     "empty")
  if _produced(_teacher_dir(run, workdir), run, workdir):
    return  # produced by an earlier run of the plan
  path = _teacher_dir(run, workdir)
  if not path or not os.path.exists(path):
    raise ValueError(f"config.teacher.checkpoint={path!r} does not exist; accepted: a "
                     "teacher run's workdir (or one of its step directories), or an "
                     "imported one (python -m afd_jax.import_torch)")


# ------------------------------------------------------------------------- execution

def train_run(config: ml_collections.ConfigDict, workdir: str,
              allow_config_change: bool = False) -> dict[str, float]:
  """One run: `train.train_and_evaluate`, handed the init phase of two-stage methods."""
  return train.train_and_evaluate(config, workdir, allow_config_change,
                                  init_phase=init_phase.run)


def finished_result(config: ml_collections.ConfigDict, run_dir: str) -> dict | None:
  """The result of a run that `config` would not continue (same config, same
  ``max_steps``, its checkpoints intact), else None (then the run trains or resumes, or
  opens to move a damaged checkpoint aside and save a new best)."""
  paths = [os.path.join(run_dir, f) for f in (workdir_lib.RESULT_FILE,
                                               workdir_lib.CONFIG_FILE)]
  if not all(os.path.exists(p) for p in paths):
    return None
  with open(paths[1], encoding="utf-8") as f:
    recorded = json.load(f)
  if (recorded.get("max_steps") != config.max_steps or
      workdir_lib.differences(recorded, workdir_lib.resolved(config))):
    return None
  with open(paths[0], encoding="utf-8") as f:
    result = json.load(f)
  lost_best = (os.path.isdir(os.path.join(run_dir, "checkpoints"))  # not a group member
               and not checkpointing.has_best(run_dir)
               and any(result.get(f"best_{t.score}", t.no_score) > t.no_score
                       for t in map(tasks.get, tasks.names())))
  if lost_best or checkpointing.damaged_checkpoints(run_dir):
    return None
  return result


def _vmappable(path: str, value) -> bool:
  return ((path.startswith("method.") or path in train_state.OPTIMIZER_HPARAMS)
          and isinstance(value, (int, float)) and not isinstance(value, bool))


def _group_key(run: PlannedRun) -> str:
  """Runs with equal keys differ only in seed and traced values."""
  c = run.config.to_dict()
  c["seed"] = None
  for p, v in run.hparams.items():
    if _vmappable(p, v):
      node = c
      *parents, last = p.split(".")
      for k in parents:
        node = node[k]
      node[last] = None
  untraced = {p: v for p, v in run.hparams.items() if not _vmappable(p, v)}
  return json.dumps([c, sorted(untraced.items())], sort_keys=True, default=str)


def units(plan: Plan, checked: dict[str, Checked]) -> list[list[PlannedRun]]:
  """The plan's runs in order, vmappable runs with equal `_group_key` merged into one
  group (placed at its first member); a group of one is a plain run."""
  out, by_key = [], {}
  for run in plan.runs:
    info = checked.get(run.name, Checked())
    if info.error is None and info.groupable:
      key = _group_key(run)
      if key in by_key:
        by_key[key].append(run)
        continue
      by_key[key] = [run]
      out.append(by_key[key])
    else:
      out.append([run])
  return out


def group_dir(workdir: str, members: list[PlannedRun]) -> str:
  """A group's workdir: named by a digest of its members (names and traced values)."""
  text = json.dumps([[m.name, sorted(m.hparams.items())] for m in members], default=str)
  return os.path.join(workdir, "vmapped_" + hashlib.sha1(text.encode()).hexdigest()[:10])


def _train_group(members: list[PlannedRun], workdir: str, allow: bool,
                 log: Callable[[str], None]) -> dict[str, dict]:
  """Trains a group, or (its trace fails) its members one by one."""
  traced = {p for m in members for p, v in m.hparams.items() if _vmappable(p, v)}
  gm = tuple(group.Member(m.name, os.path.join(workdir, m.name), m.config,
                          {p: m.hparams[p] for p in sorted(traced)}) for m in members)
  reason = group.untraceable(gm)
  if reason is not None:
    log(f"--- not vmapped ({reason}): its {len(members)} runs one after another")
    return {m.name: train_run(m.config, os.path.join(workdir, m.name), allow)
            for m in members}
  path = group_dir(workdir, members)
  log(f"=== vmapped group of {len(members)} -> {path}")
  return group.train_group(gm, path, allow)


def run_plan(plan: Plan, workdir: str, allow_config_change: bool = False,
             log: Callable[[str], None] | None = None) -> dict[str, Any]:
  """Validates, trains (skipping finished runs) and tabulates `plan` under `workdir`.

  Returns:
    a single run's result (`train.train_and_evaluate`'s), else ``{'runs': {run name:
    result or {'error': reason}}, 'table': the Markdown}``.

  Raises:
    PlanError: a run that cannot run as configured (before anything trains); all that
      `train.train_and_evaluate` raises (a single run's divergence included).
  """
  log = log or (lambda text: print(text, flush=True) if parallel.is_chief() else None)
  workdir = os.path.abspath(os.path.expanduser(workdir))
  start = time.time()
  for run in plan.runs:
    _resolve_teacher(run, workdir)
  checked = validate(plan, workdir)
  if plan.single:
    run = plan.runs[0]
    if checked[run.name].error:
      raise PlanError(f"run {workdir!r}: {checked[run.name].error}")
    return train_run(run.config, workdir, allow_config_change)
  log(f"plan: {len(plan.runs)} runs validated in {time.time() - start:.1f} s")
  results: dict[str, dict] = {}
  for unit in units(plan, checked):
    for run in list(unit):
      failed = [d for d in run.needs if any(
          "error" in r for n, r in results.items() if n == d or n.startswith(d + "/"))]
      if checked[run.name].error or failed:
        results[run.name] = {"error": checked[run.name].error
                             or f"the run it needs, {failed[0]!r}, did not finish"}
        log(f"--- {run.name}: n/a ({results[run.name]['error'].splitlines()[0]})")
        unit.remove(run)
    done = {r.name: finished_result(r.config, os.path.join(workdir, r.name)) for r in unit}
    for r in unit:
      if done[r.name] is not None:
        results[r.name] = done[r.name]
        log(f"--- {r.name}: finished earlier")
    todo = [r for r in unit if done[r.name] is None]
    if not todo:
      continue
    try:
      if len(todo) > 1:
        results.update(_train_group(todo, workdir, allow_config_change, log))
      else:
        log(f"=== {todo[0].name} -> {os.path.join(workdir, todo[0].name)}")
        results[todo[0].name] = train_run(todo[0].config,
                                          os.path.join(workdir, todo[0].name),
                                          allow_config_change)
    except faults.Diverged as e:
      for r in todo:
        results[r.name] = {"error": f"diverged: {e}"}
    for r in todo:
      log(plan_results.format_result(r.name, results[r.name]))
  table = plan_results.write_table(plan, results, workdir)
  log(table)
  return {"runs": results, "table": table}


def run_config(config: ml_collections.ConfigDict, workdir: str,
               sweep: dict[str, Any] | None = None, allow_config_change: bool = False
               ) -> dict[str, Any]:
  """`from_config` then `run_plan` (what ``python -m afd_jax.main`` does)."""
  return run_plan(from_config(config, sweep), workdir, allow_config_change)
