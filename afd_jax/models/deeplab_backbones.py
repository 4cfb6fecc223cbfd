"""The DeepLabV3+ backbones of the TaT segmentation release, at output stride 16.

jfzhang95/pytorch-deeplab-xception's ``modeling/backbone/{resnet,mobilenet}.py`` as the
TaT-seg release ships them (its ``resnet18`` is the same ResNet with BasicBlocks). Each
backbone maps images (B, H, W, 3) to ``(stage_features, high, low)``: the release's
``extract_feature`` list (4 tensors, see `deeplab.py` for names and shapes), the input of
ASPP (stride 16) and the decoder's low-level input (stride 4).

ResNet (``ResNetBackbone``), as the release writes it:

* 7x7/2 conv - BN - ReLU - 3x3/2 max-pool stem, then ``layer1..4`` of widths
  64/128/256/512 with strides 1/2/2/1 (Bottleneck: on the 3x3 conv).
* Each block applies ReLU to its *input* and returns the raw residual sum (the release
  moved the ReLU; the arithmetic is the usual post-activation ResNet's), so a stage's
  output, the release's ``feat{i}``, is the pre-ReLU sum; ``low = relu(feat1)``,
  ``high = relu(feat4)``.
* OS16 dilates ``layer4`` instead of striding it: ResNet-101's ``layer4`` is the
  multi-grid unit of 3 blocks at dilations (1, 2, 4) x 2 = 2, 4, 8; ResNet-18's a plain
  2-block layer at dilation 2 (both convs of each block). A dilated 3x3 conv pads by its
  dilation. ``layer4``'s first block projects (1x1, stride 1) from 1024 to 2048
  (256 to 512) channels.
* Init (the release's ``_init_weight``): every conv N(0, sqrt(2 / (k * k * C_out))),
  BN weight 1, bias 0 (the release then loads the ImageNet ResNet, see
  `afd_jax.interop.torch.init_from_checkpoint`).

MobileNetV2 (``MobileNetBackbone``), width 1.0, ReLU6:

* ``features[0]``: 3x3/2 conv - BN - ReLU6 (32 channels); ``features[1..17]``: inverted
  residuals of rows (t, c, n, s) = (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2),
  (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1). Once the stride reaches
  16 a row keeps stride 1 and takes the current rate, multiplied by its s only *after*
  it: rows 96 and 160 run at dilation 1, only the last row (320) at dilation 2.
* ``fixed_padding``: each block zero-pads its *input* by the depthwise conv's dilation
  on every side, then runs all its convs unpadded, the 1x1 expansion included. The padded
  border therefore reaches the depthwise conv as ``relu6(bn(0))``, not 0, and enters the
  expansion BN's batch statistics; reproduced as written.
* An expanding block (t = 6) is 1x1 expand - BN - ReLU6 - 3x3 depthwise - BN - ReLU6 -
  1x1 project - BN; t = 1 has no expansion. Identity shortcut when stride 1 and the width
  is unchanged.
* ``low = features[0:4](x)`` (24 channels, stride 4), ``high = features[4:](low)``
  (320 channels, stride 16).
* Features (the release's ``extract_feature``): ``feat1..3`` are the *next* block's
  expansion conv + BN (pre-ReLU6) applied to the unpadded outputs of ``features[0:4]``,
  ``[4:7]``, ``[7:14]``, i.e. ``features[4].conv[0:2]`` etc.; ``feat4`` is ``high``.
  Computing them calls those three BNs a second time: in train mode their running
  statistics move twice per step (padded, then unpadded batch statistics), as in the
  release. They are computed only when asked for (``taps=True``).
* Init (the release's ``_initialize_weights``): every conv kaiming_normal_ (fan_in,
  gain sqrt(2)), BN weight 1, bias 0 (then the release loads an ImageNet MobileNetV2).
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from afd_jax.models import layers

Dtype = Any

# torch.nn.init.kaiming_normal_ defaults: fan_in, gain sqrt(2), untruncated normal.
kaiming_fan_in = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
# The release's ResNet: normal_(0, sqrt(2 / n)), n = k * k * C_out.
resnet_conv_init = layers.conv_kernel_init


def conv(features: int, kernel_size: int, stride: int = 1, *, dilation: int = 1,
         padding: int | None = None, groups: int = 1, use_bias: bool = False,
         kernel_init: layers.Initializer, bias_init: layers.Initializer | None = None,
         dtype: Dtype = jnp.float32, name: str | None = None) -> nn.Conv:
  """A square NHWC convolution with PyTorch's explicit symmetric padding and dilation.

  Args:
    features: output channels.
    kernel_size: k, for a k x k kernel.
    stride: spatial stride.
    dilation: kernel dilation.
    padding: zeros on each side; None: ``dilation * (k // 2)`` (PyTorch's "same" for odd k
      at stride 1).
    groups: feature groups (``groups == C_in``: depthwise).
    use_bias: whether the conv has a bias.
    kernel_init: initializer of the (k, k, C_in / groups, C_out) kernel.
    bias_init: initializer of the bias (zeros if None).
    dtype: computation dtype; parameters are float32.
    name: submodule name in the parent.

  Returns:
    a module mapping (B, H, W, C_in) to (B, H', W', features), H' as PyTorch computes it.
  """
  pad = dilation * (kernel_size // 2) if padding is None else padding
  return nn.Conv(
      features, (kernel_size, kernel_size), strides=(stride, stride),
      padding=((pad, pad), (pad, pad)), kernel_dilation=(dilation, dilation),
      feature_group_count=groups, use_bias=use_bias, kernel_init=kernel_init,
      bias_init=bias_init or nn.initializers.zeros, dtype=dtype, param_dtype=jnp.float32,
      name=name)


def _projection(x: jax.Array, features: int, stride: int, train: bool,
                dtype: Dtype) -> jax.Array:
  """The release's ``downsample``: 1x1 conv (strided) + BN when the shape changes."""
  if stride == 1 and x.shape[-1] == features:
    return x
  x = conv(features, 1, stride, kernel_init=resnet_conv_init, dtype=dtype,
           name="downsample_conv")(x)
  return layers.batch_norm(train, dtype=dtype, name="downsample_bn")(x)


