"""TFDS builder `digits_seg`: an offline semantic-segmentation toy built from sklearn's digits.

Each example is a 48×48 RGB canvas with 1–2 of scikit-learn's 8×8 handwritten digits,
bilinearly upscaled to 24–36 px and alpha-blended in a random light colour at a random
position (later digits on top) over a darker textured background (two random colour
gradients, a random sinusoid and pixel noise). Every pixel is labelled: 0 = background,
``d + 1`` for digit ``d`` where the digit's ink is >= 0.5, and 255 (ignore) on the soft
rim where its ink is in [0.15, 0.5): the analogue of VOC's boundary band. 11 classes.

The sizes are chosen for a CPU-sized DeepLab learning in minutes: a digit spans 3–4.5
cells of the stride-8 feature map, so its class is read from the backbone's deepest
features as a VOC object is from a ResNet's. `render` also draws the single-digit 32×32
canvases of `digits_canvas`, the classification data its backbones are pretrained on.

Deterministic: each split draws from its own seeded generator, and its digits come from
`digits`' stratified 80% / 20% split of the 1,797 glyphs (train canvases use only train
glyphs). Splits ``train`` (1,000) and ``test`` (200): small enough for a tiny DeepLab to
train on a CPU in minutes. Built from data shipped with scikit-learn: prepares offline.
"""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import tensorflow_datasets as tfds

from afd_jax.datasets import digits, segmentation

CANVAS = 48
NUM_CLASSES = 11  # background + 10 digits
SPLIT_SIZES = {"train": 1000, "test": 200}
DIGIT_SIDES = (24, 36)  # inclusive range of a placed digit's side, px
MAX_DIGITS = 2
BACKGROUND = (0, 110)  # range of the background gradients' colour values
INK_COLOUR = (190, 255)  # range of a digit's colour values
INK, RIM = 0.5, 0.15  # ink >= INK: the digit's class; RIM <= ink < INK: ignore (255)
SEED = 2024


def _glyphs() -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
  """sklearn's digits as float (N, 8, 8) ink in [0, 1], int (N,) labels and the indices
  of `digits`' stratified train / test split."""
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  from sklearn.model_selection import train_test_split  # pylint: disable=g-import-not-at-top
  data = datasets.load_digits()
  train, test = train_test_split(np.arange(len(data.target)), test_size=digits.TEST_FRACTION,
                                 stratify=data.target, random_state=digits.SPLIT_SEED)
  return (data.images / data.images.max(), data.target,
          {"train": np.sort(train), "test": np.sort(test)})


def _upscale(glyph: np.ndarray, side: int) -> np.ndarray:
  """Bilinear (half-pixel centres, edge clamped) (8, 8) -> (side, side)."""
  n = glyph.shape[0]
  x = np.clip((np.arange(side) + 0.5) * n / side - 0.5, 0, n - 1)
  lo = np.floor(x).astype(int)
  hi, t = np.minimum(lo + 1, n - 1), x - lo
  rows = glyph[lo] * (1 - t)[:, None] + glyph[hi] * t[:, None]
  return rows[:, lo] * (1 - t) + rows[:, hi] * t


def _background(rng: np.random.Generator, canvas: int) -> np.ndarray:
  """float (canvas, canvas, 3) in [0, 255]: gradients + a sinusoid + noise."""
  yy, xx = np.meshgrid(np.linspace(0, 1, canvas), np.linspace(0, 1, canvas), indexing="ij")
  c0, c1 = rng.uniform(*BACKGROUND, (2, 3))
  angle, freq, phase = rng.uniform(0, np.pi), rng.uniform(2, 8), rng.uniform(0, 2 * np.pi)
  ramp = (np.cos(angle) * yy + np.sin(angle) * xx)[..., None] / 1.5
  wave = 20 * np.sin(2 * np.pi * freq * (yy * np.sin(angle) - xx * np.cos(angle)) + phase)
  image = c0 * (1 - ramp) + c1 * ramp + wave[..., None]
  return np.clip(image + rng.normal(0, 12, image.shape), 0, 255)


