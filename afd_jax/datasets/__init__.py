"""TFDS builders of this project; importing this package registers them with TFDS."""
from afd_jax.datasets import digits  # noqa: F401  (registers `digits`)
