"""Key names of the PyTorch originals: afd_jax variable path <-> ``state_dict`` key.

See `afd_jax.interop.torch` for the layouts each model family follows.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import jax
import numpy as np

from afd_jax import models
from afd_jax.models import deeplab_backbones
from afd_jax.models import mobilenet_v2

_STAGE_BLOCK = re.compile(r"^stage(\d+)_block(\d+)$")
_VGG_LAYER = re.compile(r"^stage(\d+)_(conv|bn)(\d+)$")
_DEEPLAB_BLOCK = re.compile(r"^block(\d+)$")
_FEATURES_KEY = re.compile(r"^features\.(\d+)\.(.*)$")


def _family(model_name: str) -> str:
  if model_name not in models.MODEL_NAMES:
    raise ValueError(f"Unknown model name {model_name!r}; accepted names: "
                     f"{', '.join(models.MODEL_NAMES)}.")
  if model_name == "deeplabv3p_mobilenetv2":
    return "deeplab_mobilenet"
  if model_name.startswith("deeplabv3p_"):
    return "deeplab_resnet"
  if model_name.endswith("_imagenet"):
    return "torchvision"
  if model_name in ("resnet18", "resnet34", "ResNet50", "resnet101"):
    return "resnetv2"
  if model_name.startswith("resnet"):
    return "cifar_resnet"
  if model_name.startswith("wrn_"):
    return "wrn"
  if model_name.startswith("vgg"):
    return "vgg"
  return model_name  # MobileNetV2, ShuffleV1, ShuffleV2


def _mobilenet_rows() -> dict[tuple[int, int], str]:
  """Our (stage, block) -> the original's ``blocks.{row}.{k}`` (rows of `_STAGES`)."""
  out, row = {}, 0
  for i, rows in enumerate(mobilenet_v2._STAGES, 1):
    j = 0
    for _, _, repeats, _ in rows:
      for k in range(repeats):
        j += 1
        out[(i, j)] = f"blocks.{row}.{k}"
      row += 1
  return out


_MOBILENET_BLOCK = {"conv_expand": "conv.0", "bn_expand": "conv.1", "conv_dw": "conv.3",
                    "bn_dw": "conv.4", "conv_project": "conv.6", "bn_project": "conv.7"}
_MOBILENET_TOP = {"conv_stem": "conv1.0", "bn_stem": "conv1.1", "conv_head": "conv2.0",
                  "bn_head": "conv2.1", "classifier": "classifier.0"}

# DeepLabV3+ (the TaT-seg release = jfzhang95's keys): ``features.{i}.conv.{j}`` of the
# MobileNet backbone (t > 1; t == 1 has no expansion, so its indices start at 0), and the
# ASPP / decoder modules.
_DEEPLAB_MOBILENET_BLOCK = {"conv_expand": 0, "bn_expand": 1, "conv_dw": 3, "bn_dw": 4,
                            "conv_project": 6, "bn_project": 7}
_DEEPLAB_MOBILENET_T1_BLOCK = {"conv_dw": 0, "bn_dw": 1, "conv_project": 3,
                               "bn_project": 4}
_DEEPLAB_HEADS = {
    "aspp_head": ("aspp", {"pool_conv": "global_avg_pool.1",
                           "pool_bn": "global_avg_pool.2"}),
    "decoder_head": ("decoder", {"last_conv1": "last_conv.0", "last_bn1": "last_conv.1",
                                 "last_conv2": "last_conv.4", "last_bn2": "last_conv.5",
                                 "classifier": "last_conv.8"}),
}
# torchvision's mobilenet_v2 nests each conv-BN-ReLU6 in a Sequential: release
# ``conv.{j}`` -> torchvision ``conv.{...}``, for t > 1 and for t == 1.
_TORCHVISION_MOBILENET = {"0": "0.0", "1": "0.1", "3": "1.0", "4": "1.1", "6": "2",
                          "7": "3"}
