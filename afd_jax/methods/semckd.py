"""SemCKD: cross-layer distillation with semantic calibration (Chen et al., AAAI 2021).

Every student stage S_i is distilled into every teacher stage T_j, weighted by a learned
attention over teacher stages computed from batch similarity (Gram) matrices:

    q_i = φ_i(G(S_i)), k_j = ψ_j(G(T_j)) (B, d),  att[b, i, :] = softmax_j <q_i[b], k_j[b]>,
    D[b, i, j] = mean_{h,w,c} (ρ_ij(S_i)[b] − T_j[b])²,
    L_SemCKD = Σ_{b,i,j} att[b, i, j]·D[b, i, j] / (B·n_s),

with G(F)[b] the row of inner products of sample b's flattened feature with the batch's,
φ/ψ MLPs (Linear(N → 2d), ReLU, Linear(→ d), l2norm; N the Gram row length, d = N /
``factor``) and ρ_ij a regressor (conv1x1 → 2Ct, BN, ReLU, conv3x3, BN, ReLU,
conv1x1 → Ct). When S_i is larger than T_j the student map is average-pooled to T_j's
size, otherwise the teacher map to S_i's (as the release does). The attention is sown
as ``intermediates/attention`` transposed to (B, n_t, n_s), AFD's orientation, so the
link heatmap hook draws it teacher × student.

Batch size: the release's MLPs take a whole Gram row, so their width is the training
batch size (64) and the release skips smaller batches. Here the row length is fixed to
``gram_size`` (default 64): the batch is split into consecutive groups of ``gram_size``
samples (the last zero-padded) and each sample's Gram row spans its group. For a batch
of exactly ``gram_size`` this is the release; it lets init (batch 2), partial and eval
batches run with the same parameters.
"""
from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from afd_jax.analysis import links
from afd_jax.methods.base import (Distiller, LogitTerms, logit_terms, register,
                                  require_features, stage_features, unshard_batch)
from afd_jax.methods.pooling import adaptive_avg_pool, l2_normalize
from afd_jax.methods.ranges import BY_METHOD, NONNEG, POS, POS_INT, ranged
from afd_jax.models import layers


@dataclasses.dataclass(frozen=True)
class Config(LogitTerms):
  """SemCKD's CIFAR-100 setting from DefangChen/SemCKD (README and
  ``scripts/run_cifar_distill.sh``: ``--distill semckd -r 1 -a 1 -b 400``, ``kd_T 4`` in
  ``train_student.py``; ``SelfA(..., input_channel = batch_size = 64, factor = 4)`` in
  ``models/util.py``; features ``feat[1:-1]``): CE + KD(τ = 4) + 400·L_SemCKD.

  ``student_stages`` / ``teacher_stages``: 1-based stages to link (default: all; the
  counts may differ).
  """
  kd_weight: float = ranged(1.0, NONNEG)
  temperature: float = ranged(4.0, POS)
  beta: float = ranged(400.0, NONNEG)
  gram_size: int = ranged(64, POS_INT)
  factor: int = ranged(4, POS_INT)
  student_stages: tuple[int, ...] | None = ranged(None, BY_METHOD)
  teacher_stages: tuple[int, ...] | None = ranged(None, BY_METHOD)


def gram_rows(f: jnp.ndarray, group: int) -> jnp.ndarray:
  """(B, ...) -> (B, group): sample b's inner products with the samples of its group.

  Groups are consecutive blocks of `group` samples; the last is zero-padded, so its
  missing entries are 0. With B == group: the Gram matrix ``f fᵀ`` of the batch.
  """
  b = f.shape[0]
  f = unshard_batch(f.reshape(b, -1).astype(jnp.float32))
  n = -(-b // group)
  f = jnp.pad(f, ((0, n * group - b), (0, 0))).reshape(n, group, -1)
  return jnp.einsum("gin,gjn->gij", f, f).reshape(n * group, group)[:b]


def semckd_attention(q: jnp.ndarray, k: jnp.ndarray) -> jnp.ndarray:
  """``softmax_j <q_i, k_j>``; q (B, ns, d), k (B, nt, d) -> (B, ns, nt)."""
  logits = jnp.einsum("bid,bjd->bij", q, k)
  return jax.nn.softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)), axis=-1)


