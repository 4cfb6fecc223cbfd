"""A student that starts from pretrained weights (``config.model.init``).

The segmentation releases start every student from ImageNet weights (TaT-seg: the
backbone's ``_load_pretrained_model``, torchvision's ``resnet18-5c106cde.pth`` or the
MobileNetV2 file), and TaT's ImageNet recipe starts both nets pretrained. The option takes
either

* a PyTorch file (``.pth``, ``.pt``, ``.tar``): every tensor it has in the layout of the
  student's PyTorch original is copied in (`afd_jax.interop.torch.init_from_checkpoint`:
  a torchvision ResNet fills a DeepLabV3+ backbone, a full DeepLab ``state_dict`` fills
  everything); the rest keeps its fresh initialisation;
* an afd_jax run (its workdir or a step directory): of the same model, all of it; of
  another model, every top-level module the two share by name with the same parameter
  and BatchNorm-statistics shapes, e.g. the ``backbone`` of a
  ``tiny_resnet18_classifier`` run pretrained on `digits` into a
  ``deeplabv3p_tiny_resnet18`` (the offline stand-in for the release's ImageNet
  backbones); the rest keeps its fresh initialisation. A run sharing no such module is
  an error.

In a suite (`afd_jax.plan`) the path may say ``{workdir}/<run>``: that run of the plan
is trained first.

Only a run's fresh start reads it: a resumed run continues from its own checkpoint.
"""
from __future__ import annotations

import os
from typing import Any

from absl import logging
import jax
import numpy as np

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
  source = checkpointing.read_run_variables(full)
  new, copied, skipped = shared_modules(host, source)
  if not copied:
    raise checkpointing.CheckpointError(
        f"config.model.init={path!r}: the run shares no module of the same shapes with "
        f"model {model_name!r} (its modules: {sorted(source['params'])}; the model's: "
        f"{sorted(host['params'])}{'; differing shapes: ' + str(skipped) if skipped else ''})")
  logging.info("Student %s: modules %s from run %s%s", model_name, copied, full,
               f" (not copied, other shapes: {skipped})" if skipped else "")
  return new


def _shapes(tree: Any) -> Any:
  return jax.tree.map(lambda a: tuple(a.shape), tree)


def shared_modules(variables: dict[str, Any], source: dict[str, Any]
                   ) -> tuple[dict[str, Any], list[str], list[str]]:
  """`variables` with every top-level module of `source` that fits copied in.

  Args:
    variables: ``{'params', 'batch_stats'}`` of the model to initialise.
    source: ``{'params', 'batch_stats'}`` of a trained run (any model).

  Returns:
    ``(new variables, copied module names, skipped)``: a module is copied when both have
    it under the same top-level name in ``params`` with equal trees and shapes in
    ``params`` and ``batch_stats``; ``skipped`` names the shared ones whose shapes differ.
  """
  new = {k: dict(v) for k, v in variables.items()}
  copied, skipped = [], []
  for name in sorted(set(variables["params"]) & set(source["params"])):
    parts = [c for c in ("params", "batch_stats") if name in variables.get(c, {})]
    if all(name in source.get(c, {}) and
           _shapes(source[c][name]) == _shapes(variables[c][name]) for c in parts):
      for c in parts:
        new[c][name] = jax.tree.map(
            lambda a, b: np.asarray(a, dtype=np.asarray(b).dtype),
            source[c][name], variables[c][name])
      copied.append(name)
    else:
      skipped.append(name)
  return new, copied, skipped
