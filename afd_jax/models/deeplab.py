"""DeepLabV3+ at output stride 16, as the TaT segmentation release builds it.

The release (TaT-seg, i.e. jfzhang95/pytorch-deeplab-xception plus a ResNet-18 backbone
and ``extract_feature`` methods), ``modeling/{deeplab,aspp,decoder}.py``:

* backbone (`deeplab_backbones.py`): ``resnet101`` (teacher), ``resnet18``,
  ``mobilenetv2`` (width 1.0) -> ``high`` (stride 16) and ``low`` (stride 4);
* ASPP on ``high``: a 1x1 branch and three 3x3 branches at dilations 6/12/18, each
  conv - BN - ReLU to 256 channels, and an image-pooling branch (global mean - 1x1 conv -
  BN - ReLU, broadcast back); concatenated (1280) - 1x1 conv - BN - ReLU - dropout 0.5;
* decoder: ``low`` - 1x1 conv to 48 - BN - ReLU; the ASPP output bilinearly resized
  (``align_corners=True``) to ``low``'s size; concat (304) - 3x3 conv 256 - BN - ReLU -
  dropout 0.5 - 3x3 conv 256 - BN - ReLU - dropout 0.1 - 1x1 classifier (with bias);
* logits bilinearly resized (``align_corners=True``) to the input size.

Two entry points of the release, chosen by whether the ``'intermediates'`` collection is
mutable (a distillation step asks for features; the release's distiller then calls
``extract_feature`` on both nets, its ``train.py`` and evaluation call ``forward``):

* mutable: ``extract_feature`` -- the features below are sown, ASPP's dropout is *not*
  applied (the release's ``ASPP.extract_feature`` omits it), and the MobileNet taps
  re-run three BNs (their running averages move twice per train step);
* not mutable: ``forward`` -- ASPP dropout 0.5 in train mode, no taps.
In eval mode both give the same logits.

Sown features (top level, flat; `features.py` orders them as listed), as channels @
spatial size at a 513 x 513 input (strides 4/8/16/16 give 129/65/33/33; odd sizes round
up, PyTorch's arithmetic), for resnet101 / resnet18 / mobilenetv2:

* ``stage1.out``: ResNet ``layer1`` output, pre-ReLU; MobileNet ``features[4].conv[0:2]``
  (expansion conv + BN, pre-ReLU6) -- 256 / 64 / 144 @ 129;
* ``stage2.out``: ``layer2`` / ``features[7].conv[0:2]`` -- 512 / 128 / 192 @ 65;
* ``stage3.out``: ``layer3`` / ``features[14].conv[0:2]`` -- 1024 / 256 / 576 @ 33;
* ``stage4.out``: ``layer4`` (pre-ReLU) / the backbone output (linear) --
  2048 / 512 / 320 @ 33;
* ``aspp``: ASPP's ``bn1`` output, before ReLU -- 256 @ 33 for all three;
* ``decoder``: ``last_conv[0:6]`` (conv-BN-ReLU-dropout-conv-BN), before ReLU, the
  release's ``feats[-1]`` that TaT distils -- 256 @ 129 for all three.

Params tree: ``backbone``, ``aspp_head``, ``decoder_head`` (the interop maps them onto
the release's ``backbone.*``, ``aspp.*``, ``decoder.*``).

Init (the release's ``_init_weight`` of each part): ResNet backbone convs
N(0, sqrt(2 / (k * k * C_out))); MobileNet backbone, ASPP and decoder convs, the
classifier's weight included, kaiming_normal_ (fan_in, gain sqrt(2)); the classifier's
bias PyTorch's default uniform(+-1/sqrt(256)); every BN weight 1, bias 0. (The release
then loads ImageNet weights into the backbone:
`afd_jax.interop.torch.init_from_checkpoint`.)

Training: the release trains the backbone at the base learning rate and ASPP + decoder
at 10x (``get_1x_lr_params``/``get_10x_lr_params``); `head_param_filter` tells them apart.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from afd_jax.models import deeplab_backbones as bb
from afd_jax.models import layers

Dtype = Any

BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "resnet101": bb.resnet101_backbone,
    "resnet18": bb.resnet18_backbone,
    "mobilenetv2": bb.MobileNetBackbone,
    # CPU-sized, for small canvases (`digits_seg`): see `HEADS`.
    "tiny_resnet18": functools.partial(bb.TinyResNetBackbone, (32, 64, 128, 128), 2, 8),
    "tiny_resnet10": functools.partial(bb.TinyResNetBackbone, (16, 32, 64, 64), 1, 8),
}
# The CPU-sized DeepLabV3+ for small canvases (the offline `digits_seg`): a narrow
# ResNet at output stride 8 (`deeplab_backbones.TinyResNetBackbone`; on a 48 x 48 canvas
# ``high`` is 6 x 6 and ``low`` / the decoder map 12 x 12; at the release's 16 ``high``
# would be 3 x 3, a digit less than two cells, where the release's 33 x 33 map at crop 513
# gives a VOC object many), ASPP and decoder at 64 channels (low-level projection 16; the
# release: 256, 48) and ASPP rates 1/2/3 (the release's 6/12/18 on its 33 x 33 map; on a
# 6 x 6 map they would see only zero padding beyond the centre tap). Teacher and student share the head's width, as
# the release's DeepLabs do (256), so the features FitNet-style methods match agree.
_TINY_HEAD = {"aspp": {"width": 64, "dilations": (1, 2, 3)},
              "decoder": {"width": 64, "low_width": 16}}
HEADS: dict[str, dict[str, dict[str, Any]]] = {"tiny_resnet18": _TINY_HEAD,
                                               "tiny_resnet10": _TINY_HEAD}
# The parts of the params tree the release trains at 10x the base learning rate.
# (Not ``aspp``/``decoder``: Flax forbids a submodule named like a sown feature.)
HEAD_MODULES = ("aspp_head", "decoder_head")
FEATURE_NAMES = ("stage1.out", "stage2.out", "stage3.out", "stage4.out", "aspp", "decoder")
_ASPP_WIDTH = 256
_ASPP_DILATIONS = (6, 12, 18)


def resize_bilinear_align_corners(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """PyTorch's ``F.interpolate(x, size, mode='bilinear', align_corners=True)``, NHWC.

  Output pixel i of an axis samples the input at ``i * (n_in - 1) / (n_out - 1)`` (0 when
  n_out is 1) and interpolates linearly between its two neighbours; the corners map onto
  the corners. (`jax.image.resize` uses half-pixel centres, i.e. ``align_corners=False``.)
  Weights and indices are computed in float32 as PyTorch does, the width axis first.

  Args:
    x: (B, H, W, C).
    size: (h, w), the output's spatial size.

  Returns:
    (B, h, w, C) in x's dtype.
  """
  for axis, n_out in ((2, size[1]), (1, size[0])):
    n_in = x.shape[axis]
    if n_in == n_out:
      continue
    scale = np.float32(n_in - 1) / np.float32(n_out - 1) if n_out > 1 else np.float32(0)
    src = scale * np.arange(n_out, dtype=np.float32)
    lo = np.minimum(src.astype(np.int32), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    shape = [1] * x.ndim
    shape[axis] = n_out
    frac = jnp.asarray((src - lo).reshape(shape), x.dtype)
    x = (1 - frac) * jnp.take(x, lo, axis=axis) + frac * jnp.take(x, hi, axis=axis)
  return x


class ConvBNReLU(nn.Module):
  """Conv (no bias, kaiming fan-in init) - BN - ReLU; the release's ``_ASPPModule``.

  Attributes:
    features: output channels.
    kernel_size: 1 or 3.
    dilation: dilation (and padding) of the conv.
    dtype: computation dtype.
  """
  features: int
  kernel_size: int
  dilation: int = 1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """(B, H, W, C_in) -> (B, H, W, features)."""
    x = bb.conv(self.features, self.kernel_size, dilation=self.dilation,
                kernel_init=bb.kaiming_fan_in, dtype=self.dtype, name="atrous_conv")(x)
    return nn.relu(layers.batch_norm(train, dtype=self.dtype, name="bn")(x))


class ASPP(nn.Module):
  """Atrous spatial pyramid pooling at OS16 (rates 6/12/18) with image pooling.

  Attributes:
    dtype: computation dtype.
    width: every branch's and the output's channels (the release: 256).
    dilations: the three 3x3 branches' rates (the release: 6, 12, 18).
  """
  dtype: Dtype = jnp.float32
  width: int = _ASPP_WIDTH
  dilations: tuple[int, ...] = _ASPP_DILATIONS

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, dropout: bool
               ) -> tuple[jax.Array, jax.Array]:
    """Maps ``high`` (B, h, w, C) to ``(feat, out)``, both (B, h, w, width).

    ``feat``: the fusing BN's output, before ReLU; ``out``: relu(feat), then dropout 0.5
    if ``dropout`` (and train).
    """
    branches = [ConvBNReLU(self.width, 1, dtype=self.dtype, name="aspp1")(x, train)]
    for i, rate in enumerate(self.dilations, 2):
      branches.append(ConvBNReLU(self.width, 3, rate, dtype=self.dtype,
                                 name=f"aspp{i}")(x, train))
    pooled = jnp.mean(x, axis=(1, 2), keepdims=True)
    pooled = bb.conv(self.width, 1, kernel_init=bb.kaiming_fan_in, dtype=self.dtype,
                     name="pool_conv")(pooled)
    pooled = nn.relu(layers.batch_norm(train, dtype=self.dtype, name="pool_bn")(pooled))
    # align_corners resize of a 1 x 1 map = broadcast.
    branches.append(jnp.broadcast_to(pooled, branches[0].shape))
    y = jnp.concatenate(branches, axis=-1)
    y = bb.conv(self.width, 1, kernel_init=bb.kaiming_fan_in, dtype=self.dtype,
                name="conv1")(y)
    feat = layers.batch_norm(train, dtype=self.dtype, name="bn1")(y)
    out = nn.relu(feat)
    if dropout:
      out = nn.Dropout(0.5, deterministic=not train)(out)
    return feat, out


def _torch_default_bias(fan_in: int) -> layers.Initializer:
  """PyTorch's default conv bias: uniform(+-1/sqrt(fan_in))."""
  bound = 1.0 / np.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(
      key, shape, dtype, -bound, bound)


