"""AFD on CIFAR-100: teacher vgg13 -> student MobileNetV2.

    python -m afd_jax.main --config=configs/cifar100/vgg13_MobileNetV2_afd.py --workdir=runs/cifar100/vgg13_MobileNetV2_afd

Needs the teacher vgg13, trained by configs/cifar100/vgg13.py into runs/cifar100/vgg13.

Objective CE + 0.9 KD (tau 4) + 200 L_AFD with a width-128 meta-network; SGD momentum
0.9, lr 0.05, wd 5e-4, batch 64, 240 epochs, x0.1 at epochs 150/180/210.

Expected CIFAR-100 test top-1: none published (the AFD paper does not run this pair; it
is a CRD-benchmark pair).
"""
from afd_jax import config_defaults


def get_config():
  return config_defaults.distill_config("vgg13", "MobileNetV2", "afd",
                                        beta=200.0, qk_dim=128)
