"""Attention transfer (Zagoruyko & Komodakis, ICLR 2017), activation-based, p = 2.

For each stage k: ``mean_{b,positions} (a_s − a_t)²`` with ``a = l2norm(flatten(mean_c F²))``,
summed over stages and weighted by ``beta`` (1000, as in the CRD benchmark). Maps of
different spatial size are average-pooled to the smaller one (our choice).
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from afd_jax.methods.base import (Distiller, cfg_get, logit_terms, paired_stages,
                                  register)
from afd_jax.methods.pooling import attention_map, match_spatial


def at_loss(s_feats, t_feats, p: float = 2.0) -> jnp.ndarray:
  """Σ_k mean (at(S_k) − at(T_k))²; lists of (B, H, W, C) arrays (channels may differ)."""
  total = 0.0
  for s, t in zip(s_feats, t_feats):
    s, t = match_spatial(s, t)
    total = total + jnp.mean(jnp.square(attention_map(s, p) - attention_map(t, p)))
  return total


class AttentionTransfer(nn.Module):
  """``ce_weight·CE + kd_weight·KD + beta·Σ_k AT_k``; no learnable parts."""
  cfg: object

  @nn.compact
  def __call__(self, s_feats, t_feats, s_logits, t_logits, labels, *, train: bool):
    """Returns (loss, metrics)."""
    del train
    at = at_loss(s_feats, t_feats, cfg_get(self.cfg, "p", 2.0))
    total, metrics = logit_terms(self.cfg, s_logits, t_logits, labels)
    metrics["at"] = at
    return total + cfg_get(self.cfg, "beta", 1000.0) * at, metrics


@register("at")
def build_at(cfg, *, student, teacher, num_classes, steps_per_epoch):
  """Pairs every stage output one to one (see `paired_stages`)."""
  del num_classes, steps_per_epoch
  if teacher is None:
    return Distiller("at", AttentionTransfer(cfg))
  s, t = paired_stages("at", student, teacher, cfg)
  return Distiller("at", AttentionTransfer(cfg), s, t)
