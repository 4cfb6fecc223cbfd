"""HMAT: hierarchical multi-attention transfer (Gou, Sun, Yu, Wan, Tao; ACM TOMM 2023).

THIS IS AN INTERPRETATION. Only the paper's abstract is publicly readable and no code is
published; this module implements our reading of it (``/work/shared/specs/aft_kd_hmat.md``)
with every guessed choice exposed as a config field. No result of this module should be
reported as a reproduction of the paper.

The abstract: different attention types transfer knowledge at different depths —
position-based attention for low-level features, channel-based attention for high-level
features, activation-based attention for mid- and high-level features.

Interpretation (config fields in brackets):

* Levels from the stage-aligned ``stage{k}.out`` features (`paired_stages`;
  ``student_stages``/``teacher_stages`` select 1-based stages): low = the first pair,
  high = the last, mid = every pair in between (none for two pairs). Maps of different
  size are average-pooled to the smaller one.
* Position attention (low): both maps adaptive-average-pooled to at most P×P
  [``position_pool`` P = 16, bounding the (B, N, N) map], ``softmax_j(f_i·f_j / sqrt(C))``
  with each net's own C; distance row-wise ``KL(teacher ‖ student)`` averaged over rows
  and batch [``position_distance``: ``'kl'`` | ``'mse'`` (mean over B·N·N)].
* Channel attention (high): the student projected to the teacher's channels by Conv1x1 +
  BN; ``softmax_j(g_i·g_j / sqrt(N))`` over channels, (B, C, C); distance as above
  [``channel_distance``].
* Activation attention (mid, high): the AT map ``l2norm(flatten(mean_c F²))``, mean
  squared difference; several mid pairs are averaged [``mid_reduction``: ``'mean'`` |
  ``'sum'``].
* Total ``CE + α·KD + β_pos·L_pos + β_act·(L_act,mid + L_act,high) + β_ch·L_ch``
  [``ce_weight`` 1, ``kd_weight`` α = 1, ``temperature`` τ = 4, ``position_weight``
  β_pos, ``activation_weight`` β_act, ``channel_weight`` β_ch].

Default weights: chosen so that every weighted term starts within an order of magnitude of
CE (≈ ln 100 = 4.6) on CIFAR-100. Measured on random-init zoo models (B = 64 Gaussian
images, train-mode BN, so stage features have their post-BN scale: E[F²] ≈ 0.5 for
WRN/VGG, 4–7 for the CIFAR ResNets whose stage outputs are post-ReLU residual sums) with
a confident synthetic teacher (true-class logit +12):

  pair (teacher→student)   KD(τ=4)  L_pos(KL)  L_ch(KL)  L_act,mid  L_act,high
  wrn_40_2→wrn_16_2          6.4     0.034      2.7      7.4e-4     1.6e-3
  resnet56→resnet20          7.0     3.5        0.43     9.6e-4     2.5e-3
  resnet32x4→resnet8x4       7.6     2.6        0.78     4.6e-4     1.2e-3
  vgg13→vgg8                 7.0     0.029      0.77     1.0e-3     1.2e-3
  resnet32x4→ShuffleV2       7.0     3.0        1.6      1.2e-3     2.1e-3

* α = 1: KD at τ = 4 starts at 1–2× CE.
* β_act = 1000 (AT's CRD-benchmark β): β_act·(L_act,mid + L_act,high) ≈ 1.5–3.5.
* β_ch = 1: 0.4–2.7.
* β_pos: ``f_i·f_j / sqrt(C)`` grows with the square of the feature scale, so the
  position KL spans two decades across families: 0.03 where E[F²] ≈ 0.5 (rows nearly
  uniform), ≈ 3 for the ResNets. The module default β_pos = 1 suits the ResNet-type
  pairs (≈ 3); the configs of the WRN and VGG pairs set β_pos = 30 (≈ 1).
The weights refer to the KL distances; the MSE option compares probabilities of size
1/N, so its values are smaller by orders of magnitude and need larger weights.
Trained teachers have other feature scales, so these are starting-point estimates; the
logged ``position``/``channel``/``act_*`` metrics show the real values.
"""
from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from afd_jax.methods.base import (Distiller, LogitTerms, PairingError, check_choice,
                                  logit_terms, paired_stages, register)
from afd_jax.methods.pooling import adaptive_avg_pool, attention_map, match_spatial
from afd_jax.methods.ranges import BY_METHOD, NONNEG, POS, POS_INT, ranged
from afd_jax.models import layers

DISTANCES = ("kl", "mse")
MID_REDUCTIONS = ("mean", "sum")


@dataclasses.dataclass(frozen=True)
class Config(LogitTerms):
  """HMAT hyperparameters of our interpretation (see the module docstring for how the
  weights were chosen; no published values exist)."""
  kd_weight: float = ranged(1.0, NONNEG)
  temperature: float = ranged(4.0, POS)
  position_weight: float = ranged(1.0, NONNEG)
  activation_weight: float = ranged(1000.0, NONNEG)
  channel_weight: float = ranged(1.0, NONNEG)
  position_pool: int = ranged(16, POS_INT)
  position_distance: str = ranged("kl", BY_METHOD)
  channel_distance: str = ranged("kl", BY_METHOD)
  mid_reduction: str = ranged("mean", BY_METHOD)
  student_stages: tuple[int, ...] | None = ranged(None, BY_METHOD)
  teacher_stages: tuple[int, ...] | None = ranged(None, BY_METHOD)

  def __post_init__(self):
    check_choice("hmat", "position_distance", self.position_distance, DISTANCES)
    check_choice("hmat", "channel_distance", self.channel_distance, DISTANCES)
    check_choice("hmat", "mid_reduction", self.mid_reduction, MID_REDUCTIONS)


