"""TaT on COCOStuff-10k: DeepLabV3+ ResNet-101 → ResNet-18 or MobileNetV2.

    python -m afd_jax.main --config=configs/cocostuff10k/tat.py:student=resnet18 \
        --workdir=runs/cocostuff10k/tat_resnet18

Recipes: the release's ``train_cocostuff10k_resnet18.sh`` /
``train_cocostuff10k_mobilenet.sh`` (TaT-seg), otherwise as `configs/voc/tat.py`; the
teacher is the release's own COCOStuff-10k ResNet-101 (`configs/cocostuff10k/teacher.py`).

| student | lr | batch | α / β / γ | n = m | heads | anchor | published |
|---|---|---|---|---|---|---|---|
| resnet18 | 0.01 | 16 | 0.6 / 1.0 / 1.0 | 32 | 512 | 32 | +2.42 mIoU over the student (paper) |
| mobilenetv2 | 0.007 | 12 | 0.4 / 1.0 / 1.0 | 16 | 64 | 32 | +1.76 mIoU over the student (paper) |
"""
import ml_collections

from configs import common
from configs.voc import tat as voc_tat

RECIPES = {
    "resnet18": dict(lr=0.01, batch=16, weight=0.6, beta=1.0, gamma=1.0, n=32, heads=512,
                     anchor=32),
    "mobilenetv2": dict(lr=0.007, batch=12, weight=0.4, beta=1.0, gamma=1.0, n=16,
                        heads=64, anchor=32),
}


def get_config(arg=None) -> ml_collections.ConfigDict:
  """``student=resnet18|mobilenetv2[,runlocal]``."""
  return common.seg_distill_config("cocostuff10k", "tat", arg,
                                   voc_tat.tat_recipe(RECIPES))
