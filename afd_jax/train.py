"""Config-driven, data-parallel training of teachers and distilled students.

One loop serves every method: ``config.method.name = 'none'`` trains a teacher or a
student baseline with cross-entropy; any other method distils from the frozen teacher
named by ``config.teacher``. The train step is jitted once over a 1-D device mesh with
axis ``'data'``: the batch is sharded along it and everything else is replicated, so XLA
computes BatchNorm statistics over the *global* batch and N devices give the same update
as one device at the same global batch.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import signal
import threading
import time
from typing import Any

from absl import logging
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np
import optax
import tqdm

from afd_jax import checkpointing, input_pipeline, methods, models
from afd_jax.metric_writer import MetricWriter

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@flax.struct.dataclass
class TrainState:
  """Everything a run needs to continue exactly where it stopped.

  ``params``/``batch_stats`` hold ``{'student': ..., 'method': ...}``: the method's
  learnable parts (AFD meta-network, regressors, ...) train and checkpoint beside the
  student. The data position is ``step`` (the input pipeline is a pure function of it).
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  method_state: Any
  opt_state: Any
  rng: jax.Array


@flax.struct.dataclass
class Networks:
  """The static parts of a run (hashable, closed over by the jitted steps)."""
  student: nn.Module = flax.struct.field(pytree_node=False)
  teacher: nn.Module | None = flax.struct.field(pytree_node=False)
  distiller: methods.Distiller = flax.struct.field(pytree_node=False)
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)
  schedule: Any = flax.struct.field(pytree_node=False)


def make_mesh(num_devices: int | None) -> Mesh:
  """A 1-D ``('data',)`` mesh over all devices, or the first `num_devices` local ones."""
  if num_devices is None:
    devices = jax.devices()
  else:
    if not 1 <= num_devices <= jax.local_device_count():
      raise ValueError(f"config.num_devices={num_devices}, but this host has "
                       f"{jax.local_device_count()} local devices (accepted: 1.."
                       f"{jax.local_device_count()}, or None for all)")
    devices = jax.local_devices()[:num_devices]
  return Mesh(np.asarray(devices), ("data",))


def create_learning_rate_schedule(cfg: ml_collections.ConfigDict, base_lr: float,
                                  steps_per_epoch: int) -> optax.Schedule:
  """Per-step learning rate: ``'step'`` (×decay_factor at decay_epochs) or ``'cosine'``,
  both after an optional linear warm-up of ``warmup_epochs``."""
  total = cfg.num_epochs * steps_per_epoch
  warmup = int(cfg.warmup_epochs * steps_per_epoch)
  if cfg.name == "step":
    main = optax.piecewise_constant_schedule(
        base_lr, {int(e * steps_per_epoch) - warmup: cfg.decay_factor
                  for e in cfg.decay_epochs})
  elif cfg.name == "cosine":
    main = optax.cosine_decay_schedule(base_lr, max(total - warmup, 1))
  else:
    raise ValueError(f"Unknown config.schedule.name {cfg.name!r}; accepted: 'step', 'cosine'")
  if not warmup:
    return main
  return optax.join_schedules(
      [optax.linear_schedule(0.0, base_lr, warmup), main], [warmup])


def create_optimizer(config: ml_collections.ConfigDict,
                     steps_per_epoch: int) -> tuple[optax.GradientTransformation, Any]:
  """SGD with momentum and PyTorch-style weight decay (added to the gradient) on every
  student and method parameter, BN and embeddings included (as the reference releases)."""
  schedule = create_learning_rate_schedule(config.schedule, config.optim.lr, steps_per_epoch)
  tx = optax.chain(
      optax.add_decayed_weights(config.optim.weight_decay),
      optax.sgd(schedule, momentum=config.optim.momentum or None,
                nesterov=config.optim.nesterov))
  return tx, schedule


def _dummy_batch(image_size: int, batch: int = 2) -> jnp.ndarray:
  return jnp.zeros((batch, image_size, image_size, 3), jnp.float32)


