"""An ImageNet teacher's features, ready to be the frozen teacher of a transfer run.

    python experiments/transfer_teacher.py --teacher=runs/imagenet2012/resnet34_imagenet \
        --dataset=cub200

The training loop builds the teacher with the target dataset's number of classes, so a
1000-class ImageNet checkpoint does not fit it. This copies the teacher's parameters and
BatchNorm statistics unchanged and replaces only its classifier (``fc``) by zeros of the
target's class count, writing a checkpoint the loop loads as any teacher (default
``runs/transfer/resnet34_imagenet_<dataset>``, what ``configs/transfer/transfer.py``
reads). Transfer methods use only the features (``kd_weight=0``); the placeholder head's
predictions are constant, so the logged ``teacher/top1`` is chance level.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402

from afd_jax import checkpointing  # noqa: E402
from configs.transfer import transfer  # noqa: E402

# Classes of the transfer targets (TFDS / builders' ClassLabel sizes).
NUM_CLASSES = {"cub200": 200, "dogs": 120, "mit67": 67, "stanford40": 40}
HEAD = "fc"


def retarget(teacher: str, num_classes: int, out: str, head: str = HEAD) -> str:
  """Writes `teacher`'s variables with a zero `head` of `num_classes` outputs to `out`.

  Args:
    teacher: a teacher run's workdir or step directory (as ``config.teacher.checkpoint``).
    num_classes: outputs of the new classifier.
    out: directory written as a run workdir (``out/best/<step>/state``).
    head: name of the classifier's parameter collection at the top of the model.

  Returns:
    `out`.

  Raises:
    checkpointing.CheckpointError: unreadable teacher, or no `head` Dense in it.
  """
  step_dir = checkpointing._find_step_dir(teacher)  # noqa: SLF001 (same resolution)
  restored = ocp.StandardCheckpointer().restore(os.path.join(step_dir, "state"))
  params = dict(restored["params"]["student"])
  fc = params.get(head)
  if not isinstance(fc, dict) or set(fc) != {"kernel", "bias"}:
    raise checkpointing.CheckpointError(
        f"teacher checkpoint {step_dir} has no classifier {head!r} (Dense kernel + bias)")
  features = fc["kernel"].shape[0]
  params[head] = {"kernel": np.zeros((features, num_classes), fc["kernel"].dtype),
                  "bias": np.zeros((num_classes,), fc["bias"].dtype)}
  state = {"params": {"student": params},
           "batch_stats": {"student": restored["batch_stats"]["student"]}}
  step = os.path.basename(os.path.normpath(step_dir))
  target = os.path.join(os.path.abspath(out), "best", step if step.isdigit() else "0")
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.join(target, "state"), jax.tree.map(np.asarray, state),
                    force=True)
  checkpointer.wait_until_finished()
  return out


def main(argv=None) -> str:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--teacher", default=f"runs/imagenet2012/{transfer.TEACHER}",
                      help="the ImageNet teacher's run workdir (or a step directory)")
  parser.add_argument("--dataset", required=True, choices=sorted(NUM_CLASSES))
  parser.add_argument("--out", default=None,
                      help="output workdir (default: the transfer config's teacher path)")
  args = parser.parse_args(argv)
  out = retarget(args.teacher, NUM_CLASSES[args.dataset],
                 args.out or transfer.teacher_checkpoint(args.dataset))
  print(f"wrote {out}: {args.teacher} with a {NUM_CLASSES[args.dataset]}-class "
        "placeholder classifier")
  return out


if __name__ == "__main__":
  main()
