"""The training loop: one loop for teachers, student baselines and every distillation method.

``config.method.name = 'none'`` trains a teacher or a baseline with cross-entropy; any other
method distils from the frozen teacher named by ``config.teacher``. `train_and_evaluate`
is a flat loop around the jitted `steps.train_step`, ``config.steps_per_dispatch`` steps
per dispatch (`multi_step`), with periodic actions landing on exact steps: logging,
evaluation (followed by the method's own analyses, e.g. AFD's link heatmap),
checkpointing and the preemption check. Batches come from tf.data (`input_pipeline`) or
the split held on the devices (``data.pipeline='device'``, `device_data`).
"""
from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Any, Callable

from absl import logging
import jax
import ml_collections
import tqdm

from afd_jax import (analysis, checkpointing, device_data, evaluation, faults, methods,
                     metric_writer, models, multi_step, parallel, pretrained, steps,
                     tasks, train_state, validation)
from afd_jax import workdir as workdir_lib
from afd_jax.metric_writer import MetricWriter
from afd_jax.validation import validate_config  # noqa: F401  (re-exported)


@dataclasses.dataclass
class Run:
  """A run's workdir opened for training or analysis: data, networks, state, teacher."""
  config: ml_collections.ConfigDict
  workdir: str
  mesh: Any
  dataset: Any  # input_pipeline.Dataset (imported with TensorFlow, when a run opens)
  steps_per_epoch: int
  nets: train_state.Networks
  ckpts: checkpointing.RunCheckpoints
  state: train_state.TrainState
  meta: dict[str, Any]
  teacher_vars: Any
  probe: Any  # jitted steps.method_intermediates
  predict: Any  # the task's jitted predict (what its pictures draw), or None
  saved_seconds: float = 0.0  # train_seconds of the last checkpoint saved
  sampler: device_data.Sampler | None = None  # the device-resident path, or None
  train_data: Any = None  # its uint8 split on the devices
  build: Any = None  # ``build(config, hparams=None) -> Networks`` for this run's data

  def save(self, step: int, state, segment_start: float) -> None:
    """Checkpoints `state` with the bookkeeping of `meta` (every process must call it)."""
    faults.inject("save", step)
    meta = dict(self.meta, epoch=step / self.steps_per_epoch,
                train_seconds=self.meta["train_seconds"] + time.time() - segment_start)
    self.ckpts.save(step, state, meta)
    self.saved_seconds = meta["train_seconds"]


def open_dataset(config: ml_collections.ConfigDict, dataset=None):
  """The run's `input_pipeline.Dataset` (`dataset` if already opened for the same
  ``config.data``), checked against the models' task.

  Raises:
    ValueError / DatasetNotAvailableError: an unknown or missing dataset, or a model of
      another task than the dataset's (a segmentation model on a classification dataset).
  """
  from afd_jax import input_pipeline  # pylint: disable=g-import-not-at-top  (TensorFlow)
  dataset = dataset or input_pipeline.Dataset(config.data)
  data_task = getattr(dataset.info, "task", tasks.DEFAULT)
  wanted = tasks.get(data_task).models
  for role, name in (("model", config.model.name), ("teacher", config.teacher.name)):
    if name and models.task_of(name) != wanted:
      raise ValueError(
          f"config.{role}.name={name!r} is a {models.task_of(name)} model but dataset "
          f"{config.data.name!r} is a {data_task} dataset; accepted: the {wanted} "
          "models (" + ", ".join(n for n in models.MODEL_NAMES
                                 if models.task_of(n) == wanted) + ")")
  return dataset


