"""Relational KD (Park, Kim, Lu & Cho, CVPR 2019): distance-wise + angle-wise terms.

On the pooled penultimate vectors e (B, D) (RepDistiller's ``feat[-1]``):

* distance: ``d[i,j] = ||e_i − e_j||`` (0 on the diagonal), divided by the mean of its
  positive entries; ``L_D = mean smooth_l1(d_s − d_t)`` over the B² entries;
* angle: ``a[i,j,k] = <n(e_j − e_i), n(e_k − e_i)>`` with n = l2norm (the cosine of
  the angle at e_i, as the release indexes it; B³ entries);
  ``L_A = mean smooth_l1(a_s − a_t)``;

``L_RKD = w_d·L_D + w_a·L_A``; smooth-L1 with threshold 1 (PyTorch's default).
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from afd_jax.methods.base import (Distiller, LogitTerms, logit_terms, register,
                                  require_features, unshard_batch)
from afd_jax.methods.pooling import l2_normalize
from afd_jax.methods.ranges import NONNEG, ranged


@dataclasses.dataclass(frozen=True)
class Config(LogitTerms):
  """RKD as the CRD benchmark runs it on CIFAR-100 (HobbitLong/RepDistiller,
  ``scripts/run_cifar_distill.sh``: ``--distill rkd -a 0 -b 1``; ``distiller_zoo/RKD.py``:
  ``w_d = 25``, ``w_a = 50``; feature ``feat[-1]``)."""
  beta: float = ranged(1.0, NONNEG)
  distance_weight: float = ranged(25.0, NONNEG)
  angle_weight: float = ranged(50.0, NONNEG)


def pairwise_distances(e: jnp.ndarray, eps: float = 1e-12) -> jnp.ndarray:
  """(B, D) -> (B, B) Euclidean distances, squared distances clamped at eps, diagonal 0."""
  sq = jnp.sum(jnp.square(e), axis=1)
  d2 = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * e @ e.T, eps)
  return jnp.where(jnp.eye(e.shape[0], dtype=bool), 0.0, jnp.sqrt(d2))


def normalized_distances(e: jnp.ndarray) -> jnp.ndarray:
  """`pairwise_distances` divided by the mean of their positive entries."""
  d = pairwise_distances(e)
  return d / (jnp.sum(d) / jnp.sum(d > 0))


def angles(e: jnp.ndarray) -> jnp.ndarray:
  """(B, D) -> (B, B, B): ``a[i,j,k] = <n(e_j − e_i), n(e_k − e_i)>``, n = l2norm."""
  u = l2_normalize(e[None, :, :] - e[:, None, :], axis=-1)
  return jnp.einsum("ijd,ikd->ijk", u, u)


def smooth_l1(x: jnp.ndarray) -> jnp.ndarray:
  """Mean Huber loss with threshold 1 (PyTorch's smooth_l1_loss)."""
  a = jnp.abs(x)
  return jnp.mean(jnp.where(a < 1.0, 0.5 * a * a, a - 0.5))


def rkd_loss(s: jnp.ndarray, t: jnp.ndarray, distance_weight: float = 25.0,
             angle_weight: float = 50.0) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """``(w_d·L_D + w_a·L_A, L_D, L_A)``; s (B, Ds), t (B, Dt); teacher terms get no
  gradient."""
  s = unshard_batch(s.astype(jnp.float32))
  t = unshard_batch(jax.lax.stop_gradient(t.astype(jnp.float32)))
  dist = smooth_l1(normalized_distances(s) - normalized_distances(t))
  ang = smooth_l1(angles(s) - angles(t))
  return distance_weight * dist + angle_weight * ang, dist, ang


class RelationalKD(nn.Module):
  """``ce_weight·CE + kd_weight·KD + beta·L_RKD``; no learnable parts."""
  hp: Config

  @nn.compact
  def __call__(self, s_feats, t_feats, s_logits, t_logits, labels, *, train: bool):
    """s_feats, t_feats: one (B, D) pooled vector each; returns (loss, metrics)."""
    del train
    rkd, dist, ang = rkd_loss(s_feats[0], t_feats[0], self.hp.distance_weight,
                              self.hp.angle_weight)
    total, metrics = logit_terms(self.hp, s_logits, t_logits, labels)
    metrics.update(rkd=rkd, rkd_distance=dist, rkd_angle=ang)
    return total + self.hp.beta * rkd, metrics


@register("rkd", Config)
def build_rkd(hp, *, student, teacher, steps_per_epoch):
  """The pooled penultimate vectors."""
  del steps_per_epoch
  return Distiller("rkd", RelationalKD(hp),
                   require_features(student, ["pooled"], "rkd", "student"),
                   require_features(teacher, ["pooled"], "rkd", "teacher"))
