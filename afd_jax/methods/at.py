"""Attention transfer (Zagoruyko & Komodakis, ICLR 2017), activation-based, p = 2.

For each stage k: ``mean_{b,positions} (a_s − a_t)²`` with ``a = l2norm(flatten(mean_c F²))``,
summed over stages and weighted by ``beta``. Maps of different spatial size are
average-pooled to the smaller one, as the release's own ``at_loss`` does
(RepDistiller ``distiller_zoo/AT.py``: ``adaptive_avg_pool2d`` of the larger map).
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from afd_jax.methods.base import Distiller, LogitTerms, logit_terms, paired_stages, register
from afd_jax.methods.pooling import attention_map, match_spatial
from afd_jax.methods.ranges import BY_METHOD, NONNEG, POS, ranged


@dataclasses.dataclass(frozen=True)
class Config(LogitTerms):
  """AT as the CRD benchmark runs it on CIFAR-100 (RepDistiller
  ``scripts/run_cifar_distill.sh``: ``--distill attention -a 0 -b 1000``, ``-r`` default 1): CE + 1000·Σ_k AT_k, p = 2.

  ``student_stages`` / ``teacher_stages``: 1-based stages to pair (default: all, one to
  one).
  """
  beta: float = ranged(1000.0, NONNEG)
  p: float = ranged(2.0, POS)
  student_stages: tuple[int, ...] | None = ranged(None, BY_METHOD)
  teacher_stages: tuple[int, ...] | None = ranged(None, BY_METHOD)


def at_loss(s_feats, t_feats, p: float = 2.0) -> jnp.ndarray:
  """Σ_k mean (at(S_k) − at(T_k))²; lists of (B, H, W, C) arrays (channels may differ).

  ``at`` raises F to the power p as the release does (``f.pow(p)``, see
  `pooling.attention_map`): for p ≠ 2 odd powers keep their sign and a non-integer p
  gives NaN at negative activations (pre-activation WRN stage outputs), as in PyTorch.
  """
  total = 0.0
  for s, t in zip(s_feats, t_feats):
    s, t = match_spatial(s, t)
    total = total + jnp.mean(jnp.square(attention_map(s, p) - attention_map(t, p)))
  return total


class AttentionTransfer(nn.Module):
  """``ce_weight·CE + kd_weight·KD + beta·Σ_k AT_k``; no learnable parts."""
  hp: Config

  @nn.compact
  def __call__(self, s_feats, t_feats, s_logits, t_logits, labels, *, train: bool):
    """Returns (loss, metrics)."""
    del train
    at = at_loss(s_feats, t_feats, self.hp.p)
    total, metrics = logit_terms(self.hp, s_logits, t_logits, labels)
    metrics["at"] = at
    return total + self.hp.beta * at, metrics


@register("at", Config)
def build_at(hp, *, student, teacher, steps_per_epoch):
  """Pairs every stage output one to one (see `paired_stages`)."""
  del steps_per_epoch
  s, t = paired_stages("at", student, teacher, hp.student_stages, hp.teacher_stages)
  return Distiller("at", AttentionTransfer(hp), s, t)
