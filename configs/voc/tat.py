"""TaT on Pascal VOC 2012 + SBD: DeepLabV3+ ResNet-101 → ResNet-18 or MobileNetV2, the
release's patch-group + anchor-point distillation of the decoder feature.

    python -m afd_jax.main --config=configs/voc/tat.py:student=resnet18 \
        --workdir=runs/voc/tat_resnet18

Recipes: the release's ``train_voc_resnet18.sh`` / ``train_voc_mobilenet.sh`` (TaT-seg,
sihaoevery): ``CE/B + α·Σ_b(β·L_patch + γ·L_anchor)_b / B``, Nesterov SGD, cos schedule
per iteration, 100 epochs, crop 513, the teacher in train mode.

| student | lr | batch | α / β / γ | n = m | heads | anchor | published mIoU |
|---|---|---|---|---|---|---|---|
| resnet18 | 0.007 | 16 | 0.1 / 1.0 / 0.4 | 16 | 64 | 32 | – |
| mobilenetv2 | 0.004 | 12 | 0.1 / 1.0 / 0.5 | 32 | 1024 | 64 | 75.76 (paper) |

The paper reports the MobileNetV2 student at 75.76 mIoU with TaT, +5.39 over the student
alone; no per-script number is released for the ResNet-18 student.
"""
import ml_collections

from configs import common

RECIPES = {
    "resnet18": dict(lr=0.007, batch=16, weight=0.1, beta=1.0, gamma=0.4, n=16, heads=64,
                     anchor=32),
    "mobilenetv2": dict(lr=0.004, batch=12, weight=0.1, beta=1.0, gamma=0.5, n=32,
                        heads=1024, anchor=64),
}


def tat_recipe(recipes):
  """The method fields of `recipes[student]`; sets the script's lr and batch size.

  ``runlocal`` (64×64 crops: a 16×16 decoder map instead of 129×129) divides the patch
  and anchor grids by 8, so that the same code path (release patch counts, heads cutting
  across patches) runs on the small map.
  """
  def recipe(a, c):
    r = recipes[a.student]
    c.optim.lr = r["lr"]
    c.batch_size = c.eval_batch_size = r["batch"]
    n, anchor = ((-(-r["n"] // 8), -(-r["anchor"] // 8)) if a.runlocal
                 else (r["n"], r["anchor"]))
    return dict(mode="hierarchical", weight=r["weight"], beta=r["beta"], gamma=r["gamma"],
                patch_grid=(n, n), heads=r["heads"], anchor_grid=(anchor, anchor))
  return recipe


def get_config(arg=None) -> ml_collections.ConfigDict:
  """``student=resnet18|mobilenetv2[,runlocal]``."""
  return common.seg_distill_config("voc", "tat", arg, tat_recipe(RECIPES))
