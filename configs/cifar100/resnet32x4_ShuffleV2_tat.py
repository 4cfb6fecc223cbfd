"""CIFAR-100: ShuffleV2 distilled from resnet32x4 with TaT (global one-to-all).

    python -m afd_jax.main --config=configs/cifar100/resnet32x4_ShuffleV2_tat.py --workdir=runs/cifar100/resnet32x4_ShuffleV2_tat

Needs the teacher trained by configs/cifar100/resnet32x4.py in runs/cifar100/resnet32x4
(its best checkpoint).
Features: the last stage of each net, teacher stage3.out (8×8×256) ↔ student
stage3.out (4×4×464). The teacher map is average-pooled to the student's size.
Weights: the ImageNet release's 0.5·CE + 0.5·KD(τ = 1) + 0.1·L_TaT, since the authors'
CIFAR weights were not published (see afd_jax/methods/tat.py).
Expected CIFAR-100 top-1: none published (the paper's per-pair CIFAR numbers were not
recoverable from public text).
"""
from afd_jax import config_defaults


def get_config():
  return config_defaults.distill_config(
      "resnet32x4", "ShuffleV2", "tat", mode="global", student_feature="stage3.out",
      teacher_feature="stage3.out", learnable_key=False, embed_kernel=3,
      attention_temperature=1.0, ce_weight=0.5, kd_weight=0.5, temperature=1.0,
      weight=0.1)
