"""Correlation congruence (Peng et al., ICCV 2019), as the authors' code runs it.

Both pooled penultimate vectors (RepDistiller's ``feat[-1]``) are embedded by a learnable
linear layer each (to ``embed_dim``; both train with the student), and with
``Δ = |e_s − e_t|`` (B, d):

    L_CC = mean_{i < B} Σ_k Δ[i, k] · Δ[i+1, k],

the correlation between consecutive samples of the batch. This is what the authors gave
the CRD benchmark (RepDistiller ``distiller_zoo/CC.py``); the paper instead matches
batch correlation matrices under a Gaussian-RBF kernel approximated by a Taylor series.
We follow the release because its weight (0.02) is tuned for this form.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from afd_jax.methods.base import (Distiller, LogitTerms, logit_terms, register,
                                  require_features, unshard_batch)
from afd_jax.methods.ranges import NONNEG, POS_INT, ranged
from afd_jax.models import layers


@dataclasses.dataclass(frozen=True)
class Config(LogitTerms):
  """CC as the CRD benchmark runs it on CIFAR-100 (HobbitLong/RepDistiller,
  ``scripts/run_cifar_distill.sh``: ``--distill correlation -a 0 -b 0.02``;
  ``train_student.py``: ``LinearEmbed(feat[-1], feat_dim = 128)`` for both nets):
  CE + 0.02·L_CC."""
  beta: float = ranged(0.02, NONNEG)
  embed_dim: int = ranged(128, POS_INT)


def cc_loss(e_s: jnp.ndarray, e_t: jnp.ndarray) -> jnp.ndarray:
  """``mean_i Σ_k |Δ_i||Δ_{i+1}|``, Δ = e_s − e_t; e_s, e_t (B, d) embeddings."""
  delta = unshard_batch(jnp.abs(e_s - e_t))
  return jnp.mean(jnp.sum(delta[:-1] * delta[1:], axis=1))


class CorrelationCongruence(nn.Module):
  """``ce_weight·CE + kd_weight·KD + beta·L_CC`` with two learnable linear embeddings
  (``embed_s``, ``embed_t``)."""
  hp: Config

  @nn.compact
  def __call__(self, s_feats, t_feats, s_logits, t_logits, labels, *, train: bool):
    """s_feats, t_feats: one (B, D) pooled vector each; returns (loss, metrics)."""
    del train
    s, t = s_feats[0], jax.lax.stop_gradient(t_feats[0])
    s, t = s.reshape(s.shape[0], -1), t.reshape(t.shape[0], -1)
    e_s = layers.dense(self.hp.embed_dim, s.shape[-1], name="embed_s")(s)
    e_t = layers.dense(self.hp.embed_dim, t.shape[-1], name="embed_t")(t)
    cc = cc_loss(e_s, e_t)
    total, metrics = logit_terms(self.hp, s_logits, t_logits, labels)
    metrics["cc"] = cc
    return total + self.hp.beta * cc, metrics


@register("cc", Config)
def build_cc(hp, *, student, teacher, steps_per_epoch):
  """The pooled penultimate vectors."""
  del steps_per_epoch
  return Distiller("cc", CorrelationCongruence(hp),
                   require_features(student, ["pooled"], "cc", "student"),
                   require_features(teacher, ["pooled"], "cc", "teacher"))
