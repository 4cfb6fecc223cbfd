"""The distillation-method interface and registry.

A method is built once per run from its config and the feature shapes of both networks:

    distiller = build_method(config.method, student=FeatureInfo(...), teacher=FeatureInfo(...),
                             num_classes=100, steps_per_epoch=782)

`Distiller` holds
* ``student_features`` / ``teacher_features``: the names (from the models' sown feature
  lists) the method consumes, resolved and validated at build time, so a pair the method
  cannot handle fails before any compilation with an error naming both feature lists;
* ``module``: a Flax module computing the *whole* objective (CE included, since the
  methods weight CE differently). It is called as

      loss, metrics = module.apply(variables, s_feats, t_feats, s_logits, t_logits,
                                   labels, train=True,
                                   mutable=['batch_stats', 'method_state', 'intermediates'])

  with ``s_feats``/``t_feats`` lists of (B, H, W, C) arrays in the order of the name
  tuples. Its learnable parts (AFD meta-network, TaT embeddings, regressors) live in
  ``'params'``/``'batch_stats'`` and train with the student (same optimizer, same weight
  decay); non-trainable state (e.g. AFT-KD's loss history) lives in ``'method_state'``.
  The loss arithmetic itself is written as pure functions of arrays next to each module,
  which is what the tests check against NumPy references.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax


@dataclasses.dataclass(frozen=True)
class FeatureInfo:
  """One network's identity and sown features.

  Attributes:
    model: registry name of the model, e.g. ``'wrn_40_2'``.
    shapes: ordered ``{feature name: shape}`` (from `models.feature_list`), batch included.
  """
  model: str
  shapes: Mapping[str, tuple[int, ...]]


@dataclasses.dataclass(frozen=True)
class Distiller:
  """A built method: which features it reads and the module computing its objective."""
  name: str
  module: nn.Module
  student_features: tuple[str, ...] = ()
  teacher_features: tuple[str, ...] = ()
  needs_teacher: bool = True


class PairingError(ValueError):
  """The method cannot pair this teacher's and this student's features."""


Builder = Callable[..., Distiller]
_REGISTRY: dict[str, Builder] = {}


def register(name: str) -> Callable[[Builder], Builder]:
  """Decorator registering ``builder(cfg, student, teacher, num_classes, steps_per_epoch)``."""
  def wrap(fn: Builder) -> Builder:
    if name in _REGISTRY:
      raise ValueError(f"method {name!r} registered twice")
    _REGISTRY[name] = fn
    return fn
  return wrap


def method_names() -> tuple[str, ...]:
  """Names of all registered methods."""
  return tuple(sorted(_REGISTRY))


def build_method(cfg, *, student: FeatureInfo, teacher: FeatureInfo | None,
                 num_classes: int, steps_per_epoch: int = 1) -> Distiller:
  """Builds the method named ``cfg.name`` for this student/teacher pair.

  Raises:
    ValueError: unknown method name (the message lists the registered ones), or a method
      that needs a teacher got none.
    PairingError: the method cannot pair these feature lists.
  """
  name = cfg.name
  if name not in _REGISTRY:
    raise ValueError(f"Unknown method {name!r}; accepted: {', '.join(method_names())}")
  distiller = _REGISTRY[name](cfg, student=student, teacher=teacher,
                              num_classes=num_classes, steps_per_epoch=steps_per_epoch)
  if distiller.needs_teacher and teacher is None:
    raise ValueError(f"method {name!r} needs a teacher: set config.teacher.model and "
                     "config.teacher.checkpoint")
  return distiller


def cfg_get(cfg, key: str, default: Any) -> Any:
  """``cfg.key`` if the method config defines it, else `default`."""
  return cfg[key] if key in cfg else default


# ---- loss terms shared by several methods --------------------------------------------


def cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
  """Mean softmax cross-entropy. logits (B, K) float, labels (B,) int."""
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), labels))


def kd_loss(s_logits: jnp.ndarray, t_logits: jnp.ndarray, temperature: float) -> jnp.ndarray:
  """Hinton KD: ``τ² · KL(softmax(t/τ) ‖ softmax(s/τ))``, summed over classes, batch mean.

  Args:
    s_logits, t_logits: (B, K) student and teacher logits.
    temperature: τ.
  """
  log_ps = jax.nn.log_softmax(s_logits.astype(jnp.float32) / temperature, axis=-1)
  log_pt = jax.nn.log_softmax(t_logits.astype(jnp.float32) / temperature, axis=-1)
  kl = jnp.sum(jnp.exp(log_pt) * (log_pt - log_ps), axis=-1)
  return temperature ** 2 * jnp.mean(kl)


def logit_terms(cfg, s_logits, t_logits, labels, *, ce_weight: float = 1.0,
                kd_weight: float = 0.0, temperature: float = 4.0):
  """The common ``ce_weight·CE + kd_weight·KD`` part with its metrics.

  The weights default to the calling method's published values and are overridden by
  ``cfg.ce_weight`` / ``cfg.kd_weight`` / ``cfg.temperature`` when set.
  """
  ce_w = cfg_get(cfg, "ce_weight", ce_weight)
  kd_w = cfg_get(cfg, "kd_weight", kd_weight)
  ce = cross_entropy(s_logits, labels)
  total, metrics = ce_w * ce, {"ce": ce}
  if kd_w and t_logits is not None:
    kd = kd_loss(s_logits, t_logits, cfg_get(cfg, "temperature", temperature))
    total, metrics["kd"] = total + kd_w * kd, kd
  return total, metrics


def require_features(info: FeatureInfo, names, method: str, role: str) -> tuple[str, ...]:
  """Checks that `names` are all features of `info`, else a PairingError listing them."""
  names = tuple(names)
  missing = [n for n in names if n not in info.shapes]
  if missing or not names:
    raise PairingError(
        f"method {method!r}: {role} {info.model!r} lacks features {missing or names}; "
        f"its features are {list(info.shapes)}")
  return names


def stage_features(info: FeatureInfo) -> tuple[str, ...]:
  """The ``stage{i}.out`` names of a network, in order."""
  return tuple(n for n in info.shapes if n.startswith("stage") and n.endswith(".out"))


def paired_stages(method: str, student: FeatureInfo, teacher: FeatureInfo, cfg=None
                  ) -> tuple[tuple[str, ...], tuple[str, ...]]:
  """Stage-aligned (student, teacher) feature names: stage k ↔ stage k.

  ``cfg.student_stages`` / ``cfg.teacher_stages`` (1-based stage indices, equal lengths)
  override the default of pairing all stages, e.g. for nets with different stage counts.

  Raises:
    PairingError: the stage counts differ and no explicit stage lists resolve it; the
      message names both stage lists.
  """
  s_idx = cfg_get(cfg, "student_stages", None) if cfg is not None else None
  t_idx = cfg_get(cfg, "teacher_stages", None) if cfg is not None else None
  s_all, t_all = stage_features(student), stage_features(teacher)
  if s_idx is None and t_idx is None:
    if len(s_all) != len(t_all):
      raise PairingError(
          f"method {method!r} pairs stages one to one, but student {student.model!r} has "
          f"stages {list(s_all)} and teacher {teacher.model!r} has {list(t_all)}; set "
          "config.method.student_stages and config.method.teacher_stages to the 1-based "
          "stage indices to pair")
    return s_all, t_all
  s_idx = tuple(s_idx if s_idx is not None else t_idx)
  t_idx = tuple(t_idx if t_idx is not None else s_idx)
  if len(s_idx) != len(t_idx):
    raise PairingError(f"method {method!r}: student_stages {list(s_idx)} and "
                       f"teacher_stages {list(t_idx)} differ in length")
  return (require_features(student, [f"stage{i}.out" for i in s_idx], method, "student"),
          require_features(teacher, [f"stage{i}.out" for i in t_idx], method, "teacher"))
