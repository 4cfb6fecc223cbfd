"""What a run's values mean, checked before anything is written.

* `smallest_image_size`: each model's smallest input, its measured total stride.
* `check_method`: every method field against the range declared beside its default.
* `validate_config`: the values a run cannot start with (batch sizes against the mesh,
  optimizer and schedule ranges, the method, the teacher checkpoint's presence).
* `check_run`: the checks that need the opened dataset (image sizes against the models,
  the teacher checkpoint readable and of the teacher's architecture), run before a
  workdir is bound to a config (`workdir.check_config`), so that a failed start leaves
  nothing that blocks the corrected command.
* `divergence_advice`: the likely cause of a divergence, from the run's values.
"""
from __future__ import annotations

import functools
from typing import Any, Mapping

import jax
import ml_collections

from afd_jax import methods, models, multi_step, tasks, train_state
from afd_jax.methods import ranges

# Measuring from this input side up: the smallest image's regime (VGG pools before its
# last group only from 64 pixels on), and sides small enough for cheap traces.
_FIRST_PROBE = 8
_LAST_PROBE = 1024


@functools.lru_cache(maxsize=None)
def total_stride(model: str) -> tuple[int, str]:
  """(total stride of `model`'s deepest feature map, how it was measured).

  Measured, not listed: the model's sown features are traced abstractly
  (`train_state.feature_shapes`) at square inputs of 8, 16, 32, ... pixels until the
  smallest map is at least 2x2 (a 1x1 map cannot tell an input just large enough from
  one too small: a stride-2 3x3 conv maps 1x1 to 1x1); the stride is the input's side
  over that map's. Cached: each model is traced once per process.

  Raises:
    ValueError: an unknown model (the accepted ones listed).
  """
  if model not in models.MODEL_NAMES:
    raise ValueError(f"unknown model {model!r}; accepted: {', '.join(models.MODEL_NAMES)}")
  net = models.get_model(model, 10)
  size = _FIRST_PROBE
  while size <= _LAST_PROBE:
    try:
      shapes = train_state.feature_shapes(net, size)
    except Exception:  # pylint: disable=broad-except  (a pool on an empty map)
      shapes = {}
    maps = {name: shape[1] for name, shape in shapes.items() if len(shape) == 4}
    if maps and min(maps.values()) >= 2:
      side = min(maps.values())
      deepest = [name for name, s in maps.items() if s == side][-1]
      return size // side, f"{deepest} is {side}x{side} at input {size}x{size}"
    size *= 2
  raise ValueError(f"model {model!r} keeps no 2x2 feature map up to {_LAST_PROBE}x"
                   f"{_LAST_PROBE} inputs: its stride cannot be measured")


def smallest_image_size(model: str) -> int:
  """The smallest ``data.image_size`` `model` can take: its total stride (a 1x1 deepest
  feature map computed from the image, not from padding)."""
  return total_stride(model)[0]


def check_image_size(config: ml_collections.ConfigDict, image_size: int) -> None:
  """Raises ValueError if `image_size` is below the student's or teacher's smallest."""
  roles = [("model", config.model.name)]
  if config.teacher.get("name") and methods.needs_teacher(config.method.name):
    roles.append(("teacher", config.teacher.name))
  for role, name in roles:
    stride, how = total_stride(name)
    if image_size < stride:
      raise ValueError(
          f"config.data.image_size={image_size} is too small for model {name!r} "
          f"(config.{role}.name): its feature maps shrink by {stride} ({how}), so its "
          f"deepest features would see only padding; accepted: >= {stride}")


def check_method(cfg: Mapping[str, Any]) -> None:
  """Checks every field of ``config.method`` (resolved: the defaults too) against the
  range its method's `Config` declares beside its default (`methods.ranges`).

  Raises:
    ValueError: the first field out of range, with the accepted values.
  """
  name = cfg["name"]
  cls = methods.hparams_class(name)
  for field, value in methods.resolved_fields(cfg).items():
    if field == "name":
      continue
    accepted = ranges.field_range(cls, field)
    if not accepted.ok(value):
      raise ValueError(f"config.method.{field}={value!r} is out of range for method "
                       f"{name!r}; accepted: {accepted.text}")


@functools.lru_cache(maxsize=16)
def _abstract_teacher(name: str, num_classes: int, image_size: int):
  model = models.get_model(name, num_classes)
  return jax.eval_shape(functools.partial(model.init, train=False),
                        jax.random.PRNGKey(0), train_state.dummy_batch(image_size))


