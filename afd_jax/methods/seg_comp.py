"""The TaT segmentation release's comparison methods on the dense decoder feature.

sihaoevery/TaT-seg ``distiller_comp.py`` (``--comp kd|at|fitnet|ch``) with the trainer
``train_with_distillation_comp.py`` and ``train_comp.sh``. Every method reads one feature
per net, ``s_feats[-1]`` / ``t_feats[-1]``: the DeepLabV3+ decoder output (256 channels,
pre-ReLU BN, 1/4 resolution), sown by our DeepLab models as ``decoder``; no method has
learnable parts. The distiller returns ``D`` for the whole batch and the trainer computes

    loss = ce_weight·CE_seg + alpha·D / B       (``loss_distill.sum() / batch_size * alpha``)

with CE_seg the release's ``SegmentationLosses.CrossEntropyLoss`` (mean over non-void
pixels, divided again by B: `segmentation_cross_entropy`) and B the batch size; alpha = 0.1
(the trainer's ``--alpha`` default; ``train_comp.sh`` does not set it). The trainer runs
the teacher in train mode (``self.d_net.module.t_net.train()``), so these methods set
``Distiller.teacher_train_mode``. With (B, K) classification logits the CE term is the
plain batch mean instead.

``D`` per method (features s, t of shape (B, H, W, C)):

* ``seg_kd`` (``comp='kd'``): ``0.01·T²·Σ KL(softmax(t/T) ‖ softmax(s/T)) / B`` with the
  softmax over the LAST axis of the NCHW tensor, i.e. the width W, for every (b, c, row),
  summed over everything (``F.kl_div(size_average=False)``), T = 7 — KD on the decoder
  FEATURES, not on logits. (For Hinton KD on per-pixel logits use the ``kd`` method, which
  takes (B, H, W, K) logits with the void mask.)
* ``seg_fitnet`` (``'fitnet'``): ``MSELoss(s, t)`` (mean); no regressor (both 256 channels).
* ``seg_at`` (``'at'``): ``Σ_{b,i} (a_s − a_t)²`` with ``a = F.normalize(mean_c f²)`` over
  the flattened positions (the release's ``at_loss`` returns the un-reduced (B, H·W)
  tensor, which the trainer sums); if the heights differ the larger map is
  ``adaptive_avg_pool2d``-ed to (h, h), h the smaller HEIGHT, as the release does.
* ``ickd`` (``'ch'``): ``0.5·Σ_{b,p} ‖N(S_bp S_bpᵀ) − N(T_bp T_bpᵀ)‖²_F / (C·B²)``: each map
  is cut into the release's n×m ``unfold`` grid (``train_comp.sh`` N=M=8), S_bp the (C,
  kh·kw) patch, N normalises each row of the C×C Gram matrix to unit L2 norm.

Paper vs release (we follow the release): Hinton KD is defined on class probabilities, the
release applies it to decoder features along W; FitNets uses a learned regressor, the release
none; AT's paper uses ``β/2·‖a_s − a_t‖₂`` (β = 10³), the release the plain sum of squared
differences times alpha/B; ICKD's paper adds a learnable 1×1 conv on the student feature,
the release correlates the raw features.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from afd_jax.methods.base import (Distiller, cross_entropy, register,
                                  segmentation_cross_entropy)
from afd_jax.methods.pooling import adaptive_avg_pool, l2_normalize
from afd_jax.methods.ranges import BY_METHOD, GRID, NONNEG, POS, ranged
from afd_jax.methods.seg_features import (batch_reshape, dense_feature_pair, patch_layout,
                                          unfold_patches)


@dataclasses.dataclass(frozen=True)
class DenseTerms:
  """The trainer's ``ce_weight·CE_seg + alpha·D / B`` (``train_with_distillation_comp.py``).

  Attributes:
    ce_weight: the segmentation CE's weight (1).
    alpha: ``--alpha`` (argparse default 0.1; ``train_comp.sh`` keeps it).
    student_feature, teacher_feature: feature names (default ``decoder``).
  """
  ce_weight: float = ranged(1.0, NONNEG)
  alpha: float = ranged(0.1, NONNEG)
  student_feature: str | None = ranged(None, BY_METHOD)
  teacher_feature: str | None = ranged(None, BY_METHOD)


@dataclasses.dataclass(frozen=True)
class SegKDConfig(DenseTerms):
  """``comp='kd'`` (``distiller_comp.py``: ``0.01*self.kd_loss``, ``T = 7``).

  Attributes:
    scale: the distiller's factor (0.01).
    temperature: T (7).
  """
  scale: float = ranged(0.01, POS)
  temperature: float = ranged(7.0, POS)


@dataclasses.dataclass(frozen=True)
class SegFitNetConfig(DenseTerms):
  """``comp='fitnet'`` (``distiller_comp.py``: ``hintloss = nn.MSELoss()(f_s, f_t)``)."""


@dataclasses.dataclass(frozen=True)
class SegATConfig(DenseTerms):
  """``comp='at'`` (``distiller_comp.py``: ``at_loss``, ``p = 2``)."""


@dataclasses.dataclass(frozen=True)
class ICKDConfig(DenseTerms):
  """``comp='ch'`` (``distiller_comp.py``: ``0.5*self.ch_loss``; ``train_comp.sh``: N=8
  M=8).

  Attributes:
    scale: the distiller's factor (0.5).
    patch_grid: (n, m), ``-n``/``-m``.
  """
  scale: float = ranged(0.5, POS)
  patch_grid: tuple[int, ...] = ranged((8, 8), GRID)


# ---- the distillers' D, plain functions of (B, H, W, C) arrays ------------------------


def feature_kd_loss(s: jnp.ndarray, t: jnp.ndarray, temperature: float) -> jnp.ndarray:
  """``T²·Σ KL(softmax_W(t/T) ‖ softmax_W(s/T)) / B``: the release's ``kd_loss`` on NCHW
  features, whose ``dim=-1`` is the width; s, t (B, H, W, C) -> scalar."""
  log_ps = jax.nn.log_softmax(s / temperature, axis=2)
  log_pt = jax.nn.log_softmax(t / temperature, axis=2)
  return jnp.sum(jnp.exp(log_pt) * (log_pt - log_ps)) * temperature ** 2 / s.shape[0]


def hint_mse(s: jnp.ndarray, t: jnp.ndarray) -> jnp.ndarray:
  """``nn.MSELoss()``: mean of (s − t)² over all elements; (B, H, W, C) -> scalar."""
  return jnp.mean(jnp.square(s - t))


def _release_at_pool(s: jnp.ndarray, t: jnp.ndarray):
  """The release's pooling: the taller map to (h, h), h the other's height."""
  sh, th = s.shape[1], t.shape[1]
  if sh > th:
    s = adaptive_avg_pool(s, (th, th))
  elif sh < th:
    t = adaptive_avg_pool(t, (sh, sh))
  return s, t


def at_sum_loss(s: jnp.ndarray, t: jnp.ndarray) -> jnp.ndarray:
  """``Σ_{b,i} (a_s − a_t)²``, ``a = l2norm(flatten(mean_c f²))`` (p = 2); (B, H, W, Cs),
  (B, H', W', Ct) -> scalar, after `_release_at_pool`."""
  s, t = _release_at_pool(s, t)
  at = lambda f: l2_normalize(batch_reshape(jnp.mean(jnp.square(f), -1),  # noqa
                                              (f.shape[0], -1)))
  return jnp.sum(jnp.square(at(s) - at(t)))


def channel_correlation_loss(s: jnp.ndarray, t: jnp.ndarray,
                             grid: tuple[int, int]) -> jnp.ndarray:
  """The release's ``ch_loss``: ``Σ_{b,p} ‖N(G_s) − N(G_t)‖²_F / (C·B²)``.

  Args:
    s, t: (B, H, W, C) maps (equal shapes).
    grid: (n, m) of the ``unfold`` patch grid (`seg_features.patch_layout`).

  Returns:
    scalar. G = the C×C Gram matrix of a patch's channels over its kh·kw positions; N
    scales each row to unit L2 norm (``F.normalize(dim=2)``, eps 1e-12).
  """
  b, c = s.shape[0], s.shape[-1]

  def gram(x):
    p = unfold_patches(x, grid)
    p = batch_reshape(p, (p.shape[0], p.shape[1], -1, c))      # (B, P, kh·kw, C)
    return l2_normalize(jnp.einsum("bpxi,bpxj->bpij", p, p), axis=-1)
  return jnp.sum(jnp.square(gram(s) - gram(t))) / (c * b * b)


# ---- module -------------------------------------------------------------------------


def release_cross_entropy(s_logits, labels):
  """The release's CE_seg for (B, H, W, K) logits; the batch mean for (B, K)."""
  if s_logits.ndim == 2:
    return cross_entropy(s_logits, labels)
  return segmentation_cross_entropy(s_logits, labels, batch_average=True)