def render(rng: np.random.Generator, ink: np.ndarray, labels: np.ndarray,
           pool: np.ndarray, canvas: int = CANVAS, max_digits: int = MAX_DIGITS,
           sides: tuple[int, int] = DIGIT_SIDES) -> tuple[np.ndarray, np.ndarray]:
  """One canvas: uint8 (canvas, canvas, 3) image and uint8 (canvas, canvas) labels.

  Args:
    rng: the split's generator (consumed).
    ink: float (N, 8, 8) glyph ink in [0, 1]; labels: int (N,) their digits.
    pool: indices of the glyphs this split may use.
    canvas, max_digits, sides: the canvas's side, its most digits (at least one), the
      inclusive range of a digit's side.
  """
  image = _background(rng, canvas)
  label = np.zeros((canvas, canvas), np.uint8)
  for _ in range(rng.integers(1, max_digits + 1)):
    g = pool[rng.integers(len(pool))]
    side = int(rng.integers(sides[0], sides[1] + 1))
    y, x = rng.integers(0, canvas - side + 1, 2)
    colour = rng.uniform(*INK_COLOUR, 3)
    alpha = _upscale(ink[g], side)
    region = (slice(y, y + side), slice(x, x + side))
    image[region] = image[region] * (1 - alpha[..., None]) + colour * alpha[..., None]
    label[region] = np.where(alpha >= INK, labels[g] + 1,
                             np.where(alpha >= RIM, segmentation.IGNORE_LABEL, label[region]))
  return np.round(image).astype(np.uint8), label


Draw = Callable[[np.random.Generator, np.ndarray, np.ndarray, np.ndarray, str, int], dict]


def drawn_splits(seed: int, sizes: dict[str, int], draw: Draw
                 ) -> dict[str, Iterator[tuple[int, dict]]]:
  """Each split's ``(index, example)`` stream, drawn in order from its own generator
  (``default_rng([seed, position of the split in sizes])``) with `digits`' glyphs of that
  split: ``draw(rng, ink, labels, pool, split, index) -> example``."""
  ink, labels, pools = _glyphs()

  def examples(split: str) -> Iterator[tuple[int, dict]]:
    rng = np.random.default_rng([seed, list(sizes).index(split)])
    for i in range(sizes[split]):
      yield i, draw(rng, ink, labels, pools[split], split, i)

  return {split: examples(split) for split in sizes}


def _example(rng: np.random.Generator, ink: np.ndarray, labels: np.ndarray,
             pool: np.ndarray, split: str, i: int) -> dict:
  image, label = render(rng, ink, labels, pool)
  return segmentation.example(f"{split}_{i:04d}", image, label, NUM_CLASSES,
                              f"digits_seg {split} #{i}")


class DigitsSeg(tfds.core.GeneratorBasedBuilder):
  """1–2 sklearn digits on a textured 48×48 canvas, per-pixel labels, 11 classes."""

  VERSION = tfds.core.Version("2.0.0")
  RELEASE_NOTES = {"1.0.0": "64×64 canvases, 1–3 digits of 16–28 px, light or dark ink.",
                   "2.0.0": "48×48 canvases, 1–2 digits of 24–36 px, light ink on a "
                            "darker background."}

  def _info(self) -> tfds.core.DatasetInfo:
    return segmentation.dataset_info(
        self, __doc__, "https://archive.ics.uci.edu/dataset/80",
        "UCI ML hand-written digits datasets (Alpaydin & Kaynak, 1998).",
        num_classes=NUM_CLASSES, image_shape=(CANVAS, CANVAS))

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    """Both splits generated from the bundled glyphs (nothing is downloaded)."""
    del dl_manager
    return {split: self._generate_examples(examples)
            for split, examples in drawn_splits(SEED, SPLIT_SIZES, _example).items()}

  def _generate_examples(self, examples: Iterator[tuple[int, dict]]
                         ) -> Iterator[tuple[int, dict]]:
    """Yields the split's (index, example) pairs, drawn in order."""
    yield from examples
