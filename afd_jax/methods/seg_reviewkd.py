"""ReviewKD as the TaT segmentation release runs it (sihaoevery/TaT-seg
``distiller_reviewkd.py``, ``train_with_distillation_reviewkd.py``, ``train_reviewkd.sh``).

Levels: ALL of each DeepLabV3+'s ``extract_feature`` outputs, in order — the four backbone
stage outputs (pre-ReLU), the ASPP output (pre-ReLU BN) and the decoder feature (pre-ReLU
BN): our DeepLab models' ``stage1.out .. stage4.out``, ``aspp``, ``decoder``. Student
level k goes through ``ABF_k`` (`reviewkd`'s attention-based fusion: conv1x1 + BN to 256
mid channels; below the deepest level fused with the nearest-resized residual of level
k + 1 by a sigmoid 2-channel attention; conv3x3 + BN to the teacher's channels), processed
from the last level (the decoder) to the first, and matched to the teacher's level k by
`reviewkd.hcl_level` (MSE plus the 4/2/1 adaptive-pool pyramid, levels ≥ H skipped):

    loss = ce_weight·CE_seg + alpha·Σ_k HCL(ABF_k(...), T_k) / B

(the distiller's ``hcl(results, t_feats) * 1.0``, the trainer's ``loss_distill.sum() /
batch_size * alpha``; CE_seg = `segmentation_cross_entropy`, void pixels skipped, ÷B).

Release vs paper (we follow the release; ``train_abf=True`` gives the paper's behaviour):

* the ABFs are NOT trained: the trainer's optimizer holds only the student's parameters
  (its ``get_embed_params`` group is commented out), so the fusion modules stay at their
  initialisation (kaiming_uniform(a=1) convs, PyTorch-default attention conv, BN scale 1,
  bias 0) while their BatchNorms run in train mode. With ``train_abf=False`` we keep those
  weights in ``'method_state'`` (non-trainable: no gradient, no weight decay, no momentum);
  their BN running statistics move as PyTorch's do, in ``'batch_stats'``;
* no warm-up and no resize of the fused map to the teacher's size (``shape`` is unused):
  each student level must already have the teacher level's spatial size;
* the ASPP and decoder features are levels as well, and the mid width is 256 at all levels;
* the trainer runs the teacher in train mode (``t_net.train()``): ``teacher_train_mode``.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from afd_jax.methods.base import Distiller, register, require_features, stage_features
from afd_jax.methods.ranges import BOOL, BY_METHOD, NONNEG, POS_INT, ranged
from afd_jax.methods.reviewkd import hcl_loss, nearest_resize
from afd_jax.methods.seg_comp import release_cross_entropy

# kaiming_uniform_(a=1), the release's ABF conv init: uniform(±sqrt(3 / fan_in)).
_KAIMING_A1 = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")
# PyTorch's default Conv2d init (the attention conv): uniform(±1/sqrt(fan_in)).
_TORCH_CONV_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


@dataclasses.dataclass(frozen=True)
class Config:
  """The release's ReviewKD (``train_reviewkd.sh`` + the trainer's argparse defaults).

  Attributes:
    ce_weight: the segmentation CE's weight (1).
    alpha: ``--alpha`` (argparse default 0.1; ``train_reviewkd.sh`` keeps it).
    mid_channels: ABF width (``distiller_reviewkd.py``: ``mid_channel = 256``).
    train_abf: train the ABFs with the student (the paper); False: the release, whose
      optimizer leaves them at their initialisation.
    student_features, teacher_features: level names (default: every ``stage{i}.out``,
      then ``aspp`` and ``decoder``), paired in order.
  """
  ce_weight: float = ranged(1.0, NONNEG)
  alpha: float = ranged(0.1, NONNEG)
  mid_channels: int = ranged(256, POS_INT)
  train_abf: bool = ranged(False, BOOL)
  student_features: tuple[str, ...] | None = ranged(None, BY_METHOD)
  teacher_features: tuple[str, ...] | None = ranged(None, BY_METHOD)


class _BatchNorm(nn.Module):
  """PyTorch ``BatchNorm2d`` (batch statistics in train mode, momentum 0.1, eps 1e-5)
  whose affine ``scale``/``bias`` live in `collection`."""
  collection: str

  @nn.compact
  def __call__(self, x, *, train: bool):
    """(B, H, W, C) -> (B, H, W, C)."""
    c = x.shape[-1]
    scale = _weight(self, "scale", nn.initializers.ones, (c,))
    bias = _weight(self, "bias", nn.initializers.zeros, (c,))
    ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (c,), jnp.float32)
    ra_var = self.variable("batch_stats", "var", jnp.ones, (c,), jnp.float32)
    if not train:
      mean, var = ra_mean.value, ra_var.value
    else:
      mean = jnp.mean(x, axis=(0, 1, 2))
      var = jnp.mean(jnp.square(x - mean), axis=(0, 1, 2))
      if not self.is_initializing():
        n = x.size // c
        ra_mean.value = 0.9 * ra_mean.value + 0.1 * mean
        ra_var.value = 0.9 * ra_var.value + 0.1 * var * (n / max(n - 1, 1))
    return (x - mean) * (scale * jax.lax.rsqrt(var + 1e-5)) + bias


def _weight(module: nn.Module, name: str, init, shape) -> jnp.ndarray:
  """A float32 weight in ``module.collection``: trainable in ``'params'``, fixed at its
  initialisation in ``'method_state'``."""
  if module.collection == "params":
    return module.param(name, init, shape, jnp.float32)
  return module.variable(module.collection, name, lambda: init(
      module.make_rng("params"), shape, jnp.float32)).value


class ReleaseABF(nn.Module):
  """The release's ``ABF`` with its weights in `collection` (see the module docstring)."""
  mid_channels: int
  out_channels: int
  fuse: bool
  collection: str

  @nn.compact
  def __call__(self, x, residual, *, train: bool):
    """x (B, H, W, Cs); residual (B, h, w, mid) or None -> (out (B, H, W, Ct), the fused
    (B, H, W, mid) residual for the next level)."""
    c_in, mid = x.shape[-1], self.mid_channels
    w1 = _weight(self, "conv1", _KAIMING_A1, (1, 1, c_in, mid))
    x = _BatchNorm(self.collection, name="bn1")(jnp.einsum("bhwi,io->bhwo", x, w1[0, 0]),
                                                train=train)
    if self.fuse:
      r = nearest_resize(residual, x.shape[1:3])
      bound = 1.0 / (2 * mid) ** 0.5
      wa = _weight(self, "att_conv", _TORCH_CONV_INIT, (1, 1, 2 * mid, 2))
      ba = _weight(self, "att_bias", lambda k, s, d: jax.random.uniform(
          k, s, d, -bound, bound), (2,))
      z = jax.nn.sigmoid(jnp.einsum("bhwi,io->bhwo", jnp.concatenate([x, r], -1),
                                    wa[0, 0]) + ba)
      x = x * z[..., :1] + r * z[..., 1:]
    w2 = _weight(self, "conv2", _KAIMING_A1, (3, 3, mid, self.out_channels))
    y = jax.lax.conv_general_dilated(x, w2, (1, 1), ((1, 1), (1, 1)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return _BatchNorm(self.collection, name="bn2")(y, train=train), x


class SegReviewKD(nn.Module):
  """``ce_weight·CE_seg + alpha·Σ_k HCL(ABF_k, T_k) / B``; one `ReleaseABF` per level."""
  hp: Config

  @nn.compact
  def __call__(self, s_feats, t_feats, s_logits, t_logits, labels, *, train: bool):
    """s_feats, t_feats: level-paired (B, H_k, W_k, C) lists (equal H_k, W_k per level);
    returns (loss, metrics)."""
    del t_logits
    hp = self.hp
    collection = "params" if hp.train_abf else "method_state"
    s_feats = [f.astype(jnp.float32) for f in s_feats]
    t_feats = [jax.lax.stop_gradient(f.astype(jnp.float32)) for f in t_feats]
    n = len(s_feats)
    outs, residual = [None] * n, None
    for k in reversed(range(n)):
      outs[k], residual = ReleaseABF(hp.mid_channels, t_feats[k].shape[-1], k < n - 1,
                                     collection, name=f"abf_{k}")(
                                         s_feats[k], residual, train=train)
    hcl = hcl_loss(outs, t_feats)
    ce = release_cross_entropy(s_logits, labels)
    distill = hp.alpha * hcl / s_feats[0].shape[0]
    return hp.ce_weight * ce + distill, {"ce": ce, "hcl": hcl, "distill": distill}


def _levels(info, names) -> tuple[str, ...]:
  if names is not None:
    return tuple(names)
  return stage_features(info) + ("aspp", "decoder")


@register("seg_reviewkd", Config)
def build_seg_reviewkd(hp, *, student, teacher, steps_per_epoch):
  """Levels: every stage output, ``aspp``, ``decoder`` (or the configured lists).

  Raises:
    PairingError: a level is missing.
    ValueError: the level counts differ, or a student level's spatial size is not its
      teacher level's (the release has no resize).
  """
  del steps_per_epoch
  s = require_features(student, _levels(student, hp.student_features), "seg_reviewkd",
                       "student")
  t = require_features(teacher, _levels(teacher, hp.teacher_features), "seg_reviewkd",
                       "teacher")
  if len(s) != len(t):
    raise ValueError(f"seg_reviewkd: student levels {list(s)} and teacher levels {list(t)} "
                     "differ in number; set config.method.student_features / "
                     "teacher_features")
  for a, b in zip(s, t):
    if tuple(student.shapes[a][1:3]) != tuple(teacher.shapes[b][1:3]):
      raise ValueError(f"seg_reviewkd: student {a!r} is {student.shapes[a][1:3]} but teacher "
                       f"{b!r} is {teacher.shapes[b][1:3]} (H, W); the release pairs levels of "
                       "equal size")
  return Distiller("seg_reviewkd", SegReviewKD(hp), s, t, teacher_train_mode=True)