def aligned_pair(s: jnp.ndarray, t: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """The release's size rule: pool the student to T's size if it is larger, else the
  teacher to S's size; (B, H, W, C) maps."""
  if s.shape[1] > t.shape[1]:
    return adaptive_avg_pool(s, t.shape[1:3]), t
  return s, adaptive_avg_pool(t, s.shape[1:3])


def pair_distance(v: jnp.ndarray, t: jnp.ndarray) -> jnp.ndarray:
  """Per-sample mean squared difference: (B, H, W, C) x 2 -> (B,)."""
  return jnp.mean(jnp.square(v - t).reshape(v.shape[0], -1), axis=-1)


def semckd_loss(att: jnp.ndarray, distances: jnp.ndarray) -> jnp.ndarray:
  """``Σ att·D / (B·ns)``; att and distances (B, ns, nt)."""
  return jnp.sum(att * distances) / (att.shape[0] * att.shape[1])


class GramEmbed(nn.Module):
  """Linear(N → 2d) → ReLU → Linear(d) → l2norm: (B, N) -> (B, d)."""
  dim: int

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    x = nn.relu(layers.dense(2 * self.dim, x.shape[-1], name="linear1")(x))
    return l2_normalize(layers.dense(self.dim, 2 * self.dim, name="linear2")(x), axis=-1)


class Regressor(nn.Module):
  """The release's AAEmbed: (B, H, W, Cs) -> (B, H, W, channels).

  Its bias-free convs start at PyTorch's default, uniform(±1/√fan_in) (the release's
  ``models/util.py:121-140`` ``AAEmbed`` leaves them there), not at the zoo's Kaiming fan-out.
  """
  channels: int

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    mid = 2 * self.channels
    conv = functools.partial(layers.conv, kernel_init=layers.torch_default_conv_init)
    x = nn.relu(layers.batch_norm(train, name="bn1")(conv(mid, 1, name="conv1")(x)))
    x = nn.relu(layers.batch_norm(train, name="bn2")(conv(mid, 3, name="conv2")(x)))
    return conv(self.channels, 1, name="conv3")(x)


class SemCKD(nn.Module):
  """``ce_weight·CE + kd_weight·KD + beta·L_SemCKD``; sows the attention (B, nt, ns)."""
  hp: Config

  @nn.compact
  def __call__(self, s_feats, t_feats, s_logits, t_logits, labels, *, train: bool):
    """s_feats: ns student stage maps; t_feats: nt teacher stage maps; returns
    (loss, metrics)."""
    t_feats = [jax.lax.stop_gradient(t) for t in t_feats]
    g, d = self.hp.gram_size, self.hp.gram_size // self.hp.factor
    q = jnp.stack([GramEmbed(d, name=f"query_{i}")(gram_rows(s, g))
                   for i, s in enumerate(s_feats)], axis=1)
    k = jnp.stack([GramEmbed(d, name=f"key_{j}")(gram_rows(t, g))
                   for j, t in enumerate(t_feats)], axis=1)
    att = semckd_attention(q, k)
    self.sow("intermediates", "attention", jnp.swapaxes(att, 1, 2))
    rows = []
    for i, s in enumerate(s_feats):
      row = []
      for j, t in enumerate(t_feats):
        s_ij, t_ij = aligned_pair(s, t)
        v = Regressor(t.shape[-1], name=f"regressor_{i}_{j}")(s_ij, train=train)
        row.append(pair_distance(v, t_ij))
      rows.append(jnp.stack(row, axis=-1))
    semckd = semckd_loss(att, jnp.stack(rows, axis=1))
    total, metrics = logit_terms(self.hp, s_logits, t_logits, labels)
    metrics["semckd"] = semckd
    return total + self.hp.beta * semckd, metrics


def _stages(info, explicit, role):
  if explicit is None:
    return require_features(info, stage_features(info), "semckd", role)
  return require_features(info, [f"stage{i}.out" for i in explicit], "semckd", role)


@register("semckd", Config)
def build_semckd(hp, *, student, teacher, steps_per_epoch):
  """Links every student stage output to every teacher stage output; the link heatmap
  is drawn after every evaluation."""
  del steps_per_epoch
  return Distiller("semckd", SemCKD(hp), _stages(student, hp.student_stages, "student"),
                   _stages(teacher, hp.teacher_stages, "teacher"),
                   eval_hooks=(links.link_heatmap_hook,))
