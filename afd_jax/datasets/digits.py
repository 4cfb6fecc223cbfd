"""TFDS builder `digits`: scikit-learn's bundled 8×8 digits as 32×32 RGB images.

The 1,797 images of `sklearn.datasets.load_digits` (grey levels 0..16) are scaled to
0..255, bilinearly resized to 32×32 and replicated into 3 channels, so models written for
CIFAR run on them unchanged. The data ships inside scikit-learn, so `download_and_prepare`
works offline. Splits: a stratified 80% / 20% `train` / `test` split with a fixed seed
(1,437 / 360 images).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds

from afd_jax.datasets import image_label

IMAGE_SIZE = 32
NUM_CLASSES = 10
TEST_FRACTION = 0.2
SPLIT_SEED = 0
# sklearn's digits are 4-bit grey levels.
_MAX_GREY = 16.0


def _load_images() -> tuple[np.ndarray, np.ndarray]:
  """All digits as uint8 (N, 32, 32, 3) images and int64 (N,) labels, N = 1797."""
  import tensorflow as tf  # only needed while generating
  from sklearn import datasets

  digits = datasets.load_digits()
  grey = digits.images.astype(np.float32) * (255.0 / _MAX_GREY)  # (N, 8, 8)
  big = tf.image.resize(grey[..., None], (IMAGE_SIZE, IMAGE_SIZE), method="bilinear")
  big = np.clip(np.round(big.numpy()), 0, 255).astype(np.uint8)  # (N, 32, 32, 1)
  return np.repeat(big, 3, axis=-1), digits.target.astype(np.int64)


class Digits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's handwritten digits, 32×32 RGB, 10 classes."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def _info(self) -> tfds.core.DatasetInfo:
    return image_label.dataset_info(
        self,
        __doc__,
        "https://archive.ics.uci.edu/dataset/80",
        "UCI ML hand-written digits datasets (Alpaydin & Kaynak, 1998).",
        num_classes=NUM_CLASSES,
        image_shape=(IMAGE_SIZE, IMAGE_SIZE, 3))

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    """Stratified, seeded train/test split of the bundled data (nothing is downloaded)."""
    del dl_manager
    from sklearn.model_selection import train_test_split

    images, labels = _load_images()
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=TEST_FRACTION, stratify=labels,
        random_state=SPLIT_SEED)
    return {
        "train": self._generate_examples(images, labels, np.sort(train_idx)),
        "test": self._generate_examples(images, labels, np.sort(test_idx)),
    }

  def _generate_examples(self, images: np.ndarray, labels: np.ndarray,
                         indices: np.ndarray) -> Iterator[tuple[int, dict]]:
    """Yields (index in load_digits, example) for the given indices."""
    for i in indices:
      yield int(i), {"image": images[i], "label": int(labels[i])}
