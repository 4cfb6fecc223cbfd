"""Similarity-preserving KD (Tung & Mori, ICCV 2019).

The student should reproduce the teacher's batch similarity structure at the last stage:

    G = l2norm_rows(f fᵀ),  f = flatten(F) (B, H·W·C),
    L_SP = ||G_t − G_s||²_F / B².

Feature: the last stage output of each net (RepDistiller's ``feat[-2]``); the two nets'
channels and sizes may differ, only the (B, B) Gram matrices are compared.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from afd_jax.methods.base import (Distiller, LogitTerms, last_stage, logit_terms, register,
                                  unshard_batch)
from afd_jax.methods.pooling import l2_normalize
from afd_jax.methods.ranges import NONNEG, ranged


@dataclasses.dataclass(frozen=True)
class Config(LogitTerms):
  """SP as the CRD benchmark runs it on CIFAR-100 (HobbitLong/RepDistiller,
  ``scripts/run_cifar_distill.sh``: ``--distill similarity -a 0 -b 3000``; loss in
  ``distiller_zoo/SP.py``, feature ``feat[-2]`` in ``helper/loops.py``): CE + 3000·L_SP."""
  beta: float = ranged(3000.0, NONNEG)


def similarity_matrix(f: jnp.ndarray) -> jnp.ndarray:
  """(B, ...) feature -> (B, B) Gram matrix of the flattened samples, rows l2-normalised."""
  f = unshard_batch(f.reshape(f.shape[0], -1).astype(jnp.float32))
  return l2_normalize(f @ f.T, axis=1)


def sp_loss(s: jnp.ndarray, t: jnp.ndarray) -> jnp.ndarray:
  """``||G_t − G_s||²_F / B²``; s (B, Hs, Ws, Cs), t (B, Ht, Wt, Ct)."""
  b = s.shape[0]
  return jnp.sum(jnp.square(similarity_matrix(t) - similarity_matrix(s))) / (b * b)


class SimilarityPreserving(nn.Module):
  """``ce_weight·CE + kd_weight·KD + beta·L_SP``; no learnable parts."""
  hp: Config

  @nn.compact
  def __call__(self, s_feats, t_feats, s_logits, t_logits, labels, *, train: bool):
    """s_feats, t_feats: one (B, H, W, C) feature each; returns (loss, metrics)."""
    del train
    sp = sp_loss(s_feats[0], jax.lax.stop_gradient(t_feats[0]))
    total, metrics = logit_terms(self.hp, s_logits, t_logits, labels)
    metrics["sp"] = sp
    return total + self.hp.beta * sp, metrics


@register("sp", Config)
def build_sp(hp, *, student, teacher, steps_per_epoch):
  """The last stage output of both nets."""
  del steps_per_epoch
  return Distiller("sp", SimilarityPreserving(hp), last_stage("sp", student, "student"),
                   last_stage("sp", teacher, "teacher"))