def feature_shapes(model: nn.Module, image_size: int, batch: int = 2) -> dict[str, tuple]:
  """Ordered ``{feature name: shape}`` of a model's sown features (no compute)."""
  x = _dummy_batch(image_size, batch)
  variables = jax.eval_shape(functools.partial(model.init, train=False),
                             jax.random.PRNGKey(0), x)
  _, mut = jax.eval_shape(
      lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats", "intermediates"]),
      variables, x)
  return {k: tuple(v.shape) for k, v in models.feature_list(mut["intermediates"]).items()}


def build_networks(config: ml_collections.ConfigDict, num_classes: int,
                   steps_per_epoch: int) -> Networks:
  """Student, teacher, method and optimizer for `config`; validates their pairing."""
  if config.model.dtype not in _DTYPES:
    raise ValueError(f"Unknown config.model.dtype {config.model.dtype!r}; accepted: "
                     f"{', '.join(_DTYPES)}")
  dtype = _DTYPES[config.model.dtype]
  student = models.get_model(config.model.name, num_classes, dtype=dtype)
  teacher = (models.get_model(config.teacher.name, num_classes, dtype=dtype)
             if config.teacher.name else None)
  size = config.data.image_size
  s_info = methods.FeatureInfo(config.model.name, feature_shapes(student, size))
  t_info = (methods.FeatureInfo(config.teacher.name, feature_shapes(teacher, size))
            if teacher is not None else None)
  distiller = methods.build_method(config.method, student=s_info, teacher=t_info,
                                   num_classes=num_classes, steps_per_epoch=steps_per_epoch)
  if not distiller.needs_teacher:
    teacher = None  # e.g. method 'none' with a teacher named: don't run it
  tx, schedule = create_optimizer(config, steps_per_epoch)
  return Networks(student, teacher, distiller, tx, schedule)


def _select(features: dict[str, jax.Array], names) -> list[jax.Array]:
  return [features[n] for n in names]


def _teacher_outputs(nets: Networks, teacher_vars, images):
  """Frozen teacher: eval-mode BN, no gradient. Returns (logits, selected features)."""
  if nets.teacher is None:
    return None, []
  logits, mut = nets.teacher.apply(teacher_vars, images, train=False,
                                   mutable=["intermediates"])
  feats = _select(models.feature_list(mut["intermediates"]), nets.distiller.teacher_features)
  return jax.lax.stop_gradient(logits), jax.lax.stop_gradient(feats)


def _method_variables(state: TrainState, params) -> dict[str, Any]:
  return {"params": params["method"], "batch_stats": state.batch_stats["method"],
          "method_state": state.method_state}


def init_state(nets: Networks, rng: jax.Array, image_size: int) -> TrainState:
  """A fresh train state (student + method variables + optimizer state)."""
  x = _dummy_batch(image_size)
  # Initialise with 'rbg' keys: XLA compiles threefry afresh for every parameter shape,
  # which made start-up take tens of seconds on CPU; rbg compiles in a fraction of that.
  init_rng, state_rng = jax.random.split(rng)
  s_rng, m_rng = jax.random.split(
      jax.random.wrap_key_data(jax.random.bits(init_rng, (4,), jnp.uint32), impl="rbg"))
  s_vars = nets.student.init(s_rng, x, train=False)
  s_logits, s_mut = nets.student.apply(s_vars, x, train=True,
                                       mutable=["batch_stats", "intermediates"])
  s_feats = _select(models.feature_list(s_mut["intermediates"]),
                    nets.distiller.student_features)
  if nets.teacher is not None:
    t_vars = jax.eval_shape(functools.partial(nets.teacher.init, train=False), s_rng, x)
    t_logits, t_feats = jax.tree.map(
        lambda a: jnp.zeros(a.shape, a.dtype),
        jax.eval_shape(functools.partial(_teacher_outputs, nets), t_vars, x))
  else:
    t_logits, t_feats = None, []
  labels = jnp.zeros((x.shape[0],), jnp.int32)
  m_vars = nets.distiller.module.init(m_rng, s_feats, t_feats, s_logits, t_logits, labels,
                                      train=True)
  params = {"student": s_vars["params"], "method": m_vars.get("params", {})}
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=params,
      batch_stats={"student": s_vars.get("batch_stats", {}),
                   "method": m_vars.get("batch_stats", {})},
      method_state=m_vars.get("method_state", {}),
      opt_state=nets.tx.init(params), rng=state_rng)


