"""CIFAR-100 baselines of the CRD benchmark, each with its released defaults: ``kd``
(default), ``fitnet``, ``at``; e.g.

    python -m afd_jax.main --config=configs/cifar100/baselines.py:method=at,teacher=resnet56,student=resnet20 \
        --workdir=runs/cifar100/at_resnet56_resnet20

Published numbers per pair: `configs.pairs.PAIRS['cifar100']` (CRD Tables 1/2).
"""
from configs import common


def get_config(arg=None):
  return common.distill_config("cifar100", "kd", arg, "wrn_40_2", "wrn_16_2")