def open_run(config: ml_collections.ConfigDict, workdir: str,
             require_checkpoint: bool = False, make_create=None, dataset=None) -> Run:
  """Opens `workdir` for `config`: its newest checkpoint, else a fresh state.

  `dataset`: the run's dataset if already opened (`open_dataset`). `make_create`:
  ``make_create(nets, build) -> create(rng, image_size)`` making the fresh state, where
  ``build(config, hparams=None)`` builds `Networks` for this run's data (default:
  `train_state.create` of `nets`; `group` stacks its members' states).

  Raises:
    ValueError / DatasetNotAvailableError: an invalid config or missing dataset.
    checkpointing.CheckpointError: a corrupt checkpoint or teacher, or none with
      `require_checkpoint`.
  """
  workdir = os.path.abspath(os.path.expanduser(workdir))
  mesh = parallel.make_mesh(config.num_devices)
  validate_config(config, mesh.size)
  dataset = dataset or open_dataset(config)
  config.data.image_size = dataset.info.image_size
  sampler = train_data = None
  if device_data.choose_pipeline(config.data, dataset) == "device":
    sampler, train_data = device_data.load(dataset, mesh, config.batch_size)
  steps_per_epoch = (sampler.steps_per_epoch if sampler
                     else dataset.steps_per_epoch(config.batch_size))
  if steps_per_epoch < 1:
    raise ValueError(f"config.batch_size={config.batch_size} exceeds the "
                     f"{dataset.info.num_train_examples} training examples of "
                     f"{config.data.name!r}")
  labels = dataset.train_labels() if methods.needs_labels(config.method.name) else None
  build = functools.partial(_build_networks, num_classes=dataset.info.num_classes,
                            steps_per_epoch=steps_per_epoch, train_labels=labels)
  nets = build(config)
  create = (make_create or _default_create)(nets, build)
  replicated = parallel.replicated(mesh)
  create_fn = functools.partial(create, image_size=config.data.image_size)
  shapes = jax.eval_shape(create_fn, jax.random.PRNGKey(config.seed))
  state_sharding = parallel.state_sharding(mesh, shapes)
  init = jax.jit(create_fn, out_shardings=state_sharding)
  if require_checkpoint and not os.path.isdir(os.path.join(workdir, "checkpoints")):
    raise checkpointing.CheckpointError(f"no checkpoints/ in workdir {workdir!r}")
  ckpts = checkpointing.RunCheckpoints(workdir, keep=config.logging.keep_checkpoints)
  abstract = jax.tree.map(lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
                          shapes, state_sharding)
  try:
    restored = ckpts.restore_latest(abstract)
  except checkpointing.CheckpointError:
    ckpts.close()  # orbax's threads, closed now, print nothing after the error
    raise
  if restored is None:
    if require_checkpoint:
      raise checkpointing.CheckpointError(f"no checkpoint in workdir {workdir!r}")
    state, meta = init(jax.random.PRNGKey(config.seed)), {}
    if config.model.get("init"):  # pretrained student weights (fresh starts only)
      student = pretrained.load_student_init(
          config.model.init, config.model.name, train_state.student_variables(state),
          dataset.info.num_classes)
      state = jax.device_put(state.replace(
          params=dict(state.params, student=student["params"]),
          batch_stats=dict(state.batch_stats, student=student["batch_stats"])),
                             state_sharding)
    logging.info("Starting %s from %s in %s", config.model.name,
                 config.model.get("init") or "scratch", workdir)
  else:
    state, meta = restored
    logging.info("Resumed from step %s in %s", state.step, workdir)  # (S,): seeds
  meta = {"best_top1": -1.0, "train_seconds": 0.0, **meta}
  if restored is not None:
    _best_as_saved(meta, workdir)
  teacher_vars = None
  if nets.teacher is not None:
    if config.teacher.get("random_init"):
      logging.warning("Teacher %s is randomly initialised (teacher.random_init: smoke "
                      "runs only)", config.teacher.name)
      teacher_vars = jax.jit(functools.partial(
          train_state.random_teacher_variables, nets, config.data.image_size),
                             out_shardings=replicated)(jax.random.PRNGKey(1))
    else:
      teacher_vars = jax.device_put(checkpointing.load_teacher_variables(
          config.teacher.checkpoint,
          train_state.abstract_teacher_variables(nets, config.data.image_size),
          config.teacher.name), replicated)
  probe = jax.jit(functools.partial(steps.method_intermediates, nets),
                  out_shardings=replicated)
  task = tasks.get(getattr(dataset.info, "task", tasks.DEFAULT))
  predict = (None if task.predict is None else
             jax.jit(functools.partial(task.predict, nets), out_shardings=replicated))
  return Run(config, workdir, mesh, dataset, steps_per_epoch, nets, ckpts, state, meta,
             teacher_vars, probe, predict, sampler=sampler, train_data=train_data,
             build=build)


def _best_as_saved(meta: dict[str, Any], workdir: str) -> None:
  """Sets `meta`'s best score to the one of the run's best checkpoint, or (none: moved
  aside as damaged, or deleted) records that there is none, so that the next evaluation
  saves one whatever its score."""
  saved = checkpointing.best_meta(workdir)
  for task in map(tasks.get, tasks.names()):
    key = f"best_{task.score}"
    if saved is not None and key in saved:
      meta[key] = saved[key]
    elif saved is None and meta.get(key, task.no_score) > task.no_score:
      logging.warning("%s holds no checkpoint: the run's best %s %.2f is forgotten, and "
                      "its next evaluation saves a new best", os.path.join(workdir, "best"),
                      key[5:], meta[key])
      meta[key] = task.no_score


