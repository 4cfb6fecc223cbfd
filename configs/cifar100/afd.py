"""CIFAR-100 AFD ("Show, Attend and Distill"): CE + 0.9·KD + 200·L_AFD (the release's).

    python -m afd_jax.main --config=configs/cifar100/afd.py:teacher=wrn_40_2,student=wrn_16_2 \
        --workdir=runs/cifar100/afd_wrn_40_2_wrn_16_2

Every pair of `configs.pairs.PAIRS['cifar100']` is accepted; the teacher must be trained
first (configs/cifar100/teacher.py:model=<teacher>) or imported from PyTorch.
"""
from configs import common


def get_config(arg=None):
  return common.distill_config("cifar100", "afd", arg, "wrn_40_2", "wrn_16_2")
