"""Exports an afd_jax model (student or teacher run) as a PyTorch ``state_dict`` .pth.

    python -m afd_jax.export_torch --workdir=runs/cifar100/wrn_40_2_wrn_16_2_afd \\
      --model=wrn_16_2 --output=wrn_16_2.pth [--num_classes=100]

Takes the run's best checkpoint (else its newest; or a step directory), writes the
student in the layout of its PyTorch original (`afd_jax/interop/torch.py`), loadable with
``model.load_state_dict(torch.load('wrn_16_2.pth'))`` in RepDistiller/CRD, mdistiller,
the AFD release or torchvision (``*_imagenet``).
"""
from __future__ import annotations

from absl import app
from absl import flags

from afd_jax import checkpointing, models
from afd_jax.interop import torch as torch_interop

_WORKDIR = flags.DEFINE_string("workdir", None, "afd_jax run (or one of its step dirs).")
_MODEL = flags.DEFINE_enum("model", None, models.MODEL_NAMES, "The run's student model.")
_OUTPUT = flags.DEFINE_string("output", None, ".pth file to write.")
_NUM_CLASSES = flags.DEFINE_integer("num_classes", 100, "Classifier outputs.")
flags.mark_flags_as_required(["workdir", "model", "output"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  try:
    state = torch_interop.export_run(_WORKDIR.value, _MODEL.value, _OUTPUT.value,
                                     _NUM_CLASSES.value)
  except (torch_interop.TorchCheckpointError, checkpointing.CheckpointError) as e:
    raise SystemExit(f"error: {e}") from e
  print(f"wrote {len(state)} tensors of {_MODEL.value} to {_OUTPUT.value}")


if __name__ == "__main__":
  app.run(main)
