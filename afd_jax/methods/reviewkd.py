"""ReviewKD: distilling knowledge via knowledge review (Chen, Liu, Zhao & Jia, CVPR 2021).

Student features ``S_1 .. S_n`` (stage outputs) and ``S_{n+1}`` (the pooled vector as a
1×1 map) are fused from the deepest up by attention-based fusion (ABF) modules, and each
fused output is matched to the teacher feature of the same level (the teacher's
pre-activation stage outputs and its pooled vector) by the hierarchical context loss:

    ABF_k: x = BN(conv1x1(S_k)); if k ≤ n: r = nearest(res_{k+1}, size(S_k)),
           (a, b) = sigmoid(conv1x1([x, r])), x = a·x + b·r;
           x = nearest(x, size(T_k)); res_k = x; out_k = BN(conv3x3(x)),
    HCL(o, t) = (mse(o, t) + Σ_{l∈(4,2,1), l<H} 2^{-m(l)}·mse(pool_l(o), pool_l(t)))
                / (1 + Σ 2^{-m(l)})  (m = 1, 2, 3 for the pyramid levels used),
    L = ce_weight·CE + w(epoch)·beta·Σ_k HCL(out_k, T_k),  w = min(epoch / warmup, 1).

Levels pair one to one (`paired_stages`); the ABF middle width is
``min(max_mid_channels, width of the student's pooled vector)``.
"""
from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from afd_jax.methods.base import (Distiller, cross_entropy, epoch_warmup, paired_stages,
                                  register, require_features, train_step_count)
from afd_jax.methods.pooling import adaptive_avg_pool
from afd_jax.methods.ranges import BY_METHOD, NONNEG, POS_INT, ranged
from afd_jax.models import layers

# kaiming_uniform_(a=1), the release's ABF conv init: uniform(±sqrt(3 / fan_in)).
_KAIMING_A1 = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")
_TORCH_CONV_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


@dataclasses.dataclass(frozen=True)
class Config:
  """ReviewKD's CIFAR-100 setting from megvii-research/mdistiller
  (``configs/cifar100/reviewkd.yaml``: REVIEWKD_WEIGHT 5.0; ``mdistiller/engine/cfg.py``:
  CE_WEIGHT 1, WARMUP_EPOCHS 20, MAX_MID_CHANNEL 512, STU_PREACT False; the teacher's
  pre-activation features and the student's post-activation ones, as
  ``mdistiller/distillers/ReviewKD.py`` reads them).

  ``student_stages`` / ``teacher_stages``: 1-based stages to pair (default: all).
  """
  ce_weight: float = ranged(1.0, NONNEG)
  beta: float = ranged(5.0, NONNEG)
  warmup_epochs: float = ranged(20.0, NONNEG)
  max_mid_channels: int = ranged(512, POS_INT)
  student_stages: tuple[int, ...] | None = ranged(None, BY_METHOD)
  teacher_stages: tuple[int, ...] | None = ranged(None, BY_METHOD)


def nearest_resize(x: jnp.ndarray, out_hw: tuple[int, int]) -> jnp.ndarray:
  """PyTorch ``interpolate(mode='nearest')`` of (B, H, W, C) to (B, H', W', C): output
  cell i reads input ``floor(i·H / H')``."""
  h, w = x.shape[1:3]
  if (h, w) == tuple(out_hw):
    return x
  rows = (jnp.arange(out_hw[0]) * h) // out_hw[0]
  cols = (jnp.arange(out_hw[1]) * w) // out_hw[1]
  return x[:, rows][:, :, cols]


def hcl_level(o: jnp.ndarray, t: jnp.ndarray) -> jnp.ndarray:
  """Hierarchical context loss of one level; o, t (B, H, W, C) of the same shape."""
  loss, weight, total = jnp.mean(jnp.square(o - t)), 1.0, 1.0
  for size in (4, 2, 1):
    if size >= o.shape[1]:
      continue
    weight /= 2.0
    loss = loss + weight * jnp.mean(jnp.square(adaptive_avg_pool(o, (size, size))
                                               - adaptive_avg_pool(t, (size, size))))
    total += weight
  return loss / total