def _best_from_final(run: Run, loop: "Loop") -> bool:
  """For a finished run without a best checkpoint (`_best_as_saved`): saves its final state,
  evaluated at that step, as the best. Returns whether it did."""
  step, score = int(run.state.step), loop.evaluate.score
  last = run.meta.get("last_eval", {})
  if checkpointing.has_best(run.workdir) or last.get("step") != step or score not in last:
    return False
  run.meta[f"best_{score}"] = last[score]
  run.ckpts.save_best(step, run.state, dict(run.meta, epoch=step / run.steps_per_epoch),
                      last[score])
  logging.warning("the final checkpoint (step %d, %s %.2f) is now the run's best", step,
                  score, last[score])
  return True


def _build_networks(config, hparams=None, *, num_classes, steps_per_epoch, train_labels):
  return train_state.build_networks(config, num_classes, steps_per_epoch,
                                    train_labels=train_labels, hparams=hparams)


def _default_create(nets, build):
  del build
  return functools.partial(train_state.create, nets)


def _evaluate(run: Run, state, step: int, evaluate: evaluation.Evaluator,
              writer: MetricWriter) -> None:
  """Evaluates the student, runs the method's analyses, keeps the best checkpoint."""
  result = evaluate(run.nets.student, train_state.student_variables(state))
  writer.write_scalars(step, {f"eval/{k}": v for k, v in result.items()})
  logging.info("step %d (epoch %.2f): eval %s", step, step / run.steps_per_epoch,
               " ".join(f"{k} {v:.2f}" for k, v in result.items()))
  run.meta["last_eval"] = dict(result, step=step)
  faults.inject("eval", step)
  ctx = analysis.AnalysisContext(
      step=step, epoch=step // run.steps_per_epoch, workdir=run.workdir,
      config=run.config, distiller=run.nets.distiller, writer=writer,
      method_intermediates=lambda: run.probe(state, evaluate.first_batch(),
                                             run.teacher_vars),
      is_chief=parallel.is_chief(),
      predictions=(lambda: run.predict(state, evaluate.first_batch(), run.teacher_vars))
      if run.predict is not None else None)
  for hook in run.nets.distiller.eval_hooks + evaluate.task.pictures:
    hook(ctx)
  score = evaluate.score  # the task's: top1, or mIoU for segmentation
  if result[score] > run.meta.get(f"best_{score}", evaluate.task.no_score):
    run.meta[f"best_{score}"] = result[score]
    run.ckpts.save_best(step, state, dict(run.meta, epoch=step / run.steps_per_epoch),
                        result[score])


# A two-stage method's first phase, handed to the loop: ``phase(run) -> (the main
# phase's initial state, the phase's train_seconds)`` (`init_phase.run`).
InitPhaseFn = Callable[[Run], tuple[train_state.TrainState, float]]


@dataclasses.dataclass
class Loop:
  """What the loop sets up once a run is open: its step range, writer and evaluator."""
  start: int
  stop: int
  writer: MetricWriter
  evaluate: evaluation.Evaluator


def begin(run: Run, start: int) -> Loop:
  """The loop's setup for `run` from step `start`: the last step (``schedule.num_epochs``,
  capped by ``max_steps``), the metric writer (a fresh run drops every row an earlier,
  killed attempt left), the evaluator, and the teacher's evaluation (once per run; not
  for a random-init smoke teacher or one with other classes)."""
  cfg, spe = run.config, run.steps_per_epoch
  stop = cfg.schedule.num_epochs * spe
  stop = stop if cfg.max_steps is None else min(stop, cfg.max_steps)
  writer = MetricWriter(run.workdir, enabled=parallel.is_chief(),
                        resume_step=start if "epoch" in run.meta else -1)
  evaluate = evaluation.Evaluator(run.dataset, run.mesh, cfg.eval_batch_size)
  same_classes = (cfg.teacher.get("num_classes") in (None, run.dataset.info.num_classes)
                  and not cfg.teacher.get("random_init"))
  score = evaluate.score
  if run.nets.teacher is not None and same_classes and f"teacher_{score}" not in run.meta:
    t_eval = evaluate(run.nets.teacher, run.teacher_vars)
    run.meta[f"teacher_{score}"] = t_eval[score]
    writer.write_scalars(start, {f"teacher/{k}": v for k, v in t_eval.items()
                                 if k != "loss"})
    logging.info("Teacher %s: %s %.2f", cfg.teacher.name, score, t_eval[score])
  return Loop(start, stop, writer, evaluate)


