"""ImageNet (ILSVRC2012) ResNet18 student baseline, cross-entropy only.

    python -m afd_jax.main --config=configs/imagenet/resnet18.py --workdir=runs/imagenet2012/resnet18_imagenet

Same schedule as configs/imagenet/resnet34.py. Expected top-1: about 69.8 % (torchvision's
reference recipe); the AFD reproduction quoted in the spec reports a 70.8 baseline.
"""
from afd_jax import config_defaults


def get_config():
  return config_defaults.teacher_config("resnet18_imagenet", "imagenet2012")
