"""ImageNet: ResNet18 distilled from ResNet34 with TaT (the released classification recipe).

    python -m afd_jax.main --config=configs/imagenet/resnet34_resnet18_tat.py --workdir=runs/imagenet2012/resnet34_resnet18_tat

Needs imagenet2012 prepared by TFDS (see README) and the teacher trained by
configs/imagenet/resnet34.py in runs/imagenet2012/resnet34_imagenet (its best checkpoint;
or point config.teacher.checkpoint at converted torchvision weights).
Features: the last stage, stage4.out (7×7×512) of both nets; the (B, 49, 49) attention is
cheap. Weights: as released, 0.5·CE + 0.5·KD(τ = 1) + 0.1·L_TaT. Schedule: the ImageNet
default here (100 epochs, lr 0.1 ×0.1 at 30/60/90, wd 1e-4, batch 256).
Expected top-1: the paper reports 72.41, but its student started from ImageNet-pretrained
ResNet18 weights, so that number is not comparable to this from-scratch run (torchvision's
from-scratch ResNet18 reaches ≈ 69.8).
"""
from afd_jax import config_defaults


def get_config():
  return config_defaults.distill_config(
      "resnet34_imagenet", "resnet18_imagenet", "tat", dataset="imagenet2012",
      mode="global", student_feature="stage4.out", teacher_feature="stage4.out",
      learnable_key=False, embed_kernel=3, attention_temperature=1.0, ce_weight=0.5,
      kd_weight=0.5, temperature=1.0, weight=0.1)
