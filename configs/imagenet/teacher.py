"""ImageNet (ILSVRC2012), one ResNet trained with cross-entropy only.

    python -m afd_jax.main --config=configs/imagenet/teacher.py:model=resnet34_imagenet \
        --workdir=runs/imagenet2012/resnet34_imagenet

Needs imagenet2012 prepared by TFDS (manual download; see docs/datasets.md). Expected top-1:
resnet34 73.31, resnet18 69.75 (CRD Table 3, torchvision's recipe).

Schedule: torchvision's reference recipe (``references/classification``: SGD lr 0.1,
wd 1e-4, ``StepLR(step_size=30)`` stepped after each epoch), i.e. ×0.1 after 30/60/90
finished epochs; the last partial batch of each epoch is dropped here
(``data.last_batch='drop'``: 5,004 steps of 256 instead of 5,005).
"""
from configs import common


def get_config(arg=None):
  return common.teacher_config("imagenet2012", arg, model="resnet34_imagenet")
