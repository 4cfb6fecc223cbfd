"""DeepLabV3+ on COCOStuff-10k trained with cross-entropy only: the ResNet-101 teacher,
or a student baseline (``model=resnet18|mobilenetv2``).

    python -m afd_jax.main --config=configs/cocostuff10k/teacher.py \
        --workdir=runs/cocostuff10k/deeplabv3p_resnet101

The teacher recipe is the TaT release's ``train_cocostuff10k_baseline.sh``: ResNet-101,
lr 0.004, batch 16, crop 513, the ``poly`` schedule, 200 epochs, Nesterov SGD (momentum
0.9, wd 5e-4), head ×10. The release also publishes that teacher's weights (its README),
importable with ``python -m afd_jax.import_torch --model=deeplabv3p_resnet101
--num_classes=<classes of the cocostuff10k dataset> --checkpoint=<file>``. Student
baselines: the TaT COCOStuff scripts' recipes (ResNet-18: lr 0.01 batch 16; MobileNetV2:
lr 0.007 batch 12; cos, 100 epochs). ImageNet weights in ``pretrained/`` as for VOC
(`configs/voc/teacher.py`).
"""
import ml_collections

from configs import common


def get_config(arg=None) -> ml_collections.ConfigDict:
  """``model=resnet101|resnet18|mobilenetv2[,runlocal]``."""
  a = common.parse_arg(arg, model="resnet101")
  c = common.seg_teacher_config("cocostuff10k", arg)
  if a.model == "resnet101":
    c.optim.lr = 0.004
    c.schedule.update(dict(name="poly", num_epochs=200))
  elif a.model == "resnet18":
    c.optim.lr = 0.01
  else:
    c.optim.lr = 0.007
    c.batch_size = c.eval_batch_size = 12
  if a.runlocal:
    c = common.seg_runlocal(c)
  return c