class Decoder(nn.Module):
  """The DeepLabV3+ decoder: low-level projection, fusion convs and the classifier.

  Attributes:
    num_classes: classifier outputs.
    dtype: computation dtype.
    width: the fusion convs' channels (the release: 256).
    low_width: the low-level projection's channels (the release: 48).
  """
  num_classes: int
  dtype: Dtype = jnp.float32
  width: int = 256
  low_width: int = 48

  @nn.compact
  def __call__(self, x: jax.Array, low: jax.Array, train: bool
               ) -> tuple[jax.Array, jax.Array]:
    """Maps ASPP's (B, h, w, C) and ``low`` (B, H, W, C_low) to ``(feat, logits)``.

    ``feat`` (B, H, W, width): output of the second fusion conv's BN, before ReLU;
    ``logits`` (B, H, W, num_classes) at ``low``'s resolution, in the compute dtype.
    """
    def conv_bn(y, features, k, conv_name, bn_name):
      y = bb.conv(features, k, kernel_init=bb.kaiming_fan_in, dtype=self.dtype,
                  name=conv_name)(y)
      return layers.batch_norm(train, dtype=self.dtype, name=bn_name)(y)

    low = nn.relu(conv_bn(low, self.low_width, 1, "conv1", "bn1"))
    x = resize_bilinear_align_corners(x, low.shape[1:3])
    y = jnp.concatenate([x, low], axis=-1)
    y = nn.relu(conv_bn(y, self.width, 3, "last_conv1", "last_bn1"))
    y = nn.Dropout(0.5, deterministic=not train)(y)
    feat = conv_bn(y, self.width, 3, "last_conv2", "last_bn2")
    y = nn.Dropout(0.1, deterministic=not train)(nn.relu(feat))
    logits = bb.conv(self.num_classes, 1, use_bias=True, kernel_init=bb.kaiming_fan_in,
                     bias_init=_torch_default_bias(feat.shape[-1]), dtype=self.dtype,
                     name="classifier")(y)
    return feat, logits