_TORCHVISION_MOBILENET_T1 = {"0": "0.0", "1": "0.1", "3": "1", "4": "2"}


def _resnet_module_name(path: tuple[str, ...], shortcut: str) -> str:
  """``layer{i}.{j}.*`` / stem names of the ResNets (``shortcut``: projection's name)."""
  head, rest = path[0], list(path[1:])
  m = _STAGE_BLOCK.match(head)
  if not m:
    return head
  inner = [{"downsample_conv": f"{shortcut}.0", "downsample_bn": f"{shortcut}.1"}.get(r, r)
           for r in rest]
  return ".".join([f"layer{m.group(1)}.{int(m.group(2)) - 1}"] + inner)


def _deeplab_module_name(family: str, path: tuple[str, ...]) -> str:
  """The release's name of a DeepLabV3+ submodule (``backbone.*``, ``aspp.*``, ...)."""
  head, rest = path[0], path[1:]
  if head in _DEEPLAB_HEADS:
    prefix, renames = _DEEPLAB_HEADS[head]
    return ".".join([prefix, renames.get(rest[0], rest[0]), *rest[1:]])
  if family == "deeplab_resnet":
    return "backbone." + _resnet_module_name(rest, "downsample")
  m = _DEEPLAB_BLOCK.match(rest[0])
  if not m:
    return "backbone.features.0." + {"conv_stem": "0", "bn_stem": "1"}[rest[0]]
  i = int(m.group(1))
  expansion = deeplab_backbones.mobilenet_blocks()[i - 1][0]
  index = (_DEEPLAB_MOBILENET_T1_BLOCK if expansion == 1 else _DEEPLAB_MOBILENET_BLOCK)
  return f"backbone.features.{i}.conv.{index[rest[1]]}"


def torch_module_name(model_name: str, path: tuple[str, ...]) -> str:
  """The original PyTorch module name of the Flax submodule at `path`.

  Args:
    model_name: a name of `models.MODEL_NAMES`.
    path: Flax module path, e.g. ``('stage2_block1', 'downsample_conv')``.

  Returns:
    e.g. ``'layer2.0.downsample.0'`` (CIFAR ResNet) or ``'layer2.0.shortcut.0'``
    (resnetv2).
  """
  family = _family(model_name)
  if family.startswith("deeplab"):
    return _deeplab_module_name(family, path)
  head, rest = path[0], list(path[1:])
  m = _STAGE_BLOCK.match(head)
  if family == "vgg":
    v = _VGG_LAYER.match(head)
    if v:
      offset = 0 if v.group(2) == "conv" else 1
      return f"block{int(v.group(1)) - 1}.{3 * (int(v.group(3)) - 1) + offset}"
    return head
  if family == "MobileNetV2":
    if m:
      block = _mobilenet_rows()[(int(m.group(1)), int(m.group(2)))]
      return ".".join([block] + [_MOBILENET_BLOCK[r] for r in rest])
    return _MOBILENET_TOP[head]
  if family == "wrn":
    if m:
      inner = ["convShortcut" if r == "conv_shortcut" else r for r in rest]
      return ".".join([f"block{m.group(1)}.layer.{int(m.group(2)) - 1}"] + inner)
    return "bn1" if head == "bn_final" else head
  if head == "fc" and family == "resnetv2":
    return "linear"
  return _resnet_module_name(path, "shortcut" if family == "resnetv2" else "downsample")


def aliases(model_name: str, key: str) -> tuple[str, ...]:
  """Further ``state_dict`` keys of the same tensor in the original (usually none).

  The release's DeepLab MobileNet backbone registers ``features[0:4]`` and
  ``features[4:]`` again as ``low_level_features`` and ``high_level_features``, so its
  ``state_dict`` (and a strict ``load_state_dict``) lists every backbone tensor twice,
  e.g. ``backbone.features.5.conv.0.weight`` also as
  ``backbone.high_level_features.5.conv.0.weight``.
  """
  if _family(model_name) != "deeplab_mobilenet" or not key.startswith("backbone."):
    return ()
  own = key[len("backbone."):]
  # Slicing an nn.Sequential keeps the indices: features.5 is high_level_features.5.
  block = int(_FEATURES_KEY.match(own).group(1))
  low = block < deeplab_backbones.MOBILENET_LOW_LEVEL_BLOCKS
  return (f"backbone.{'low' if low else 'high'}_level_{own}",)