# ---- pure loss functions ------------------------------------------------------------


def position_logits(f: jnp.ndarray, max_side: int = 16) -> jnp.ndarray:
  """Position-attention logits ``f_i·f_j / sqrt(C)`` of a map pooled to ≤ max_side².

  Args:
    f: (B, H, W, C) feature.
    max_side: P; maps larger than P along H or W are adaptive-average-pooled to
      (min(H, P), min(W, P)).

  Returns:
    (B, N, N) logits, N = min(H, P)·min(W, P); softmax over the last axis gives the
    attention.
  """
  f = adaptive_avg_pool(f, (min(f.shape[1], max_side), min(f.shape[2], max_side)))
  x = f.reshape(f.shape[0], -1, f.shape[-1])
  return jnp.einsum("bic,bjc->bij", x, x) / math.sqrt(x.shape[-1])


def channel_logits(g: jnp.ndarray) -> jnp.ndarray:
  """Channel-attention logits ``g_i·g_j / sqrt(N)`` over channels i, j.

  Args:
    g: (B, H, W, C) feature, N = H·W.

  Returns:
    (B, C, C) logits; softmax over the last axis gives the attention.
  """
  x = g.reshape(g.shape[0], -1, g.shape[-1])
  return jnp.einsum("bni,bnj->bij", x, x) / math.sqrt(x.shape[1])


def attention_distance(s_logits: jnp.ndarray, t_logits: jnp.ndarray,
                       kind: str = "kl") -> jnp.ndarray:
  """Distance between two row-stochastic attentions given by their logits.

  Args:
    s_logits, t_logits: (B, R, R) student and teacher logits; rows are softmaxed.
    kind: ``'kl'``: ``Σ_j p_t (log p_t − log p_s)`` averaged over rows and batch;
      ``'mse'``: mean of ``(p_s − p_t)²`` over all B·R·R entries.

  Returns:
    scalar distance.
  """
  f32 = jnp.promote_types(s_logits.dtype, jnp.float32)  # bf16 logits: softmax in f32
  log_ps = jax.nn.log_softmax(s_logits.astype(f32), axis=-1)
  log_pt = jax.nn.log_softmax(t_logits.astype(f32), axis=-1)
  if kind == "kl":
    return jnp.mean(jnp.sum(jnp.exp(log_pt) * (log_pt - log_ps), axis=-1))
  if kind == "mse":
    return jnp.mean(jnp.square(jnp.exp(log_ps) - jnp.exp(log_pt)))
  raise ValueError(f"hmat: unknown attention distance {kind!r}; accepted: {DISTANCES}")


def activation_loss(s: jnp.ndarray, t: jnp.ndarray) -> jnp.ndarray:
  """``mean (at(S) − at(T))²`` over (B, H·W); (B, H, W, C) inputs, channels may differ."""
  return jnp.mean(jnp.square(attention_map(s) - attention_map(t)))


# ---- module -------------------------------------------------------------------------


class HMAT(nn.Module):
  """``CE + α·KD + β_pos·L_pos + β_act·(L_act,mid + L_act,high) + β_ch·L_ch``.

  Attributes:
    hp: the hyperparameters.
    teacher_high_channels: Ct of the high level (the channel projection's width).
  """
  hp: Config
  teacher_high_channels: int

  @nn.compact
  def __call__(self, s_feats, t_feats, s_logits, t_logits, labels, *, train: bool):
    """s_feats/t_feats: lists of (B, H, W, C), low → high; returns (loss, metrics)."""
    hp = self.hp
    pairs = []
    for s, t in zip(s_feats, t_feats):
      s, t = match_spatial(s.astype(jnp.float32), t.astype(jnp.float32))
      pairs.append((s, jax.lax.stop_gradient(t)))
    (s_lo, t_lo), (s_hi, t_hi), mids = pairs[0], pairs[-1], pairs[1:-1]

    pool = hp.position_pool
    l_pos = attention_distance(position_logits(s_lo, pool), position_logits(t_lo, pool),
                               hp.position_distance)
    g = layers.conv(self.teacher_high_channels, 1, name="channel_proj_conv")(s_hi)
    g = layers.batch_norm(train, name="channel_proj_bn")(g)
    l_ch = attention_distance(channel_logits(g), channel_logits(t_hi), hp.channel_distance)
    l_act_high = activation_loss(s_hi, t_hi)
    l_act_mid = jnp.zeros((), jnp.float32)
    if mids:
      l_act_mid = sum(activation_loss(s, t) for s, t in mids)
      if hp.mid_reduction == "mean":
        l_act_mid = l_act_mid / len(mids)

    total, metrics = logit_terms(hp, s_logits, t_logits, labels)
    metrics.update(position=l_pos, channel=l_ch, act_mid=l_act_mid, act_high=l_act_high)
    total = (total + hp.position_weight * l_pos
             + hp.activation_weight * (l_act_mid + l_act_high)
             + hp.channel_weight * l_ch)
    return total, metrics


@register("hmat", Config)
def build_hmat(hp, *, student, teacher, steps_per_epoch):
  """Stage-aligned levels (see `paired_stages`); at least two pairs (low ≠ high).

  Raises:
    PairingError: stage counts differ without explicit stage lists, or fewer than two
      stage pairs.
  """
  del steps_per_epoch
  s, t = paired_stages("hmat", student, teacher, hp.student_stages, hp.teacher_stages)
  if len(s) < 2:
    raise PairingError(f"method 'hmat' needs at least two stage pairs (low and high level); "
                       f"got student {list(s)} and teacher {list(t)}")
  return Distiller("hmat", HMAT(hp, teacher.shapes[t[-1]][-1]), s, t)
