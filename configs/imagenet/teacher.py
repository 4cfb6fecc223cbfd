"""ImageNet (ILSVRC2012), one ResNet trained with cross-entropy only.

    python -m afd_jax.main --config=configs/imagenet/teacher.py:model=resnet34_imagenet \
        --workdir=runs/imagenet2012/resnet34_imagenet

Needs imagenet2012 prepared by TFDS (manual download; see README). Expected top-1:
resnet34 73.31, resnet18 69.75 (CRD Table 3, torchvision's recipe).
"""
from configs import common


def get_config(arg=None):
  return common.teacher_config("imagenet2012", arg, model="resnet34_imagenet")