class DilatedBasicBlock(nn.Module):
  """ReLU(input), then two (dilated) 3x3 convs with BN; returns the raw residual sum.

  Attributes:
    features: output channels.
    stride: stride of the first conv and of the projection.
    dilation: dilation (and padding) of both convs.
    dtype: computation dtype.
  """
  features: int
  stride: int = 1
  dilation: int = 1
  dtype: Dtype = jnp.float32

  expansion = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """Maps the previous block's sum (B, H, W, C_in) to (B, H/s, W/s, features)."""
    x = nn.relu(x)
    y = conv(self.features, 3, self.stride, dilation=self.dilation,
             kernel_init=resnet_conv_init, dtype=self.dtype, name="conv1")(x)
    y = nn.relu(layers.batch_norm(train, dtype=self.dtype, name="bn1")(y))
    y = conv(self.features, 3, dilation=self.dilation, kernel_init=resnet_conv_init,
             dtype=self.dtype, name="conv2")(y)
    y = layers.batch_norm(train, dtype=self.dtype, name="bn2")(y)
    return y + _projection(x, self.features, self.stride, train, self.dtype)


class DilatedBottleneck(nn.Module):
  """ReLU(input), 1x1 - 3x3 (strided, dilated) - 1x1 (x4) with BN; raw residual sum.

  Attributes:
    features: bottleneck width; the block outputs ``4 * features`` channels.
    stride: stride of the 3x3 conv and of the projection.
    dilation: dilation (and padding) of the 3x3 conv.
    dtype: computation dtype.
  """
  features: int
  stride: int = 1
  dilation: int = 1
  dtype: Dtype = jnp.float32

  expansion = 4

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """Maps (B, H, W, C_in) to (B, H/s, W/s, 4 * features)."""
    x = nn.relu(x)
    y = conv(self.features, 1, kernel_init=resnet_conv_init, dtype=self.dtype,
             name="conv1")(x)
    y = nn.relu(layers.batch_norm(train, dtype=self.dtype, name="bn1")(y))
    y = conv(self.features, 3, self.stride, dilation=self.dilation,
             kernel_init=resnet_conv_init, dtype=self.dtype, name="conv2")(y)
    y = nn.relu(layers.batch_norm(train, dtype=self.dtype, name="bn2")(y))
    y = conv(4 * self.features, 1, kernel_init=resnet_conv_init, dtype=self.dtype,
             name="conv3")(y)
    y = layers.batch_norm(train, dtype=self.dtype, name="bn3")(y)
    return y + _projection(x, 4 * self.features, self.stride, train, self.dtype)


# Per stage: (width, stride); dilations per block come from `ResNetBackbone.dilations`.
_RESNET_STAGES = ((64, 1), (128, 2), (256, 2), (512, 1))


