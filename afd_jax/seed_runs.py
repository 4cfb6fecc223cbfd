"""Several seeds of one config, one result: ``config.seeds=(0, 1, 2)``, a mean ± std table.

``train.train_and_evaluate`` hands a config with non-empty ``seeds`` to `train_and_evaluate`
here (``python -m afd_jax.main --config=... --config.seeds=0,1,2`` — ml_collections reads
``0,1,2``, ``(0,1,2)`` or ``[0,1,2]`` as a tuple). Two ways:

* ``vmap_seeds=False``: the seeds train one after another, each an ordinary run with
  ``config.seed = s`` in ``<workdir>/seed_<s>`` (resumable as any run).
* ``vmap_seeds=True``: every seed in one program. Needs the device-resident input
  (``data.pipeline='device'``, or ``'auto'`` resolving to it; `device_data`). Params,
  optimizer state, BatchNorm statistics, method state and step are stacked on a leading
  axis S (`seeds.vmapped_steps`); seed k is initialised as a run with
  ``config.seed = seeds[k]`` and draws that run's batches, so it computes what its own run
  computes (to float rounding). Each seed's batch differs, so the frozen teacher's forward
  runs once per seed (inside the vmap): only the teacher variables are shared. The stacked
  state is one orbax checkpoint in ``<workdir>/checkpoints`` (resume as any run); ``best/``
  holds the stacked state of the best *mean* top-1. At eval times each seed is evaluated in
  turn (its unstacked student through the run's one `evaluation.Evaluator`: one compiled
  eval step for all seeds). ``metrics.jsonl`` rows hold ``seed<s>/train/...`` and
  ``seed<s>/eval/top1`` etc. per seed, ``train/...`` / ``eval/...`` their mean and
  ``eval/<metric>_std``. The method's eval analyses (e.g. AFD's link heatmap) are not run.

Either way, ``<workdir>/result.json`` holds ``per_seed`` final metrics, their ``mean`` and
``std`` (ddof 1), the means also at top level (``top1``, ``top5``, ``best_top1``), and
``<workdir>/seeds.md`` (also logged) the `seeds.summary` table.
"""
from __future__ import annotations

import copy
import functools
import os

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from afd_jax import (checkpointing, evaluation, metric_writer, parallel, seeds
                     as seeds_lib, train, train_state)
from afd_jax import workdir as workdir_lib

SUMMARY_FILE = "seeds.md"
SUMMARY_METRICS = ("top1", "top5", "best_top1")
VMAP_PIPELINES = ("device", "auto")


def _std(values) -> float:
  """The sample standard deviation (ddof 1) of per-seed values; 0 for one seed."""
  return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def check_seeds(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """``config.seeds`` validated: distinct integers; with ``vmap_seeds``, a device pipeline.

  Raises:
    ValueError: naming the value and the accepted ones.
  """
  values = tuple(config.seeds)
  if (not values or len(set(values)) != len(values)
      or not all(isinstance(s, int) and not isinstance(s, bool) for s in values)):
    raise ValueError(f"config.seeds={values!r}; accepted: distinct integers, e.g. "
                     "--config.seeds=0,1,2")
  mode = config.data.get("pipeline", "tfdata")
  if config.get("vmap_seeds") and mode not in VMAP_PIPELINES:
    raise ValueError(f"config.vmap_seeds=True trains every seed on the device-resident "
                     f"split, but config.data.pipeline={mode!r}; accepted: "
                     f"{', '.join(VMAP_PIPELINES)} (or vmap_seeds=False: one after another)")
  return values


def seed_config(config: ml_collections.ConfigDict, seed: int) -> ml_collections.ConfigDict:
  """`config` as the ordinary run of one `seed` (``seeds`` cleared)."""
  c = copy.deepcopy(config)
  c.seed, c.seeds, c.vmap_seeds = seed, None, False
  return c


def stacked_create(seeds: tuple[int, ...]):
  """A `train_state.create` of every seed, stacked (S, ...), for `train.open_run`; seed k
  is ``create(nets, PRNGKey(seeds[k]))``, as its own run's (unrolled, not vmapped: the
  initialisation draws 'rbg' bits, which vmap may change)."""

  def create(nets, rng, image_size):
    del rng  # each seed's own key
    states = [train_state.create(nets, jax.random.PRNGKey(s), image_size) for s in seeds]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *states)

  return create


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       allow_config_change: bool = False) -> dict:
  """Trains every seed of ``config.seeds`` in `workdir` (see the module docstring).

  Returns:
    the result written to ``result.json``: ``seeds``, ``per_seed`` ({str(seed): final
    metrics}), ``mean`` and ``std`` of `SUMMARY_METRICS`, the means at top level,
    ``step``, ``train_seconds`` (``teacher_top1`` with a teacher).

  Raises:
    ValueError: invalid seeds, or ``vmap_seeds`` without the device pipeline; and all
      that `train.train_and_evaluate` raises.
  """
  values = check_seeds(config)
  path = os.path.abspath(os.path.expanduser(workdir))
  train.validate_config(config, parallel.make_mesh(config.num_devices).size)
  workdir_lib.check_config(path, config, checkpointing.latest_step(path),
                           allow_config_change, write=parallel.is_chief())
  if config.vmap_seeds:
    per_seed, common = _train_vmapped(config, path, values)
  else:
    per_seed = {s: train.train_and_evaluate(seed_config(config, s),
                                            os.path.join(path, f"seed_{s}"),
                                            allow_config_change) for s in values}
    last = per_seed[values[-1]]
    common = {"step": last["step"],
              "train_seconds": sum(r["train_seconds"] for r in per_seed.values()),
              **{k: last[k] for k in ("teacher_top1",) if k in last}}
  return _finish(path, values, per_seed, common)


