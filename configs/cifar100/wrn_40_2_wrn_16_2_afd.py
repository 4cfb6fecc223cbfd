"""AFD on CIFAR-100: teacher wrn_40_2 -> student wrn_16_2.

    python -m afd_jax.main --config=configs/cifar100/wrn_40_2_wrn_16_2_afd.py --workdir=runs/cifar100/wrn_40_2_wrn_16_2_afd

Needs the teacher wrn_40_2, trained by configs/cifar100/wrn_40_2.py into
runs/cifar100/wrn_40_2. The official release's default pair.

Objective CE + 0.9 KD (tau 4) + 200 L_AFD with a width-128 meta-network; SGD momentum
0.9, lr 0.05, wd 5e-4, batch 64, 240 epochs, x0.1 at epochs 150/180/210.

Expected CIFAR-100 test top-1: reported in the AFD paper's CIFAR-100 table (Ji et al.,
AAAI 2021), but that table could not be retrieved to verify it, so no number is quoted
here. A third-party run of the official release logged 75.64 % at epoch 240 (reference:
github.com/XH-B/attention-feature-distillation README).
"""
from afd_jax import config_defaults


def get_config():
  return config_defaults.distill_config("wrn_40_2", "wrn_16_2", "afd",
                                        beta=200.0, qk_dim=128)
