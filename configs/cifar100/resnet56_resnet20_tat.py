"""CIFAR-100: resnet20 distilled from resnet56 with TaT (global one-to-all).

    python -m afd_jax.main --config=configs/cifar100/resnet56_resnet20_tat.py --workdir=runs/cifar100/resnet56_resnet20_tat

Needs the teacher trained by configs/cifar100/resnet56.py in runs/cifar100/resnet56
(its best checkpoint).
Features: the last stage of each net, teacher stage3.out (8×8×64) ↔ student
stage3.out (8×8×64).
Weights: the ImageNet release's 0.5·CE + 0.5·KD(τ = 1) + 0.1·L_TaT, since the authors'
CIFAR weights were not published (see afd_jax/methods/tat.py).
Expected CIFAR-100 top-1: none published (the paper's per-pair CIFAR numbers were not
recoverable from public text).
"""
from afd_jax import config_defaults


def get_config():
  return config_defaults.distill_config(
      "resnet56", "resnet20", "tat", mode="global", student_feature="stage3.out",
      teacher_feature="stage3.out", learnable_key=False, embed_kernel=3,
      attention_temperature=1.0, ce_weight=0.5, kd_weight=0.5, temperature=1.0,
      weight=0.1)
