"""ImageNet TaT, ResNet34 → ResNet18, the released classification recipe: 0.5·CE +
0.5·KD(τ = 1) + 0.1·L_TaT on the 7×7 last stage.

    python -m afd_jax.main --config=configs/imagenet/tat.py --workdir=runs/imagenet2012/tat

The paper's 72.41 started its student from ImageNet-pretrained weights, so it is not
comparable to this from-scratch run.
"""
from configs import common


def get_config(arg=None):
  return common.distill_config("imagenet2012", "tat", arg, "resnet34_imagenet",
                               "resnet18_imagenet")
