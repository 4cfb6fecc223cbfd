"""CIFAR-100 wrn_28_2 trained with cross-entropy only (a teacher, or the student baseline).

    python -m afd_jax.main --config=configs/cifar100/wrn_28_2.py --workdir=runs/cifar100/wrn_28_2

Schedule: SGD momentum 0.9, lr 0.05, wd 5e-4, batch 64, 240 epochs, x0.1 at epochs
150/180/210. Distillation configs load the teacher from runs/cifar100/wrn_28_2 (its best
checkpoint). No reference number from the CRD benchmark for this model.
"""
from afd_jax import config_defaults


def get_config():
  return config_defaults.teacher_config("wrn_28_2")
