"""Semantic-segmentation transforms of the tf.data path: the TaT segmentation release's.

The release (``dataloaders/custom_transforms.py``, used by ``datasets/pascal.py``, ``sbd.py``
and ``cocostuff.py``) trains on

  RandomHorizontalFlip -> RandomScaleCrop(base_size, crop_size, fill) -> RandomGaussianBlur
  -> Normalize(ImageNet mean, std)

and evaluates on ``FixedResize(crop_size)`` (image and label warped to crop × crop, no
aspect kept) -> Normalize. Here, as TF *stateless* ops of a (2,) seed:

* flip: image and label mirrored together with probability 1/2;
* scale: the short side drawn uniformly from the integers ``[int(base/2), int(2·base)]``,
  the long side ``floor(long · short / short_side)`` (the release's ``int(1.0 * h * ow / w)``);
  the image resized bilinearly with antialiasing (PIL's BILINEAR), the label with PIL's
  NEAREST rule (source pixel ``floor((x + 0.5) · in / out)``);
* pad the bottom and right up to the crop: image 0, label ``label_fill``;
* crop: a uniformly placed crop × crop window;
* blur: with probability 1/2, PIL's ``GaussianBlur(radius=r)``, ``r ~ U[0, 1)``, restated
  exactly (its 3 extended-box passes per axis, total variance r², edges replicated).

Images stay float32 between the ops (PIL rounds to uint8 after each). Images are uint8
(H, W, 3) in, float32 [0, 255] out; labels uint8/int32 (H, W) in, int32 out. TensorFlow is
imported inside the functions, as in `afd_jax.transforms`.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from afd_jax import transforms

if TYPE_CHECKING:  # annotations only
  import tensorflow as tf

IGNORE_LABEL = 255
FLIP_PROB = 0.5
BLUR_PROB, BLUR_MAX_RADIUS = 0.5, 1.0  # the release: if random() < 0.5: radius=random()
_BLUR_PASSES = 3  # PIL's box passes per axis
MAX_EXACT_RADIUS = 1.2  # PIL's box stays 3 taps wide below sqrt(1.5) ~ 1.22
# The release's: short side in [int(base · 0.5), int(base · 2.0)]
# (``config.data.scale_range`` chooses another).
SCALE_RANGE = (0.5, 2.0)


def check_scale_range(scale_range) -> tuple[float, float]:
  """`scale_range` as a (low, high) tuple of floats.

  Raises:
    ValueError: not two numbers with 0 < low <= high.
  """
  try:
    lo, hi = (float(v) for v in scale_range)
  except (TypeError, ValueError):
    lo = hi = None
  if lo is None or not 0 < lo <= hi:
    raise ValueError(f"config.data.scale_range={scale_range!r}; accepted: two numbers "
                     f"(low, high) with 0 < low <= high, e.g. the release's {SCALE_RANGE}")
  return lo, hi


def check_sizes(crop_size: int, base_size: int, scale_range=SCALE_RANGE) -> None:
  """Raises ValueError unless ``crop_size >= 1`` and the smallest short side
  ``int(base_size · scale_range[0])`` is >= 1."""
  if int(crop_size) < 1:
    raise ValueError(f"Segmentation crop size (config.data.image_size) must be >= 1, got "
                     f"{crop_size}")
  if int(base_size * scale_range[0]) < 1:
    raise ValueError(f"config.data.base_size={base_size} is too small: the short side is "
                     f"drawn from [int(base_size·{scale_range[0]}), "
                     f"int(base_size·{scale_range[1]})], which must start at >= 1")


def decode(image_bytes: tf.Tensor, label_bytes: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """Encoded image and PNG label map -> uint8 (H, W, 3), int32 (H, W)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
  label = tf.io.decode_png(label_bytes, channels=1)[..., 0]
  return image, tf.cast(label, tf.int32)


def resize_nearest(label: tf.Tensor, height, width) -> tf.Tensor:
  """(H, W) -> (height, width) exactly as PIL's NEAREST resize.

  PIL takes source pixel ``floor(x_o)`` with ``x_o`` the float64 running sum
  ``in/out · 0.5 + in/out + in/out + ...``; at exact ties (``(x + .5) · in / out`` an
  integer) that sum may fall just below, so ``floor((x + .5) · in / out)`` would differ.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  def source(out_size, in_size):
    out_size, in_size = tf.cast(out_size, tf.int32), tf.cast(in_size, tf.int32)
    step = tf.cast(in_size, tf.float64) / tf.cast(out_size, tf.float64)
    running = tf.math.cumsum(tf.concat([[step * 0.5], tf.fill([out_size - 1], step)], 0))
    return tf.minimum(tf.cast(running, tf.int32), in_size - 1)

  shape = tf.shape(label)
  label = tf.gather(label, source(height, shape[0]), axis=0)
  return tf.gather(label, source(width, shape[1]), axis=1)


def random_flip(image: tf.Tensor, label: tf.Tensor, seed: tf.Tensor
                ) -> tuple[tf.Tensor, tf.Tensor]:
  """Both mirrored left-right with probability `FLIP_PROB` (the same draw)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  flip = tf.random.stateless_uniform([], seed) < FLIP_PROB
  return tf.cond(flip, lambda: (image[:, ::-1], label[:, ::-1]), lambda: (image, label))


