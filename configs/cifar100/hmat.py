"""CIFAR-100 HMAT: an INTERPRETATION of the abstract (no code or full text is public).
Schedule: the CIFAR-100 setting of `configs.common.base` (RepDistiller's rule: ×0.1 after
150/180/210 finished epochs; 782 steps per epoch, the last partial batch trained).

    python -m afd_jax.main --config=configs/cifar100/hmat.py:teacher=resnet56,student=resnet20 \
        --workdir=runs/cifar100/hmat_resnet56_resnet20

WRN and VGG features have a small post-BN scale, so their position-attention KL starts
≈ 0.03 (vs ≈ 3 for the ResNets); those pairs weight it by 30 to start near CE (the
measurements are in afd_jax/methods/hmat.py).
"""
from configs import common

_SMALL_SCALE_FAMILIES = ("wrn_", "vgg")


def _fields(a):
  return {"position_weight": 30.0} if a.teacher.startswith(_SMALL_SCALE_FAMILIES) else {}


def get_config(arg=None):
  return common.distill_config("cifar100", "hmat", arg, "wrn_40_2", "wrn_16_2", _fields)
