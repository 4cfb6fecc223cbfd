"""The distillation-method interface: hyperparameters, registry and building.

Every method owns its hyperparameters, once: a frozen dataclass whose field defaults are
the published values (with the source in its docstring), each field with its accepted
values beside its default (``beta: float = ranged(200.0, NONNEG)``, `ranges`; a field
without is refused here), registered with the builder:

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
  ``hook(ctx)`` with an `afd_jax.analysis.AnalysisContext`;
* ``init_phase``: for two-stage methods (AB, FT, FSP), the `InitPhase` the loop runs,
  checkpointed and resumable, before distillation; its objective is the module's
  ``init_loss`` (same arguments as ``__call__``);
* ``needs_index``: the module's ``__call__`` also takes ``index=`` (B,) int32, the
  examples' positions in the training split (CRD's memory bank); such a method's builder
  is registered with ``needs_labels=True`` and receives ``train_labels``, the (N,) labels
  of the training split in that order;
* ``teacher_train_mode``: the loop runs the teacher's forward of a train step in train
  mode (batch-statistics BatchNorm, active dropout; the updated running statistics are
  discarded, the teacher's variables never change), as the TaT segmentation release's
  ``t_net.train()``; False (default): eval mode.
"""
from __future__ import annotations

import ast
import dataclasses
import types
import typing
from typing import Any, Callable, Mapping

import flax.linen as nn

# Re-exported: the shared pieces every method module imports from here.
from afd_jax.methods.losses import (  # noqa: F401
    cross_entropy, epoch_warmup, kd_loss, logit_terms, segmentation_cross_entropy,
    train_step_count, unshard_batch)
from afd_jax.methods.ranges import NONNEG, POS, ranged, unranged_fields
from afd_jax.methods.selection import (  # noqa: F401
    FeatureInfo, PairingError, last_stage, paired_stages, require_features,
    stage_features)


@dataclasses.dataclass(frozen=True)
class InitPhase:
  """A phase run before distillation (RepDistiller's ``helper/pretrain.py:init``).

  ``epochs`` of SGD at the constant learning rate ``lr`` (None: the run's
  ``config.optim.lr``), with the run's momentum and weight decay, on the module's
  ``init_loss``. Only these parameters train (the others, the classifier included, are
  untouched, weight decay too):
  * ``train_student``: the student's feature layers (everything but its classifier), in
    train mode (its BatchNorm statistics update); False: the student runs in eval mode;
  * ``method_modules``: the method's top-level submodules (names in ``params['method']``).
  ``frozen_after``: method submodules frozen in the distillation phase (FT's paraphraser).
  """
  epochs: int
  lr: float | None
  train_student: bool
  method_modules: tuple[str, ...] = ()
  frozen_after: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Distiller:
  """A built method: which features it reads, its objective and its analyses."""
  name: str
  module: nn.Module
  student_features: tuple[str, ...] = ()
  teacher_features: tuple[str, ...] = ()
  needs_teacher: bool = True
  eval_hooks: tuple[Callable[..., None], ...] = ()
  init_phase: InitPhase | None = None
  needs_index: bool = False
  teacher_train_mode: bool = False


@dataclasses.dataclass(frozen=True)
class LogitTerms:
  """The ``ce_weight·CE + kd_weight·τ²·KL(teacher ‖ student)`` part every method has.

  Subclasses redeclare the defaults their paper uses.
  """
  ce_weight: float = ranged(1.0, NONNEG)
  kd_weight: float = ranged(0.0, NONNEG)
  temperature: float = ranged(4.0, POS)


Builder = Callable[..., Distiller]


@dataclasses.dataclass(frozen=True)
class _Entry:
  builder: Builder
  hparams: type
  needs_teacher: bool
  needs_labels: bool = False


_REGISTRY: dict[str, _Entry] = {}


def register(name: str, hparams: type, *, needs_teacher: bool = True,
             needs_labels: bool = False) -> Callable[[Builder], Builder]:
  """Decorator registering ``builder(hp, student, teacher, steps_per_epoch)``.

  Args:
    name: the ``config.method.name`` that selects the method.
    hparams: the method's frozen hyperparameter dataclass (defaults = published values),
      every field declared ``ranges.ranged(default, accepted)``.
    needs_teacher: whether the method distils from a teacher (checked before building).
    needs_labels: the builder also takes ``train_labels``, the (N,) int labels of the
      training split in index order (CRD's negatives).

  Raises:
    ValueError: `name` already registered, or a field of `hparams` without a range.
  """
  def wrap(fn: Builder) -> Builder:
    if name in _REGISTRY:
      raise ValueError(f"method {name!r} registered twice")
    unranged = unranged_fields(hparams)
    if unranged:
      raise ValueError(f"method {name!r}: field(s) {', '.join(unranged)} of "
                       f"{hparams.__qualname__} declare no range; write each as "
                       "ranges.ranged(default, accepted)")
    _REGISTRY[name] = _Entry(fn, hparams, needs_teacher, needs_labels)
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


def needs_labels(name: str) -> bool:
  """Whether method `name` needs the training split's labels to be built."""
  return _entry(name).needs_labels


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
                 teacher: FeatureInfo | None, steps_per_epoch: int = 1,
                 train_labels=None) -> Distiller:
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
  extra = {}
  if entry.needs_labels:
    if train_labels is None:
      raise ValueError(f"method {cfg['name']!r} needs the labels of the training split "
                       "(train_labels) to be built")
    extra["train_labels"] = train_labels
  return entry.builder(hp, student=student, teacher=teacher,
                       steps_per_epoch=max(1, steps_per_epoch), **extra)


def check_choice(method: str, field: str, value: Any, accepted) -> None:
  """Raises ValueError naming `field`, `value` and the accepted values if not accepted."""
  if value not in accepted:
    raise ValueError(f"{method}: unknown {field} {value!r}; accepted: {tuple(accepted)}")
