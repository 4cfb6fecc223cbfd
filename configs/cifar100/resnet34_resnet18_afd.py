"""AFD on CIFAR-100: teacher resnet34 -> student resnet18.

    python -m afd_jax.main --config=configs/cifar100/resnet34_resnet18_afd.py --workdir=runs/cifar100/resnet34_resnet18_afd

Needs the teacher resnet34, trained by configs/cifar100/resnet34.py into
runs/cifar100/resnet34. CIFAR-stem ResNets (3x3 stem, no max-pool).

Objective CE + 0.9 KD (tau 4) + 200 L_AFD with a width-128 meta-network; SGD momentum
0.9, lr 0.05, wd 5e-4, batch 64, 240 epochs, x0.1 at epochs 150/180/210.

Expected CIFAR-100 test top-1: reported in the AFD paper's CIFAR-100 table (Ji et al.,
AAAI 2021), but that table could not be retrieved to verify it, so no number is quoted
here.
"""
from afd_jax import config_defaults


def get_config():
  return config_defaults.distill_config("resnet34", "resnet18", "afd",
                                        beta=200.0, qk_dim=128)
