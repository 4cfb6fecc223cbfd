"""ShuffleNet V1 and V2 for CIFAR as used in the KD zoo (``ShuffleNetv1.py``/``v2.py``).

Both start with a 1x1 conv-BN-ReLU stem of 24 channels at full resolution, followed by 3
stages that each halve the resolution in their first block (32 -> 16 -> 8 -> 4 at 32x32
input), a global average pool and a classifier.

ShuffleV1 (groups 3, stage widths 240/480/960, 4/8/4 blocks): bottleneck blocks
1x1 group conv - channel shuffle - 3x3 depthwise (strided) - 1x1 group conv, with BN. A
stride-2 block concatenates its branch with a 3x3/2 average-pooled input (so its branch
outputs ``width - C_in`` channels); a stride-1 block adds the input. The very first block
of the network uses an ungrouped first conv (its input has only 24 channels).

ShuffleV2 (1x: stage widths 116/232/464, head 1024): each stage is one down-sampling
block (two strided branches, concatenated) followed by 3/7/3 basic blocks (split the
channels in half, transform one half with 1x1 - 3x3 depthwise - 1x1, concatenate),
each block ending in a 2-group channel shuffle; then a 1x1 conv-BN-ReLU head to 1024.

Sown features (see `features.py`), stages = the 3 down-sampling stages:
``stem``; ``stage{i}.block{j}`` (every block's post-ReLU output; for V2 after the
shuffle, and the down-sampling block is block 1); ``stage{i}.preact`` (the last block's
output before its final ReLU; for V2 the shuffled ``concat(x1, bn3 output)``, so that
``out = relu(preact)`` channel-for-channel, whereas the zoo returns it unshuffled);
``stage{i}.out`` (= the last block); ``pooled`` (B, 960) for V1, (B, 1024) for V2.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from afd_jax.models import layers

Dtype = Any

# The zoo's ShuffleNets never re-initialise their convs: PyTorch's default init.
_conv = functools.partial(layers.conv, kernel_init=layers.torch_default_conv_init)


def channel_shuffle(x: jax.Array, groups: int) -> jax.Array:
  """Interleave channel groups: (B, H, W, g*n) viewed as (g, n) -> transposed (n, g)."""
  b, h, w, c = x.shape
  x = x.reshape(b, h, w, groups, c // groups)
  return jnp.swapaxes(x, -1, -2).reshape(b, h, w, c)


class ShuffleV1Block(nn.Module):
  """ShuffleNet V1 bottleneck.

  Attributes:
    features: output channels of the conv branch (stride 2: stage width - C_in).
    stride: 1 (add the input) or 2 (concatenate the pooled input).
    groups: groups of the 1x1 convs.
    first_groups: groups of the first 1x1 conv (and its shuffle).
    dtype: computation dtype.
  """
  features: int
  stride: int
  groups: int
  first_groups: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
    """Maps (B, H, W, C_in) to ``(out, preact)``, each (B, H/s, W/s, C_out).

    C_out is ``features`` for stride 1 and ``features + C_in`` for stride 2.
    """
    mid = self.features // 4
    y = _conv(mid, 1, groups=self.first_groups, dtype=self.dtype, name="conv1")(x)
    y = nn.relu(layers.batch_norm(train, dtype=self.dtype, name="bn1")(y))
    y = channel_shuffle(y, self.first_groups)
    y = _conv(mid, 3, self.stride, groups=mid, dtype=self.dtype, name="conv2")(y)
    y = nn.relu(layers.batch_norm(train, dtype=self.dtype, name="bn2")(y))
    y = _conv(self.features, 1, groups=self.groups, dtype=self.dtype,
                    name="conv3")(y)
    y = layers.batch_norm(train, dtype=self.dtype, name="bn3")(y)
    if self.stride == 2:
      # PyTorch AvgPool2d default counts the zero padding, as Flax does here.
      res = nn.avg_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)),
                        count_include_pad=True)
      preact = jnp.concatenate([y, res], axis=-1)
    else:
      preact = y + x
    return nn.relu(preact), preact


class ShuffleNetV1(nn.Module):
  """CIFAR ShuffleNet V1; see the module docstring for layout and sown features.

  Attributes:
    num_classes: classifier outputs.
    widths: output channels per stage.
    stage_sizes: blocks per stage.
    groups: groups of the 1x1 convs.
    dtype: computation dtype (parameters are float32).
  """
  num_classes: int
  widths: Sequence[int] = (240, 480, 960)
  stage_sizes: Sequence[int] = (4, 8, 4)
  groups: int = 3
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """Maps images (B, H, W, 3) to float32 logits (B, num_classes); sows features."""
    x = _conv(24, 1, dtype=self.dtype, name="conv1")(x)
    x = nn.relu(layers.batch_norm(train, dtype=self.dtype, name="bn1")(x))
    self.sow("intermediates", "stem", x)

    for i, (num_blocks, width) in enumerate(zip(self.stage_sizes, self.widths), 1):
      for j in range(1, num_blocks + 1):
        stride = 2 if j == 1 else 1
        features = width - x.shape[-1] if stride == 2 else width
        first_groups = 1 if (i == 1 and j == 1) else self.groups
        x, preact = ShuffleV1Block(features, stride, self.groups, first_groups,
                                   dtype=self.dtype, name=f"stage{i}_block{j}")(x, train)
        self.sow("intermediates", f"stage{i}.block{j}", x)
      self.sow("intermediates", f"stage{i}.preact", preact)
      self.sow("intermediates", f"stage{i}.out", x)

    return layers.classifier_head(self, x, self.num_classes, name="linear")


class ShuffleV2DownBlock(nn.Module):
  """ShuffleNet V2 down-sampling block: two stride-2 branches, concatenated, shuffled.

  Attributes:
    features: output channels (each branch gives half).
    dtype: computation dtype.
  """
  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """Maps (B, H, W, C_in) to (B, H/2, W/2, features), post-ReLU."""
    c_in, mid = x.shape[-1], self.features // 2
    bn = functools.partial(layers.batch_norm, train, dtype=self.dtype)
    left = _conv(c_in, 3, 2, groups=c_in, dtype=self.dtype, name="conv1")(x)
    left = bn(name="bn1")(left)
    left = _conv(mid, 1, dtype=self.dtype, name="conv2")(left)
    left = nn.relu(bn(name="bn2")(left))
    right = _conv(mid, 1, dtype=self.dtype, name="conv3")(x)
    right = nn.relu(bn(name="bn3")(right))
    right = _conv(mid, 3, 2, groups=mid, dtype=self.dtype, name="conv4")(right)
    right = bn(name="bn4")(right)
    right = _conv(mid, 1, dtype=self.dtype, name="conv5")(right)
    right = nn.relu(bn(name="bn5")(right))
    return channel_shuffle(jnp.concatenate([left, right], axis=-1), 2)


class ShuffleV2Block(nn.Module):
  """ShuffleNet V2 basic block: split, transform one half, concatenate, shuffle.

  Attributes:
    dtype: computation dtype.
  """
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
    """Maps (B, H, W, C) to ``(out, preact)``, each (B, H, W, C); out = relu(preact).

    ``preact`` is the shuffled ``concat(x1, bn3 output)``; ``x1`` is a post-ReLU input
    half, so applying ReLU to it is a no-op.
    """
    c = x.shape[-1] // 2
    x1, x2 = x[..., :c], x[..., c:]
    bn = functools.partial(layers.batch_norm, train, dtype=self.dtype)
    y = _conv(c, 1, dtype=self.dtype, name="conv1")(x2)
    y = nn.relu(bn(name="bn1")(y))
    y = _conv(c, 3, groups=c, dtype=self.dtype, name="conv2")(y)
    y = bn(name="bn2")(y)
    y = _conv(c, 1, dtype=self.dtype, name="conv3")(y)
    y = bn(name="bn3")(y)
    preact = channel_shuffle(jnp.concatenate([x1, y], axis=-1), 2)
    out = channel_shuffle(jnp.concatenate([x1, nn.relu(y)], axis=-1), 2)
    return out, preact


class ShuffleNetV2(nn.Module):
  """CIFAR ShuffleNet V2; see the module docstring for layout and sown features.

  Attributes:
    num_classes: classifier outputs.
    widths: output channels per stage.
    stage_sizes: basic blocks per stage (after the down-sampling block).
    head_width: channels of the final 1x1 conv.
    dtype: computation dtype (parameters are float32).
  """
  num_classes: int
  widths: Sequence[int] = (116, 232, 464)
  stage_sizes: Sequence[int] = (3, 7, 3)
  head_width: int = 1024
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """Maps images (B, H, W, 3) to float32 logits (B, num_classes); sows features."""
    x = _conv(24, 1, dtype=self.dtype, name="conv1")(x)
    x = nn.relu(layers.batch_norm(train, dtype=self.dtype, name="bn1")(x))
    self.sow("intermediates", "stem", x)

    for i, (num_blocks, width) in enumerate(zip(self.stage_sizes, self.widths), 1):
      x = ShuffleV2DownBlock(width, dtype=self.dtype, name=f"stage{i}_block1")(x, train)
      self.sow("intermediates", f"stage{i}.block1", x)
      for j in range(2, num_blocks + 2):
        x, preact = ShuffleV2Block(dtype=self.dtype, name=f"stage{i}_block{j}")(x, train)
        self.sow("intermediates", f"stage{i}.block{j}", x)
      self.sow("intermediates", f"stage{i}.preact", preact)
      self.sow("intermediates", f"stage{i}.out", x)

    x = _conv(self.head_width, 1, dtype=self.dtype, name="conv2")(x)
    x = nn.relu(layers.batch_norm(train, dtype=self.dtype, name="bn2")(x))
    return layers.classifier_head(self, x, self.num_classes, name="linear")
