"""CIFAR-100 ShuffleV2 trained with cross-entropy only (a teacher, or the student baseline).

    python -m afd_jax.main --config=configs/cifar100/ShuffleV2.py --workdir=runs/cifar100/ShuffleV2

Schedule: SGD momentum 0.9, lr 0.05 (lr 0.01, as CRD trains this light network), wd 5e-4, batch 64, 240 epochs, x0.1 at epochs
150/180/210. Distillation configs load the teacher from runs/cifar100/ShuffleV2 (its best
checkpoint). Expected CIFAR-100 test top-1: about 71.82 % (CRD (Tian et al., ICLR 2020) Table 1/2, mean of runs).
"""
from afd_jax import config_defaults


def get_config():
  return config_defaults.teacher_config("ShuffleV2")