def train_step(nets: Networks, state: TrainState, batch: dict[str, jax.Array],
               teacher_vars) -> tuple[TrainState, dict[str, jax.Array]]:
  """One SGD step on the method's whole objective. Pure; jitted by the caller.

  Args:
    state: the train state (replicated).
    batch: ``{'image': (B, H, W, 3), 'label': (B,)}``, sharded along B.
    teacher_vars: the frozen teacher's ``{'params', 'batch_stats'}`` (or None).
  """
  images, labels = batch["image"], batch["label"]
  t_logits, t_feats = _teacher_outputs(nets, teacher_vars, images)
  dropout_rng = jax.random.fold_in(state.rng, state.step)

  def loss_fn(params):
    s_logits, s_mut = nets.student.apply(
        {"params": params["student"], "batch_stats": state.batch_stats["student"]},
        images, train=True, mutable=["batch_stats", "intermediates"],
        rngs={"dropout": dropout_rng})
    s_feats = _select(models.feature_list(s_mut["intermediates"]),
                      nets.distiller.student_features)
    (loss, metrics), m_mut = nets.distiller.module.apply(
        _method_variables(state, params), s_feats, t_feats, s_logits, t_logits, labels,
        train=True, mutable=["batch_stats", "method_state"], rngs={"dropout": dropout_rng})
    return loss, (metrics, s_logits, s_mut["batch_stats"], m_mut)

  (loss, (metrics, logits, s_stats, m_mut)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  updates, opt_state = nets.tx.update(grads, state.opt_state, state.params)
  new_state = state.replace(
      step=state.step + 1, params=optax.apply_updates(state.params, updates),
      batch_stats={"student": s_stats, "method": m_mut.get("batch_stats", {})},
      method_state=m_mut.get("method_state", {}), opt_state=opt_state)
  metrics = dict(metrics, loss=loss, lr=nets.schedule(state.step),
                 top1=jnp.mean(jnp.argmax(logits, -1) == labels))
  return new_state, jax.tree.map(lambda m: jnp.asarray(m, jnp.float32), metrics)


def eval_step(model: nn.Module, variables, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Masked sums of correct top-1/top-5 predictions and CE over an eval batch."""
  logits = model.apply(variables, batch["image"], train=False).astype(jnp.float32)
  labels, mask = batch["label"], batch["mask"]
  top5 = jax.lax.top_k(logits, 5)[1] if logits.shape[-1] >= 5 else jnp.argsort(-logits)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return {"correct1": jnp.sum((jnp.argmax(logits, -1) == labels) * mask),
          "correct5": jnp.sum(jnp.any(top5 == labels[:, None], -1) * mask),
          "loss": jnp.sum(ce * mask), "count": jnp.sum(mask)}


def probe_attention(nets: Networks, state: TrainState, batch, teacher_vars):
  """Batch-mean link attention (nt, ns) sown by the method as ``'attention'``, or None."""
  s_logits, s_mut = nets.student.apply(
      {"params": state.params["student"], "batch_stats": state.batch_stats["student"]},
      batch["image"], train=False, mutable=["intermediates"])
  t_logits, t_feats = _teacher_outputs(nets, teacher_vars, batch["image"])
  s_feats = _select(models.feature_list(s_mut["intermediates"]),
                    nets.distiller.student_features)
  _, mut = nets.distiller.module.apply(
      _method_variables(state, state.params), s_feats, t_feats, s_logits, t_logits,
      batch["label"], train=False, mutable=["intermediates"])
  att = mut.get("intermediates", {}).get("attention")
  return None if att is None else jnp.mean(att[-1], axis=0)


class Evaluator:
  """Jitted, sharded top-1/top-5 evaluation of a model over the whole eval split."""

  def __init__(self, config, mesh: Mesh):
    self.config, self.mesh = config, mesh
    self.data_sharding = NamedSharding(mesh, P("data"))
    self._steps = {}

  def __call__(self, model: nn.Module, variables) -> dict[str, float]:
    if id(model) not in self._steps:
      self._steps[id(model)] = jax.jit(functools.partial(eval_step, model))
    step = self._steps[id(model)]
    totals = None
    batches = input_pipeline.create_eval_iterator(self.config.data, self.config.eval_batch_size)
    for batch in input_pipeline.prefetch_to_device(batches, 2, self.data_sharding):
      out = step(variables, batch)
      totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
    totals = jax.device_get(totals)
    n = max(float(totals["count"]), 1.0)
    return {"top1": float(100.0 * totals["correct1"] / n),
            "top5": float(100.0 * totals["correct5"] / n), "loss": float(totals["loss"] / n)}


def validate_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Clear errors for settings that cannot run, before anything is built."""
  for field in ("batch_size", "eval_batch_size"):
    value = config[field]
    if value <= 0 or value % num_devices:
      raise ValueError(f"config.{field}={value} must be a positive multiple of the "
                       f"{num_devices} devices in the mesh (the batch is split evenly "
                       "across them)")
  if config.schedule.num_epochs <= 0:
    raise ValueError(f"config.schedule.num_epochs={config.schedule.num_epochs} must be > 0")
  if config.teacher.name and config.method.name != "none" and not config.teacher.checkpoint:
    raise ValueError(f"config.teacher.checkpoint is empty but method "
                     f"{config.method.name!r} distils from teacher {config.teacher.name!r}")


def _save_config(config: ml_collections.ConfigDict, workdir: str, step: int) -> None:
  """Writes config.json; a resumed run with a changed config keeps the old file too."""
  text = config.to_json_best_effort(indent=2, sort_keys=True)
  path = os.path.join(workdir, "config.json")
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      if f.read() == text:
        return
    path = os.path.join(workdir, f"config.resumed_at_step{step}.json")
    logging.warning("Config differs from the workdir's config.json; saved as %s", path)
  with open(path, "w", encoding="utf-8") as f:
    f.write(text)


@dataclasses.dataclass
class Run:
  """A run's workdir opened for training or analysis: networks, state and teacher."""
  config: ml_collections.ConfigDict
  workdir: str
  mesh: Mesh
  steps_per_epoch: int
  nets: Networks
  ckpts: checkpointing.RunCheckpoints
  state: TrainState
  meta: dict[str, Any]
  teacher_vars: Any

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())

  @property
  def data_sharding(self) -> NamedSharding:
    return NamedSharding(self.mesh, P("data"))

  @functools.cached_property
  def probe(self):
    """`probe_attention` jitted once for this run's networks."""
    return jax.jit(functools.partial(probe_attention, self.nets))


def open_run(config: ml_collections.ConfigDict, workdir: str, *,
             require_checkpoint: bool = False) -> Run:
  """Validates `config`, builds its networks, restores the newest checkpoint of `workdir`
  (or initialises a fresh state) and loads the teacher.

  Raises:
    ValueError / PairingError: an invalid config or unpairable teacher/student.
    CheckpointError: a corrupt checkpoint or teacher, or none with `require_checkpoint`.
  """
  workdir = os.path.abspath(os.path.expanduser(workdir))
  mesh = make_mesh(config.num_devices)
  validate_config(config, mesh.size)
  info = input_pipeline.get_dataset_info(config.data)
  steps_per_epoch = info.num_train_examples // config.batch_size
  if steps_per_epoch < 1:
    raise ValueError(f"config.batch_size={config.batch_size} exceeds the "
                     f"{info.num_train_examples} training examples of {config.data.name!r}")
  nets = build_networks(config, info.num_classes, steps_per_epoch)
  replicated = NamedSharding(mesh, P())
  init = jax.jit(functools.partial(init_state, nets, image_size=config.data.image_size),
                 out_shardings=replicated)
  if require_checkpoint and not os.path.isdir(os.path.join(workdir, "checkpoints")):
    raise checkpointing.CheckpointError(f"no checkpoints/ in workdir {workdir!r}")
  ckpts = checkpointing.RunCheckpoints(workdir, keep=config.logging.keep_checkpoints)
  abstract = jax.eval_shape(init, jax.random.PRNGKey(config.seed))
  abstract = jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated), abstract)
  restored = ckpts.restore_latest(abstract)
  if restored is None:
    if require_checkpoint:
      raise checkpointing.CheckpointError(f"no checkpoint in workdir {workdir!r}")
    state, meta = init(jax.random.PRNGKey(config.seed)), {"best_top1": -1.0}
    logging.info("Starting %s from scratch in %s", config.model.name, workdir)
  else:
    state, meta = restored
    logging.info("Resumed from step %d in %s", int(state.step), workdir)
  teacher_vars = None
  if nets.teacher is not None:
    abstract_t = jax.eval_shape(functools.partial(nets.teacher.init, train=False),
                                jax.random.PRNGKey(0), _dummy_batch(config.data.image_size))
    teacher_vars = jax.device_put(checkpointing.load_teacher_variables(
        config.teacher.checkpoint, abstract_t, config.teacher.name), replicated)
  return Run(config, workdir, mesh, steps_per_epoch, nets, ckpts, state, meta, teacher_vars)


