"""Learning-rate schedules and the optimizer (SGD with PyTorch-style weight decay)."""
from __future__ import annotations

from typing import Callable

import jax
import ml_collections
import optax

from afd_jax import models

SCHEDULES = ("step", "cosine", "poly")


def create_learning_rate_schedule(cfg: ml_collections.ConfigDict, base_lr: float,
                                  steps_per_epoch: int) -> optax.Schedule:
  """Per-step learning rate after an optional linear warm-up of ``warmup_epochs``.

  * ``'step'``: ×decay_factor at each of ``decay_epochs``;
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


def _head_filter(model_name: str) -> Callable[[tuple[str, ...]], bool] | None:
  """Whether a parameter path of `model_name` is in its head (None: no separate head)."""
  if not models.is_segmentation(model_name):
    return None
  from afd_jax.models import deeplab  # pylint: disable=g-import-not-at-top
  return deeplab.head_param_filter


def create_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int
                     ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """SGD with momentum and PyTorch-style weight decay (added to the gradient) on every
  student and method parameter, BN and embeddings included (as the reference releases).

  ``optim.head_lr_multiplier`` m != 1: the student's head (a DeepLabV3+'s ASPP and
  decoder, `_head_filter`) trains at m× the learning rate, the backbone and the method's
  parts at 1× — the segmentation releases' three SGD parameter groups
  (``get_1x_lr_params`` / ``get_10x_lr_params`` / the embeddings at 1×). With torch's SGD
  a group's lr scales its whole update (weight decay and momentum buffer included), so
  scaling the final update of those leaves is the same optimizer.
  """
  schedule = create_learning_rate_schedule(config.schedule, config.optim.lr, steps_per_epoch)
  tx = optax.chain(
      optax.add_decayed_weights(config.optim.weight_decay),
      optax.sgd(schedule, momentum=config.optim.momentum or None,
                nesterov=config.optim.nesterov))
  multiplier = config.optim.get("head_lr_multiplier", 1.0)
  if multiplier != 1.0:
    is_head = _head_filter(config.model.name)
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
