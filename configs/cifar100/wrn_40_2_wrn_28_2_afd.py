"""AFD on CIFAR-100: teacher wrn_40_2 -> student wrn_28_2.

    python -m afd_jax.main --config=configs/cifar100/wrn_40_2_wrn_28_2_afd.py --workdir=runs/cifar100/wrn_40_2_wrn_28_2_afd

Needs the teacher wrn_40_2, trained by configs/cifar100/wrn_40_2.py into
runs/cifar100/wrn_40_2.

Objective CE + 0.9 KD (tau 4) + 200 L_AFD with a width-128 meta-network; SGD momentum
0.9, lr 0.05, wd 5e-4, batch 64, 240 epochs, x0.1 at epochs 150/180/210.

Expected CIFAR-100 test top-1: reported in the AFD paper's CIFAR-100 table (Ji et al.,
AAAI 2021), but that table could not be retrieved to verify it, so no number is quoted
here.
"""
from afd_jax import config_defaults


def get_config():
  return config_defaults.distill_config("wrn_40_2", "wrn_28_2", "afd",
                                        beta=200.0, qk_dim=128)
