"""The TaT segmentation release's comparison methods on Pascal VOC 2012 + SBD:
DeepLabV3+ ResNet-101 → ResNet-18 or MobileNetV2.

    python -m afd_jax.main --config=configs/voc/baselines.py:method=ickd,student=resnet18 \
        --workdir=runs/voc/ickd_resnet18

``method``: ``seg_kd``, ``seg_fitnet``, ``seg_at``, ``ickd`` (the release's
``distiller_comp.py`` ``--comp kd|fitnet|at|ch``), ``seg_reviewkd``
(``distiller_reviewkd.py``), or ``kd`` (Hinton KD on the per-pixel logits, not in the
release). Each method's defaults are the release's (its module docstring); the recipe is
``train_comp.sh`` / ``train_reviewkd.sh``: the ``poly`` schedule, lr 0.007, batch 16
(MobileNetV2: 12, the reviewkd script's note), crop 513, Nesterov SGD, 100 epochs. The
release's scripts run these on COCOStuff-10k; the same recipe is used for VOC here.
"""
import ml_collections

from configs import common


def comp_recipe(a, c):
  """train_comp.sh / train_reviewkd.sh: poly, lr 0.007, batch 16 (MobileNetV2: 12)."""
  c.optim.lr = 0.007
  c.schedule.name = "poly"
  c.batch_size = c.eval_batch_size = 12 if a.student == "mobilenetv2" else 16
  return {}


def config(dataset: str, arg) -> ml_collections.ConfigDict:
  a = common.parse_arg(arg, student="resnet18", method="seg_kd")
  rest = ",".join(f"{k}={v}" if not isinstance(v, bool) else k
                  for k, v in a.items() if k != "method" and v is not False)
  return common.seg_distill_config(dataset, a.method, rest, comp_recipe)


def get_config(arg=None) -> ml_collections.ConfigDict:
  """``method=<name>,student=resnet18|mobilenetv2[,runlocal]``."""
  return config("voc", arg)
