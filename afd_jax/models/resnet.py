"""Post-activation ResNets: the CIFAR zoo (resnet8..110, x4), resnet18/34/50/101, ImageNet.

One module, `ResNet`, covers three PyTorch families that share the same blocks:

* CIFAR ResNets of the KD zoo (RepDistiller ``resnet.py``): 3x3 stem of ``stem_width``
  channels, 3 stages of ``n = (depth - 2) / 6`` BasicBlocks each, widths (16, 32, 64) or,
  for the "x4" models, stem 32 and widths (64, 128, 256).
* CIFAR resnet18/34/ResNet50/resnet101 (RepDistiller's and the AFD release's
  ``resnetv2.py``): 3x3 stem of 64 channels, no max-pool, 4 stages of widths
  (64, 128, 256, 512).
* torchvision's ImageNet resnet18/34/50: 7x7 stride-2 stem, 3x3 stride-2 max-pool, same
  4 stages; Bottleneck strides on its 3x3 conv (torchvision "v1.5").

The first stage keeps the resolution, every later stage halves it in its first block. A
block has a projection shortcut (1x1 conv + BN) when it changes resolution or width.

Sown features (see `features.py`): ``stem`` (after ReLU; for the ImageNet stem after the
max-pool), ``stage{i}.block{j}`` (each block's output after its final ReLU),
``stage{i}.preact`` (the last block's residual sum before that ReLU), ``stage{i}.out``
(= the last block's output) and ``pooled`` (B, C). Stages are the network's residual
stages: 3 for the CIFAR zoo, 4 for resnet18/34/ResNet50/resnet101 and the ImageNet models.

The classifier input is a global average pool, which equals the zoo's fixed
``AvgPool2d(8)`` at 32x32 and also works at larger inputs.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from afd_jax.models import layers

Dtype = Any


class BasicBlock(nn.Module):
  """Two 3x3 convs with BN and an identity or projection shortcut (expansion 1).

  Attributes:
    features: output channels.
    stride: stride of the first conv (and of the shortcut projection).
    dtype: computation dtype.
  """
  features: int
  stride: int = 1
  dtype: Dtype = jnp.float32

  expansion = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
    """Maps (B, H, W, C_in) to ``(out, preact)``, each (B, H/s, W/s, features).

    ``preact`` is the residual sum, ``out = relu(preact)``.
    """
    y = layers.conv(self.features, 3, self.stride, dtype=self.dtype, name="conv1")(x)
    y = nn.relu(layers.batch_norm(train, dtype=self.dtype, name="bn1")(y))
    y = layers.conv(self.features, 3, dtype=self.dtype, name="conv2")(y)
    y = layers.batch_norm(train, dtype=self.dtype, name="bn2")(y)
    preact = y + _shortcut(x, self.features, self.stride, train, self.dtype)
    return nn.relu(preact), preact


class Bottleneck(nn.Module):
  """1x1 -> 3x3 (strided) -> 1x1 (x4 channels) with BN; shortcut as in `BasicBlock`.

  Attributes:
    features: bottleneck width; the block outputs ``4 * features`` channels.
    stride: stride of the 3x3 conv (and of the shortcut projection).
    dtype: computation dtype.
  """
  features: int
  stride: int = 1
  dtype: Dtype = jnp.float32

  expansion = 4

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
    """Maps (B, H, W, C_in) to ``(out, preact)``, each (B, H/s, W/s, 4 * features)."""
    out_features = self.features * self.expansion
    y = layers.conv(self.features, 1, dtype=self.dtype, name="conv1")(x)
    y = nn.relu(layers.batch_norm(train, dtype=self.dtype, name="bn1")(y))
    y = layers.conv(self.features, 3, self.stride, dtype=self.dtype, name="conv2")(y)
    y = nn.relu(layers.batch_norm(train, dtype=self.dtype, name="bn2")(y))
    y = layers.conv(out_features, 1, dtype=self.dtype, name="conv3")(y)
    y = layers.batch_norm(train, dtype=self.dtype, name="bn3")(y)
    preact = y + _shortcut(x, out_features, self.stride, train, self.dtype)
    return nn.relu(preact), preact


def _shortcut(x: jax.Array, features: int, stride: int, train: bool,
              dtype: Dtype) -> jax.Array:
  """Identity, or 1x1 conv + BN when the block changes resolution or width.

  Called from a block's compact method, so the projection belongs to that block.
  """
  if stride == 1 and x.shape[-1] == features:
    return x
  x = layers.conv(features, 1, stride, dtype=dtype, name="downsample_conv")(x)
  return layers.batch_norm(train, dtype=dtype, name="downsample_bn")(x)


class ResNet(nn.Module):
  """Post-activation ResNet; see the module docstring for the families it covers.

  Attributes:
    block_cls: `BasicBlock` or `Bottleneck`.
    stage_sizes: number of blocks per stage.
    widths: block ``features`` per stage (Bottleneck outputs 4x that).
    stem_width: channels of the stem conv.
    num_classes: classifier outputs.
    imagenet_stem: 7x7/2 conv + 3x3/2 max-pool stem if True, else a 3x3/1 conv.
    dtype: computation dtype (parameters are float32).
  """
  block_cls: Any
  stage_sizes: Sequence[int]
  widths: Sequence[int]
  stem_width: int
  num_classes: int
  imagenet_stem: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """Maps images (B, H, W, 3) to float32 logits (B, num_classes); sows features."""
    if self.imagenet_stem:
      x = layers.conv(self.stem_width, 7, 2, dtype=self.dtype, name="conv1")(x)
    else:
      x = layers.conv(self.stem_width, 3, dtype=self.dtype, name="conv1")(x)
    x = nn.relu(layers.batch_norm(train, dtype=self.dtype, name="bn1")(x))
    if self.imagenet_stem:
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    self.sow("intermediates", "stem", x)

    for i, (num_blocks, width) in enumerate(zip(self.stage_sizes, self.widths), 1):
      for j in range(1, num_blocks + 1):
        stride = 2 if (i > 1 and j == 1) else 1
        x, preact = self.block_cls(width, stride, dtype=self.dtype,
                                   name=f"stage{i}_block{j}")(x, train)
        self.sow("intermediates", f"stage{i}.block{j}", x)
      self.sow("intermediates", f"stage{i}.preact", preact)
      self.sow("intermediates", f"stage{i}.out", x)

    return layers.classifier_head(self, x, self.num_classes, name="fc")


def cifar_resnet(depth: int, num_classes: int, *, wide: bool = False,
                 dtype: Dtype = jnp.float32) -> ResNet:
  """KD-zoo CIFAR ResNet of ``depth = 6n + 2`` (e.g. resnet20: n = 3 blocks per stage).

  Args:
    depth: 8, 14, 20, 32, 44, 56, 110, ...
    num_classes: classifier outputs.
    wide: the "x4" variant (stem 32, widths 64/128/256) instead of 16 / 16/32/64.
    dtype: computation dtype.
  """
  if (depth - 2) % 6:
    raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}.")
  n = (depth - 2) // 6
  stem_width, widths = (32, (64, 128, 256)) if wide else (16, (16, 32, 64))
  return ResNet(BasicBlock, (n, n, n), widths, stem_width, num_classes, dtype=dtype)


_RESNET_LAYOUTS = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
}


def resnet(depth: int, num_classes: int, *, imagenet: bool,
           dtype: Dtype = jnp.float32) -> ResNet:
  """ResNet-18/34/50/101 with a CIFAR (3x3, no max-pool) or ImageNet (7x7/2 + max-pool)
  stem.

  Args:
    depth: 18, 34, 50 or 101.
    num_classes: classifier outputs.
    imagenet: torchvision's ImageNet stem if True, the CIFAR stem otherwise.
    dtype: computation dtype.
  """
  if depth not in _RESNET_LAYOUTS:
    raise ValueError(
        f"ResNet depth must be one of {sorted(_RESNET_LAYOUTS)}, got {depth}.")
  block_cls, stage_sizes = _RESNET_LAYOUTS[depth]
  return ResNet(block_cls, stage_sizes, (64, 128, 256, 512), 64, num_classes,
                imagenet_stem=imagenet, dtype=dtype)
