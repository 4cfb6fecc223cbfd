"""TFDS builder `digits_canvas`: one digit drawn as on a `digits_seg` canvas, labelled
by the digit: the classification data `digits_seg`'s DeepLab backbones are pretrained on.

Each example is a 32×32 RGB canvas with exactly one of scikit-learn's 8×8 handwritten
digits, bilinearly upscaled to 20–30 px and alpha-blended in a random light colour at a
random position over `digits_seg`'s textured background (`digits_seg.render`). 10 classes.
It stands where ImageNet stands in the segmentation release (a backbone pretrained by
classification on the kind of images it will segment); `digits`' white-on-black glyphs
do not transfer to the canvases.

Deterministic, from its own seeded generator per split; the train canvases use only the
train glyphs of `digits`' stratified split, the test canvases only its test glyphs (the
same split `digits_seg` uses). Splits ``train`` (3,000) and ``test`` (600).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds

from afd_jax.datasets import digits_seg, image_label

CANVAS = 32
NUM_CLASSES = 10
SPLIT_SIZES = {"train": 3000, "test": 600}
DIGIT_SIDES = (20, 30)
SEED = 2025


def _example(rng: np.random.Generator, ink: np.ndarray, labels: np.ndarray,
             pool: np.ndarray, split: str, i: int) -> dict:
  del split, i
  image, label = digits_seg.render(rng, ink, labels, pool, canvas=CANVAS, max_digits=1,
                                   sides=DIGIT_SIDES)
  digit = label[(label != 0) & (label != 255)]
  return {"image": image, "label": int(np.bincount(digit).argmax()) - 1}


class DigitsCanvas(tfds.core.GeneratorBasedBuilder):
  """One sklearn digit on a textured 32×32 canvas, 10 classes."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def _info(self) -> tfds.core.DatasetInfo:
    return image_label.dataset_info(
        self, __doc__, "https://archive.ics.uci.edu/dataset/80",
        "UCI ML hand-written digits datasets (Alpaydin & Kaynak, 1998).",
        num_classes=NUM_CLASSES, image_shape=(CANVAS, CANVAS, 3))

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    """Both splits drawn from the bundled glyphs (nothing is downloaded)."""
    del dl_manager
    return {split: self._generate_examples(examples)
            for split, examples in digits_seg.drawn_splits(SEED, SPLIT_SIZES, _example).items()}

  def _generate_examples(self, examples: Iterator[tuple[int, dict]]
                         ) -> Iterator[tuple[int, dict]]:
    """Yields the split's (index, example) pairs, drawn in order."""
    yield from examples
