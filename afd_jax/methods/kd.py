"""Logit-only objectives: ``none`` (cross-entropy; also trains teachers) and Hinton ``kd``."""
from __future__ import annotations

import dataclasses

import flax.linen as nn

from afd_jax.methods.base import Distiller, LogitTerms, logit_terms, register


@dataclasses.dataclass(frozen=True)
class NoneConfig:
  """Plain cross-entropy: no hyperparameters."""


@dataclasses.dataclass(frozen=True)
class Config(LogitTerms):
  """Hinton et al. 2015, as the CRD benchmark runs it on CIFAR-100 (RepDistiller README:
  ``--distill kd -r 0.1 -a 0.9 -b 0``, ``--kd_T 4``): 0.1·CE + 0.9·KD at τ = 4."""
  ce_weight: float = 0.1
  kd_weight: float = 0.9
  temperature: float = 4.0


class LogitObjective(nn.Module):
  """``ce_weight·CE + kd_weight·τ²·KL(teacher ‖ student)``; no learnable parts.

  Attributes:
    hp: the weights (a `LogitTerms`).
  """
  hp: LogitTerms

  @nn.compact
  def __call__(self, s_feats, t_feats, s_logits, t_logits, labels, *, train: bool):
    """Returns (loss, metrics); s_logits/t_logits (B, K), labels (B,)."""
    del s_feats, t_feats, train
    return logit_terms(self.hp, s_logits, t_logits, labels)


@register("none", NoneConfig, needs_teacher=False)
def build_none(hp, *, student, teacher, steps_per_epoch):
  """Plain cross-entropy training (teachers and student baselines); ignores any teacher."""
  del hp, student, teacher, steps_per_epoch
  return Distiller("none", LogitObjective(LogitTerms()), needs_teacher=False)


@register("kd", Config)
def build_kd(hp, *, student, teacher, steps_per_epoch):
  """Hinton KD on the logits."""
  del student, teacher, steps_per_epoch
  return Distiller("kd", LogitObjective(hp))
