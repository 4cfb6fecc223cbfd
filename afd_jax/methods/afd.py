"""AFD: attention-based feature distillation (Ji, Heo & Park, AAAI 2021).

Every teacher feature ``T_t`` is distilled into every student feature ``S_s``, weighted by
an attention ``att[b, t, s]`` that a small meta-network computes from globally pooled
features (queries from the teacher, keys from the student):

    L = CE(z_s, y) + 0.9·KD_τ=4(z_s, z_t) + beta·L_AFD,
    L_AFD = Σ_t mean_b Σ_s att[b, t, s] · D[b, t, s],
    D[b, t, s] = mean_positions (v_s→t[b] − v_t[b])²,

with ``v = l2norm(flatten(mean_c(F²)))`` and the student map first adaptively average
pooled (PyTorch's bin rule) to the teacher map's spatial size. See
``shared/specs/afd.md``; the defaults are in `Config`.

The meta-network (`AFDMetaNetwork`) trains with the student: its ``params`` and
``batch_stats`` ride in the method module's variables. The loss arithmetic is written as
pure functions of arrays (`attention_logits`, `attention_weights`, `student_values`,
`afd_distances`, `afd_loss`).

Which features ("links") AFD chooses among, per architecture: `afd_features`.

Initial values are the release's (``distill/AFD.py:11-16, 46-49``):
``nn.Linear`` defaults (`layers.dense`), PyTorch BatchNorm (`layers.BatchNorm`), ``p_t`` and
``p_s`` by ``xavier_normal_`` (an untruncated normal of variance 2 / (n + d)).

Deviations from the reference release, none of which changes the training loss:

* Student values are grouped by the teacher's *spatial* size (Hu, Wu) rather than its full
  (C, H, W) shape; they depend on nothing else, so each pooling is computed once.
* Teacher features get a `stop_gradient` here as well, in case the caller forgets.
* The meta-network computes in float32 (float64 if given float64), whatever the
  features' dtype, and its BatchNorm uses the two-pass batch variance, as PyTorch does
  (Flax's default one-pass formula loses float32 digits on pooled post-ReLU features).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from afd_jax.analysis import links
from afd_jax.methods.afd_features import afd_feature_names, resolve_features
from afd_jax.methods.base import (Distiller, LogitTerms, PairingError, logit_terms,
                                  register)
from afd_jax.methods.pooling import adaptive_avg_pool, attention_map, l2_normalize
from afd_jax.methods.ranges import BY_METHOD, NONNEG, POS, POS_INT, ranged
from afd_jax.models import layers

_METHOD = "afd"
__all__ = ["AFD", "AFDMetaNetwork", "Config", "afd_feature_names"]


@dataclasses.dataclass(frozen=True)
class Config(LogitTerms):
  """AFD's CIFAR-100 setting, from the authors' release (clovaai/attention-feature-
  distillation @dd990d0, ``main.py``'s argparse defaults; the loss in
  ``utils.train_kl``): CE + 0.9·KD(τ = 4) + 200·L_AFD, meta-network
  width 128. The paper's ImageNet run uses beta 50 (`configs/imagenet/afd.py`).

  ``student_features`` / ``teacher_features``: explicit feature names to link instead of
  `afd_feature_names`' per-architecture choice.
  """
  kd_weight: float = ranged(0.9, NONNEG)
  temperature: float = ranged(4.0, POS)
  beta: float = ranged(200.0, NONNEG)
  qk_dim: int = ranged(128, POS_INT)
  student_features: tuple[str, ...] | None = ranged(None, BY_METHOD)
  teacher_features: tuple[str, ...] | None = ranged(None, BY_METHOD)


# ---- meta-network --------------------------------------------------------------------


def _at_least_f32(x: jnp.ndarray) -> jnp.ndarray:
  """`x` in float32, or in float64 if it already is (bf16 features are upcast)."""
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _global_mean(f: jnp.ndarray) -> jnp.ndarray:
  """(B, H, W, C) -> (B, C) spatial mean."""
  return jnp.mean(_at_least_f32(f), axis=(1, 2))


# torch.nn.init.xavier_normal_ (the release's p_t, p_s): an untruncated normal of
# variance 2 / (fan_in + fan_out); flax's xavier_normal truncates at about 2.3 sigma.
_XAVIER_NORMAL = nn.initializers.variance_scaling(1.0, "fan_avg", "normal")


class _LinearBN(nn.Module):
  """Dense (PyTorch init) -> BatchNorm (-> ReLU): (..., C_in) -> (..., features).

  BatchNorm statistics are taken over all leading axes.
  """
  features: int
  relu: bool

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    # dtype=None: compute in the inputs' precision, which lets tests run it in float64.
    x = layers.dense(self.features, x.shape[-1], dtype=None, name="dense")(x)
    # PyTorch's BatchNorm1d (two-pass variance: pooled post-ReLU features have |mean| >>
    # batch std, where the fast E[x²] − E[x]² formula loses most float32 digits).
    x = layers.BatchNorm(use_running_average=not train, dtype=None, name="bn")(x)
    return nn.relu(x) if self.relu else x


class AFDMetaNetwork(nn.Module):
  """Queries, bilinear-mapped keys and positional embeddings of AFD's attention.

  Attributes:
    qk_dim: d, the query/key width.
  """
  qk_dim: int = 128

  @nn.compact
  def __call__(self, s_feats: Sequence[jnp.ndarray], t_feats: Sequence[jnp.ndarray], *,
               train: bool):
    """Computes the inputs of `attention_logits`.

    Args:
      s_feats: ns student features, each (B, Hs, Ws, Cs).
      t_feats: nt teacher features, each (B, Ht, Wt, Ct).
      train: BatchNorm with batch statistics (updating ``batch_stats``) if True.

    Returns:
      ``(q, kb, p_t, p_s)``: queries (B, nt, d), bilinear keys (B, ns, nt, d), positional
      embeddings (nt, d) and (ns, d).
    """
    d, nt, ns = self.qk_dim, len(t_feats), len(s_feats)
    q = jnp.stack([_LinearBN(d, relu=False, name=f"query_{t}")(_global_mean(f), train)
                   for t, f in enumerate(t_feats)], axis=1)
    k = jnp.stack([_LinearBN(d, relu=True, name=f"key_{s}")(_global_mean(f), train)
                   for s, f in enumerate(s_feats)], axis=1)
    # One shared map over all B*ns key rows: BatchNorm reduces over every axis but the
    # last, so its statistics span all of them (no batch reshape: sharding-friendly).
    kb = _LinearBN(nt * d, relu=False, name="bilinear")(k, train)
    kb = kb.reshape(*k.shape[:2], nt, d)
    p_t = self.param("p_t", _XAVIER_NORMAL, (nt, d), jnp.float32)
    p_s = self.param("p_s", _XAVIER_NORMAL, (ns, d), jnp.float32)
    return q, kb, p_t, p_s


# ---- loss arithmetic (pure functions) ------------------------------------------------


def attention_logits(q: jnp.ndarray, kb: jnp.ndarray, p_t: jnp.ndarray,
                     p_s: jnp.ndarray) -> jnp.ndarray:
  """``(Σ_q kb[b,s,t,q]·q[b,t,q] + (p_t p_sᵀ)[t,s]) / sqrt(d)``.

  Args:
    q: (B, nt, d) queries.
    kb: (B, ns, nt, d) bilinear-mapped keys.
    p_t, p_s: (nt, d) and (ns, d) positional embeddings.

  Returns:
    (B, nt, ns) logits.
  """
  d = q.shape[-1]
  return (jnp.einsum("bstq,btq->bts", kb, q) + (p_t @ p_s.T)[None]) / jnp.sqrt(d)


def attention_weights(q, kb, p_t, p_s) -> jnp.ndarray:
  """Softmax of `attention_logits` over student features: (B, nt, ns), rows sum to 1."""
  return jax.nn.softmax(attention_logits(q, kb, p_t, p_s), axis=-1)


def student_values(s_feats: Sequence[jnp.ndarray],
                   out_hw: tuple[int, int]) -> jnp.ndarray:
  """Student values at one teacher resolution.

  Args:
    s_feats: ns student features, each (B, Hs, Ws, Cs).
    out_hw: the teacher's spatial size (Hu, Wu).

  Returns:
    (B, ns, Hu*Wu): ``l2norm(flatten(adaptive_avg_pool(mean_c(S²), (Hu, Wu))))``.
  """
  maps = []
  for s in s_feats:
    m = adaptive_avg_pool(jnp.mean(jnp.square(_at_least_f32(s)), axis=-1), out_hw)
    maps.append(m.reshape(m.shape[0], -1))
  return l2_normalize(jnp.stack(maps, axis=1), axis=-1)


def value_distances(v_s: jnp.ndarray, v_t: jnp.ndarray) -> jnp.ndarray:
  """Mean squared difference over positions of every (teacher, student) value pair.

  Args:
    v_s: (B, ns, P) student values.
    v_t: (B, n, P) teacher values at the same resolution.

  Returns:
    (B, n, ns).
  """
  return jnp.mean(jnp.square(v_s[:, None, :, :] - v_t[:, :, None, :]), axis=-1)


def afd_distances(s_feats: Sequence[jnp.ndarray],
                  t_feats: Sequence[jnp.ndarray]) -> jnp.ndarray:
  """``D[b, t, s]``, pooling the student maps once per distinct teacher resolution.

  Args:
    s_feats: ns student features, each (B, Hs, Ws, Cs).
    t_feats: nt teacher features, each (B, Ht, Wt, Ct).

  Returns:
    (B, nt, ns) distances between teacher and (pooled) student values.
  """
  groups: dict[tuple[int, int], list[int]] = {}
  for t, f in enumerate(t_feats):
    groups.setdefault(tuple(f.shape[1:3]), []).append(t)
  rows = [None] * len(t_feats)
  for hw, idx in groups.items():
    v_t = jnp.stack([attention_map(_at_least_f32(t_feats[t])) for t in idx], axis=1)
    dist = value_distances(student_values(s_feats, hw), v_t)
    for k, t in enumerate(idx):
      rows[t] = dist[:, k]
  return jnp.stack(rows, axis=1)


def afd_loss(att: jnp.ndarray, distances: jnp.ndarray) -> jnp.ndarray:
  """``L_AFD = Σ_t mean_b Σ_s att·D``; att and distances (B, nt, ns)."""
  return jnp.sum(att * distances) / att.shape[0]


# ---- the method ----------------------------------------------------------------------


class AFD(nn.Module):
  """``ce_weight·CE + kd_weight·KD + beta·L_AFD`` with a learnable meta-network.

  Sows the attention ``att`` (B, nt, ns) as ``intermediates/attention``.
  """
  hp: Config

  @nn.compact
  def __call__(self, s_feats, t_feats, s_logits, t_logits, labels, *, train: bool):
    """Returns (loss, metrics).

    Args:
      s_feats: ns student features, each (B, Hs, Ws, Cs).
      t_feats: nt teacher features, each (B, Ht, Wt, Ct).
      s_logits, t_logits: (B, K) logits.
      labels: (B,) int labels.
      train: meta-network BatchNorm in train mode if True.
    """
    t_feats = [jax.lax.stop_gradient(t) for t in t_feats]
    q, kb, p_t, p_s = AFDMetaNetwork(self.hp.qk_dim, name="meta")(s_feats, t_feats,
                                                                  train=train)
    att = attention_weights(q, kb, p_t, p_s)
    self.sow("intermediates", "attention", att)
    afd = afd_loss(att, afd_distances(s_feats, t_feats))
    total, metrics = logit_terms(self.hp, s_logits, t_logits, labels)
    metrics["afd"] = afd
    return total + self.hp.beta * afd, metrics


@register(_METHOD, Config)
def build_afd(hp, *, student, teacher, steps_per_epoch):
  """Links every selected teacher feature to every selected student feature; the link
  heatmap is drawn after every evaluation.

  Raises:
    PairingError: either network lacks the features AFD needs; the message lists the
      features of both.
  """
  del steps_per_epoch
  try:
    s = resolve_features(hp.student_features, student, "student")
    t = resolve_features(hp.teacher_features, teacher, "teacher")
  except PairingError as e:
    raise PairingError(
        f"{e}\n  student {student.model!r} features: {list(student.shapes)}"
        f"\n  teacher {teacher.model!r} features: {list(teacher.shapes)}") from None
  return Distiller(_METHOD, AFD(hp), s, t, eval_hooks=(links.link_heatmap_hook,))