def random_scale_crop(image: tf.Tensor, label: tf.Tensor, seed: tf.Tensor, base_size: int,
                      crop_size: int, label_fill: int = IGNORE_LABEL,
                      scale_range: tuple[float, float] = SCALE_RANGE
                      ) -> tuple[tf.Tensor, tf.Tensor]:
  """The release's RandomScaleCrop: random short side, pad bottom/right, random crop.

  Args:
    image: uint8 or float (H, W, 3); label: int32 (H, W).
    seed: int (2,) stateless seed.
    base_size: the short side is uniform in ``[int(base·lo), int(base·hi)]``.
    crop_size: output side.
    label_fill: label of the padding (the image's is 0).
    scale_range: (lo, hi); the release's (0.5, 2.0).

  Returns:
    float32 (crop, crop, 3) in [0, 255] and int32 (crop, crop).
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  check_sizes(crop_size, base_size, scale_range)
  scale_seed, y_seed, x_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
  short = tf.random.stateless_uniform(
      [], scale_seed, minval=int(base_size * scale_range[0]),
      maxval=int(base_size * scale_range[1]) + 1, dtype=tf.int64)
  hw = tf.cast(tf.shape(label), tf.int64)
  h, w = hw[0], hw[1]
  oh = tf.where(h > w, h * short // w, short)
  ow = tf.where(h > w, short, w * short // h)
  oh, ow = tf.cast(oh, tf.int32), tf.cast(ow, tf.int32)
  image = tf.image.resize(image, tf.stack([oh, ow]), method="bilinear", antialias=True)
  label = resize_nearest(label, oh, ow)
  pad_h, pad_w = tf.maximum(crop_size - oh, 0), tf.maximum(crop_size - ow, 0)
  image = tf.pad(image, [[0, pad_h], [0, pad_w], [0, 0]])
  label = tf.pad(label, [[0, pad_h], [0, pad_w]], constant_values=label_fill)
  y = tf.random.stateless_uniform([], y_seed, minval=0, maxval=oh + pad_h - crop_size + 1,
                                  dtype=tf.int32)
  x = tf.random.stateless_uniform([], x_seed, minval=0, maxval=ow + pad_w - crop_size + 1,
                                  dtype=tf.int32)
  image = tf.slice(image, tf.stack([y, x, 0]), [crop_size, crop_size, 3])
  label = tf.slice(label, tf.stack([y, x]), [crop_size, crop_size])
  return image, label


def gaussian_blur(image: tf.Tensor, radius: tf.Tensor) -> tf.Tensor:
  """PIL's ``GaussianBlur(radius)`` for radius < `MAX_EXACT_RADIUS`, on float (H, W, C).

  PIL blurs with 3 passes of an "extended box" per axis whose variance sums to radius²
  (Gwosdek et al. 2011): for radius < 1.22 the box is the 3 taps ``[a, 1, a] / (1 + 2a)``
  with ``a = radius² / (6 - 2 radius²)``, each pass replicating the edge pixels. Same
  passes here, in float32 (PIL rounds to uint8 in between); radius 0 is the identity.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  r2 = tf.square(tf.clip_by_value(tf.cast(radius, tf.float32), 0.0, MAX_EXACT_RADIUS))
  a = r2 / (6.0 - 2.0 * r2)
  side, centre = a / (1.0 + 2.0 * a), 1.0 / (1.0 + 2.0 * a)

  def shifted(x, axis, d):  # x[i + d] along `axis`, the edge pixel repeated
    n = tf.shape(x)[axis]
    return tf.gather(x, tf.clip_by_value(tf.range(n) + d, 0, n - 1), axis=axis)

  for axis in (1, 0):  # PIL: the horizontal passes, then the vertical ones
    for _ in range(_BLUR_PASSES):
      image = centre * image + side * (shifted(image, axis, -1) + shifted(image, axis, 1))
  return image


