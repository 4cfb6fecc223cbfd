"""ImageNet AFD, ResNet34 → ResNet18: CE + 0.9·KD + 50·L_AFD (paper: 71.38 top-1).

    python -m afd_jax.main --config=configs/imagenet/afd.py --workdir=runs/imagenet2012/afd

The release gives no ImageNet script; beta 50 and the schedule are a public
reproduction's, which reached 71.68 over a 70.8 baseline (PaddleClas
docs/zh_CN/advanced_tutorials/knowledge_distillation.md, section 1.2.4 AFD).
Its ``Piecewise`` decay (``paddle.optimizer.lr.PiecewiseDecay`` on the 0-based iteration
counter, boundaries at epoch × steps per epoch) lowers the lr after 30/60/90 finished
epochs, as ``schedule.decay_epochs=(30, 60, 90)`` does here.
"""
from configs import common

TEACHER, STUDENT = "resnet34_imagenet", "resnet18_imagenet"


def get_config(arg=None):
  return common.distill_config("imagenet2012", "afd", arg, TEACHER, STUDENT,
                               lambda a: {"beta": 50.0})