def hcl_loss(outs, targets) -> jnp.ndarray:
  """``Σ_k hcl_level``; lists of (B, H_k, W_k, C_k) arrays, pairwise of equal shape."""
  return sum(hcl_level(o, t) for o, t in zip(outs, targets))


class ABF(nn.Module):
  """Attention-based fusion of one level (see the module docstring)."""
  mid_channels: int
  out_channels: int
  fuse: bool

  @nn.compact
  def __call__(self, x, residual, out_hw, *, train: bool):
    """x (B, H, W, Cs); residual (B, h, w, mid) or None -> (out (B, H', W', Ct),
    new residual (B, H', W', mid)), (H', W') = out_hw."""
    x = nn.Conv(self.mid_channels, (1, 1), use_bias=False, kernel_init=_KAIMING_A1,
                name="conv1")(x)
    x = layers.batch_norm(train, name="bn1")(x)
    if self.fuse:
      r = nearest_resize(residual, x.shape[1:3])
      fan_in = 2 * self.mid_channels
      bound = 1.0 / math.sqrt(fan_in)
      z = nn.Conv(2, (1, 1), kernel_init=_TORCH_CONV_INIT,
                  bias_init=lambda k, s, d=jnp.float32: jax.random.uniform(
                      k, s, d, -bound, bound), name="att_conv")(
                          jnp.concatenate([x, r], axis=-1))
      z = jax.nn.sigmoid(z)
      x = x * z[..., :1] + r * z[..., 1:]
    x = nearest_resize(x, out_hw)
    out = nn.Conv(self.out_channels, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                  kernel_init=_KAIMING_A1, name="conv2")(x)
    return layers.batch_norm(train, name="bn2")(out), x


def _as_map(f: jnp.ndarray) -> jnp.ndarray:
  """(B, C) pooled vector -> (B, 1, 1, C); maps unchanged."""
  return f[:, None, None, :] if f.ndim == 2 else f


class ReviewKD(nn.Module):
  """``ce_weight·CE + w·beta·HCL`` with one learnable `ABF` per level; keeps a
  train-step counter for the warm-up."""
  hp: Config
  steps_per_epoch: int = 1

  @nn.compact
  def __call__(self, s_feats, t_feats, s_logits, t_logits, labels, *, train: bool):
    """s_feats: n stage outputs + pooled (B, Cs); t_feats: n stage pre-activations +
    pooled (B, Ct), level-paired; returns (loss, metrics)."""
    del t_logits
    s_feats = [_as_map(f) for f in s_feats]
    t_feats = [jax.lax.stop_gradient(_as_map(f)) for f in t_feats]
    n = len(s_feats)
    mid = min(self.hp.max_mid_channels, s_feats[-1].shape[-1])
    outs, residual = [None] * n, None
    for k in reversed(range(n)):
      outs[k], residual = ABF(mid, t_feats[k].shape[-1], fuse=k < n - 1,
                              name=f"abf_{k}")(s_feats[k], residual, t_feats[k].shape[1:3],
                                               train=train)
    hcl = hcl_loss(outs, t_feats)
    warm = epoch_warmup(train_step_count(self, train), self.steps_per_epoch,
                        self.hp.warmup_epochs)
    ce = cross_entropy(s_logits, labels)
    total = self.hp.ce_weight * ce + warm * self.hp.beta * hcl
    return total, {"ce": ce, "hcl": hcl, "reviewkd_warmup": warm}


@register("reviewkd", Config)
def build_reviewkd(hp, *, student, teacher, steps_per_epoch):
  """Student: stage outputs + pooled; teacher: stage pre-activations + pooled."""
  s, t = paired_stages("reviewkd", student, teacher, hp.student_stages, hp.teacher_stages)
  t = tuple(n.replace(".out", ".preact") for n in t)
  s = require_features(student, s + ("pooled",), "reviewkd", "student")
  t = require_features(teacher, t + ("pooled",), "reviewkd", "teacher")
  return Distiller("reviewkd", ReviewKD(hp, steps_per_epoch), s, t)
