"""TFDS builders of this project; importing this package registers them with TFDS."""
from afd_jax.datasets import digits  # registers `digits`
from afd_jax.datasets import mit67  # registers `mit67`
from afd_jax.datasets import stanford40  # registers `stanford40`

# Builders reading archives a person downloads by hand: name -> (files, where to get them).
MANUAL_DOWNLOADS = {
    "mit67": (mit67.MANUAL_FILES, mit67.SOURCE),
    "stanford40": (stanford40.MANUAL_FILES, stanford40.SOURCE),
}
