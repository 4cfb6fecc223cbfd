"""Flow of solution procedure (Yim et al., CVPR 2017): a two-stage method.

Init phase (`InitPhase`): for consecutive features (F_i, F_{i+1}) of each net (the larger
map average-pooled to the smaller), the FSP matrix

    G_i = mean_{h,w} F_i[b, h, w, :]ᵀ F_{i+1}[b, h, w, :],   (B, C_i, C_{i+1}),

and the student's feature layers train on ``L_FSP = Σ_i mean (G_i^S − G_i^T)²`` (mean
over the batch and the matrix). Distillation phase: ``ce_weight·CE (+ kd_weight·KD)``.

Features: ``stem`` (where the net sows one) and every ``stage{i}.out``, i.e. RepDistiller's
``feat[:-1]``; the two lists must have equal lengths and equal channel counts pairwise.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from afd_jax.methods.base import (Distiller, InitPhase, LogitTerms, PairingError, logit_terms,
                                  register, stage_features)
from afd_jax.methods.pooling import match_spatial
from afd_jax.methods.ranges import POS_INT, ranged


@dataclasses.dataclass(frozen=True)
class Config(LogitTerms):
  """FSP as the CRD benchmark runs it on CIFAR-100 (HobbitLong/RepDistiller:
  ``scripts/run_cifar_distill.sh`` ``--distill fsp -a 0 -b 50``, ``-r 1``;
  ``distiller_zoo/FSP.py``; ``train_student.py``: ``--init_epochs 30``, the init phase
  trains ``model_s.get_feat_modules()`` at the run's lr on ``feat[:-1]``).

  Where the release and the paper differ, this follows the release: the distillation
  phase has ``loss_kd = 0`` (``helper/loops.py``), so ``-b 50`` has no effect (hence no
  ``beta``); the paper's loss sums the squared FSP differences (``λ_i·‖G_i^T − G_i^S‖²``,
  averaged over examples) where the release averages them over the matrix entries too;
  the paper pairs the first and last layer of each residual section (equal sizes), the
  release consecutive stage outputs, pooling the larger map.

  ``init_epochs``: length of the init phase.
  """
  init_epochs: int = ranged(30, POS_INT)


def fsp_matrices(feats) -> list[jnp.ndarray]:
  """FSP matrices of consecutive maps of one net.

  Args:
    feats: list of n (B, H_i, W_i, C_i) maps.

  Returns:
    n − 1 arrays (B, C_i, C_{i+1}): ``mean_{h,w} F_i ⊗ F_{i+1}``, the larger of each
    pair average-pooled (PyTorch's adaptive rule) to the smaller.
  """
  out = []
  for bottom, top in zip(feats[:-1], feats[1:]):
    bottom, top = match_spatial(bottom, top)
    hw = bottom.shape[1] * bottom.shape[2]
    out.append(jnp.einsum("bhwi,bhwj->bij", bottom, top) / hw)
  return out


def fsp_loss(s_feats, t_feats) -> jnp.ndarray:
  """``Σ_i mean (G_i^S − G_i^T)²`` over pairwise equal-channel feature lists."""
  return sum(jnp.mean(jnp.square(gs - gt))
             for gs, gt in zip(fsp_matrices(s_feats), fsp_matrices(t_feats)))


class FSP(nn.Module):
  """Init phase: L_FSP; then ``ce_weight·CE + kd_weight·KD``. No learnable parts."""
  hp: Config

  def __call__(self, s_feats, t_feats, s_logits, t_logits, labels, *, train: bool):
    """The distillation phase: (loss, metrics); the features are unused."""
    del s_feats, t_feats, train
    return logit_terms(self.hp, s_logits, t_logits, labels)

  def init_loss(self, s_feats, t_feats, s_logits, t_logits, labels, *, train: bool):
    """The init phase: (L_FSP, metrics); s_feats, t_feats: (B, H, W, C) lists."""
    del s_logits, t_logits, labels, train
    fsp = fsp_loss(s_feats, [jax.lax.stop_gradient(t) for t in t_feats])
    return fsp, {"fsp": fsp}


def _features(info) -> tuple[str, ...]:
  """``stem`` (if sown) and the stage outputs: RepDistiller's ``feat[:-1]``."""
  return (("stem",) if "stem" in info.shapes else ()) + stage_features(info)


@register("fsp", Config)
def build_fsp(hp, *, student, teacher, steps_per_epoch):
  """Pairs ``feat[:-1]`` one to one; the student's feature layers train first.

  Raises:
    PairingError: unequal lengths, fewer than two features, or unequal channel counts.
  """
  del steps_per_epoch
  s, t = _features(student), _features(teacher)
  s_c = [student.shapes[n][-1] for n in s]
  t_c = [teacher.shapes[n][-1] for n in t]
  if len(s) != len(t) or len(s) < 2 or s_c != t_c:
    raise PairingError(
        f"method 'fsp' pairs the stem and stage outputs one to one and needs equal channel "
        f"counts pairwise (FSP matrices of equal shapes), but student {student.model!r} has "
        f"{dict(zip(s, s_c))} and teacher {teacher.model!r} has {dict(zip(t, t_c))}")
  phase = InitPhase(hp.init_epochs, None, train_student=True)
  return Distiller("fsp", FSP(hp), s, t, init_phase=phase)