class DenseFeatureDistill(nn.Module):
  """``ce_weight·CE_seg + alpha·D / B`` for one of the release's comparison methods.

  Attributes:
    hp: the method's Config.
    kind: ``'seg_kd'``, ``'seg_fitnet'``, ``'seg_at'`` or ``'ickd'``.
  """
  hp: DenseTerms
  kind: str

  @nn.compact
  def __call__(self, s_feats, t_feats, s_logits, t_logits, labels, *, train: bool):
    """s_feats = [(B, H, W, C)], t_feats = [(B, H', W', C')]; returns (loss, metrics)."""
    del t_logits, train
    hp = self.hp
    s = s_feats[0].astype(jnp.float32)
    t = jax.lax.stop_gradient(t_feats[0].astype(jnp.float32))
    if self.kind == "seg_kd":
      d = hp.scale * feature_kd_loss(s, t, hp.temperature)
    elif self.kind == "seg_fitnet":
      d = hint_mse(s, t)
    elif self.kind == "seg_at":
      d = at_sum_loss(s, t)
    else:
      d = hp.scale * channel_correlation_loss(s, t, tuple(hp.patch_grid))
    ce = release_cross_entropy(s_logits, labels)
    distill = hp.alpha * d / s.shape[0]
    return hp.ce_weight * ce + distill, {"ce": ce, self.kind: d, "distill": distill}


