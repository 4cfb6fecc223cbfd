"""Neuron selectivity transfer (Huang & Wang, 2017): MMD with a polynomial kernel.

Each channel's spatial map is a sample of the net's "neuron selectivity" distribution;
for every stage pair (maps average-pooled to the smaller size, as the release does):

    f_c = l2norm(flatten(F[..., c])) (B, C, H·W),  k(x, y) = (xᵀy)²,
    L_k = mean k(f_t, f_t) + mean k(f_s, f_s) − 2·mean k(f_s, f_t),

means over the batch and all channel pairs; ``L_NST = Σ_k L_k``. Stages: every
``stage{i}.out`` one to one (RepDistiller's ``feat[1:-1]``).
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from afd_jax.methods.base import Distiller, LogitTerms, logit_terms, paired_stages, register
from afd_jax.methods.pooling import l2_normalize, match_spatial
from afd_jax.methods.ranges import BY_METHOD, NONNEG, ranged


@dataclasses.dataclass(frozen=True)
class Config(LogitTerms):
  """NST as the CRD benchmark runs it on CIFAR-100 (HobbitLong/RepDistiller,
  ``scripts/run_cifar_distill.sh``: ``--distill nst -a 0 -b 50``; ``distiller_zoo/NST.py``
  with the full MMD, ``full_loss = True``; features ``feat[1:-1]``): CE + 50·Σ_k L_k.

  ``student_stages`` / ``teacher_stages``: 1-based stages to pair (default: all, one to
  one; RepDistiller zips the lists, we refuse unequal counts instead).
  """
  beta: float = ranged(50.0, NONNEG)
  student_stages: tuple[int, ...] | None = ranged(None, BY_METHOD)
  teacher_stages: tuple[int, ...] | None = ranged(None, BY_METHOD)


def channel_maps(f: jnp.ndarray) -> jnp.ndarray:
  """(B, H, W, C) -> (B, C, H·W), each channel's map l2-normalised."""
  b, h, w, c = f.shape
  return l2_normalize(jnp.moveaxis(f.astype(jnp.float32).reshape(b, h * w, c), 1, 2),
                      axis=-1)


def poly_mmd(fs: jnp.ndarray, ft: jnp.ndarray) -> jnp.ndarray:
  """Squared MMD with k(x, y) = (xᵀy)²; fs (B, Cs, P), ft (B, Ct, P)."""
  k = lambda a, b: jnp.mean(jnp.square(jnp.einsum("bip,bjp->bij", a, b)))  # noqa: E731
  return k(ft, ft) + k(fs, fs) - 2.0 * k(fs, ft)


def nst_loss(s_feats, t_feats) -> jnp.ndarray:
  """``Σ_k poly_mmd`` over stage pairs; lists of (B, H, W, C) arrays (sizes may differ)."""
  total = 0.0
  for s, t in zip(s_feats, t_feats):
    s, t = match_spatial(s, t)
    total = total + poly_mmd(channel_maps(s), channel_maps(t))
  return total


class NeuronSelectivityTransfer(nn.Module):
  """``ce_weight·CE + kd_weight·KD + beta·L_NST``; no learnable parts."""
  hp: Config

  @nn.compact
  def __call__(self, s_feats, t_feats, s_logits, t_logits, labels, *, train: bool):
    """s_feats, t_feats: stage-paired (B, H, W, C) lists; returns (loss, metrics)."""
    del train
    nst = nst_loss(s_feats, [jax.lax.stop_gradient(t) for t in t_feats])
    total, metrics = logit_terms(self.hp, s_logits, t_logits, labels)
    metrics["nst"] = nst
    return total + self.hp.beta * nst, metrics


@register("nst", Config)
def build_nst(hp, *, student, teacher, steps_per_epoch):
  """Pairs every stage output one to one (see `paired_stages`)."""
  del steps_per_epoch
  s, t = paired_stages("nst", student, teacher, hp.student_stages, hp.teacher_stages)
  return Distiller("nst", NeuronSelectivityTransfer(hp), s, t)
