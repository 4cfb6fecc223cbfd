"""MobileNetV2 for CIFAR as used in the KD zoo (``mobilenetv2.py``; "mobile_half").

Layout: 3x3 stride-2 conv-BN-ReLU stem of ``int(32 * width)`` channels, then the
inverted-residual rows (expansion t, width c, repeats n, first stride s)

  (1, 16, 1, 1), (t, 24, 2, 1), (t, 32, 3, 2), (t, 64, 4, 2), (t, 96, 3, 1),
  (t, 160, 3, 2), (t, 320, 1, 1)

with c scaled by ``width``, then a 1x1 conv-BN-ReLU head of 1280 channels (scaled only for
``width > 1``, as in the zoo), global average pool
and classifier. "mobile_half" is t = 6, width = 0.5. Each inverted residual is 1x1 expand
(also for t = 1, as in the zoo) - 3x3 depthwise (strided) - 1x1 linear projection, each
with BN, ReLU after the first two, and an identity shortcut when stride is 1 and the
width is unchanged.

Stages follow the grouping CRD/RepDistiller use for their feature list (f1..f4, i.e. the
points where the zoo taps features), at 32x32 input:

* stage 1 = rows 1-2 (3 blocks, 16x16), stage 2 = row 3 (3 blocks, 8x8),
* stage 3 = rows 4-5 (7 blocks, 4x4), stage 4 = rows 6-7 (4 blocks, 2x2).

Sown features (see `features.py`): ``stem`` (after ReLU), ``stage{i}.block{j}`` (the
block's linear output: the bottleneck has no activation), ``stage{i}.preact`` and
``stage{i}.out`` (both the stage's last linear block output, since there is no
activation), and ``pooled`` (B, 1280) after the 1x1 head conv.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from afd_jax.models import layers

Dtype = Any

# Rows (expansion or None for the model's expand_ratio, channels, repeats, first stride),
# grouped into the stages described in the module docstring.
_STAGES = (
    ((1, 16, 1, 1), (None, 24, 2, 1)),
    ((None, 32, 3, 2),),
    ((None, 64, 4, 2), (None, 96, 3, 1)),
    ((None, 160, 3, 2), (None, 320, 1, 1)),
)
_HEAD_WIDTH = 1280


class InvertedResidual(nn.Module):
  """1x1 expand - 3x3 depthwise - 1x1 linear projection, with BN; optional identity.

  Attributes:
    features: output channels.
    stride: stride of the depthwise conv.
    expansion: hidden width = expansion * C_in.
    dtype: computation dtype.
  """
  features: int
  stride: int
  expansion: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """Maps (B, H, W, C_in) to the linear output (B, H/s, W/s, features)."""
    hidden = x.shape[-1] * self.expansion
    y = layers.conv(hidden, 1, dtype=self.dtype, name="conv_expand")(x)
    y = nn.relu(layers.batch_norm(train, dtype=self.dtype, name="bn_expand")(y))
    y = layers.conv(hidden, 3, self.stride, groups=hidden, dtype=self.dtype,
                    name="conv_dw")(y)
    y = nn.relu(layers.batch_norm(train, dtype=self.dtype, name="bn_dw")(y))
    y = layers.conv(self.features, 1, dtype=self.dtype, name="conv_project")(y)
    y = layers.batch_norm(train, dtype=self.dtype, name="bn_project")(y)
    if self.stride == 1 and x.shape[-1] == self.features:
      y = y + x
    return y


class MobileNetV2(nn.Module):
  """CIFAR MobileNetV2; see the module docstring for layout, stages and features.

  Attributes:
    num_classes: classifier outputs.
    expand_ratio: t, the expansion of all rows but the first.
    width: channel multiplier of the stem and the blocks (of the head only if > 1).
    dtype: computation dtype (parameters are float32).
  """
  num_classes: int
  expand_ratio: int = 6
  width: float = 0.5
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """Maps images (B, H, W, 3) to float32 logits (B, num_classes); sows features."""
    x = layers.conv(int(32 * self.width), 3, 2, dtype=self.dtype, name="conv_stem")(x)
    x = nn.relu(layers.batch_norm(train, dtype=self.dtype, name="bn_stem")(x))
    self.sow("intermediates", "stem", x)

    for i, rows in enumerate(_STAGES, 1):
      j = 0
      for expansion, channels, repeats, stride in rows:
        for k in range(repeats):
          j += 1
          x = InvertedResidual(int(channels * self.width), stride if k == 0 else 1,
                               expansion or self.expand_ratio, dtype=self.dtype,
                               name=f"stage{i}_block{j}")(x, train)
          self.sow("intermediates", f"stage{i}.block{j}", x)
      # Linear bottleneck: no activation, so preact and out coincide.
      self.sow("intermediates", f"stage{i}.preact", x)
      self.sow("intermediates", f"stage{i}.out", x)

    head_width = int(_HEAD_WIDTH * self.width) if self.width > 1 else _HEAD_WIDTH
    x = layers.conv(head_width, 1, dtype=self.dtype, name="conv_head")(x)
    x = nn.relu(layers.batch_norm(train, dtype=self.dtype, name="bn_head")(x))
    # The zoo's classifier init: N(0, 0.01) weights, zero bias.
    return layers.classifier_head(self, x, self.num_classes, name="classifier",
                                  kernel_init=layers.small_normal_init,
                                  bias_init=nn.initializers.zeros)
