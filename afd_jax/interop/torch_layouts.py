"""Key names of the PyTorch originals: afd_jax variable path <-> ``state_dict`` key.

See `afd_jax.interop.torch` for the layouts each model family follows.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import jax
import numpy as np

from afd_jax import models
from afd_jax.models import mobilenet_v2

_STAGE_BLOCK = re.compile(r"^stage(\d+)_block(\d+)$")
_VGG_LAYER = re.compile(r"^stage(\d+)_(conv|bn)(\d+)$")
def _family(model_name: str) -> str:
  if model_name not in models.MODEL_NAMES:
    raise ValueError(f"Unknown model name {model_name!r}; accepted names: "
                     f"{', '.join(models.MODEL_NAMES)}.")
  if model_name.endswith("_imagenet"):
    return "torchvision"
  if model_name in ("resnet18", "resnet34", "ResNet50"):
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
  if m:
    shortcut = "shortcut" if family == "resnetv2" else "downsample"
    inner = [{"downsample_conv": f"{shortcut}.0", "downsample_bn": f"{shortcut}.1"}.get(r, r)
             for r in rest]
    return ".".join([f"layer{m.group(1)}.{int(m.group(2)) - 1}"] + inner)
  if head == "fc" and family == "resnetv2":
    return "linear"
  return head


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
