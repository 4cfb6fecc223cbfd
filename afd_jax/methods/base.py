"""The distillation-method interface: hyperparameters, registry and building.

Every method owns its hyperparameters, once: a frozen dataclass whose field defaults are
the published values (with the source in its docstring), registered with the builder:

    @register("afd", Config)
    def build(hp: Config, student: FeatureInfo, teacher: FeatureInfo | None,
              steps_per_epoch: int) -> Distiller: ...

A run's ``config.method`` holds ``name`` and only the fields that differ from those
defaults. `resolve` turns it into the method's dataclass, rejecting any field the method
does not have with an error that lists the ones it has; `build_method` resolves, checks
that a teacher is given if the method needs one, and calls the builder. So switching
``config.method.name`` gives the new method its own defaults, never another method's.

`Distiller` holds
* ``student_features`` / ``teacher_features``: the names (from the models' sown feature
  lists) the method consumes, resolved and validated at build time;
* ``module``: a Flax module computing the *whole* objective (CE included, since the
  methods weight CE differently), called as

      loss, metrics = module.apply(variables, s_feats, t_feats, s_logits, t_logits,
                                   labels, train=True,
                                   mutable=['batch_stats', 'method_state', 'intermediates'])

  with ``s_feats``/``t_feats`` lists of (B, H, W, C) arrays in the order of the name
  tuples. Learnable parts (AFD meta-network, TaT embeddings, regressors) live in
  ``'params'``/``'batch_stats'`` and train with the student; non-trainable state (e.g.
  AFT-KD's loss history) lives in ``'method_state'``;
* ``eval_hooks``: analyses run after every evaluation (e.g. AFD's link heatmap), each
  ``hook(ctx)`` with an `afd_jax.analysis.AnalysisContext`.
"""
from __future__ import annotations

import ast
import dataclasses
import types
import typing
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
  """A built method: which features it reads, its objective and its analyses."""
  name: str
  module: nn.Module
  student_features: tuple[str, ...] = ()
  teacher_features: tuple[str, ...] = ()
  needs_teacher: bool = True
  eval_hooks: tuple[Callable[..., None], ...] = ()


class PairingError(ValueError):
  """The method cannot pair this teacher's and this student's features."""


@dataclasses.dataclass(frozen=True)
class LogitTerms:
  """The ``ce_weight·CE + kd_weight·τ²·KL(teacher ‖ student)`` part every method has.

  Subclasses redeclare the defaults their paper uses.
  """
  ce_weight: float = 1.0
  kd_weight: float = 0.0
  temperature: float = 4.0


Builder = Callable[..., Distiller]


@dataclasses.dataclass(frozen=True)
class _Entry:
  builder: Builder
  hparams: type
  needs_teacher: bool


_REGISTRY: dict[str, _Entry] = {}


def register(name: str, hparams: type, *, needs_teacher: bool = True
             ) -> Callable[[Builder], Builder]:
  """Decorator registering ``builder(hp, student, teacher, steps_per_epoch)``.

  Args:
    name: the ``config.method.name`` that selects the method.
    hparams: the method's frozen hyperparameter dataclass (defaults = published values).
    needs_teacher: whether the method distils from a teacher (checked before building).
  """
  def wrap(fn: Builder) -> Builder:
    if name in _REGISTRY:
      raise ValueError(f"method {name!r} registered twice")
    _REGISTRY[name] = _Entry(fn, hparams, needs_teacher)
    return fn
  return wrap


def method_names() -> tuple[str, ...]:
  """Names of all registered methods."""
  return tuple(sorted(_REGISTRY))


def _entry(name: str) -> _Entry:
  if name not in _REGISTRY:
    raise ValueError(f"Unknown method {name!r}; accepted: {', '.join(method_names())}")
  return _REGISTRY[name]


def hparams_class(name: str) -> type:
  """The hyperparameter dataclass of method `name`."""
  return _entry(name).hparams


def needs_teacher(name: str) -> bool:
  """Whether method `name` distils from a teacher."""
  return _entry(name).needs_teacher