class ResNetBackbone(nn.Module):
  """The release's OS16 ResNet backbone; see the module docstring.

  Attributes:
    block_cls: `DilatedBasicBlock` (ResNet-18) or `DilatedBottleneck` (ResNet-101).
    dilations: per stage, the dilation of each block (its length = the block count).
    dtype: computation dtype.
  """
  block_cls: Any
  dilations: Sequence[Sequence[int]]
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, taps: bool = True
               ) -> tuple[list[jax.Array], jax.Array, jax.Array]:
    """Maps (B, H, W, 3) to ``([feat1..feat4], high, low)``.

    ``feat{i}``: layer i's raw output (pre-ReLU), strides 4, 8, 16, 16; ``high`` =
    relu(feat4), ``low`` = relu(feat1). ``taps`` is unused (the features cost nothing).
    """
    del taps
    x = conv(64, 7, 2, kernel_init=resnet_conv_init, dtype=self.dtype, name="conv1")(x)
    x = nn.relu(layers.batch_norm(train, dtype=self.dtype, name="bn1")(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    feats = []
    for i, ((width, stride), dils) in enumerate(zip(_RESNET_STAGES, self.dilations), 1):
      for j, dilation in enumerate(dils, 1):
        x = self.block_cls(width, stride if j == 1 else 1, dilation, dtype=self.dtype,
                           name=f"stage{i}_block{j}")(x, train)
      feats.append(x)
    return feats, nn.relu(feats[-1]), nn.relu(feats[0])


def resnet101_backbone(dtype: Dtype = jnp.float32, name: str | None = None
                       ) -> ResNetBackbone:
  """ResNet-101 (3, 4, 23, 3) with the multi-grid layer4 at dilations 2, 4, 8."""
  return ResNetBackbone(DilatedBottleneck, ((1,) * 3, (1,) * 4, (1,) * 23, (2, 4, 8)),
                        dtype=dtype, name=name)


def resnet18_backbone(dtype: Dtype = jnp.float32, name: str | None = None
                      ) -> ResNetBackbone:
  """ResNet-18 (2, 2, 2, 2) with layer4 at dilation 2."""
  return ResNetBackbone(DilatedBasicBlock, ((1, 1), (1, 1), (1, 1), (2, 2)), dtype=dtype,
                        name=name)


class PaddedInvertedResidual(nn.Module):
  """The release's ``InvertedResidual``: fixed padding of the input, then unpadded convs.

  Attributes:
    features: output channels.
    stride: stride of the depthwise conv.
    dilation: dilation of the depthwise conv (the input is padded by it).
    expansion: t; hidden width t * C_in; no expansion conv when t == 1.
    dtype: computation dtype.
  """
  features: int
  stride: int
  dilation: int
  expansion: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, tap: bool = False
               ) -> tuple[jax.Array, jax.Array | None]:
    """Maps (B, H, W, C_in) to ``(out, tap)``.

    ``out`` (B, H/s, W/s, features) is the block's linear output (+ identity); ``tap``
    (B, H, W, t * C_in), only if asked for, is ``bn_expand(conv_expand(x))`` of the
    *unpadded* input, the release's pre-ReLU feature (needs t > 1).
    """
    hidden = x.shape[-1] * self.expansion
    d = self.dilation
    y = jnp.pad(x, ((0, 0), (d, d), (d, d), (0, 0)))
    if self.expansion != 1:
      expand = conv(hidden, 1, kernel_init=kaiming_fan_in, dtype=self.dtype,
                    name="conv_expand")
      expand_bn = layers.batch_norm(train, dtype=self.dtype, name="bn_expand")
      y = nn.relu6(expand_bn(expand(y)))
    y = conv(hidden, 3, self.stride, dilation=d, padding=0, groups=hidden,
             kernel_init=kaiming_fan_in, dtype=self.dtype, name="conv_dw")(y)
    y = nn.relu6(layers.batch_norm(train, dtype=self.dtype, name="bn_dw")(y))
    y = conv(self.features, 1, kernel_init=kaiming_fan_in, dtype=self.dtype,
             name="conv_project")(y)
    y = layers.batch_norm(train, dtype=self.dtype, name="bn_project")(y)
    if self.stride == 1 and x.shape[-1] == self.features:
      y = x + y
    # Second call of the same conv and BN (shared parameters; in train mode the BN's
    # running averages move again), as the release's extract_feature does.
    return y, (expand_bn(expand(x)) if tap else None)


# (t, c, n, s) rows of the release's MobileNetV2, width 1.0.
_MOBILENET_ROWS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                   (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
_OUTPUT_STRIDE = 16
# The release's feature taps: block indices (of `features`) whose expansion is tapped.
MOBILENET_TAP_BLOCKS = (4, 7, 14)
MOBILENET_LOW_LEVEL_BLOCKS = 4  # features[0:4] -> low-level feature


def mobilenet_blocks() -> list[tuple[int, int, int, int]]:
  """[(expansion, channels, stride, dilation)] of ``features[1..17]`` at OS16."""
  out, current_stride, rate = [], 2, 1
  for t, c, n, s in _MOBILENET_ROWS:
    if current_stride == _OUTPUT_STRIDE:
      stride, dilation, rate = 1, rate, rate * s
    else:
      stride, dilation, current_stride = s, 1, current_stride * s
    out += [(t, c, stride if k == 0 else 1, dilation) for k in range(n)]
  return out


class MobileNetBackbone(nn.Module):
  """The release's OS16 MobileNetV2 backbone (width 1.0); see the module docstring.

  Attributes:
    dtype: computation dtype.
  """
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, taps: bool = True
               ) -> tuple[list[jax.Array] | None, jax.Array, jax.Array]:
    """Maps (B, H, W, 3) to ``([feat1..feat4] or None, high, low)``.

    ``feat1..3``: the pre-ReLU6 expansions of blocks 4, 7, 14 (144, 192, 576 channels at
    strides 4, 8, 16), ``feat4 = high`` (320 channels, stride 16), ``low`` (24 channels,
    stride 4); the list only if ``taps`` (it costs three convs and BN updates).
    """
    x = conv(32, 3, 2, kernel_init=kaiming_fan_in, dtype=self.dtype, name="conv_stem")(x)
    x = nn.relu6(layers.batch_norm(train, dtype=self.dtype, name="bn_stem")(x))
    feats, low = [], None
    for i, (t, c, stride, dilation) in enumerate(mobilenet_blocks(), 1):
      if i == MOBILENET_LOW_LEVEL_BLOCKS:
        low = x
      tap = taps and i in MOBILENET_TAP_BLOCKS
      x, feat = PaddedInvertedResidual(c, stride, dilation, t, dtype=self.dtype,
                                       name=f"block{i}")(x, train, tap=tap)
      if tap:
        feats.append(feat)
    return (feats + [x] if taps else None), x, low


# ---- CPU-sized backbones for the offline `digits_seg` quickstart (not the release's) ----


# Stage strides and dilations at each output stride, as the release's ResNets dilate:
# at 16 the last stage is dilated 2 instead of strided; at 8 the last two, 2 and 4.
_TINY_LAYOUT = {16: ((1, 2, 2, 1), (1, 1, 1, 2)), 8: ((1, 2, 1, 1), (1, 1, 2, 4))}


class TinyResNetBackbone(nn.Module):
  """A narrow ResNet at output stride 16, for small canvases on a CPU.

  The release's ResNet-18 (`ResNetBackbone`: four stages of BasicBlocks, strides
  1/2/2/1, the last stage dilated 2 instead of strided, ``low`` at stride 4 and ``high``
  at 16, the same blocks, features and init) at CIFAR ResNet widths (``widths``, e.g.
  16/32/64/64 instead of 64/128/256/512) and with a 3x3/2 stem conv (the release: 7x7/2)
  before the 3x3/2 max-pool.

  Attributes:
    widths: the four stages' channels.
    blocks: BasicBlocks per stage.
    dtype: computation dtype.
  """
  widths: Sequence[int]
  blocks: int
  output_stride: int = 16
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, taps: bool = True
               ) -> tuple[list[jax.Array], jax.Array, jax.Array]:
    """Maps (B, H, W, 3) to ``([feat1..feat4], high, low)``: strides 4, 8, 16, 16 (at
    output stride 8: 4, 8, 8, 8); ``high`` = relu(feat4), ``low`` = relu(feat1)."""
    del taps
    if self.output_stride not in _TINY_LAYOUT:
      raise ValueError(f"output_stride={self.output_stride!r}; accepted: "
                       f"{', '.join(map(str, _TINY_LAYOUT))}")
    strides, dilations = _TINY_LAYOUT[self.output_stride]
    x = conv(self.widths[0], 3, 2, kernel_init=resnet_conv_init, dtype=self.dtype,
             name="conv1")(x)
    x = nn.relu(layers.batch_norm(train, dtype=self.dtype, name="bn1")(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    feats = []
    for i, (width, stride, dilation) in enumerate(zip(self.widths, strides, dilations), 1):
      for j in range(1, self.blocks + 1):
        x = DilatedBasicBlock(width, stride if j == 1 else 1, dilation, dtype=self.dtype,
                              name=f"stage{i}_block{j}")(x, train)
      feats.append(x)
    return feats, nn.relu(feats[-1]), nn.relu(feats[0])