def _build(kind: str, hp, student, teacher) -> Distiller:
  """Pairs the dense features and checks at build time that the release's D is defined."""
  s, t = dense_feature_pair(kind, student, teacher, hp.student_feature, hp.teacher_feature)
  s_shape, t_shape = tuple(student.shapes[s[0]]), tuple(teacher.shapes[t[0]])
  if kind == "seg_at":
    sh, sw, th, tw = s_shape[1], s_shape[2], t_shape[1], t_shape[2]
    s_hw = (th, th) if sh > th else (sh, sw)
    t_hw = (sh, sh) if sh < th else (th, tw)
    if s_hw != t_hw:
      raise ValueError(f"seg_at: the release pools the taller map to a square of the other's "
                       f"height, which leaves {s_hw} (student {s[0]!r} {s_shape}) against "
                       f"{t_hw} (teacher {t[0]!r} {t_shape}); pick features of equal size")
  elif s_shape[1:] != t_shape[1:]:
    raise ValueError(f"{kind}: the release compares equal-shape features, but student "
                     f"{s[0]!r} is {s_shape[1:]} and teacher {t[0]!r} is {t_shape[1:]} "
                     "(H, W, C); set config.method.student_feature / teacher_feature")
  if kind == "ickd":
    try:
      patch_layout(s_shape[1:3], tuple(hp.patch_grid))
    except ValueError as e:
      raise ValueError(f"ickd: {e} (feature {s[0]!r}); set config.method.patch_grid") from None
  return Distiller(kind, DenseFeatureDistill(hp, kind), s, t, teacher_train_mode=True)


# The release's four ``--comp`` modes on the decoder feature: name -> (config, what).
_COMP_METHODS = {
    "seg_kd": (SegKDConfig, "feature KD along W"),
    "seg_fitnet": (SegFitNetConfig, "hint MSE"),
    "seg_at": (SegATConfig, "attention transfer (p = 2)"),
    "ickd": (ICKDConfig, "inter-channel correlation ('ch')"),
}


def _comp_builder(kind: str, what: str):
  def build(hp, *, student, teacher, steps_per_epoch):
    del steps_per_epoch
    return _build(kind, hp, student, teacher)
  build.__doc__ = f"The release's {what} on the decoder feature."
  return build


for _kind, (_config, _what) in _COMP_METHODS.items():
  register(_kind, _config)(_comp_builder(_kind, _what))