def _freeze(value: Any) -> Any:
  """Lists (from JSON or the command line) become tuples, so hyperparameters hash."""
  if isinstance(value, (list, tuple)):
    return tuple(_freeze(v) for v in value)
  return value


def resolve(cfg: Mapping[str, Any]) -> Any:
  """``config.method`` (``name`` + overrides) -> the method's hyperparameter dataclass.

  Raises:
    ValueError: unknown method, or a field the method does not have; the message lists
      the method's fields with their defaults.
  """
  name = cfg["name"]
  cls = hparams_class(name)
  fields = {f.name: f for f in dataclasses.fields(cls)}
  overrides = {k: v for k, v in cfg.items() if k != "name"}
  unknown = sorted(set(overrides) - set(fields))
  if unknown:
    accepted = ", ".join(f"{n}={f.default!r}" for n, f in fields.items())
    raise ValueError(f"method {name!r} has no field(s) {unknown}; its fields (with their "
                     f"defaults) are: {accepted}")
  return cls(**{k: _freeze(v) for k, v in overrides.items()})


def resolved_fields(cfg: Mapping[str, Any]) -> dict[str, Any]:
  """``{'name': ..., every field: its value}`` of `resolve` (for config.json, logs)."""
  return {"name": cfg["name"], **dataclasses.asdict(resolve(cfg))}


def parse_field(name: str, field: str, text: str) -> Any:
  """Parses the command-line text of method `name`'s `field` to the field's type.

  ``'0.5'`` for a float, ``'true'`` for a bool, ``'(1,2)'`` for a tuple, ``'none'`` for
  an optional field; a string field takes the text as written.

  Raises:
    ValueError: the method has no such field, or the text does not parse as its type.
  """
  hints = typing.get_type_hints(hparams_class(name))
  if field not in hints:
    resolve({"name": name, field: None})  # raises, listing the accepted fields
  kind = hints[field]
  union = typing.get_origin(kind) in (typing.Union, types.UnionType)
  kinds = {typing.get_origin(a) or a for a in (typing.get_args(kind) if union else (kind,))}
  if text.strip().lower() == "none" and type(None) in kinds:
    return None
  if str in kinds:
    return text
  if bool in kinds and text.lower() in ("true", "false"):
    return text.lower() == "true"
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    value = text
  if isinstance(value, (list, tuple)) and tuple in kinds:
    return _freeze(value)
  if isinstance(value, (int, float)) and not isinstance(value, bool):
    if float in kinds:
      return float(value)
    if int in kinds and isinstance(value, int):
      return value
  raise ValueError(f"--config.method.{field}={text!r} is not a valid {kind} for method "
                   f"{name!r}")


def build_method(cfg: Mapping[str, Any], *, student: FeatureInfo,
                 teacher: FeatureInfo | None, steps_per_epoch: int = 1) -> Distiller:
  """Builds the method ``cfg['name']`` with its defaults updated by `cfg`'s fields.

  Raises:
    ValueError: unknown method or field (the message lists the accepted ones), or a
      method that needs a teacher got none.
    PairingError: the method cannot pair these feature lists.
  """
  hp = resolve(cfg)
  entry = _entry(cfg["name"])
  if entry.needs_teacher and teacher is None:
    raise ValueError(f"method {cfg['name']!r} needs a teacher: set config.teacher.name "
                     "and config.teacher.checkpoint")
  if not entry.needs_teacher:
    teacher = None
  return entry.builder(hp, student=student, teacher=teacher,
                       steps_per_epoch=max(1, steps_per_epoch))


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


def logit_terms(hp: LogitTerms, s_logits, t_logits, labels):
  """``hp.ce_weight·CE + hp.kd_weight·KD(hp.temperature)`` and its metrics."""
  ce = cross_entropy(s_logits, labels)
  total, metrics = hp.ce_weight * ce, {"ce": ce}
  if hp.kd_weight and t_logits is not None:
    kd = kd_loss(s_logits, t_logits, hp.temperature)
    total, metrics["kd"] = total + hp.kd_weight * kd, kd
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


