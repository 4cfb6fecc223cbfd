"""CIFAR-100 AFT-KD: an INTERPRETATION of the abstract (no code or full text is public),
every guessed choice a method field; no result is a reproduction of the paper.
Schedule: the CIFAR-100 setting of `configs.common.base` (RepDistiller's rule: ×0.1 after
150/180/210 finished epochs; 782 steps per epoch, the last partial batch trained).

    python -m afd_jax.main --config=configs/cifar100/aft_kd.py:teacher=vgg13,student=vgg8 \
        --workdir=runs/cifar100/aft_kd_vgg13_vgg8
"""
from configs import common


def get_config(arg=None):
  return common.distill_config("cifar100", "aft_kd", arg, "wrn_40_2", "wrn_16_2")
