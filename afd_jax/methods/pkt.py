"""Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018).

Cosine similarities within the batch become conditional probabilities, and the student's
are pulled to the teacher's by a KL divergence:

    x̂ = x / (||x|| + ε) (NaN entries then set to 0),  K = (x̂ x̂ᵀ + 1) / 2,
    P = K / rowsum(K),
    L_PKT = mean_{i,j} P_t[i,j] · log((P_t[i,j] + ε) / (P_s[i,j] + ε)),  ε = 1e-7,

on the pooled penultimate vectors (RepDistiller's ``feat[-1]``; widths may differ). The
mean runs over all B² entries, as the release computes it.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from afd_jax.methods.base import (Distiller, LogitTerms, logit_terms, register,
                                  require_features, unshard_batch)
from afd_jax.methods.ranges import NONNEG, ranged

EPS = 1e-7


@dataclasses.dataclass(frozen=True)
class Config(LogitTerms):
  """PKT as the CRD benchmark runs it on CIFAR-100 (HobbitLong/RepDistiller,
  ``scripts/run_cifar_distill.sh``: ``--distill pkt -a 0 -b 30000``; loss in
  ``distiller_zoo/PKT.py`` (the authors' code), feature ``feat[-1]``): CE + 3e4·L_PKT."""
  beta: float = ranged(30000.0, NONNEG)


def cosine_probabilities(x: jnp.ndarray, eps: float = EPS) -> jnp.ndarray:
  """(B, D) vectors -> (B, B) row-stochastic ``P = K / rowsum(K)``, K = (cos + 1) / 2."""
  x = unshard_batch(x.astype(jnp.float32))
  x = x / (jnp.sqrt(jnp.sum(jnp.square(x), axis=1, keepdims=True)) + eps)
  # The release zeroes NaNs after normalising (``output_net[output_net != output_net] =
  # 0``): a row holding an inf (inf / inf) becomes all zeros instead of poisoning P.
  x = jnp.where(jnp.isnan(x), 0.0, x)
  k = (x @ x.T + 1.0) / 2.0
  return k / jnp.sum(k, axis=1, keepdims=True)


def pkt_loss(s: jnp.ndarray, t: jnp.ndarray, eps: float = EPS) -> jnp.ndarray:
  """``mean P_t · log((P_t + ε)/(P_s + ε))``; s (B, Ds), t (B, Dt) pooled vectors."""
  ps, pt = cosine_probabilities(s, eps), cosine_probabilities(t, eps)
  return jnp.mean(pt * jnp.log((pt + eps) / (ps + eps)))


class ProbabilisticKT(nn.Module):
  """``ce_weight·CE + kd_weight·KD + beta·L_PKT``; no learnable parts."""
  hp: Config

  @nn.compact
  def __call__(self, s_feats, t_feats, s_logits, t_logits, labels, *, train: bool):
    """s_feats, t_feats: one (B, D) pooled vector each; returns (loss, metrics)."""
    del train
    pkt = pkt_loss(s_feats[0], jax.lax.stop_gradient(t_feats[0]))
    total, metrics = logit_terms(self.hp, s_logits, t_logits, labels)
    metrics["pkt"] = pkt
    return total + self.hp.beta * pkt, metrics


@register("pkt", Config)
def build_pkt(hp, *, student, teacher, steps_per_epoch):
  """The pooled penultimate vectors."""
  del steps_per_epoch
  return Distiller("pkt", ProbabilisticKT(hp),
                   require_features(student, ["pooled"], "pkt", "student"),
                   require_features(teacher, ["pooled"], "pkt", "teacher"))
