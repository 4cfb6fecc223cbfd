"""The initialisation phase of two-stage methods (AB, FT, FSP), run before distillation.

RepDistiller (``helper/pretrain.py:init``) trains some parts first on the method's own
objective: AB's connectors and the student's feature layers, FT's paraphraser (an
autoencoder of the teacher's last feature map), FSP's student feature layers. Here that
phase is a run of its own in ``<workdir>/init_phase/``: the same loop (`train.run_steps`),
its own checkpoints, metrics and TensorBoard logs, so a kill at any instant resumes
exactly. The distillation run then starts from the phase's final parameters, with a fresh
optimizer state, at step 0. A workdir whose main run has a checkpoint never reruns it.

The phase (`methods.InitPhase`): ``epochs`` of SGD at a constant learning rate, the run's
momentum and weight decay, training only the student's feature layers (its classifier
untouched) and/or the named method submodules; the rest get no update at all.
``config.max_steps`` caps each phase.
"""
from __future__ import annotations

import dataclasses
import os

from absl import logging
import jax
import optax

from afd_jax import checkpointing, optim, parallel, train, train_state
from afd_jax import metric_writer as metric_writer_lib

DIR = "init_phase"
# The phase draws its batches from another seed than the distillation that follows it.
SEED_OFFSET = 1_000_003
# The names the zoo gives its classifier (`models.layers.classifier_head`).
CLASSIFIER_NAMES = ("fc", "classifier", "linear")


def classifier_name(student_params) -> str:
  """The top-level name of the student's classifier in its parameters."""
  found = [k for k in student_params if k in CLASSIFIER_NAMES]
  if len(found) != 1:
    raise ValueError(f"cannot tell the student's classifier among its modules "
                     f"{list(student_params)}; expected one of {CLASSIFIER_NAMES}")
  return found[0]


def networks(nets: train_state.Networks, config, student_params
             ) -> train_state.Networks:
  """The init phase's `Networks`: the ``init_loss`` objective and its optimizer."""
  phase = nets.distiller.init_phase
  lr = config.optim.lr if phase.lr is None else phase.lr
  head = classifier_name(student_params)
  modules = set(phase.method_modules)

  def trainable(path):
    if path[0] == "student":
      return phase.train_student and path[1] != head
    return path[1] in modules

  schedule = optax.constant_schedule(lr)
  tx = optax.chain(optax.add_decayed_weights(config.optim.weight_decay),
                   optax.sgd(schedule, momentum=config.optim.momentum or None,
                             nesterov=config.optim.nesterov))
  return nets.replace(tx=optim.only_trainable(tx, trainable), schedule=schedule,
                      phase="init")


def _state(nets, like: train_state.TrainState) -> train_state.TrainState:
  """`like`'s variables with a fresh optimizer state of `nets.tx`, at step 0."""
  return train_state.TrainState.create(
      apply_fn=like.apply_fn, params=like.params, tx=nets.tx,
      batch_stats=like.batch_stats, method_state=like.method_state, rng=like.rng)


def run(main_run) -> tuple[train_state.TrainState, float]:
  """Runs (or resumes, or just reloads) `main_run`'s init phase.

  Args:
    main_run: a fresh `train.Run` of a two-stage method (no checkpoint yet).

  Returns:
    the distillation phase's initial state (the phase's final variables, step 0 and a
    fresh optimizer state of the run's own optimizer), and the phase's train_seconds
    (summed over its segments), which the run adds to its own.

  Raises:
    faults.Preempted / faults.Diverged: as the main loop (the phase's checkpoints
      are kept; a rerun resumes it).
  """
  cfg, phase = main_run.config, main_run.nets.distiller.init_phase
  path = os.path.join(main_run.workdir, DIR)
  nets = networks(main_run.nets, cfg, main_run.state.params["student"])
  to_phase = lambda s: _state(nets, s)  # noqa: E731
  sharding = parallel.state_sharding(main_run.mesh,
                                     jax.eval_shape(to_phase, main_run.state))
  fresh = jax.jit(to_phase, out_shardings=sharding)(main_run.state)
  ckpts = checkpointing.RunCheckpoints(path, keep=cfg.logging.keep_checkpoints)
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype,
                                                         sharding=a.sharding), fresh)
  try:
    restored = ckpts.restore_latest(abstract)
  except checkpointing.CheckpointError:
    ckpts.close()
    raise
  state, meta = (fresh, {}) if restored is None else restored
  start, stop = int(state.step), phase.epochs * main_run.steps_per_epoch
  if cfg.max_steps is not None:  # (smoke runs) the cap applies to each phase
    stop = min(stop, cfg.max_steps)
  meta = {"best_top1": -1.0, "train_seconds": 0.0, **meta}
  sub = dataclasses.replace(main_run, workdir=path, nets=nets, ckpts=ckpts, state=state,
                            meta=meta, saved_seconds=meta["train_seconds"])
  writer = metric_writer_lib.MetricWriter(path, enabled=parallel.is_chief(),
                                          resume_step=start if restored else -1)
  dispatch = train.dispatcher(main_run, nets, cfg.seed + SEED_OFFSET, start, sharding)
  if start < stop:
    logging.info("Init phase of %s: steps %d..%d (%d epochs, lr %g) in %s",
                 nets.distiller.name, start, stop, phase.epochs,
                 float(nets.schedule(0)), path)
  try:
    state, _ = train.run_steps(
        sub, state, start, stop, dispatch,
        metric_writer_lib.TrainWindow(writer, cfg.batch_size), lambda state, step: None)
  finally:
    writer.close()
    ckpts.close()
  rng = main_run.state.rng
  to_main = lambda s: _state(main_run.nets, s).replace(rng=rng)  # noqa: E731
  main_sharding = parallel.state_sharding(main_run.mesh, main_run.state)
  seconds = sub.saved_seconds  # the last save's: every segment of the phase
  return jax.jit(to_main, out_shardings=main_sharding)(state), seconds