def _finish(path: str, values, per_seed: dict, common: dict) -> dict:
  """Writes ``result.json`` and ``seeds.md`` (chief) and logs the table."""
  table_values = {m: [per_seed[s][m] for s in values] for m in SUMMARY_METRICS
                  if all(m in per_seed[s] for s in values)}
  result = {**common, "seeds": list(values),
            "per_seed": {str(s): per_seed[s] for s in values},
            "mean": {m: float(np.mean(v)) for m, v in table_values.items()},
            "std": {m: _std(v) for m, v in table_values.items()}}
  result.update(result["mean"])
  table = seeds_lib.summary(table_values)
  logging.info("%d seeds %s:\n%s", len(values), list(values), table)
  if parallel.is_chief():
    workdir_lib.write_result(path, result)
    with open(os.path.join(path, SUMMARY_FILE), "w", encoding="utf-8") as f:
      f.write(table + "\n")
  return result


class SeedsDispatcher:
  """``dispatcher(states, n) -> (states, metrics (n, S))``: n vmapped steps in one call
  (`multi_step.Dispatcher` for stacked states; one program per n, states donated)."""

  def __init__(self, nets, mesh, teacher_vars, sampler, data, values):
    self.nets, self.teacher_vars, self.sampler, self.data = nets, teacher_vars, sampler, data
    self.rep, self.sharded = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    self.seeds = jax.device_put(jnp.asarray(values, jnp.int32), self.rep)
    self.programs = {}

  def __call__(self, states, n: int):
    if n not in self.programs:
      fn = functools.partial(seeds_lib.vmapped_steps, self.nets, self.sampler, n,
                             batch_sharding=self.sharded)
      self.programs[n] = jax.jit(fn, in_shardings=(self.rep,) * 4,
                                 out_shardings=(self.rep, self.rep), donate_argnums=(0,))
    return self.programs[n](states, self.data, self.seeds, self.teacher_vars)


class _Gather:
  """A `metric_writer.MetricWriter` stand-in: one seed's scalars, renamed ``seed<s>/...``."""

  def __init__(self, prefix: str, into: dict):
    self.prefix, self.into = prefix, into

  def write_scalars(self, step: int, values) -> None:
    del step
    self.into.update({self.prefix + k: float(v) for k, v in values.items()})


class _TrainLog:
  """Train metrics of every seed, fetched once per log; each seed through its own
  `metric_writer.TrainWindow` (its divergence check), one row: per seed and mean."""

  def __init__(self, writer, values, batch_size: int):
    self.writer, self.values, self.metrics, self.row = writer, values, [], {}
    self.windows = [metric_writer.TrainWindow(_Gather(f"seed{s}/", self.row), batch_size)
                    for s in values]

  def write(self, step: int, bar) -> None:
    if not self.metrics:
      return
    got = jax.device_get(self.metrics)  # [{name: (n, S)}]
    self.metrics = []
    self.row.clear()
    for k, window in enumerate(self.windows):
      window.metrics = [{name: v[:, k] for name, v in m.items()} for m in got]
      window.write(step, bar)
    first = f"seed{self.values[0]}/"
    for name in [n[len(first):] for n in self.row if n.startswith(first)]:
      per = [self.row[f"seed{s}/{name}"] for s in self.values]
      self.row[name] = float(np.sum(per) if name.endswith("images_per_sec") else np.mean(per))
    self.writer.write_scalars(step, self.row)


