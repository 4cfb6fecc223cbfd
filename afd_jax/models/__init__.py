"""Model zoo: the CIFAR KD architectures, torchvision ResNets and DeepLabV3+.

``get_model(name, num_classes)`` builds a Flax module with ``__call__(x, train)`` mapping
NHWC images (B, H, W, 3) to float32 logits (B, num_classes) and sowing its features into
the flat ``'intermediates'`` collection under the names of `features.py`; read them with
``feature_list(variables['intermediates'])``. Parameter counts match the PyTorch
originals.

Families and their stages (each module docstring has the details):

* ``resnet8 .. resnet110``, ``resnet8x4``, ``resnet32x4`` (`resnet.py`): 3 stages.
* ``resnet18``, ``resnet34``, ``ResNet50``, ``resnet101`` (CIFAR stem; RepDistiller's and
  the AFD release's ``resnetv2.py``) and ``resnet*_imagenet`` (`resnet.py`): 4 stages.
* ``wrn_{depth}_{k}`` (`wide_resnet.py`; 16_1, 16_2, 28_1 (the AFD release's ``wrn28x1``),
  28_2, 40_1, 40_2): 3 stages, pre-activation features.
* ``vgg8 .. vgg19`` (`vgg.py`, all with BN): 5 stages = the conv groups, no stem.
* ``MobileNetV2`` (`mobilenet_v2.py`, width 0.5): 4 stages as CRD's feature taps.
* ``ShuffleV1``, ``ShuffleV2`` (`shufflenet.py`): 3 stages.

Segmentation (``task_of(name) == 'segmentation'``): ``deeplabv3p_resnet101`` (teacher),
``deeplabv3p_resnet18``, ``deeplabv3p_mobilenetv2`` (`deeplab.py`, the TaT segmentation
release's DeepLabV3+ at output stride 16) map (B, H, W, 3) to per-pixel float32 logits
(B, H, W, num_classes) and sow ``stage1..4.out``, ``aspp``, ``decoder``;
``deeplabv3p_tiny_resnet18``, ``deeplabv3p_tiny_resnet10``: CPU-sized ones (a narrow ResNet
at output stride 8, a 64-channel head) for small canvases such as `digits_seg`'s;
`deeplab.head_param_filter` splits their params into backbone (1x lr) and ASPP + decoder
(10x lr). ``tiny_resnet18_classifier``, ``tiny_resnet10_classifier`` are those two
backbones as image classifiers (global pool + linear), to pretrain a DeepLab's backbone on
a classification set (`deeplab.BackboneClassifier`).
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from afd_jax.models import deeplab
from afd_jax.models.features import feature_list
from afd_jax.models.mobilenet_v2 import MobileNetV2
from afd_jax.models.resnet import cifar_resnet, resnet
from afd_jax.models.shufflenet import ShuffleNetV1, ShuffleNetV2
from afd_jax.models.vgg import vgg
from afd_jax.models.wide_resnet import WideResNet

__all__ = ["MODEL_NAMES", "feature_list", "get_model", "head_param_filter", "task_of"]

_p = functools.partial
# Each constructor takes (num_classes, dtype=..., **model-specific attributes).
_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    **{f"resnet{d}": _p(cifar_resnet, d) for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": _p(cifar_resnet, 8, wide=True),
    "resnet32x4": _p(cifar_resnet, 32, wide=True),
    **{f"wrn_{d}_{k}": _p(WideResNet, d, k)
       for d, k in ((16, 1), (16, 2), (28, 1), (28, 2), (40, 1), (40, 2))},
    **{f"vgg{d}": _p(vgg, d) for d in (8, 11, 13, 16, 19)},
    "MobileNetV2": MobileNetV2,
    "ShuffleV1": ShuffleNetV1,
    "ShuffleV2": ShuffleNetV2,
    "ResNet50": _p(resnet, 50, imagenet=False),
    "resnet18": _p(resnet, 18, imagenet=False),
    "resnet34": _p(resnet, 34, imagenet=False),
    "resnet101": _p(resnet, 101, imagenet=False),
    "resnet18_imagenet": _p(resnet, 18, imagenet=True),
    "resnet34_imagenet": _p(resnet, 34, imagenet=True),
    "resnet50_imagenet": _p(resnet, 50, imagenet=True),
    "deeplabv3p_resnet101": _p(deeplab.deeplabv3p, "resnet101"),
    "deeplabv3p_resnet18": _p(deeplab.deeplabv3p, "resnet18"),
    "deeplabv3p_mobilenetv2": _p(deeplab.deeplabv3p, "mobilenetv2"),
    "deeplabv3p_tiny_resnet18": _p(deeplab.deeplabv3p, "tiny_resnet18"),
    "deeplabv3p_tiny_resnet10": _p(deeplab.deeplabv3p, "tiny_resnet10"),
    # Their backbones as classifiers, to pretrain them (`deeplab.BackboneClassifier`).
    "tiny_resnet18_classifier": _p(deeplab.backbone_classifier, "tiny_resnet18"),
    "tiny_resnet10_classifier": _p(deeplab.backbone_classifier, "tiny_resnet10"),
}
_SEGMENTATION = frozenset(("deeplabv3p_resnet101", "deeplabv3p_resnet18",
                           "deeplabv3p_mobilenetv2", "deeplabv3p_tiny_resnet18",
                           "deeplabv3p_tiny_resnet10"))

MODEL_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def get_model(name: str, num_classes: int, dtype: Any = jnp.float32,
              **kwargs: Any) -> nn.Module:
  """Builds the model called ``name``.

  Args:
    name: one of `MODEL_NAMES` (case-sensitive, e.g. ``'resnet20'``, ``'wrn_40_2'``,
      ``'MobileNetV2'``, ``'resnet18_imagenet'``, ``'deeplabv3p_resnet101'``).
    num_classes: classifier outputs (classes per pixel for segmentation models).
    dtype: computation dtype; parameters stay float32 and logits are float32.
    **kwargs: model-specific attributes, e.g. ``bn1_twice=True`` for a WRN (the AFD
      release's BatchNorm running statistics, see `wide_resnet.py`).

  Returns:
    a module applied as ``model.apply(variables, x, train=...)`` with x (B, H, W, 3),
    giving logits (B, num_classes), or (B, H, W, num_classes) for a segmentation model
    (`task_of`).

  Raises:
    ValueError: for an unknown name; the message lists the accepted names.
  """
  if name not in _REGISTRY:
    raise ValueError(
        f"Unknown model name {name!r}; accepted names: {', '.join(MODEL_NAMES)}.")
  return _REGISTRY[name](num_classes, dtype=dtype, **kwargs)


def task_of(name: str) -> str:
  """The `afd_jax.tasks` name of model ``name``'s outputs: ``'segmentation'`` (per-pixel
  logits (B, H, W, K)) or ``'classification'`` (logits (B, K)).

  Raises:
    ValueError: for an unknown name; the message lists the accepted names.
  """
  if name not in _REGISTRY:
    raise ValueError(
        f"Unknown model name {name!r}; accepted names: {', '.join(MODEL_NAMES)}.")
  return "segmentation" if name in _SEGMENTATION else "classification"


def head_param_filter(name: str) -> Callable[[tuple[str, ...]], bool] | None:
  """Whether a parameter path of model ``name`` is in its head (the DeepLabs' ASPP and
  decoder, `deeplab.head_param_filter`), or None: the model has no separate head."""
  return deeplab.head_param_filter if name in _SEGMENTATION else None
