"""CIFAR-100 TaT (target-aware transformer), global one-to-all on the last stage with the
ImageNet release's weights (the CIFAR ones are not published; see afd_jax/methods/tat.py).

    python -m afd_jax.main --config=configs/cifar100/tat.py:teacher=resnet32x4,student=resnet8x4 \
        --workdir=runs/cifar100/tat_resnet32x4_resnet8x4
"""
from configs import common


def get_config(arg=None):
  return common.distill_config("cifar100", "tat", arg, "wrn_40_2", "wrn_16_2")
