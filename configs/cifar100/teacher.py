"""CIFAR-100, one model trained with cross-entropy only: a teacher or a student baseline.

    python -m afd_jax.main --config=configs/cifar100/teacher.py:model=wrn_40_2 \
        --workdir=runs/cifar100/wrn_40_2

Distillation configs load a teacher from runs/cifar100/<model> (its best checkpoint).
Expected top-1: `configs.pairs.TOP1['cifar100']` (CRD Tables 1/2), e.g. wrn_40_2 75.61.
"""
from configs import common


def get_config(arg=None):
  return common.teacher_config("cifar100", arg, model="wrn_40_2")
