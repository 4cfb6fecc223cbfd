"""Learning-rate schedules and the optimizer (SGD with PyTorch-style weight decay)."""
from __future__ import annotations

from typing import Callable

import jax
import ml_collections
import optax


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


def create_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int
                     ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """SGD with momentum and PyTorch-style weight decay (added to the gradient) on every
  student and method parameter, BN and embeddings included (as the reference releases)."""
  schedule = create_learning_rate_schedule(config.schedule, config.optim.lr, steps_per_epoch)
  tx = optax.chain(
      optax.add_decayed_weights(config.optim.weight_decay),
      optax.sgd(schedule, momentum=config.optim.momentum or None,
                nesterov=config.optim.nesterov))
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
