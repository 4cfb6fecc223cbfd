"""TFDS builders of this project; importing this package registers them with TFDS."""
from afd_jax.datasets import cocostuff10k  # registers `cocostuff10k` (segmentation)
from afd_jax.datasets import digits  # registers `digits`
from afd_jax.datasets import digits_canvas  # registers `digits_canvas`
from afd_jax.datasets import digits_seg  # registers `digits_seg` (segmentation)
from afd_jax.datasets import mit67  # registers `mit67`
from afd_jax.datasets import stanford40  # registers `stanford40`
from afd_jax.datasets import voc_aug  # registers `voc_aug` (segmentation)

# Builders reading archives a person downloads by hand: name -> (files, where to get them).
MANUAL_DOWNLOADS = {
    "mit67": (mit67.MANUAL_FILES, mit67.SOURCE),
    "stanford40": (stanford40.MANUAL_FILES, stanford40.SOURCE),
    "voc_aug": (voc_aug.MANUAL_FILES, voc_aug.SOURCE),
    "cocostuff10k": (cocostuff10k.MANUAL_FILES, cocostuff10k.SOURCE),
}
