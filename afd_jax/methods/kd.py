"""Logit-only objectives: ``none`` (cross-entropy; also trains teachers) and Hinton ``kd``."""
from __future__ import annotations

import flax.linen as nn

from afd_jax.methods.base import Distiller, logit_terms, register


class LogitObjective(nn.Module):
  """``ce_weight·CE + kd_weight·τ²·KL(teacher ‖ student)``; no learnable parts.

  Attributes:
    cfg: the method config (reads ``ce_weight``, ``kd_weight``, ``temperature``).
    ce_weight, kd_weight, temperature: defaults used when `cfg` leaves them unset.
  """
  cfg: object
  ce_weight: float = 1.0
  kd_weight: float = 0.0
  temperature: float = 4.0

  @nn.compact
  def __call__(self, s_feats, t_feats, s_logits, t_logits, labels, *, train: bool):
    """Returns (loss, metrics); s_logits/t_logits (B, K), labels (B,)."""
    del s_feats, t_feats, train
    return logit_terms(self.cfg, s_logits, t_logits, labels, ce_weight=self.ce_weight,
                       kd_weight=self.kd_weight, temperature=self.temperature)


@register("none")
def build_none(cfg, *, student, teacher, num_classes, steps_per_epoch):
  """Plain cross-entropy training (teachers and student baselines); ignores any teacher."""
  del student, teacher, num_classes, steps_per_epoch
  return Distiller("none", LogitObjective(cfg, kd_weight=0.0), needs_teacher=False)


@register("kd")
def build_kd(cfg, *, student, teacher, num_classes, steps_per_epoch):
  """Hinton et al. 2015. Defaults are the CRD benchmark's: 0.1·CE + 0.9·KD at τ = 4."""
  del student, teacher, num_classes, steps_per_epoch
  return Distiller("kd", LogitObjective(cfg, ce_weight=0.1, kd_weight=0.9, temperature=4.0))