def claim(config: ml_collections.ConfigDict, workdir: str, allow_config_change: bool):
  """Checks `config` and its dataset, then binds `workdir` to `config` (chief writes).

  Returns:
    (the absolute workdir, the opened dataset).
  """
  path = os.path.abspath(os.path.expanduser(workdir))
  validate_config(config, parallel.make_mesh(config.num_devices).size)
  dataset = open_dataset(config)  # a missing or mismatched dataset: nothing written yet
  validation.check_run(config, dataset)  # sizes, teacher checkpoint: still nothing written
  # The workdir records the pipeline 'auto' resolved to (its data order): runs recorded
  # before 'auto' existed say 'tfdata', which 'auto' on a CPU still is.
  config.data.pipeline = device_data.choose_pipeline(config.data, dataset)
  workdir_lib.check_config(path, config, checkpointing.latest_step(path),
                           allow_config_change, write=parallel.is_chief())
  return path, dataset


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       allow_config_change: bool = False, *,
                       init_phase: InitPhaseFn | None = None) -> dict[str, float]:
  """Trains one run per `config` in `workdir`, resuming from its newest checkpoint if any.

  Several runs (seeds, sweeps, suites, comparisons) are `afd_jax.plan`'s: this loop runs
  exactly one.

  Args:
    config: the run's config (``config.seeds`` empty).
    workdir: the run's directory; the config that created it must match `config` in every
      field that changes the result, unless `allow_config_change`.
    init_phase: the first phase of a two-stage method (AB, FT, FSP), run before the main
      loop when the run starts fresh (`afd_jax.init_phase.run`; `plan.train_run` hands it).

  Returns:
    final metrics: ``top1``, ``top5`` (last eval), ``best_top1``, ``teacher_top1`` (if
    a teacher), ``step``, ``train_seconds`` (summed over all segments and phases).

  Raises:
    ValueError: an invalid config (``seeds`` set, a two-stage method without its phase).
    workdir.ConfigMismatchError: `workdir` holds a run of another config.
    faults.Diverged: a non-finite loss or gradient (the last good checkpoints are kept).
    faults.Preempted: SIGTERM/SIGINT arrived; the step reached was saved first.
  """
  if config.get("seeds"):
    raise ValueError(f"config.seeds={tuple(config.seeds)!r} asks for several runs: "
                     "afd_jax.plan runs them (python -m afd_jax.main does); accepted "
                     "here: config.seeds=None, the one run of config.seed")
  path, dataset = claim(config, workdir, allow_config_change)
  run = open_run(config, path, dataset=dataset)
  if run.nets.distiller.init_phase is not None and "epoch" not in run.meta:
    if init_phase is None:
      run.ckpts.close()
      raise ValueError(f"method {config.method.name!r} has an init phase (two-stage); "
                       "hand it to the loop: train_and_evaluate(..., init_phase="
                       "afd_jax.init_phase.run), or use afd_jax.plan.train_run")
    run.state, seconds = init_phase(run)
    run.meta["train_seconds"] += seconds  # the phase's time is the run's time too
  logging.info("Resolved config:\n%s", run.config)
  loop = begin(run, int(run.state.step))
  dispatch = dispatcher(run, run.nets, run.config.seed, loop.start,
                        parallel.state_sharding(run.mesh, run.state))
  window = metric_writer.TrainWindow(loop.writer, run.config.batch_size)
  try:
    new_best = loop.start >= loop.stop and _best_from_final(run, loop)
    _, segment_start = run_steps(
        run, run.state, loop.start, loop.stop, dispatch, window,
        lambda state, step: _evaluate(run, state, step, loop.evaluate, loop.writer))
  finally:
    loop.writer.close()
    run.ckpts.close()
  return _result(run, loop.stop, segment_start if loop.stop > loop.start else None,
                 rewrite=new_best)


def dispatcher(run: Run, nets, seed: int, start: int, sharding) -> multi_step.Dispatcher:
  """Steps of `nets` on `run`'s data of `seed` from global step `start`, state `sharding`."""
  if run.sampler is None:
    batches = parallel.prefetch_to_device(
        run.dataset.train_iterator(run.config.batch_size, seed, start,
                                   num_devices=run.mesh.size),
        run.config.data.prefetch, parallel.batch_sharded(run.mesh))
    return multi_step.Dispatcher(nets, run.mesh, run.teacher_vars, batches=batches,
                                 state_sharding=sharding)
  return multi_step.Dispatcher(nets, run.mesh, run.teacher_vars, sampler=run.sampler,
                               data=run.train_data, seed=seed, state_sharding=sharding)