def random_gaussian_blur(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """With probability `BLUR_PROB`, `gaussian_blur` of radius ~ U[0, BLUR_MAX_RADIUS)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  apply_seed, radius_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  radius = tf.random.stateless_uniform([], radius_seed) * BLUR_MAX_RADIUS
  return tf.cond(tf.random.stateless_uniform([], apply_seed) < BLUR_PROB,
                 lambda: gaussian_blur(image, radius), lambda: image)


def train_transform(image: tf.Tensor, label: tf.Tensor, seed: tf.Tensor, crop_size: int,
                    base_size: int, flip: bool = True, label_fill: int = IGNORE_LABEL,
                    scale_range: tuple[float, float] = SCALE_RANGE
                    ) -> tuple[tf.Tensor, tf.Tensor]:
  """The release's training transform, before normalisation: flip, scale-crop, blur.

  Args:
    image: uint8 (H, W, 3); label: int (H, W).
    seed: int (2,) stateless seed.
    crop_size, base_size, label_fill, scale_range: as `random_scale_crop`.
    flip: whether to flip (the release always does; not for digits).

  Returns:
    float32 (crop, crop, 3) in [0, 255] and int32 (crop, crop).
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  flip_seed, crop_seed, blur_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
  label = tf.cast(label, tf.int32)
  if flip:
    image, label = random_flip(image, label, flip_seed)
  image, label = random_scale_crop(image, label, crop_seed, base_size, crop_size, label_fill,
                                   scale_range)
  return random_gaussian_blur(image, blur_seed), label


def fixed_resize(image: tf.Tensor, label: tf.Tensor, size: int
                 ) -> tuple[tf.Tensor, tf.Tensor]:
  """The release's eval transform FixedResize: both to (size, size), image bilinear
  (antialiased, as PIL), label nearest (PIL's rule).

  Returns:
    float32 (size, size, 3) in [0, 255] and int32 (size, size).
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  check_sizes(size, 2)
  image = tf.image.resize(image, (size, size), method="bilinear", antialias=True)
  return image, resize_nearest(tf.cast(label, tf.int32), size, size)


@dataclasses.dataclass(frozen=True)
class SegPreprocessing:
  """How one segmentation dataset's encoded (image, label map) become training pairs.

  Attributes:
    mean, std: per-channel statistics of pixels / 255 (`transforms.normalise`).
    default_image_size: the crop side when ``config.data.image_size`` is unset.
    default_base_size: the scale's base when ``config.data.base_size`` is unset.
    flip: whether training flips.
    label_fill: label of the training padding when ``config.data.label_fill`` is unset.
  """
  mean: tuple[float, float, float]
  std: tuple[float, float, float]
  default_image_size: int
  default_base_size: int
  flip: bool = True
  label_fill: int = IGNORE_LABEL

  def train(self, image_bytes: tf.Tensor, label_bytes: tf.Tensor, seed: tf.Tensor,
            size: int, base_size: int, label_fill: int,
            scale_range: tuple[float, float] = SCALE_RANGE) -> tuple[tf.Tensor, tf.Tensor]:
    """Encoded pair -> float32 (size, size, 3) in [0, 255], int32 (size, size)."""
    image, label = decode(image_bytes, label_bytes)
    return train_transform(image, label, seed, size, base_size, self.flip, label_fill,
                           scale_range)

  def eval(self, image_bytes: tf.Tensor, label_bytes: tf.Tensor, size: int
           ) -> tuple[tf.Tensor, tf.Tensor]:
    """Encoded pair -> float32 (size, size, 3) in [0, 255], int32 (size, size)."""
    return fixed_resize(*decode(image_bytes, label_bytes), size)


_RELEASE = dict(mean=transforms.IMAGENET_MEAN, std=transforms.IMAGENET_STD,
                default_image_size=513, default_base_size=513)
# The preprocessings by name (``config.data.augment``).
SEG_PREPROCESSING: dict[str, SegPreprocessing] = {
    # The release pads VOC labels with RandomScaleCrop's default fill=0 (background) and
    # COCO-Stuff's with fill=255 (ignore).
    "voc_aug": SegPreprocessing(**_RELEASE, label_fill=0),
    "cocostuff10k": SegPreprocessing(**_RELEASE, label_fill=IGNORE_LABEL),
    # The same transform scaled to the 48×48 canvas; digits are not mirror-symmetric.
    "digits_seg": SegPreprocessing(mean=transforms.IMAGENET_MEAN, std=transforms.IMAGENET_STD,
                                   default_image_size=48, default_base_size=48, flip=False),
}
# Each dataset's own, used when ``config.data.augment`` is unset.
DATASET_SEG_PREPROCESSING: dict[str, str] = {name: name for name in SEG_PREPROCESSING}


def get_preprocessing(name: str, augment: str | None = None) -> SegPreprocessing:
  """The preprocessing `augment` names, or by default segmentation dataset `name`'s own.

  Raises:
    ValueError: an unknown `augment`, or `augment` None and a dataset without its own.
  """
  return SEG_PREPROCESSING[transforms.preprocessing_name(
      name, augment, SEG_PREPROCESSING, DATASET_SEG_PREPROCESSING)]
