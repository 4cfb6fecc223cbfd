"""Decoupled knowledge distillation (Zhao, Cui, Song, Qiu & Liang, CVPR 2022).

KD split into target-class KD (TCKD: the binary "target vs. rest" distribution b) and
non-target-class KD (NCKD: the distribution over the non-target classes p̂):

    TCKD = τ²·mean_b KL(b_t ‖ b_s),  NCKD = τ²·mean_b KL(p̂_t ‖ p̂_s),
    L = ce_weight·CE + w(epoch)·(alpha·TCKD + beta·NCKD),
    w(epoch) = min(epoch / warmup_epochs, 1)  (1-based epochs, as mdistiller).

The non-target distribution is the softmax of ``z/τ − 1000·onehot(y)``, and each KL is
torch's ``F.kl_div`` (``xlogy(p, p) − p·log q``: a teacher probability of exactly 0 adds
0), as the release computes them (``mdistiller/distillers/DKD.py``, ``dkd_loss``). The
step count (for w) is ``method_state/step`` (see `base.train_step_count`).
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.scipy.special import xlogy

from afd_jax.methods.base import (Distiller, cross_entropy, epoch_warmup, register,
                                  train_step_count)
from afd_jax.methods.ranges import NONNEG, POS, ranged


@dataclasses.dataclass(frozen=True)
class Config:
  """DKD's CIFAR-100 defaults from megvii-research/mdistiller
  (``mdistiller/engine/cfg.py``: CE_WEIGHT 1, ALPHA 1, BETA 8, T 4, WARMUP 20; the
  per-pair ``configs/cifar100/dkd/*.yaml`` set BETA 2 for resnet56/110 → resnet20/32 and
  6 for wrn_40_2 → wrn_16_2/wrn_40_1, vgg13 → vgg8/MobileNetV2, which
  ``configs/cifar100/baselines.py`` applies per pair)."""
  ce_weight: float = ranged(1.0, NONNEG)
  alpha: float = ranged(1.0, NONNEG)
  beta: float = ranged(8.0, NONNEG)
  temperature: float = ranged(4.0, POS)
  warmup_epochs: float = ranged(20.0, NONNEG)


def _kl_div(log_q: jnp.ndarray, p: jnp.ndarray) -> jnp.ndarray:
  """Elementwise ``torch.nn.functional.kl_div(log_q, p)``: ``xlogy(p, p) − p·log_q``.

  A teacher probability of exactly 0 contributes 0 (``xlogy(0, 0) = 0``), as in torch;
  ``p·(log p − log_q)`` would give ``0·(−inf) = NaN`` there (a confident teacher's
  binary "rest" mass underflows to 0 in float32 once its target logit leads by ≳ 104·τ).
  """
  return xlogy(p, p) - p * log_q


def dkd_terms(s_logits: jnp.ndarray, t_logits: jnp.ndarray, labels: jnp.ndarray,
              temperature: float) -> tuple[jnp.ndarray, jnp.ndarray]:
  """(TCKD, NCKD), both scaled by τ² and averaged over the batch.

  Args:
    s_logits, t_logits: (B, K) logits.
    labels: (B,) int target classes.
    temperature: τ.
  """
  gt = jax.nn.one_hot(labels, s_logits.shape[-1], dtype=jnp.float32)
  zs = s_logits.astype(jnp.float32) / temperature
  zt = t_logits.astype(jnp.float32) / temperature
  ps, pt = jax.nn.softmax(zs), jax.nn.softmax(zt)
  binary = lambda p: jnp.stack([jnp.sum(p * gt, -1), jnp.sum(p * (1 - gt), -1)], -1)  # noqa
  bs, bt = binary(ps), binary(pt)
  tckd = jnp.mean(jnp.sum(_kl_div(jnp.log(bs), bt), -1))
  log_qs = jax.nn.log_softmax(zs - 1000.0 * gt)
  qt = jax.nn.softmax(zt - 1000.0 * gt)
  nckd = jnp.mean(jnp.sum(_kl_div(log_qs, qt), -1))
  return temperature ** 2 * tckd, temperature ** 2 * nckd


class DecoupledKD(nn.Module):
  """``ce_weight·CE + w(epoch)·(alpha·TCKD + beta·NCKD)``; keeps a train-step counter."""
  hp: Config
  steps_per_epoch: int = 1

  @nn.compact
  def __call__(self, s_feats, t_feats, s_logits, t_logits, labels, *, train: bool):
    """Uses logits only; returns (loss, metrics)."""
    del s_feats, t_feats
    step = train_step_count(self, train)
    warm = epoch_warmup(step, self.steps_per_epoch, self.hp.warmup_epochs)
    tckd, nckd = dkd_terms(s_logits, jax.lax.stop_gradient(t_logits), labels,
                           self.hp.temperature)
    ce = cross_entropy(s_logits, labels)
    total = (self.hp.ce_weight * ce
             + warm * (self.hp.alpha * tckd + self.hp.beta * nckd))
    return total, {"ce": ce, "tckd": tckd, "nckd": nckd, "dkd_warmup": warm}


@register("dkd", Config)
def build_dkd(hp, *, student, teacher, steps_per_epoch):
  """Logits only; the warm-up counts epochs of `steps_per_epoch` train steps."""
  del student, teacher
  return Distiller("dkd", DecoupledKD(hp, steps_per_epoch))