class DeepLabV3Plus(nn.Module):
  """DeepLabV3+ (OS16) of the TaT-seg release; see the module docstring.

  Attributes:
    backbone: a key of `BACKBONES`.
    num_classes: classes per pixel.
    dtype: computation dtype (parameters float32, logits float32).
  """
  backbone: str
  num_classes: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """Maps images (B, H, W, 3) to float32 logits (B, H, W, num_classes).

    With ``'intermediates'`` mutable it sows `FEATURE_NAMES` (the release's
    ``extract_feature``); train mode needs a ``'dropout'`` rng.
    """
    extract = self.is_mutable_collection("intermediates")
    feats, high, low = BACKBONES[self.backbone](dtype=self.dtype, name="backbone")(
        x, train, taps=extract)
    head = HEADS.get(self.backbone, {})
    aspp_feat, y = ASPP(dtype=self.dtype, name="aspp_head", **head.get("aspp", {}))(
        high, train, dropout=not extract)
    dec_feat, logits = Decoder(self.num_classes, dtype=self.dtype, name="decoder_head",
                               **head.get("decoder", {}))(y, low, train)
    if extract:
      for name, feat in zip(FEATURE_NAMES, feats + [aspp_feat, dec_feat]):
        self.sow("intermediates", name, feat)
    return resize_bilinear_align_corners(logits.astype(jnp.float32), x.shape[1:3])


