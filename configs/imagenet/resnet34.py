"""ImageNet (ILSVRC2012) ResNet34 teacher, cross-entropy only.

    python -m afd_jax.main --config=configs/imagenet/resnet34.py --workdir=runs/imagenet2012/resnet34_imagenet

Needs imagenet2012 prepared by TFDS (manual download; see README). Schedule: 100 epochs,
SGD momentum 0.9, lr 0.1 x0.1 at 30/60/90, wd 1e-4, global batch 256, RandomResizedCrop 224
+ flip; eval resize 256 + centre crop 224. Expected top-1: about 73.3 % (torchvision's
reference recipe, the same schedule).
"""
from afd_jax import config_defaults


def get_config():
  return config_defaults.teacher_config("resnet34_imagenet", "imagenet2012")
