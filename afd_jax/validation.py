"""What a run's values mean, checked before anything is written.

* `smallest_image_size`: each model's smallest input, from its strides and pooling.
* `METHOD_FIELDS`: every method field's valid range; `check_method` applies it.
* `check_run`: the checks that need the opened dataset (image sizes against the models,
  the teacher checkpoint readable and of the teacher's architecture), run before a
  workdir is bound to a config (`workdir.check_config`), so that a failed start leaves
  nothing that blocks the corrected command.
* `divergence_advice`: the likely cause of a divergence, from the run's values.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import re
from typing import Any, Callable, Mapping

import ml_collections

from afd_jax import methods, models

# Total downsampling of each model family's deepest feature map: the product of its
# strided convolutions and poolings (each module's docstring has the layout). Below it,
# the last strided layers see only their own padding: the model still runs (a stride-2
# 3x3 conv maps 1x1 to 1x1) but its deepest features no longer depend on the image.
_STRIDES: tuple[tuple[str, int, str], ...] = (
    (r"resnet(8|14|20|32|44|56|110)(x4)?", 4, "3x3/1 stem, stages /1 /2 /2"),
    (r"wrn_\d+_\d+", 4, "3x3/1 stem, stages /1 /2 /2"),
    # (a fourth max-pool, before group 5, only from 64 pixels on)
    (r"vgg\d+", 8, "2x2 max-pools before conv groups 2, 3 and 4"),
    (r"MobileNetV2", 16, "3x3/2 stem, stages /1 /2 /2 /2"),
    (r"Shuffle(V1|V2)", 8, "3x3/1 stem, stages /2 /2 /2"),
    (r"(ResNet50|resnet18|resnet34)", 8, "3x3/1 stem, stages /1 /2 /2 /2"),
    (r"resnet(18|34|50)_imagenet", 32, "7x7/2 stem, 3x3/2 max-pool, stages /1 /2 /2 /2"),
    (r"deeplabv3p_\w+", 16, "backbone at output stride 16"),
    (r"tiny_resnet(18|10)_classifier", 16, "DeepLab backbone at output stride 16"),
)


def total_stride(model: str) -> tuple[int, str]:
  """(total stride of `model`'s deepest feature map, the layers that make it).

  Raises:
    ValueError: an unknown model (the accepted ones listed).
  """
  for pattern, stride, how in _STRIDES:
    if re.fullmatch(pattern, model):
      return stride, how
  raise ValueError(f"unknown model {model!r}; accepted: {', '.join(models.MODEL_NAMES)}")


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


@dataclasses.dataclass(frozen=True)
class Range:
  """A method field's accepted values: ``ok(value)``, described by `text`."""
  ok: Callable[[Any], bool]
  text: str


def _num(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _each(ok: Callable[[Any], bool]) -> Callable[[Any], bool]:
  """A number, or a tuple of them, each `ok`."""
  return lambda v: all(ok(x) for x in (v if isinstance(v, tuple) else (v,)))


_NONNEG = Range(_each(lambda v: _num(v) and v >= 0), ">= 0")
_POS = Range(lambda v: _num(v) and v > 0, "> 0")
_POS_INT = Range(lambda v: _int(v) and v >= 1, "an integer >= 1")
_NONNEG_INT = Range(lambda v: _int(v) and v >= 0, "an integer >= 0")
_UNIT = Range(lambda v: _num(v) and 0 <= v < 1, "in [0, 1)")
_GRID = Range(lambda v: isinstance(v, tuple) and len(v) == 2 and all(
    _int(x) and x >= 1 for x in v), "two integers >= 1, (rows, cols)")
_OPTIONAL = lambda r: Range(lambda v: v is None or r.ok(v), f"{r.text}, or None")  # noqa: E731
_BOOL = Range(lambda v: isinstance(v, bool), "True or False")
# Checked where they are meaningful: the choices by the method's own dataclass, feature
# and stage selections against the models' features when the method is built.
_BY_METHOD = Range(lambda v: True, "checked by the method")

# Every method field, by name; `METHOD_FIELDS` overrides it for one method's field.
FIELDS: dict[str, Range] = {
    **{f: _NONNEG for f in (
        "ce_weight", "kd_weight", "beta", "alpha", "gamma", "weight", "afb_weight",
        "feature_weight", "position_weight", "activation_weight", "channel_weight",
        "distance_weight", "angle_weight", "margin", "warmup_epochs")},
    **{f: _POS for f in ("temperature", "rate_temperature", "attention_temperature",
                         "nce_t", "p", "rate", "init_var", "eps", "scale")},
    **{f: _POS_INT for f in ("qk_dim", "embed_dim", "feat_dim", "nce_k", "init_epochs",
                             "max_mid_channels", "mid_channels", "gram_size", "factor",
                             "heads", "embed_kernel", "position_pool", "p1", "p2",
                             "hint_stage")},
    "rate_warmup_windows": _NONNEG_INT,
    "rate_window_steps": _OPTIONAL(_POS_INT),
    "init_lr": _OPTIONAL(_POS),
    "nce_m": _UNIT,
    "ema_decay": _UNIT,
    "patch_grid": _GRID,
    "anchor_grid": _GRID,
    "batch_average": _BOOL,
    "train_abf": _BOOL,
    "learnable_key": _OPTIONAL(_BOOL),
    "replacement": _OPTIONAL(_BOOL),
    **{f: _BY_METHOD for f in (
        "mode", "weighting", "rate_average", "position_distance", "channel_distance",
        "mid_reduction", "student_stages", "teacher_stages", "student_features",
        "teacher_features", "student_feature", "teacher_feature")},
}
METHOD_FIELDS: dict[tuple[str, str], Range] = {
    # TaT: None takes the mode's default (the release's value).
    ("tat", "ce_weight"): _OPTIONAL(_NONNEG),
    ("tat", "kd_weight"): _OPTIONAL(_NONNEG),
    ("tat", "temperature"): _OPTIONAL(_POS),
    ("ft", "rate"): Range(lambda v: _num(v) and 0 < v <= 1,
                          "in (0, 1] (the paraphraser's channel ratio)"),
}


def field_range(method: str, field: str) -> Range:
  """The accepted values of `method`'s `field`.

  Raises:
    KeyError: a field with no entry (a new field must be given its range here).
  """
  return METHOD_FIELDS.get((method, field)) or FIELDS[field]


def check_method(cfg: Mapping[str, Any]) -> None:
  """Checks every field of ``config.method`` (resolved: the defaults too) against its
  range.

  Raises:
    ValueError: the first field out of range, with the accepted values.
  """
  name = cfg["name"]
  for field, value in methods.resolved_fields(cfg).items():
    if field == "name":
      continue
    accepted = field_range(name, field)
    if not accepted.ok(value):
      raise ValueError(f"config.method.{field}={value!r} is out of range for method "
                       f"{name!r}; accepted: {accepted.text}")


@functools.lru_cache(maxsize=16)
def _abstract_teacher(name: str, num_classes: int, image_size: int):
  import jax  # pylint: disable=g-import-not-at-top
  from afd_jax import train_state  # pylint: disable=g-import-not-at-top
  model = models.get_model(name, num_classes)
  return jax.eval_shape(functools.partial(model.init, train=False),
                        jax.random.PRNGKey(0), train_state.dummy_batch(image_size))


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
  """The likely cause of `err` (`metric_writer.Diverged`) from the run's values, as
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
