"""AFD on CIFAR-100: teacher resnet110 -> student resnet32.

    python -m afd_jax.main --config=configs/cifar100/resnet110_resnet32_afd.py --workdir=runs/cifar100/resnet110_resnet32_afd

Needs the teacher resnet110, trained by configs/cifar100/resnet110.py into
runs/cifar100/resnet110. resnet110 links every other block (blocks 2, 4, ..., 54: 27
features).

Objective CE + 0.9 KD (tau 4) + 200 L_AFD with a width-128 meta-network; SGD momentum
0.9, lr 0.05, wd 5e-4, batch 64, 240 epochs, x0.1 at epochs 150/180/210.

Expected CIFAR-100 test top-1: none published (the AFD paper does not run this pair; it
is a CRD-benchmark pair).
"""
from afd_jax import config_defaults


def get_config():
  return config_defaults.distill_config("resnet110", "resnet32", "afd",
                                        beta=200.0, qk_dim=128)
