"""FitNets (Romero et al., ICLR 2015): a student hint layer regresses a teacher feature.

Hint: the student's ``stage{k}.out`` through a learnable regressor (1×1 conv + BN + ReLU,
the CRD benchmark's regressor with a 1×1 kernel) to the teacher's channel count; guided
layer: the teacher's ``stage{k}.out``. If the spatial sizes differ, the larger map is
average-pooled to the smaller (our choice; CRD uses a strided conv instead).

Initial values as the release's ``ConvReg`` (RepDistiller ``models/util.py:131-146``,
built at ``train_student.py:187`` with no re-initialisation): the conv at PyTorch's default,
kaiming_uniform(a=√5) = uniform(±1/√fan_in) for the kernel and uniform(±1/√fan_in) for
the bias (fan_in = C_s for the 1×1 kernel); the BatchNorm PyTorch's (scale 1, bias 0,
momentum 0.1, unbiased running variance: `layers.BatchNorm`).
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from afd_jax.methods.base import (Distiller, LogitTerms, logit_terms, register,
                                  require_features)
from afd_jax.methods.pooling import match_spatial
from afd_jax.methods.ranges import NONNEG, POS_INT, ranged
from afd_jax.models import layers


@dataclasses.dataclass(frozen=True)
class Config(LogitTerms):
  """FitNet as the CRD benchmark runs it on CIFAR-100 (RepDistiller
  ``scripts/run_cifar_distill.sh``: ``--distill hint -a 0 -b 100``; ``--hint_layer``
  default 2, ``-r`` default 1): CE + 100·MSE at the stage-2 output."""
  beta: float = ranged(100.0, NONNEG)
  hint_stage: int = ranged(2, POS_INT)


def hint_loss(regressed: jnp.ndarray, target: jnp.ndarray) -> jnp.ndarray:
  """Mean squared error over all (B, H, W, C) elements."""
  return jnp.mean(jnp.square(regressed - target))


class FitNet(nn.Module):
  """``ce_weight·CE + kd_weight·KD + beta·MSE(regressor(S_hint), T_hint)``."""
  hp: Config
  teacher_channels: int

  @nn.compact
  def __call__(self, s_feats, t_feats, s_logits, t_logits, labels, *, train: bool):
    """s_feats = [(B, Hs, Ws, Cs)], t_feats = [(B, Ht, Wt, Ct)]; returns (loss, metrics)."""
    s, t = match_spatial(s_feats[0], t_feats[0])
    # ConvReg's nn.Conv2d / nn.BatchNorm2d at PyTorch's defaults (see the module doc).
    fan_in = s.shape[-1]
    r = nn.Conv(self.teacher_channels, (1, 1), kernel_init=layers.torch_default_conv_init,
                bias_init=layers.torch_default_bias_init(fan_in), name="regressor")(s)
    r = layers.batch_norm(train, name="regressor_bn")(r)
    r = nn.relu(r)
    hint = hint_loss(r, t)
    total, metrics = logit_terms(self.hp, s_logits, t_logits, labels)
    metrics["fitnet"] = hint
    return total + self.hp.beta * hint, metrics


@register("fitnet", Config)
def build_fitnet(hp, *, student, teacher, steps_per_epoch):
  """Hint layer ``stage{hint_stage}.out`` on both nets."""
  del steps_per_epoch
  k = hp.hint_stage
  s = require_features(student, [f"stage{k}.out"], "fitnet", "student")
  t = require_features(teacher, [f"stage{k}.out"], "fitnet", "teacher")
  return Distiller("fitnet", FitNet(hp, teacher.shapes[t[0]][-1]), s, t)