def deeplabv3p(backbone: str, num_classes: int, *, dtype: Dtype = jnp.float32
               ) -> DeepLabV3Plus:
  """DeepLabV3+ (OS16) on ``backbone`` (a key of `BACKBONES`)."""
  _check_backbone(backbone)
  return DeepLabV3Plus(backbone, num_classes, dtype=dtype)


def _check_backbone(backbone: str) -> None:
  if backbone not in BACKBONES:
    raise ValueError(f"DeepLabV3+ backbone must be one of {sorted(BACKBONES)}, "
                     f"got {backbone!r}.")


class BackboneClassifier(nn.Module):
  """A DeepLab backbone as an image classifier: ``backbone`` (the same module, name and
  parameters as in `DeepLabV3Plus`), then ReLU of its last stage, a global average pool
  and a linear classifier (PyTorch ``nn.Linear`` init). Pretraining it on a
  classification set gives a DeepLabV3+ of the same backbone its pretrained weights
  (``config.model.init`` = the classification run: `afd_jax.pretrained` copies the
  shared ``backbone``), the offline stand-in for the release's ImageNet backbones.

  Sows ``stage1..4.out`` (ReLU of each stage's raw sum) and ``pooled``.

  Attributes:
    backbone: a key of `BACKBONES`.
    num_classes: classifier outputs.
    dtype: computation dtype.
  """
  backbone: str
  num_classes: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """Maps images (B, H, W, 3) to float32 logits (B, num_classes)."""
    feats, high, _ = BACKBONES[self.backbone](dtype=self.dtype, name="backbone")(
        x, train, taps=False)
    for i, feat in enumerate(feats or (), 1):
      self.sow("intermediates", f"stage{i}.out", nn.relu(feat))
    return layers.classifier_head(self, high, self.num_classes, name="classifier")


def backbone_classifier(backbone: str, num_classes: int, *, dtype: Dtype = jnp.float32
                        ) -> BackboneClassifier:
  """`BackboneClassifier` on ``backbone`` (a key of `BACKBONES`)."""
  _check_backbone(backbone)
  return BackboneClassifier(backbone, num_classes, dtype=dtype)


def head_param_filter(path: tuple[str, ...]) -> bool:
  """Whether a parameter belongs to ASPP + decoder (the release's 10x-lr group).

  Args:
    path: the key path of a leaf in the model's ``params`` tree, e.g.
      ``('decoder_head', 'classifier', 'bias')`` -> True,
      ``('backbone', 'conv1', 'kernel')`` -> False (the backbone, ``get_1x_lr_params``).
  """
  return path[0] in HEAD_MODULES