def run_steps(run: Run, state, start: int, stop: int, dispatch, window, evaluate
              ) -> tuple[Any, float]:
  """Steps ``start+1..stop``, `dispatch` ``(state, n) -> (state, metrics)`` n at a time,
  with the periodic actions on exact steps: `window` (``.metrics`` pending, ``.write(step,
  bar)`` logs them: the divergence check), ``evaluate(state, step)`` at eval epochs,
  checkpoints and the preemption check. Also the loop of `group` (stacked states).

  Returns:
    the state at `stop`, and the time this segment of the run started (`Run.save`'s
    bookkeeping).
  """
  cfg, spe = run.config, run.steps_per_epoch
  k = multi_step.steps_per_dispatch(cfg)
  log_every, ckpt_every = max(1, cfg.logging.log_every_steps), cfg.logging.checkpoint_every_steps
  eval_every, segment_start = max(1, cfg.logging.eval_every_epochs), time.time()
  bar = tqdm.tqdm(total=stop, initial=start, dynamic_ncols=True, leave=False,
                  disable=not (cfg.logging.progress_bar and parallel.is_chief()))
  # Steps a preemption left unlogged (saved with its checkpoint): logged as if never stopped.
  pending = run.meta.pop(PENDING_METRICS, None)
  if pending and hasattr(window, "restore"):
    window.restore(pending)
  try:
    with parallel.Preemption() as preemption:
      step = start
      while step < stop:
        n = multi_step.chunk_length(step, stop, k, (log_every, spe, ckpt_every))
        state, metrics = dispatch(state, n)
        for s in range(step + 1, step + n + 1):
          faults.inject("step", s)
        step += n
        window.metrics.append(metrics)
        bar.update(n)
        epoch_end = step % spe == 0 or step == stop
        if step % log_every == 0 or epoch_end:
          window.write(step, bar)
        if epoch_end and ((step // spe) % eval_every == 0 or step == stop):
          evaluate(state, step)
        if epoch_end or (ckpt_every and step % ckpt_every == 0):
          window.write(step, bar)  # the divergence check before anything is saved
          run.save(step, state, segment_start)
        # Every step is offered to the multi-host sync point; at the last: just finish.
        if any(preemption.reached(s) for s in range(step - n + 1, step + 1)) and step < stop:
          if hasattr(window, "pending"):  # no extra row: the window rides in the checkpoint
            window.check(step)
            run.meta[PENDING_METRICS] = window.pending()
          else:
            window.write(step, bar)
          try:
            run.save(step, state, segment_start)
          finally:
            run.meta.pop(PENDING_METRICS, None)
          raise faults.Preempted(preemption.signum, step)
      if preemption.signum is not None:  # arrived during the final evaluation or save
        raise faults.Preempted(preemption.signum, step)
  except faults.Diverged as e:
    e.advice = validation.divergence_advice(run.config, e)
    raise
  finally:
    bar.close()
  return state, segment_start


PENDING_METRICS = "pending_train_metrics"  # Run.meta key: see run_steps


def _result(run: Run, step: int, segment_start: float | None, rewrite: bool = False
            ) -> dict[str, float]:
  """The run's final metrics, written to result.json unless a rerun changed nothing (or
  `rewrite`: it replaced the best checkpoint)."""
  meta = run.meta
  # As saved with the final checkpoint, so that a rerun reports the very same number.
  seconds = run.saved_seconds if segment_start else meta["train_seconds"]
  task = tasks.get(getattr(run.dataset.info, "task", tasks.DEFAULT))
  score = task.score
  result = {"step": step, f"best_{score}": meta.get(f"best_{score}", task.no_score),
            "train_seconds": seconds,
            **{k: v for k, v in meta.get("last_eval", {}).items()
               if k not in ("step", "loss")}}
  if f"teacher_{score}" in meta:
    result[f"teacher_{score}"] = meta[f"teacher_{score}"]
  missing = not os.path.exists(os.path.join(run.workdir, workdir_lib.RESULT_FILE))
  if parallel.is_chief() and (segment_start is not None or missing or rewrite):
    workdir_lib.write_result(run.workdir, result)
  return result
