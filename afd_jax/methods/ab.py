"""Activation boundaries (Heo et al., AAAI 2019): a two-stage method.

Init phase (`InitPhase`): the student's pre-activation stage outputs, through connectors,
learn on which side of zero the teacher's pre-activations lie, with the margin-μ
"alternative" loss of layer k (positions and channels summed)

    ab_k = Σ (c_k(S_k) + μ)²·[c_k(S_k) > −μ]·[T_k ≤ 0] + (c_k(S_k) − μ)²·[c_k(S_k) ≤ μ]·[T_k > 0],

    L_AB = Σ_k 2^(k−n+1)·ab_k / B / 1000·3    (k = 0 .. n−1, the deepest layer weighs 1),

training the connectors and the student's feature layers. Distillation phase: the
student trains on ``ce_weight·CE (+ kd_weight·KD)`` only; the connectors are dropped.

Features: every stage's pre-ReLU map (RepDistiller's ``feat[1:-1]`` with
``preact=True``), one to one: ``stage{i}.preact``, or ``stage{i}.bn_preact`` for the
pre-activation WRNs, whose stage output first meets a ReLU after the next block's
``bn1`` (the release's WRN returns that ``bn1`` output; it applies ``bn1`` a second time
to get it, moving its running statistics twice per step, which we do not copy). Connector k (RepDistiller ``models/util.py:Connector``): the identity when
the two maps have the same shape, else ``ConvReg`` without its ReLU, i.e. a convolution
(with bias) then BatchNorm, the convolution chosen by the heights: 3×3 stride 2 when the
student's map is twice the teacher's, 4×4 stride-2 transposed when half, else a valid
``(1 + Hs − Ht) × (1 + Ws − Wt)`` kernel (1×1 for equal sizes); a student map smaller
than the teacher's in any other ratio cannot be connected (`PairingError`).

Initial values as the release's ``ConvReg`` (``models/util.py:131-146``, via ``Connector``
at ``train_student.py:230``, no re-initialisation): PyTorch's default (transposed) conv
init, uniform(±1/√fan_in) for kernel and bias (fan_in = C_in·kh·kw for a conv,
C_out·kh·kw for a transposed one, as PyTorch counts it), and PyTorch's BatchNorm (scale 1,
bias 0, momentum 0.1, unbiased running variance: `layers.BatchNorm`).
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from afd_jax.methods.base import (Distiller, InitPhase, LogitTerms, PairingError, logit_terms,
                                  paired_stages, register, require_features)
from afd_jax.methods.ranges import BY_METHOD, NONNEG, POS_INT, ranged
from afd_jax.models import layers


@dataclasses.dataclass(frozen=True)
class Config(LogitTerms):
  """AB as the CRD benchmark runs it on CIFAR-100 (HobbitLong/RepDistiller:
  ``scripts/run_cifar_distill.sh`` ``--distill abound -a 0 -b 1``, ``-r 1``;
  ``distiller_zoo/AB.py``: margin 1, weights ``2**(i-n+1)``, ``/bsz``, ``/1000*3``;
  ``train_student.py``: ``--init_epochs 30``, the init phase trains the connectors and
  ``model_s.get_feat_modules()`` at the run's lr).

  The distillation phase follows the release: ``helper/loops.py`` sets ``loss_kd = 0`` for
  abound, so with ``-a 0`` it is CE alone and ``-b`` has no effect (hence no ``beta``).
  The authors' CIFAR code (bhheo/AB_distillation) trains that phase on KD alone instead
  (``loss = loss_KD``, τ = 3), and its connectors are a bias-free 1×1 conv + BN whenever
  the channel counts differ; set ``kd_weight`` / ``ce_weight`` for a KD second stage.

  ``student_stages`` / ``teacher_stages``: 1-based stages to pair (default: all, one to
  one); ``init_epochs``: length of the init phase.
  """
  margin: float = ranged(1.0, NONNEG)
  init_epochs: int = ranged(30, POS_INT)
  student_stages: tuple[int, ...] | None = ranged(None, BY_METHOD)
  teacher_stages: tuple[int, ...] | None = ranged(None, BY_METHOD)


def connector_conv(s_shape, t_shape) -> tuple[str, tuple[int, int], int, int] | None:
  """The release's connector for a student map of shape `s_shape` -> `t_shape`.

  Args:
    s_shape, t_shape: (H, W, C) of the student's and the teacher's map.

  Returns:
    None for the identity (equal shapes), else ``(kind, kernel, stride, padding)`` of
    its convolution: kind ``'conv'`` or ``'transpose'``, padding as PyTorch's.

  Raises:
    PairingError: the student's map is smaller than the teacher's, but not half of it.
  """
  (sh, sw, _), (th, tw, _) = s_shape, t_shape
  if tuple(s_shape) == tuple(t_shape):
    return None
  if sh == 2 * th:
    return "conv", (3, 3), 2, 1
  if 2 * sh == th:
    return "transpose", (4, 4), 2, 1
  if sh >= th and sw >= tw:
    return "conv", (1 + sh - th, 1 + sw - tw), 1, 0
  raise PairingError(f"method 'ab': no connector maps a student map {tuple(s_shape)} to a "
                     f"teacher map {tuple(t_shape)} (the release's ConvReg needs the "
                     "student's height to be >= the teacher's, or half of it)")


class Connector(nn.Module):
  """The release's ``ConvReg(use_relu=False)``: (B, Hs, Ws, Cs) -> (B, Ht, Wt, Ct)."""
  out_shape: tuple[int, int, int]

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    kind, kernel, stride, pad = connector_conv(x.shape[1:], self.out_shape)
    features = self.out_shape[-1]
    if kind == "conv":
      fan_in = x.shape[-1] * kernel[0] * kernel[1]
      x = nn.Conv(features, kernel, strides=stride, padding=((pad, pad), (pad, pad)),
                  kernel_init=layers.torch_default_conv_init,
                  bias_init=layers.torch_default_bias_init(fan_in), name="conv")(x)
    else:
      # PyTorch's transposed-conv padding p crops p from each side: k - 1 - p here.
      q = kernel[0] - 1 - pad
      fan_in = features * kernel[0] * kernel[1]
      x = nn.ConvTranspose(features, kernel, strides=(stride, stride),
                           padding=((q, q), (q, q)), transpose_kernel=True,
                           kernel_init=layers.torch_default_conv_init,
                           bias_init=layers.torch_default_bias_init(fan_in), name="conv")(x)
    return layers.batch_norm(train, name="bn")(x)


def alternative_l2(source: jnp.ndarray, target: jnp.ndarray, margin: float) -> jnp.ndarray:
  """The margin-μ activation-boundary loss, summed over all elements.

  Args:
    source: (B, H, W, C) connected student pre-activations.
    target: (B, H, W, C) teacher pre-activations.
    margin: μ.
  """
  off = (source > -margin) & (target <= 0)
  on = (source <= margin) & (target > 0)
  return jnp.sum(jnp.square(source + margin) * off + jnp.square(source - margin) * on)


def ab_loss(sources, targets, margin: float = 1.0) -> jnp.ndarray:
  """``Σ_k 2^(k−n+1)·alternative_l2(S_k, T_k) / B / 1000·3`` over n equal-shape pairs."""
  n, batch = len(sources), sources[0].shape[0]
  total = 0.0
  for k, (s, t) in enumerate(zip(sources, targets)):
    total = total + 2.0 ** (k - n + 1) * alternative_l2(s, t, margin)
  return total / batch / 1000 * 3


class AB(nn.Module):
  """Init phase: L_AB through the connectors ``connector_{k}``; then ``ce_weight·CE +
  kd_weight·KD``."""
  hp: Config

  @nn.compact
  def connect(self, s_feats, t_feats, *, train: bool) -> list[jnp.ndarray]:
    """The student's maps through connector k where the shapes differ: teacher shapes."""
    return [s if connector_conv(s.shape[1:], t.shape[1:]) is None
            else Connector(tuple(t.shape[1:]), name=f"connector_{k}")(s, train=train)
            for k, (s, t) in enumerate(zip(s_feats, t_feats))]

  def __call__(self, s_feats, t_feats, s_logits, t_logits, labels, *, train: bool):
    """The distillation phase; s_feats, t_feats: stage-paired (B, H, W, C) pre-activation
    lists, read only to create the connectors. Returns (loss, metrics)."""
    if self.is_initializing():
      self.connect(s_feats, t_feats, train=train)
    return logit_terms(self.hp, s_logits, t_logits, labels)

  def init_loss(self, s_feats, t_feats, s_logits, t_logits, labels, *, train: bool):
    """The init phase: (L_AB, metrics); logits and labels are unused."""
    del s_logits, t_logits, labels
    t_feats = [jax.lax.stop_gradient(t) for t in t_feats]
    ab = ab_loss(self.connect(s_feats, t_feats, train=train), t_feats, self.hp.margin)
    return ab, {"ab": ab}


@register("ab", Config)
def build_ab(hp, *, student, teacher, steps_per_epoch):
  """Pairs every stage's pre-activation one to one (see `paired_stages`)."""
  del steps_per_epoch
  s_out, t_out = paired_stages("ab", student, teacher, hp.student_stages, hp.teacher_stages)

  def preact(info, names):
    # What the ReLU after the stage receives: in pre-activation nets (WRN) the next
    # block's bn1 output, sown as `bn_preact` (RepDistiller's WRN with preact=True).
    stems = [n.removesuffix(".out") for n in names]
    return [f"{n}.bn_preact" if f"{n}.bn_preact" in info.shapes else f"{n}.preact"
            for n in stems]
  s = require_features(student, preact(student, s_out), "ab", "student")
  t = require_features(teacher, preact(teacher, t_out), "ab", "teacher")
  connectors = tuple(f"connector_{k}" for k, (a, b) in enumerate(zip(s, t))
                     if connector_conv(student.shapes[a][1:], teacher.shapes[b][1:]))
  # The release never trains the connectors after the init phase (nor uses them).
  phase = InitPhase(hp.init_epochs, None, train_student=True, method_modules=connectors,
                    frozen_after=connectors)
  return Distiller("ab", AB(hp), s, t, init_phase=phase)
