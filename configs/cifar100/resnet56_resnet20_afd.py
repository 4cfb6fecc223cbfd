"""AFD on CIFAR-100: teacher resnet56 -> student resnet20.

    python -m afd_jax.main --config=configs/cifar100/resnet56_resnet20_afd.py --workdir=runs/cifar100/resnet56_resnet20_afd

Needs the teacher resnet56, trained by configs/cifar100/resnet56.py into
runs/cifar100/resnet56.

Objective CE + 0.9 KD (tau 4) + 200 L_AFD with a width-128 meta-network; SGD momentum
0.9, lr 0.05, wd 5e-4, batch 64, 240 epochs, x0.1 at epochs 150/180/210.

Expected CIFAR-100 test top-1: reported in the AFD paper's CIFAR-100 table (Ji et al.,
AAAI 2021), but that table could not be retrieved to verify it, so no number is quoted
here.
"""
from afd_jax import config_defaults


def get_config():
  return config_defaults.distill_config("resnet56", "resnet20", "afd",
                                        beta=200.0, qk_dim=128)
