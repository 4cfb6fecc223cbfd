"""Learning-rate schedules and the optimizer: SGD with PyTorch-style weight decay, or
AdamW (``torch.optim.AdamW``: decoupled weight decay)."""
from __future__ import annotations

from typing import Callable

import jax
import ml_collections
import optax

from afd_jax import models

SCHEDULES = ("step", "cosine", "poly")
OPTIMIZERS = ("sgd", "adamw")
# torch.optim.AdamW's defaults (betas, eps); the TaT release sets only lr and weight_decay.
ADAMW_B1, ADAMW_B2, ADAMW_EPS = 0.9, 0.999, 1e-8


def create_learning_rate_schedule(cfg: ml_collections.ConfigDict, base_lr: float,
                                  steps_per_epoch: int) -> optax.Schedule:
  """Per-step learning rate after an optional linear warm-up of ``warmup_epochs``.

  * ``'step'``: ×decay_factor once each of ``decay_epochs`` has *finished*: epoch e in
    ``decay_epochs`` lowers the rate from global step ``e·steps_per_epoch`` (0-based) on.
    That is RepDistiller's rule (``helper/util.py adjust_learning_rate``: 1-indexed epoch
    E trains at ``lr·0.1^#{d : E > d}``, so E = 151 is the first decayed one for d = 150)
    and torch's epoch-wise ``MultiStepLR`` (torchvision, torchdistill/TaT). The AFD
    release decays at the *start* of its 1-indexed epochs 150/180/210 (``main.py`` +
    ``utils.adjust_learning_rate``: ``if epoch in args.schedule``), i.e. after 149/179/209
    finished epochs: its configs say ``decay_epochs=(149, 179, 209)``;
  * ``'cosine'``: ``lr·½(1 + cos(π t/T))`` over the T steps after the warm-up — also the
    segmentation release's per-iteration ``LR_Scheduler('cos')`` (TaT-seg
    ``utils/lr_scheduler.py``, Hang Zhang's; t = epoch·iters_per_epoch + i from 0);
  * ``'poly'``: ``lr·(1 − t/T)^power`` (``power`` 0.9: the same ``LR_Scheduler('poly')``,
    DeepLab's schedule).
  """
  total = cfg.num_epochs * steps_per_epoch
  warmup = int(cfg.warmup_epochs * steps_per_epoch)
  if cfg.name == "step":
    main = optax.piecewise_constant_schedule(
        base_lr, {int(e * steps_per_epoch) - warmup: cfg.decay_factor
                  for e in cfg.decay_epochs})
  elif cfg.name == "cosine":
    main = optax.cosine_decay_schedule(base_lr, max(total - warmup, 1))
  elif cfg.name == "poly":
    main = optax.polynomial_schedule(base_lr, 0.0, cfg.get("power", 0.9),
                                     max(total - warmup, 1))
  else:
    raise ValueError(f"Unknown config.schedule.name {cfg.name!r}; accepted: "
                     f"{', '.join(map(repr, SCHEDULES))}")
  if not warmup:
    return main
  return optax.join_schedules(
      [optax.linear_schedule(0.0, base_lr, warmup), main], [warmup])


def optimizer_name(config_optim: ml_collections.ConfigDict) -> str:
  """``config.optim.name`` validated (``'sgd'`` when absent: runs written before it).

  Raises:
    ValueError: a name not in `OPTIMIZERS`.
  """
  name = config_optim.get("name", "sgd")
  if name not in OPTIMIZERS:
    raise ValueError(f"config.optim.name={name!r} unknown; accepted: "
                     f"{', '.join(map(repr, OPTIMIZERS))}")
  return name


def create_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int,
                     overrides: dict | None = None
                     ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The ``config.optim.name`` optimizer on every student and method parameter, BN and
  embeddings included (as the reference releases):

  * ``'sgd'``: momentum (``optim.momentum``, ``nesterov``) and PyTorch-style weight decay
    (``weight_decay·p`` added to the gradient before momentum, as ``torch.optim.SGD``);
  * ``'adamw'``: ``torch.optim.AdamW`` with its default betas (0.9, 0.999) and eps 1e-8:
    ``p ← p − lr·(m̂/(√v̂ + eps) + weight_decay·p)``, the decay decoupled from the moments
    and scaled by the scheduled lr as torch's ``p.mul_(1 − lr·weight_decay)``
    (``optim.momentum`` / ``nesterov`` unused). The TaT ImageNet release's optimizer
    (``resnet18_from_resnet34_attn.yaml``: AdamW lr 0.0016 wd 5e-4).

  ``optim.head_lr_multiplier`` m != 1: the student's head (a DeepLabV3+'s ASPP and
  decoder, `models.head_param_filter`) trains at m× the learning rate, the backbone and
  the method's parts at 1× — the segmentation releases' three SGD parameter groups
  (``get_1x_lr_params`` / ``get_10x_lr_params`` / the embeddings at 1×). With torch's SGD
  a group's lr scales its whole update (weight decay and momentum buffer included), so
  scaling the final update of those leaves is the same optimizer.

  `overrides`: ``{'lr': ..., 'weight_decay': ...}`` replacing ``config.optim``'s values,
  traced values allowed (a vmapped group's members, `afd_jax.group`).
  """
  values = {"lr": config.optim.lr, "weight_decay": config.optim.weight_decay,
            **(overrides or {})}
  schedule = create_learning_rate_schedule(config.schedule, values["lr"], steps_per_epoch)
  if optimizer_name(config.optim) == "adamw":
    tx = optax.adamw(schedule, b1=ADAMW_B1, b2=ADAMW_B2, eps=ADAMW_EPS,
                     weight_decay=values["weight_decay"])
  else:
    tx = optax.chain(
        optax.add_decayed_weights(values["weight_decay"]),
        optax.sgd(schedule, momentum=config.optim.momentum or None,
                  nesterov=config.optim.nesterov))
  multiplier = config.optim.get("head_lr_multiplier", 1.0)
  if multiplier != 1.0:
    is_head = models.head_param_filter(config.model.name)
    if is_head is None:
      raise ValueError(f"config.optim.head_lr_multiplier={multiplier} needs a model with a "
                       f"separate head (a DeepLabV3+); model {config.model.name!r} has none: "
                       "accepted: 1.0")
    tx = optax.chain(tx, optax.masked(optax.scale(multiplier), lambda params: (
        jax.tree_util.tree_map_with_path(
            lambda path, _: (path[0].key == "student"
                             and is_head(tuple(k.key for k in path[1:]))), params))))
  return tx, schedule


def only_trainable(tx: optax.GradientTransformation,
                   trainable: Callable[[tuple[str, ...]], bool]
                   ) -> optax.GradientTransformation:
  """`tx` on the parameters whose path (a tuple of dict keys, e.g. ``('method',
  'translator', 'Conv_0', 'kernel')``) is `trainable`; the others get no update at all
  (no weight decay, no momentum)."""
  def labels(params):
    return jax.tree_util.tree_map_with_path(
        lambda path, _: "train" if trainable(tuple(k.key for k in path)) else "frozen",
        params)
  return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
