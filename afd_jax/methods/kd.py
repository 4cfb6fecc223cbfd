"""Logit-only objectives: ``none`` (cross-entropy; also trains teachers) and Hinton ``kd``."""
from __future__ import annotations

import dataclasses

import flax.linen as nn

from afd_jax.methods.base import Distiller, LogitTerms, logit_terms, register
from afd_jax.methods.ranges import BOOL, NONNEG, POS, ranged


@dataclasses.dataclass(frozen=True)
class NoneConfig:
  """Plain cross-entropy.

  Attributes:
    batch_average: per-pixel (segmentation) logits only: the valid-pixel mean CE divided
      once more by the batch size, as every trainer of the TaT segmentation release and
      jfzhang95's DeepLab (``utils/loss.py``: ``SegmentationLosses(batch_average=True)``)
      trains its teachers and student baselines. Class logits: no effect.
  """
  batch_average: bool = ranged(True, BOOL)


@dataclasses.dataclass(frozen=True)
class Config(LogitTerms):
  """Hinton et al. 2015, as the CRD benchmark runs it on CIFAR-100 (RepDistiller README:
  ``--distill kd -r 0.1 -a 0.9 -b 0``, ``--kd_T 4``): 0.1·CE + 0.9·KD at τ = 4."""
  ce_weight: float = ranged(0.1, NONNEG)
  kd_weight: float = ranged(0.9, NONNEG)
  temperature: float = ranged(4.0, POS)


class LogitObjective(nn.Module):
  """``ce_weight·CE + kd_weight·τ²·KL(teacher ‖ student)``; no learnable parts.

  Attributes:
    hp: the weights (a `LogitTerms`).
    batch_average: per-pixel CE divided by the batch size (`losses.logit_terms`).
  """
  hp: LogitTerms
  batch_average: bool = False

  @nn.compact
  def __call__(self, s_feats, t_feats, s_logits, t_logits, labels, *, train: bool):
    """Returns (loss, metrics); s_logits/t_logits (B, K) with labels (B,), or per-pixel
    (B, H, W, K) with labels (B, H, W) (255 = ignore)."""
    del s_feats, t_feats, train
    return logit_terms(self.hp, s_logits, t_logits, labels,
                       batch_average=self.batch_average)


@register("none", NoneConfig, needs_teacher=False)
def build_none(hp, *, student, teacher, steps_per_epoch):
  """Plain cross-entropy training (teachers and student baselines); ignores any teacher."""
  del student, teacher, steps_per_epoch
  return Distiller("none", LogitObjective(LogitTerms(), hp.batch_average),
                   needs_teacher=False)


@register("kd", Config)
def build_kd(hp, *, student, teacher, steps_per_epoch):
  """Hinton KD on the logits."""
  del student, teacher, steps_per_epoch
  return Distiller("kd", LogitObjective(hp))