def paired_stages(method: str, student: FeatureInfo, teacher: FeatureInfo,
                  student_stages=None, teacher_stages=None
                  ) -> tuple[tuple[str, ...], tuple[str, ...]]:
  """Stage-aligned (student, teacher) feature names: stage k ↔ stage k.

  `student_stages` / `teacher_stages` (1-based stage indices, equal lengths; one given
  means the same for both) override the default of pairing all stages, e.g. for nets
  with different stage counts.

  Raises:
    PairingError: the stage counts differ and no explicit stage lists resolve it; the
      message names both stage lists.
  """
  s_all, t_all = stage_features(student), stage_features(teacher)
  if student_stages is None and teacher_stages is None:
    if len(s_all) != len(t_all):
      raise PairingError(
          f"method {method!r} pairs stages one to one, but student {student.model!r} has "
          f"stages {list(s_all)} and teacher {teacher.model!r} has {list(t_all)}; set "
          "config.method.student_stages and config.method.teacher_stages to the 1-based "
          "stage indices to pair")
    return s_all, t_all
  s_idx = tuple(student_stages if student_stages is not None else teacher_stages)
  t_idx = tuple(teacher_stages if teacher_stages is not None else student_stages)
  if len(s_idx) != len(t_idx):
    raise PairingError(f"method {method!r}: student_stages {list(s_idx)} and "
                       f"teacher_stages {list(t_idx)} differ in length")
  return (require_features(student, [f"stage{i}.out" for i in s_idx], method, "student"),
          require_features(teacher, [f"stage{i}.out" for i in t_idx], method, "teacher"))


def check_choice(method: str, field: str, value: Any, accepted) -> None:
  """Raises ValueError naming `field`, `value` and the accepted values if not accepted."""
  if value not in accepted:
    raise ValueError(f"{method}: unknown {field} {value!r}; accepted: {tuple(accepted)}")


def train_step_count(module: nn.Module, train: bool) -> jnp.ndarray:
  """Training steps taken before this call, kept as ``method_state/step`` (int32 scalar).

  Call inside `module`'s compact ``__call__``. The counter advances only when the
  module is applied with ``train=True`` and ``'method_state'`` mutable (a train step),
  never at initialisation or evaluation; it is checkpointed with the train state.
  """
  step = module.variable("method_state", "step", lambda: jnp.zeros((), jnp.int32))
  current = step.value
  if train and module.is_mutable_collection("method_state") and not module.is_initializing():
    step.value = current + 1
  return current


def epoch_warmup(step: jnp.ndarray, steps_per_epoch: int, warmup_epochs: float
                 ) -> jnp.ndarray:
  """``min(epoch / warmup_epochs, 1)`` with the 1-based ``epoch = step // steps_per_epoch
  + 1``: mdistiller's per-epoch linear warm-up (1/warmup in the first epoch)."""
  if warmup_epochs <= 0:
    return jnp.ones((), jnp.float32)
  epoch = (step // steps_per_epoch + 1).astype(jnp.float32)
  return jnp.minimum(epoch / warmup_epochs, 1.0)


def last_stage(method: str, info: FeatureInfo, role: str) -> tuple[str, ...]:
  """``(stage{n}.out,)`` of the last stage: RepDistiller's ``feat[-2]``."""
  stages = stage_features(info)
  if not stages:
    require_features(info, ["stage1.out"], method, role)  # raises, listing the features
  return stages[-1:]


def unshard_batch(x: jnp.ndarray) -> jnp.ndarray:
  """`x` with no axis sharded, for batch-relational terms (B × B Gram matrices, shifted
  batch slices).

  Under a mesh with Explicit axes, a product of two batch-sharded operands over the
  feature axis has no legal output sharding; this reshards such an `x` to replicated (an
  all-gather) and leaves unsharded arrays (eager, Auto meshes) as they are.
  """
  sharding = getattr(jax.typeof(x), "sharding", None)
  if sharding is None or all(axis is None for axis in sharding.spec):
    return x
  return jax.sharding.reshard(x, jax.sharding.NamedSharding(sharding.mesh,
                                                            jax.sharding.PartitionSpec()))
