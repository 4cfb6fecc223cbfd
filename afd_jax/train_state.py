"""What a run builds once (`Networks`) and what it carries and checkpoints (`TrainState`)."""
from __future__ import annotations

import functools
from typing import Any

import flax
import flax.linen as nn
from flax.training import train_state
import jax
import jax.numpy as jnp
import ml_collections
import optax

from afd_jax import methods, models, optim, steps

# Compute dtypes of convolutions and matmuls; parameters, BatchNorm statistics, softmaxes
# and every loss reduction stay float32. float16 would need loss scaling: not supported.
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class TrainState(train_state.TrainState):
  """Everything a run needs to continue exactly where it stopped.

  ``params`` / ``batch_stats`` hold ``{'student': ..., 'method': ...}``: the method's
  learnable parts (AFD meta-network, regressors, ...) train and checkpoint beside the
  student. Non-trainable method state (AFT-KD's loss history) is ``method_state``. The
  data position is ``step`` (the input pipeline is a pure function of it).
  """
  batch_stats: Any
  method_state: Any
  rng: jax.Array


@flax.struct.dataclass
class Networks:
  """The static parts of a run (hashable, closed over by the jitted steps)."""
  student: nn.Module = flax.struct.field(pytree_node=False)
  teacher: nn.Module | None = flax.struct.field(pytree_node=False)
  distiller: methods.Distiller = flax.struct.field(pytree_node=False)
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)
  schedule: Any = flax.struct.field(pytree_node=False)
  skip_nonfinite: bool = flax.struct.field(pytree_node=False, default=False)
  # 'init': the init phase of a two-stage method (`init_phase`), else 'main'.
  phase: str = flax.struct.field(pytree_node=False, default="main")


def dummy_batch(image_size: int, batch: int = 2) -> jnp.ndarray:
  return jnp.zeros((batch, image_size, image_size, 3), jnp.float32)


@functools.lru_cache(maxsize=256)
def feature_shapes(model: nn.Module, image_size: int, batch: int = 2) -> dict[str, tuple]:
  """Ordered ``{feature name: shape}`` of a model's sown features (no compute; cached)."""
  x = dummy_batch(image_size, batch)
  variables = jax.eval_shape(functools.partial(model.init, train=False),
                             jax.random.PRNGKey(0), x)
  _, feats, _ = jax.eval_shape(functools.partial(steps.forward, model, train=True,
                                                 rngs={"dropout": jax.random.PRNGKey(0)}),
                               variables, x)
  return {k: tuple(v.shape) for k, v in feats.items()}


def _fits(model: nn.Module, image_size: int) -> bool:
  """Whether every feature map of `model` keeps at least 1×1 at this input size."""
  try:
    shapes = feature_shapes(model, image_size)
  except Exception:  # a conv or pool on an empty map fails to trace
    return False
  return all(d > 0 for shape in shapes.values() for d in shape)


# Config fields a vmapped group's members may differ in (`afd_jax.group`): besides these,
# any numeric field of ``config.method`` (``'method.<field>'``).
OPTIMIZER_HPARAMS = ("optim.lr", "optim.weight_decay")


