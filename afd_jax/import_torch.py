"""Imports a PyTorch teacher checkpoint as an afd_jax teacher run.

    python -m afd_jax.import_torch --model=wrn_40_2 --checkpoint=ckpt_epoch_240.pth \\
      --workdir=runs/cifar100/wrn_40_2 [--num_classes=100] \\
      [--eval --config=configs/cifar100/teacher.py:model=wrn_40_2]

Reads a bare ``state_dict`` or one stored under ``model``/``state_dict``/``net`` (CRD /
RepDistiller, mdistiller, the AFD release), with or without a ``module.`` prefix, in the
layout of the model's PyTorch original (`afd_jax/interop/torch.py`), and writes
``<workdir>/best/0`` that every distillation config accepts as ``teacher.checkpoint``.
``--eval`` then prints the teacher's top-1/top-5 on the config's eval split: compare with
the published teacher accuracy (CRD: wrn_40_2 75.61, resnet32x4 79.42, ...).
"""
from __future__ import annotations

from absl import app
from absl import flags
import ml_collections
from ml_collections import config_flags

from afd_jax import checkpointing, models
from afd_jax.interop import torch as torch_interop

_MODEL = flags.DEFINE_enum("model", None, models.MODEL_NAMES, "afd_jax model name.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "PyTorch .pth file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Teacher directory to create.")
_NUM_CLASSES = flags.DEFINE_integer("num_classes", 100, "Classifier outputs.")
_ALLOW_PICKLE = flags.DEFINE_bool(
    "allow_pickle", False, "torch.load(weights_only=False): only for trusted files that "
    "weights-only loading rejects.")
_EVAL = flags.DEFINE_bool("eval", False, "Evaluate the imported teacher on --config's data.")
_CONFIG = config_flags.DEFINE_config_file("config", None, "Config whose data to evaluate on "
                                          "(e.g. configs/cifar100/teacher.py:model=wrn_40_2).")
flags.mark_flags_as_required(["model", "checkpoint", "workdir"])


def evaluate(config: ml_collections.ConfigDict, model_name: str, num_classes: int,
             variables: dict) -> dict[str, float]:
  """Top-1/top-5 (%) and loss of the teacher on the eval split of ``config.data``."""
  # TF only for --eval.
  from afd_jax import evaluation, input_pipeline, parallel  # pylint: disable=g-import-not-at-top

  model = models.get_model(model_name, num_classes)
  evaluator = evaluation.Evaluator(input_pipeline.Dataset(config.data),
                                   parallel.make_mesh(config.num_devices),
                                   config.eval_batch_size)
  return evaluator(model, variables)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _EVAL.value and _CONFIG.value is None:
    raise app.UsageError("--eval needs --config (the dataset to evaluate on)")
  try:
    variables = torch_interop.import_teacher(_MODEL.value, _CHECKPOINT.value,
                                             _WORKDIR.value, _NUM_CLASSES.value,
                                             _ALLOW_PICKLE.value)
  except (torch_interop.TorchCheckpointError, checkpointing.CheckpointError) as e:
    raise SystemExit(f"error: {e}") from e
  print(f"wrote teacher {_MODEL.value} to {_WORKDIR.value}/best/0")
  if _EVAL.value:
    result = evaluate(_CONFIG.value, _MODEL.value, _NUM_CLASSES.value, variables)
    print(f"{_MODEL.value} on {_CONFIG.value.data.name}: top-1 {result['top1']:.2f}  "
          f"top-5 {result['top5']:.2f}  loss {result['loss']:.4f}")


if __name__ == "__main__":
  app.run(main)