def link_attention(run: Run) -> np.ndarray | None:
  """The method's batch-mean link attention (nt, ns) on the first eval batch, or None."""
  batch = next(input_pipeline.prefetch_to_device(
      input_pipeline.create_eval_iterator(run.config.data, run.config.eval_batch_size), 1,
      run.data_sharding))
  att = run.probe(run.state, batch, run.teacher_vars)
  return None if att is None else np.asarray(jax.device_get(att))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains per `config` in `workdir`, resuming from its newest checkpoint if any.

  Returns:
    final metrics: ``top1``, ``top5`` (last eval), ``best_top1``, ``teacher_top1`` (if
    a teacher), ``step``, ``train_seconds``.
  """
  os.makedirs(os.path.abspath(os.path.expanduser(workdir)), exist_ok=True)
  run = open_run(config, workdir)
  workdir, mesh, nets, ckpts = run.workdir, run.mesh, run.nets, run.ckpts
  state, meta, teacher_vars = run.state, run.meta, run.teacher_vars
  steps_per_epoch = run.steps_per_epoch
  replicated, data_sharding = run.replicated, run.data_sharding
  total_steps = config.schedule.num_epochs * steps_per_epoch
  stop_step = total_steps if config.max_steps is None else min(total_steps, config.max_steps)
  step = int(state.step)
  _save_config(config, workdir, step)
  logging.info("Resolved config:\n%s", config)

  p_train_step = jax.jit(functools.partial(train_step, nets),
                         in_shardings=(replicated, data_sharding, replicated),
                         out_shardings=(replicated, replicated), donate_argnums=(0,))
  evaluate = Evaluator(config, mesh)
  writer = MetricWriter(workdir, enabled=jax.process_index() == 0)
  result: dict[str, float] = {}
  if nets.teacher is not None:
    t_eval = evaluate(nets.teacher, teacher_vars)
    result["teacher_top1"] = t_eval["top1"]
    writer.scalars(step, {"teacher/top1": t_eval["top1"], "teacher/top5": t_eval["top5"]})
    logging.info("Teacher %s: top-1 %.2f", config.teacher.name, t_eval["top1"])

  batches = input_pipeline.prefetch_to_device(
      input_pipeline.create_train_iterator(config.data, config.batch_size, config.seed,
                                           start_step=step),
      config.data.prefetch, data_sharding)
  log_every = max(1, config.logging.log_every_steps)
  eval_every = max(1, config.logging.eval_every_epochs) * steps_per_epoch
  window, window_start, train_seconds = [], time.time(), 0.0
  last_eval: dict[str, float] = {}
  # Preemption (SIGTERM) takes the Ctrl-C path below, which saves a checkpoint.
  on_main_thread = threading.current_thread() is threading.main_thread()
  previous_sigterm = (signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
                      if on_main_thread else None)
  try:
    while step < stop_step:
      epoch = step // steps_per_epoch
      epoch_end = min((epoch + 1) * steps_per_epoch, stop_step)
      bar = tqdm.tqdm(total=epoch_end - step, dynamic_ncols=True, leave=False,
                      desc=f"epoch {epoch + 1}/{config.schedule.num_epochs}",
                      disable=not config.logging.progress_bar or jax.process_index() != 0)
      epoch_start = time.time()
      while step < epoch_end:
        state, metrics = p_train_step(state, next(batches), teacher_vars)
        step += 1
        window.append(metrics)
        bar.update(1)
        if step % log_every == 0 or step == epoch_end:
          window = jax.device_get(window)
          elapsed = time.time() - window_start
          logged = {f"train/{k}": float(np.mean([m[k] for m in window])) for k in window[0]}
          logged["train/images_per_sec"] = len(window) * config.batch_size / max(elapsed, 1e-9)
          writer.scalars(step, logged)
          bar.set_postfix(loss=f"{logged['train/loss']:.3f}",
                          img_s=f"{logged['train/images_per_sec']:.0f}")
          window, window_start = [], time.time()
        every = config.logging.checkpoint_every_steps
        if every and step % every == 0 and step != epoch_end:
          ckpts.save(step, state, dict(meta, epoch=step / steps_per_epoch))
      bar.close()
      train_seconds += time.time() - epoch_start
      if step % eval_every == 0 or step == stop_step:
        last_eval = evaluate(nets.student, {"params": state.params["student"],
                                            "batch_stats": state.batch_stats["student"]})
        writer.scalars(step, {f"eval/{k}": v for k, v in last_eval.items()})
        logging.info("step %d (epoch %.2f): eval top-1 %.2f top-5 %.2f", step,
                     step / steps_per_epoch, last_eval["top1"], last_eval["top5"])
        run.state = state
        _write_link_heatmap(run, writer, step, epoch)
        if last_eval["top1"] > meta["best_top1"]:
          meta["best_top1"] = last_eval["top1"]
          ckpts.save_best(step, state, dict(meta, epoch=step / steps_per_epoch),
                          last_eval["top1"])
      ckpts.save(step, state, dict(meta, epoch=step / steps_per_epoch))
    writer.flush()
  except KeyboardInterrupt:
    # Ctrl-C or SIGTERM mid-epoch: keep the steps done so far (the rerun resumes from here), unless
    # the interrupt hit inside the step, whose input buffers are already donated.
    if not any(a.is_deleted() for a in jax.tree.leaves(state)):
      ckpts.save(step, state, dict(meta, epoch=step / steps_per_epoch))
      logging.warning("Interrupted at step %d; checkpoint saved in %s", step, workdir)
    raise
  finally:
    if on_main_thread:
      signal.signal(signal.SIGTERM, previous_sigterm or signal.SIG_DFL)
    ckpts.close()
    writer.close()
  if not last_eval and step:
    last_eval = evaluate(nets.student, {"params": state.params["student"],
                                        "batch_stats": state.batch_stats["student"]})
  result.update(step=step, best_top1=meta["best_top1"], train_seconds=train_seconds,
                **{k: last_eval[k] for k in ("top1", "top5") if k in last_eval})
  with open(os.path.join(workdir, "result.json"), "w", encoding="utf-8") as f:
    json.dump(result, f, indent=2)
  return result


def _sigterm_as_interrupt(signum, frame) -> None:
  del frame
  raise KeyboardInterrupt(f"received signal {signum}")


def _write_link_heatmap(run: Run, writer: MetricWriter, step: int, epoch: int) -> None:
  """Logs the method's mean link attention (AFD) as a TensorBoard image, if it has one."""
  every = run.config.logging.heatmap_every_epochs
  if run.nets.teacher is None or not every or (epoch + 1) % every or not writer.enabled:
    return
  att = link_attention(run)
  if att is None:
    return
  from afd_jax import link_heatmap  # matplotlib only when a method has links to draw
  image = link_heatmap.render_links(
      att, run.nets.distiller.teacher_features, run.nets.distiller.student_features,
      title=f"{run.config.method.name} links, step {step}")
  writer.image(step, "links/attention", image)
