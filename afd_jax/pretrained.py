"""A student that starts from pretrained weights (``config.model.init``).

The segmentation releases start every student from ImageNet weights (TaT-seg: the
backbone's ``_load_pretrained_model``, torchvision's ``resnet18-5c106cde.pth`` or the
MobileNetV2 file), and TaT's ImageNet recipe starts both nets pretrained. The option takes
either

* a PyTorch file (``.pth``, ``.pt``, ``.tar``): every tensor it has in the layout of the
  student's PyTorch original is copied in (`afd_jax.interop.torch.init_from_checkpoint`:
  a torchvision ResNet fills a DeepLabV3+ backbone, a full DeepLab ``state_dict`` fills
  everything); the rest keeps its fresh initialisation;
* an afd_jax run of the same model (its workdir or a step directory): all of it.

Only a run's fresh start reads it: a resumed run continues from its own checkpoint.
"""
from __future__ import annotations

import os
from typing import Any

from absl import logging
import jax

from afd_jax import checkpointing

TORCH_SUFFIXES = (".pth", ".pt", ".tar", ".pth.tar", ".bin")


def is_torch_file(path: str) -> bool:
  return os.path.isfile(path) and path.endswith(TORCH_SUFFIXES)


def check_init_path(path: str) -> None:
  """Raises ValueError unless `path` is a PyTorch file or a directory (before any write)."""
  full = os.path.abspath(os.path.expanduser(path))
  if not (is_torch_file(full) or os.path.isdir(full)):
    raise ValueError(f"config.model.init={path!r}: neither a PyTorch checkpoint file "
                     f"({', '.join(TORCH_SUFFIXES)}) nor an afd_jax run directory")


def load_student_init(path: str, model_name: str, variables: dict[str, Any],
                      num_classes: int) -> dict[str, Any]:
  """The student's ``{'params', 'batch_stats'}`` with `path`'s weights copied in.

  Args:
    path: ``config.model.init``.
    model_name: the student's model name.
    variables: its freshly initialised variables (shapes to fit, values for the rest).
    num_classes: its classifier width.

  Raises:
    ValueError / TorchCheckpointError / CheckpointError: a path that is neither, or
      weights that do not fit the model (the message names the keys).
  """
  check_init_path(path)
  full = os.path.abspath(os.path.expanduser(path))
  host = jax.device_get(variables)
  if is_torch_file(full):
    from afd_jax.interop import torch as torch_interop  # pylint: disable=g-import-not-at-top
    new, keys = torch_interop.init_from_checkpoint(model_name, host, full, num_classes)
    logging.info("Student %s: %d tensors from %s", model_name, len(keys), full)
    return new
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), host)
  logging.info("Student %s: initialised from run %s", model_name, full)
  return checkpointing.load_teacher_variables(full, abstract, model_name)