def build_networks(config: ml_collections.ConfigDict, num_classes: int,
                   steps_per_epoch: int, train_labels=None,
                   hparams: dict[str, Any] | None = None) -> Networks:
  """Student, teacher, method and optimizer for `config`; validates their pairing.

  `train_labels`: (N,) labels of the training split in index order, for methods that
  need them (`methods.needs_labels`: CRD). `hparams`: ``{'method.<field>' or an
  `OPTIMIZER_HPARAMS` path: value}`` replacing the config's values; the values may be
  traced (one member of a vmapped group, built inside its step).
  """
  hparams = dict(hparams or {})
  unknown = sorted(k for k in hparams
                   if not (k.startswith("method.") or k in OPTIMIZER_HPARAMS))
  if unknown:
    raise ValueError(f"hyperparameters {unknown} cannot be traced; accepted: "
                     f"method.<field>, {', '.join(OPTIMIZER_HPARAMS)}")
  if config.model.dtype == "float16":
    raise ValueError("config.model.dtype='float16' is not supported: its narrow exponent "
                     "range needs loss scaling, which this trainer does not do; use "
                     "'bfloat16' (same speed on GPUs/TPUs, float32's range)")
  if config.model.dtype not in DTYPES:
    raise ValueError(f"Unknown config.model.dtype {config.model.dtype!r}; accepted: "
                     f"{', '.join(DTYPES)}")
  dtype = DTYPES[config.model.dtype]
  compat = {}
  if config.model.get("bn1_twice"):
    if not config.model.name.startswith("wrn_"):
      raise ValueError(f"config.model.bn1_twice=True is a compatibility switch of the AFD "
                       f"release's WRN; model {config.model.name!r} is not a WRN")
    compat["bn1_twice"] = True
  student = models.get_model(config.model.name, num_classes, dtype=dtype, **compat)
  teacher = (models.get_model(config.teacher.name,
                              config.teacher.get("num_classes") or num_classes, dtype=dtype)
             if config.teacher.name and methods.needs_teacher(config.method.name)
             else None)
  size = config.data.image_size
  for name, model in ((config.model.name, student), (config.teacher.name, teacher)):
    if model is not None and not _fits(model, size):
      smallest = next((s for s in range(1, 1025) if _fits(model, s)), None)
      if smallest is None:  # not a size problem: the model's own error
        feature_shapes(model, size)
      raise ValueError(f"config.data.image_size={size} is too small for model {name!r}: "
                       f"its feature maps shrink to nothing; accepted: >= {smallest}")
  s_info = methods.FeatureInfo(config.model.name, feature_shapes(student, size))
  t_info = (methods.FeatureInfo(config.teacher.name, feature_shapes(teacher, size))
            if teacher is not None else None)
  method_cfg = {**config.method,
                **{k[len("method."):]: v for k, v in hparams.items()
                   if k.startswith("method.")}}
  distiller = methods.build_method(method_cfg, student=s_info, teacher=t_info,
                                   steps_per_epoch=steps_per_epoch,
                                   train_labels=train_labels)
  tx, schedule = optim.create_optimizer(
      config, steps_per_epoch, {k[len("optim."):]: v for k, v in hparams.items()
                                if k.startswith("optim.")})
  if distiller.init_phase is not None and distiller.init_phase.frozen_after:
    frozen = distiller.init_phase.frozen_after
    tx = optim.only_trainable(tx, lambda path: not (
        path[0] == "method" and path[1] in frozen))
  return Networks(student, teacher, distiller, tx, schedule,
                  bool(config.optim.get("skip_nonfinite", False)))


def rbg_key(rng: jax.Array) -> jax.Array:
  """An 'rbg' key derived from `rng`, for initialisation: XLA compiles threefry afresh for
  every parameter shape, which made start-up take tens of seconds on CPU; rbg compiles in
  a fraction of that."""
  return jax.random.wrap_key_data(jax.random.bits(rng, (4,), jnp.uint32), impl="rbg")


def create(nets: Networks, rng: jax.Array, image_size: int) -> TrainState:
  """A fresh train state (student + method variables + optimizer state)."""
  x = dummy_batch(image_size)
  init_rng, state_rng = jax.random.split(rng)
  s_rng, m_rng = jax.random.split(rbg_key(init_rng))
  s_vars = nets.student.init(s_rng, x, train=False)
  s_logits, s_feats, _ = steps.forward(nets.student, s_vars, x, train=True,
                                       rngs={"dropout": init_rng})
  if nets.teacher is not None:
    t_vars = abstract_teacher_variables(nets, image_size)
    t_logits, t_feats = jax.tree.map(
        lambda a: jnp.zeros(a.shape, a.dtype),
        jax.eval_shape(functools.partial(steps.teacher_outputs, nets), t_vars, x))
  else:
    t_logits, t_feats = None, []
  # (B,) class labels, or (B, H, W) pixel labels for a segmentation student.
  labels = jnp.zeros(s_logits.shape[:-1], jnp.int32)
  index = ({"index": jnp.zeros((x.shape[0],), jnp.int32)} if nets.distiller.needs_index
           else {})
  m_vars = nets.distiller.module.init(
      m_rng, steps.select(s_feats, nets.distiller.student_features), t_feats, s_logits,
      t_logits, labels, train=True, **index)
  return TrainState.create(
      apply_fn=nets.student.apply, tx=nets.tx,
      params={"student": s_vars["params"], "method": m_vars.get("params", {})},
      batch_stats={"student": s_vars.get("batch_stats", {}),
                   "method": m_vars.get("batch_stats", {})},
      method_state=m_vars.get("method_state", {}), rng=state_rng)


def student_variables(state: TrainState) -> dict[str, Any]:
  """The student's ``{'params', 'batch_stats'}`` (what evaluation and export use)."""
  return {"params": state.params["student"], "batch_stats": state.batch_stats["student"]}


def random_teacher_variables(nets: Networks, image_size: int, rng: jax.Array):
  """A randomly initialised teacher (``teacher.random_init``: smoke runs only)."""
  return nets.teacher.init(rbg_key(rng), dummy_batch(image_size), train=False)


def abstract_teacher_variables(nets: Networks, image_size: int):
  """The teacher's variables as ShapeDtypeStructs (to check and restore checkpoints)."""
  return jax.eval_shape(functools.partial(nets.teacher.init, train=False),
                        jax.random.PRNGKey(0), dummy_batch(image_size))