def validate_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Clear errors for settings that cannot run, before anything is built."""
  for field in ("batch_size", "eval_batch_size"):
    value = config[field]
    if value <= 0 or value % num_devices:
      raise ValueError(f"config.{field}={value} must be a positive multiple of the "
                       f"{num_devices} devices in the mesh (the batch is split evenly "
                       "across them)")
  checks = [("optim.lr", config.optim.lr, lambda v: v > 0, "> 0"),
            ("optim.weight_decay", config.optim.weight_decay, lambda v: v >= 0, ">= 0"),
            ("optim.momentum", config.optim.momentum, lambda v: 0 <= v < 1, "in [0, 1)"),
            ("schedule.num_epochs", config.schedule.num_epochs, lambda v: v > 0, "> 0"),
            ("schedule.warmup_epochs", config.schedule.warmup_epochs,
             lambda v: 0 <= v <= config.schedule.num_epochs, "in [0, num_epochs]"),
            ("logging.keep_checkpoints", config.logging.keep_checkpoints,
             lambda v: v >= 1, ">= 1"),
            ("max_steps", config.max_steps, lambda v: v is None or v > 0, "> 0 or None"),
            ("data.image_size", config.data.image_size, lambda v: v is None or v > 0,
             "> 0 (or None for the dataset's default)")]
  for name, value, ok, accepted in checks:
    if not ok(value):
      raise ValueError(f"config.{name}={value!r} is out of range; accepted: {accepted}")
  multi_step.steps_per_dispatch(config)
  methods.resolve(config.method)  # unknown method or field: the accepted ones are listed
  check_method(config.method)  # every field within its range
  if (config.teacher.name and methods.needs_teacher(config.method.name)
      and not config.teacher.checkpoint and not config.teacher.get("random_init")):
    raise ValueError(f"config.teacher.checkpoint is empty but method "
                     f"{config.method.name!r} distils from teacher {config.teacher.name!r}")
  if config.get("seeds") and not tasks.of_model(config.model.name).seed_groups:
    raise ValueError(f"config.seeds={tuple(config.seeds)} is not supported for "
                     f"{models.task_of(config.model.name)} model {config.model.name!r} yet; "
                     "accepted: None (run one workdir per seed with config.seed)")
  if config.model.get("init"):
    from afd_jax import pretrained  # pylint: disable=g-import-not-at-top
    pretrained.check_init_path(config.model.init)
  head = config.optim.get("head_lr_multiplier", 1.0)
  if not head > 0:
    raise ValueError(f"config.optim.head_lr_multiplier={head!r} is out of range; "
                     "accepted: > 0")


def check_run(config: ml_collections.ConfigDict, dataset) -> None:
  """The checks of a run that need its opened `dataset` (`input_pipeline.Dataset`),
  before its workdir is bound: image size against both models, the teacher checkpoint
  (found, matching its digest, of the teacher's architecture and classes).

  Raises:
    ValueError: an image size too small for a model.
    checkpointing.CheckpointError: a missing, corrupt or mismatched teacher checkpoint.
  """
  from afd_jax import checkpointing  # pylint: disable=g-import-not-at-top  (orbax)
  size = config.data.image_size or dataset.info.image_size
  check_image_size(config, size)
  teacher = config.teacher
  if (teacher.get("name") and methods.needs_teacher(config.method.name)
      and teacher.get("checkpoint") and not teacher.get("random_init")):
    classes = teacher.get("num_classes") or dataset.info.num_classes
    checkpointing.check_teacher(teacher.checkpoint,
                                _abstract_teacher(teacher.name, classes, size), teacher.name)


# Learning rates above these are far outside this repository's recipes.
_HIGH_LR = {"sgd": 1.0, "adamw": 0.01}
_NOT_TERMS = frozenset(("loss", "lr", "grad_norm", "top1", "skipped"))


def divergence_advice(config: ml_collections.ConfigDict, err) -> str:
  """The likely cause of `err` (`faults.Diverged`) from the run's values, as
  advice: a learning rate far above the recipes', a method term that went non-finite
  while the cross-entropy stayed finite (the method's values), a divergence at the very
  first step (the inputs or the method, not the schedule), else the learning rate."""
  optim = config.optim
  name = optim.get("name", "sgd")
  lr = float(optim.lr)
  skip = "or set --config.optim.skip_nonfinite=True to skip such steps"
  if lr > _HIGH_LR.get(name, 1.0):
    return (f"Likely cause: config.optim.lr={lr:g} is far above the usual range for "
            f"{name} (<= {_HIGH_LR.get(name, 1.0):g} in this repository's configs); lower "
            f"--config.optim.lr, {skip}.")
  method = config.method.name
  terms = sorted(set(err.bad) - _NOT_TERMS - {"ce"})
  if terms and "ce" not in err.bad:
    try:
      fields = methods.resolved_fields(config.method)
      defaults = methods.resolved_fields({"name": method})
      changed = {k: v for k, v in fields.items() if defaults.get(k) != v}
    except ValueError:
      changed = {}
    values = (", ".join(f"{k}={v!r}" for k, v in changed.items()) if changed
              else "all at their defaults")
    return (f"Likely cause: the {method!r} loss term(s) {', '.join(terms)} went "
            f"non-finite while the cross-entropy stayed finite: the method's values "
            f"({values}) or its inputs, more than the learning rate; check them, "
            f"{skip}.")
  if err.step <= 1:
    return (f"Likely cause: the very first step diverged, before the learning rate "
            f"(lr {err.metrics.get('lr', lr):.4g}) could matter: the inputs or the "
            f"method's values (config.method: {dict(methods.resolved_fields(config.method))})"
            f"; check them, {skip}.")
  return (f"Lower --config.optim.lr (now {lr:g}), {skip}.")
