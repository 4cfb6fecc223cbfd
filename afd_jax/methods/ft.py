"""Factor transfer (Kim et al., NeurIPS 2018): a two-stage method.

Init phase (`InitPhase`): a paraphraser, a convolutional autoencoder of the teacher's
last-stage map T (three 3×3 convs down to ``int(rate·C_t)`` channels, three 3×3
transposed convs back, LeakyReLU(0.1) after each, no BatchNorm), trains alone on the
reconstruction ``mean (P(T) − T)²``; the student is not touched. Distillation phase: the
paraphraser is frozen and its encoder gives the teacher factor ``F_t``; a translator
(three 3×3 conv + BN + LeakyReLU(0.1) layers to ``int(rate·C_t)`` channels) gives the
student factor ``F_s`` from the student's last-stage map, and

    L_FT = mean |φ(F_s) − φ(F_t)|^p2,   φ(F) = l2norm(flatten(mean_c F^p1)),

the larger factor map average-pooled to the smaller first; the objective is
``ce_weight·CE + kd_weight·KD + beta·L_FT``.

Features: the last ``stage{n}.out`` of both nets (RepDistiller's ``feat[-2]``).

Initial values as the release's ``Paraphraser`` / ``Translator`` (``models/util.py:7-62``,
built at ``train_student.py:242-243``, no re-initialisation): every (transposed) conv at
PyTorch's default, uniform(±1/√fan_in) for kernel and bias (fan_in = C_in·9 for a conv,
C_out·9 for a transposed one, as PyTorch counts it); the translator's BatchNorms
PyTorch's (scale 1, bias 0, momentum 0.1, unbiased running variance: `layers.BatchNorm`).
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from afd_jax.methods.base import (Distiller, InitPhase, LogitTerms, last_stage, logit_terms,
                                  register)
from afd_jax.methods.pooling import l2_normalize, match_spatial
from afd_jax.methods.ranges import (NONNEG, POS, POS_INT, Range, is_number, optional,
                                    ranged)
from afd_jax.models import layers

# RepDistiller (``helper/pretrain.py``) trains the paraphraser of these students at lr 0.01.
INIT_LR_001_STUDENTS = ("resnet8", "resnet14", "resnet20", "resnet32", "resnet44",
                        "resnet56", "resnet110", "resnet8x4", "resnet32x4", "wrn_16_1",
                        "wrn_16_2", "wrn_40_1", "wrn_40_2")

_RATE = Range(lambda v: is_number(v) and 0 < v <= 1,
              "in (0, 1] (the paraphraser's channel ratio)")


@dataclasses.dataclass(frozen=True)
class Config(LogitTerms):
  """FT as the CRD benchmark runs it on CIFAR-100 (HobbitLong/RepDistiller:
  ``scripts/run_cifar_distill.sh`` ``--distill factor -a 0 -b 200``, ``-r 1``;
  ``distiller_zoo/FT.py``: ``p1 = 2``, ``p2 = 1``; ``models/util.py``: paraphrase rate
  ``k = 0.5``, paraphraser without BN, translator with BN; ``train_student.py``:
  ``--init_epochs 30``, only the paraphraser trains in the init phase, on ``nn.MSELoss``;
  ``helper/pretrain.py``: its lr is 0.01 for the resnet/wrn students of
  `INIT_LR_001_STUDENTS`, the run's lr otherwise).

  Where the release and the paper differ, this follows the release: the paper transfers
  the l2-normalised factor itself, ``‖F_s/‖F_s‖ − F_t/‖F_t‖‖_1``, whereas the release's
  ``factor`` is the l2-normalised channel mean of the squared factor (an attention map),
  compared by a mean absolute difference.

  ``init_lr``: the init phase's lr; None: the release's rule above.
  """
  beta: float = ranged(200.0, NONNEG)
  rate: float = ranged(0.5, _RATE)
  p1: int = ranged(2, POS_INT)
  p2: int = ranged(1, POS_INT)
  init_epochs: int = ranged(30, POS_INT)
  init_lr: float | None = ranged(None, optional(POS))


def _conv3x3(features: int, fan_in: int, name: str, transpose: bool = False) -> nn.Module:
  """A PyTorch-initialised 3×3, stride-1, padding-1 (transposed) conv with bias."""
  cls = nn.ConvTranspose if transpose else nn.Conv
  extra = {"transpose_kernel": True} if transpose else {}
  return cls(features, (3, 3), padding=((1, 1), (1, 1)),
             kernel_init=layers.torch_default_conv_init,
             bias_init=layers.torch_default_bias_init(fan_in), name=name, **extra)


def _leaky(x: jnp.ndarray) -> jnp.ndarray:
  return nn.leaky_relu(x, negative_slope=0.1)


class Paraphraser(nn.Module):
  """The teacher's autoencoder: (B, H, W, C) -> factor (B, H, W, int(rate·C)) and, with
  ``decode``, the reconstruction (B, H, W, C) (else None)."""
  rate: float = 0.5

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, decode: bool):
    c = x.shape[-1]
    m = int(c * self.rate)
    for i, features in enumerate((c, m, m)):
      x = _leaky(_conv3x3(features, x.shape[-1] * 9, f"encoder_{i}")(x))
    factor = x
    if not decode:
      return factor, None
    for i, features in enumerate((m, c, c)):
      x = _leaky(_conv3x3(features, features * 9, f"decoder_{i}", transpose=True)(x))
    return factor, x


class Translator(nn.Module):
  """The student's encoder: (B, H, W, Cs) -> factor (B, H, W, int(rate·teacher_channels))."""
  rate: float = 0.5

  @nn.compact
  def __call__(self, x: jnp.ndarray, teacher_channels: int, *, train: bool) -> jnp.ndarray:
    m = int(teacher_channels * self.rate)
    for i, features in enumerate((x.shape[-1], m, m)):
      x = _conv3x3(features, x.shape[-1] * 9, f"conv_{i}")(x)
      x = layers.batch_norm(train, name=f"bn_{i}")(x)
      x = _leaky(x)
    return x


def factor_map(f: jnp.ndarray, p1: int = 2) -> jnp.ndarray:
  """The release's ``factor``: ``l2norm(flatten(mean_c f^p1))``, (B, H, W, C) -> (B, H·W)."""
  a = jnp.mean(f ** p1, axis=-1)
  return l2_normalize(a.reshape(a.shape[0], -1), axis=-1)


def ft_loss(factor_s: jnp.ndarray, factor_t: jnp.ndarray, p1: int = 2, p2: int = 1
            ) -> jnp.ndarray:
  """``mean |φ(F_s) − φ(F_t)|^p2`` (p2 = 1: absolute value) after pooling to the smaller map.

  Args:
    factor_s: (B, Hs, Ws, C) translator output.
    factor_t: (B, Ht, Wt, C) paraphraser factor.
  """
  factor_s, factor_t = match_spatial(factor_s, factor_t)
  diff = factor_map(factor_s, p1) - factor_map(factor_t, p1)
  return jnp.mean(jnp.abs(diff) if p2 == 1 else diff ** p2)


class FT(nn.Module):
  """Init phase: the ``paraphraser`` reconstructs T; then ``ce_weight·CE + kd_weight·KD +
  beta·L_FT`` with the frozen paraphraser's factor and the ``translator``'s."""
  hp: Config

  def setup(self):
    self.paraphraser = Paraphraser(self.hp.rate)
    self.translator = Translator(self.hp.rate)

  def __call__(self, s_feats, t_feats, s_logits, t_logits, labels, *, train: bool):
    """The distillation phase; s_feats = [(B, Hs, Ws, Cs)], t_feats = [(B, Ht, Wt, Ct)].
    Returns (loss, metrics)."""
    t = jax.lax.stop_gradient(t_feats[0])
    # The decoder is only used by `init_loss`; create its parameters with the rest.
    factor_t, _ = self.paraphraser(t, decode=self.is_initializing())
    factor_s = self.translator(s_feats[0], t.shape[-1], train=train)
    # The paraphraser is frozen in this phase.
    ft = ft_loss(factor_s, jax.lax.stop_gradient(factor_t), self.hp.p1, self.hp.p2)
    total, metrics = logit_terms(self.hp, s_logits, t_logits, labels)
    metrics["ft"] = ft
    return total + self.hp.beta * ft, metrics

  def init_loss(self, s_feats, t_feats, s_logits, t_logits, labels, *, train: bool):
    """The init phase: (mean squared reconstruction error of T, metrics)."""
    del s_feats, s_logits, t_logits, labels, train
    t = jax.lax.stop_gradient(t_feats[0])
    _, reconstruction = self.paraphraser(t, decode=True)
    mse = jnp.mean(jnp.square(reconstruction - t))
    return mse, {"reconstruction": mse}


@register("ft", Config)
def build_ft(hp, *, student, teacher, steps_per_epoch):
  """The last stage output of both nets; the paraphraser trains first, then freezes."""
  del steps_per_epoch
  s = last_stage("ft", student, "student")
  t = last_stage("ft", teacher, "teacher")
  lr = hp.init_lr
  if lr is None and student.model in INIT_LR_001_STUDENTS:
    lr = 0.01
  phase = InitPhase(hp.init_epochs, lr, train_student=False,
                    method_modules=("paraphraser",), frozen_after=("paraphraser",))
  return Distiller("ft", FT(hp), s, t, init_phase=phase)
