"""The TaT segmentation release's comparison methods on COCOStuff-10k (its
``train_comp.sh`` and ``train_reviewkd.sh``, which run on this dataset): see
`configs/voc/baselines.py` for the methods and the recipe.

    python -m afd_jax.main \
        --config=configs/cocostuff10k/baselines.py:method=seg_at,student=resnet18 \
        --workdir=runs/cocostuff10k/seg_at_resnet18
"""
import ml_collections

from configs.voc import baselines


def get_config(arg=None) -> ml_collections.ConfigDict:
  """``method=<name>,student=resnet18|mobilenetv2[,runlocal]``."""
  return baselines.config("cocostuff10k", arg)
