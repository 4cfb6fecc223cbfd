"""Variational information distillation (Ahn et al., CVPR 2019).

For every stage pair, a regressor μ(·) (three 1×1 convs, ReLU between, no bias) predicts
the teacher feature from the student's, under a Gaussian with a learned per-channel
(heteroscedastic across channels) variance ``σ²_c = softplus(α_c) + ε``:

    L_k = mean_{b,h,w,c} ½·((μ(S_k) − T_k)² / σ²_c + log σ²_c),   L_VID = Σ_k L_k,

maximising a variational lower bound on the mutual information. Maps of different size
are average-pooled to the smaller one, as the release does. ``α`` starts at
``softplus⁻¹(init_var − ε)`` so that σ² = init_var. Stages: every ``stage{i}.out``
(RepDistiller's ``feat[1:-1]``), one to one.

Initial values as the release's ``VIDLoss`` (``distiller_zoo/VID.py:20-35``): the bias-free 1×1
convs at PyTorch's default, uniform(±1/√C_in); ``log_scale`` the constant above.
"""
from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from afd_jax.methods.base import Distiller, LogitTerms, logit_terms, paired_stages, register
from afd_jax.methods.pooling import match_spatial
from afd_jax.methods.ranges import BY_METHOD, NONNEG, POS, ranged
from afd_jax.models import layers


@dataclasses.dataclass(frozen=True)
class Config(LogitTerms):
  """VID as the CRD benchmark runs it on CIFAR-100 (HobbitLong/RepDistiller,
  ``scripts/run_cifar_distill.sh``: ``--distill vid -a 0 -b 1``; ``distiller_zoo/VID.py``
  (the authors' code): ``init_pred_var = 5``, ``eps = 1e-5``, middle width = the teacher's
  channels; features ``feat[1:-1]``): CE + 1·Σ_k L_k.

  ``student_stages`` / ``teacher_stages``: 1-based stages to pair (default: all).
  """
  beta: float = ranged(1.0, NONNEG)
  init_var: float = ranged(5.0, POS)
  eps: float = ranged(1e-5, POS)
  student_stages: tuple[int, ...] | None = ranged(None, BY_METHOD)
  teacher_stages: tuple[int, ...] | None = ranged(None, BY_METHOD)


def vid_nll(pred_mean: jnp.ndarray, target: jnp.ndarray, log_scale: jnp.ndarray,
            eps: float = 1e-5) -> jnp.ndarray:
  """Mean Gaussian negative log-likelihood (without ½·log 2π).

  Args:
    pred_mean: (B, H, W, C) regressed student feature μ.
    target: (B, H, W, C) teacher feature.
    log_scale: (C,) α, with variance ``softplus(α) + eps``.
    eps: variance floor.
  """
  var = jax.nn.softplus(log_scale) + eps
  return jnp.mean(0.5 * (jnp.square(pred_mean - target) / var + jnp.log(var)))


class VIDRegressor(nn.Module):
  """μ and α of one stage: (B, H, W, Cs) -> ((B, H, W, Ct), (Ct,))."""
  channels: int
  init_var: float = 5.0
  eps: float = 1e-5

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    conv = lambda name: nn.Conv(self.channels, (1, 1), use_bias=False,  # noqa: E731
                                kernel_init=layers.torch_default_conv_init, name=name)
    x = conv("conv3")(nn.relu(conv("conv2")(nn.relu(conv("conv1")(x)))))
    alpha0 = math.log(math.expm1(self.init_var - self.eps))
    log_scale = self.param("log_scale", nn.initializers.constant(alpha0), (self.channels,),
                           jnp.float32)
    return x, log_scale


class VID(nn.Module):
  """``ce_weight·CE + kd_weight·KD + beta·L_VID`` with one `VIDRegressor` per stage."""
  hp: Config

  @nn.compact
  def __call__(self, s_feats, t_feats, s_logits, t_logits, labels, *, train: bool):
    """s_feats, t_feats: stage-paired (B, H, W, C) lists; returns (loss, metrics)."""
    del train
    vid = 0.0
    for k, (s, t) in enumerate(zip(s_feats, t_feats)):
      s, t = match_spatial(s, jax.lax.stop_gradient(t))
      mean, log_scale = VIDRegressor(t.shape[-1], self.hp.init_var, self.hp.eps,
                                     name=f"regressor_{k}")(s)
      vid = vid + vid_nll(mean, t, log_scale, self.hp.eps)
    total, metrics = logit_terms(self.hp, s_logits, t_logits, labels)
    metrics["vid"] = vid
    return total + self.hp.beta * vid, metrics


@register("vid", Config)
def build_vid(hp, *, student, teacher, steps_per_epoch):
  """Pairs every stage output one to one (see `paired_stages`)."""
  del steps_per_epoch
  s, t = paired_stages("vid", student, teacher, hp.student_stages, hp.teacher_stages)
  return Distiller("vid", VID(hp), s, t)