def _evaluate(run: train.Run, states, step: int, values, evaluate, writer) -> None:
  """Evaluates each seed's student; keeps per-seed bests and the best mean checkpoint."""
  row, per = {}, {}
  for k, s in enumerate(values):
    per[str(s)] = evaluate(run.nets.student,
                           train_state.student_variables(seeds_lib.unstack(states, k)))
    row.update({f"seed{s}/eval/{m}": v for m, v in per[str(s)].items()})
  for m in per[str(values[0])]:
    v = [r[m] for r in per.values()]
    row[f"eval/{m}"], row[f"eval/{m}_std"] = float(np.mean(v)), _std(v)
  writer.write_scalars(step, row)
  logging.info("step %d (epoch %.2f): eval top-1 %s (mean %.2f)", step,
               step / run.steps_per_epoch,
               ", ".join(f"seed {s}: {per[str(s)]['top1']:.2f}" for s in values),
               row["eval/top1"])
  best = run.meta.setdefault("best_top1_seeds", {str(s): -1.0 for s in values})
  for s, r in per.items():
    best[s] = max(best[s], r["top1"])
  run.meta["last_eval_seeds"] = {s: dict(r, step=step) for s, r in per.items()}
  if row["eval/top1"] > run.meta["best_top1"]:
    run.meta["best_top1"] = row["eval/top1"]
    run.ckpts.save_best(step, states, dict(run.meta, epoch=step / run.steps_per_epoch),
                        row["eval/top1"])


def _train_vmapped(config, path: str, values) -> tuple[dict, dict]:
  """The flat loop of `train.train_and_evaluate` over stacked states (module docstring).

  Returns:
    ({seed: final metrics}, {'step', 'train_seconds'[, 'teacher_top1']}).
  """
  chief = parallel.is_chief()
  run = train.open_run(config, path, create=stacked_create(values))
  if run.nets.distiller.init_phase is not None:
    run.ckpts.close()
    raise ValueError(f"config.vmap_seeds=True cannot run the init phase of the two-stage "
                     f"method {config.method.name!r}; accepted: vmap_seeds=False (the "
                     "seeds one after another)")
  if run.sampler is None:
    run.ckpts.close()
    raise ValueError(f"config.vmap_seeds=True needs the device-resident split, but "
                     f"config.data.pipeline={config.data.pipeline!r} chose tfdata for "
                     f"{config.data.name!r}; accepted: a dataset that 'device' can hold")
  cfg, spe = run.config, run.steps_per_epoch
  start = int(run.state.step[0])
  stop = cfg.schedule.num_epochs * spe
  stop = stop if cfg.max_steps is None else min(stop, cfg.max_steps)
  logging.info("Resolved config (%d seeds vmapped):\n%s", len(values), cfg)
  writer = metric_writer.MetricWriter(run.workdir, enabled=chief,
                                      resume_step=start if "epoch" in run.meta else -1)
  evaluate = evaluation.Evaluator(run.dataset, run.mesh, cfg.eval_batch_size)
  # A random-init (smoke) teacher is not evaluated: its accuracy means nothing.
  same_classes = (cfg.teacher.get("num_classes") in (None, run.dataset.info.num_classes)
                  and not cfg.teacher.get("random_init"))
  if run.nets.teacher is not None and same_classes and "teacher_top1" not in run.meta:
    t_eval = evaluate(run.nets.teacher, run.teacher_vars)
    run.meta["teacher_top1"] = t_eval["top1"]
    writer.write_scalars(start, {"teacher/top1": t_eval["top1"],
                                 "teacher/top5": t_eval["top5"]})
  dispatch = SeedsDispatcher(run.nets, run.mesh, run.teacher_vars, run.sampler,
                             run.train_data, values)
  try:
    train.run_steps(
        run, run.state, start, stop, dispatch, _TrainLog(writer, values, cfg.batch_size),
        lambda state, step: _evaluate(run, state, step, values, evaluate, writer))
  finally:
    writer.close()
    run.ckpts.close()
  meta = run.meta
  per_seed = {s: {**{m: meta["last_eval_seeds"][str(s)][m] for m in ("top1", "top5", "loss")
                     if "last_eval_seeds" in meta},
                  "best_top1": meta.get("best_top1_seeds", {}).get(str(s), -1.0)}
              for s in values}
  common = {"step": stop, "train_seconds": (run.saved_seconds if stop > start
                                            else meta["train_seconds"])}
  if "teacher_top1" in meta:
    common["teacher_top1"] = meta["teacher_top1"]
  return per_seed, common
