"""DeepLabV3+ on Pascal VOC 2012 + SBD trained with cross-entropy only: the ResNet-101
teacher, or a student baseline (``model=resnet18|mobilenetv2``).

    python -m afd_jax.main --config=configs/voc/teacher.py --workdir=runs/voc/deeplabv3p_resnet101
    python -m afd_jax.main --config=configs/voc/teacher.py:model=resnet18 \
        --workdir=runs/voc/deeplabv3p_resnet18

The TaT release does not train its VOC teacher: it loads jfzhang95's released
DeepLabV3+ ResNet-101 (``deeplab-resnet.pth.tar``, 78.43 mIoU on VOC val at output stride
16, jfzhang95/pytorch-deeplab-xception README), which imports as

    python -m afd_jax.import_torch --model=deeplabv3p_resnet101 --num_classes=21 \
        --checkpoint=pretrained/deeplab-resnet.pth.tar --workdir=runs/voc/deeplabv3p_resnet101

Training it here follows jfzhang95's ``train_voc.sh``: lr 0.007, 50 epochs, batch 16,
``--use-sbd``, the ``poly`` schedule (train.py's default), SGD momentum 0.9 without
Nesterov (train.py's default), wd 5e-4, head ×10, crop 513. The student baselines use the
TaT scripts' student recipe (cos, Nesterov, 100 epochs; ResNet-18: lr 0.007 batch 16,
MobileNetV2: lr 0.004 batch 12). Every backbone starts from its ImageNet weights
(``model.init``): download torchvision's ``resnet101-5d3b4d8f.pth`` /
``resnet18-5c106cde.pth`` (https://download.pytorch.org/models/) or the release's
MobileNetV2 file (``mobilenet_v2-6a65762b.pth``) into ``pretrained/``.
"""
import ml_collections

from configs import common


def get_config(arg=None) -> ml_collections.ConfigDict:
  """``model=resnet101|resnet18|mobilenetv2[,runlocal]``."""
  a = common.parse_arg(arg, model="resnet101")
  c = common.seg_teacher_config("voc", arg)
  if a.model == "resnet101":
    c.optim.update(dict(lr=0.007, nesterov=False))
    c.schedule.update(dict(name="poly", num_epochs=50))
  elif a.model == "mobilenetv2":
    c.optim.lr = 0.004
    c.batch_size = c.eval_batch_size = 12
  if a.runlocal:
    c = common.seg_runlocal(c)
  return c