def checkpoint_keys(model_name: str, key: str) -> dict[str, tuple[str, ...]]:
  """Where each known checkpoint layout keeps the model's tensor ``key``.

  Layouts: ``'model'``, the model's own original (``key`` and its `aliases`); for the
  DeepLabV3+ backbones the ImageNet checkpoints the release starts from (its
  ``_load_pretrained_model`` keeps the entries whose key the backbone has):
  ``'imagenet'``, torchvision's ``resnet18``/``resnet101`` state_dict or the release's
  ``mobilenet_v2-6a65762b.pth`` (flat ``features.{i}.conv.{j}``), both the backbone's
  keys without ``backbone.``; and ``'torchvision'``, torchvision's ``mobilenet_v2``
  (nested ``features.{i}.conv.{a}.{b}``). The layouts reuse names for other tensors
  (torchvision's ``features.1.conv.1.weight`` is the release's ``conv.3``), so a
  checkpoint is read in one layout throughout.

  Args:
    model_name: a name of `models.MODEL_NAMES`.
    key: the model's own ``state_dict`` key, e.g. ``'backbone.layer1.0.conv1.weight'``.

  Returns:
    ``{layout: candidate keys}``; a layout without the tensor (ImageNet files have no
    ASPP/decoder) is absent.
  """
  out = {"model": (key, *aliases(model_name, key))}
  family = _family(model_name)
  if not family.startswith("deeplab") or not key.startswith("backbone."):
    return out
  own = key[len("backbone."):]
  out["imagenet"] = (own,)
  if family == "deeplab_mobilenet":
    m = _FEATURES_KEY.match(own)
    i, rest = int(m.group(1)), m.group(2)
    if i == 0:
      out["torchvision"] = (own,)
    else:
      conv, j, leaf = rest.split(".", 2)
      t1 = deeplab_backbones.mobilenet_blocks()[i - 1][0] == 1
      nested = (_TORCHVISION_MOBILENET_T1 if t1 else _TORCHVISION_MOBILENET)[j]
      out["torchvision"] = (f"features.{i}.{conv}.{nested}.{leaf}",)
  return out


def _leaf_spec(leaf: str, value_shape: tuple[int, ...]):
  """(torch tensor name, jax->torch array transform, torch->jax transform)."""
  if leaf == "kernel" and len(value_shape) == 4:
    return "weight", (lambda a: np.transpose(a, (3, 2, 0, 1))), (
        lambda a: np.transpose(a, (2, 3, 1, 0)))
  if leaf == "kernel" and len(value_shape) == 2:
    return "weight", np.transpose, np.transpose
  name = {"scale": "weight", "bias": "bias", "mean": "running_mean",
          "var": "running_var"}[leaf]
  return name, (lambda a: a), (lambda a: a)


def layout(model_name: str, variables: Mapping[str, Any]):
  """[(collection, flax path, torch key, torch shape, to_torch, to_jax)] for every leaf."""
  out = []
  for collection in ("params", "batch_stats"):
    flat = jax.tree_util.tree_flatten_with_path(variables[collection])[0]
    for keypath, value in flat:
      path = tuple(k.key for k in keypath)
      shape = tuple(value.shape)
      name, to_torch, to_jax = _leaf_spec(path[-1], shape)
      key = f"{torch_module_name(model_name, path[:-1])}.{name}"
      torch_shape = tuple(to_torch(np.empty(shape, np.float32)).shape)
      out.append((collection, path, key, torch_shape, to_torch, to_jax))
  return out
