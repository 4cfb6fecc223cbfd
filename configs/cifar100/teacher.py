"""CIFAR-100, one model trained with cross-entropy only: a teacher or a student baseline.

    python -m afd_jax.main --config=configs/cifar100/teacher.py:model=wrn_40_2 \
        --workdir=runs/cifar100/wrn_40_2

Distillation configs load a teacher from runs/cifar100/<model> (its best checkpoint).
Expected top-1: `configs.pairs.TOP1['cifar100']` (CRD Tables 1/2), e.g. wrn_40_2 75.61.

Schedule: RepDistiller's ``train_teacher.py`` (HobbitLong/RepDistiller@b84f547): lr 0.05
(0.01 for MobileNetV2/ShuffleNets), ×0.1 after 150/180/210 finished epochs (its
``epoch > d`` rule on 1-indexed epochs), 240 epochs, batch 64 with each epoch's last
partial batch trained (782 steps per epoch).
"""
from configs import common


def get_config(arg=None):
  return common.teacher_config("cifar100", arg, model="wrn_40_2")
