"""Image transforms of the tf.data path and the preprocessing registry.

Images are uint8 (H, W, 3) in, float32 (size, size, 3) in [0, 255] out; seeds are int
(2,) tensors for TF's stateless random ops, so every augmentation is a pure function of
its seed. TensorFlow is imported inside the transforms, only when the tf.data path runs:
the registry (statistics, which datasets flip) is TF-free for `afd_jax.device_data`.

A run's preprocessing is ``config.data.augment`` (a key of `PREPROCESSING`), unset: its
dataset's own (`DATASET_PREPROCESSING`); an unknown name, or a dataset without one of its
own and no ``augment``, is an error listing the accepted ones.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable, Iterable

if TYPE_CHECKING:  # annotations only: TensorFlow is imported where the tf.data path runs
  import tensorflow as tf

TrainFn = Callable[[Any, Any, int], Any]  # (image, seed (2,), size) -> tf.Tensor
EvalFn = Callable[[Any, int], Any]  # (image, size) -> tf.Tensor

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# Per-channel mean/std of the prepared `digits` train split (1,437 images, 32×32, pixels
# / 255), computed once with numpy over all its pixels; the 3 channels are equal (grey).
DIGITS_MEAN, DIGITS_STD = (0.3054, 0.3054, 0.3054), (0.3237, 0.3237, 0.3237)

CIFAR_PADDING = 4
# ImageNet convention: eval resizes the shorter side to 256 for a 224 centre crop.
CENTRE_CROP_FRACTION = 224 / 256


def _decode(image_bytes: tf.Tensor) -> tf.Tensor:
  """Encoded PNG/JPEG bytes -> uint8 (H, W, 3) (grey images are replicated to RGB)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf.io.decode_image(image_bytes, channels=3, expand_animations=False)


def _resize(image: tf.Tensor, height, width) -> tf.Tensor:
  """(H, W, 3) -> float32 (height, width, 3); exact identity when the size is unchanged."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  # Antialiased bilinear, as PIL/torchvision resize (the reference implementations).
  return tf.image.resize(image, (height, width), method="bilinear", antialias=True)


def pad_crop_flip(image: tf.Tensor, seed: tf.Tensor, image_size: int,
                  padding: int = CIFAR_PADDING, flip: bool = True) -> tf.Tensor:
  """CIFAR augmentation: zero-pad by `padding`, random `image_size` crop, random h-flip.

  Same as torchvision's ``RandomCrop(image_size, padding=4)`` + ``RandomHorizontalFlip``.

  Args:
    image: uint8 (H, W, 3); resized to (image_size, image_size) first if it differs.
    seed: int (2,) stateless seed.
    image_size: output side.
    padding: zero border added on each side before cropping.
    flip: whether to flip horizontally with probability 1/2.

  Returns:
    float32 (image_size, image_size, 3) in [0, 255]; the padding is black (0).
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  image = _resize(image, image_size, image_size)
  image = tf.pad(image, [[padding, padding], [padding, padding], [0, 0]])
  image = tf.image.stateless_random_crop(image, (image_size, image_size, 3), seed=crop_seed)
  return tf.image.stateless_random_flip_left_right(image, seed=flip_seed) if flip else image


def random_resized_crop_flip(image_bytes: tf.Tensor, seed: tf.Tensor,
                             image_size: int) -> tf.Tensor:
  """ImageNet augmentation: random-resized-crop (area 8–100%, aspect 3/4–4/3) + h-flip.

  Like torchvision's ``RandomResizedCrop(image_size)`` (10 attempts; if all fail, the
  whole image) + ``RandomHorizontalFlip``. JPEGs decode only the cropped window.

  Args:
    image_bytes: encoded image, scalar string.
    seed: int (2,) stateless seed.
    image_size: output side.

  Returns:
    float32 (image_size, image_size, 3) in [0, 255].
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  whole_image = tf.constant([0.0, 0.0, 1.0, 1.0], shape=(1, 1, 4))

  def crop_window(shape):
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape, bounding_boxes=whole_image, seed=crop_seed, min_object_covered=0.0,
        aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0), max_attempts=10,
        use_image_if_no_bounding_boxes=True)
    return begin, size

  def crop_jpeg():
    begin, size = crop_window(tf.io.extract_jpeg_shape(image_bytes))
    window = tf.stack([begin[0], begin[1], size[0], size[1]])
    return tf.io.decode_and_crop_jpeg(image_bytes, window, channels=3)

  def crop_other():
    image = _decode(image_bytes)
    begin, size = crop_window(tf.shape(image))
    return tf.slice(image, begin, size)

  image = tf.cond(tf.io.is_jpeg(image_bytes), crop_jpeg, crop_other)
  image = _resize(image, image_size, image_size)
  return tf.image.stateless_random_flip_left_right(image, seed=flip_seed)


def resize_centre_crop(image: tf.Tensor, image_size: int,
                       crop_fraction: float = CENTRE_CROP_FRACTION) -> tf.Tensor:
  """ImageNet eval: shorter side to ``image_size / crop_fraction`` (256), centre crop.

  Args:
    image: uint8 (H, W, 3).
    image_size: output side (224).
    crop_fraction: fraction of the resized shorter side kept.

  Returns:
    float32 (image_size, image_size, 3) in [0, 255].
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  shorter = round(image_size / crop_fraction)
  hw = tf.cast(tf.shape(image)[:2], tf.float32)
  new_hw = tf.cast(tf.round(hw * (shorter / tf.reduce_min(hw))), tf.int32)
  new_hw = tf.maximum(new_hw, image_size)  # rounding must not leave less than the crop
  image = _resize(image, new_hw[0], new_hw[1])
  top, left = (new_hw[0] - image_size) // 2, (new_hw[1] - image_size) // 2
  return tf.image.crop_to_bounding_box(image, top, left, image_size, image_size)


def normalise(image: tf.Tensor, mean: Iterable[float], std: Iterable[float]) -> tf.Tensor:
  """float32 (..., 3) in [0, 255] -> per-channel standardised ``(x / 255 - mean) / std``."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  mean = tf.constant(tuple(mean), tf.float32)
  std = tf.constant(tuple(std), tf.float32)
  return (image / 255.0 - mean) / std


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """How one dataset's encoded images become normalised float32 (size, size, 3) inputs.

  Attributes:
    train: (image_bytes, seed (2,), image_size) -> float32 (size, size, 3) in [0, 255].
    eval: (image_bytes, image_size) -> float32 (size, size, 3) in [0, 255].
    mean, std: per-channel statistics of pixels / 255 used by `normalise`.
    default_image_size: used when ``config_data.image_size`` is unset.
    pad_crop: whether `train` is `pad_crop_flip` (which `afd_jax.device_data` can also
      compute inside the jitted step).
    flip: whether that augmentation flips horizontally.
  """
  train: TrainFn
  eval: EvalFn
  mean: tuple[float, float, float]
  std: tuple[float, float, float]
  default_image_size: int
  pad_crop: bool = False
  flip: bool = True


def _cifar_style(mean, std, flip: bool = True) -> Preprocessing:
  return Preprocessing(
      train=lambda b, seed, size: pad_crop_flip(_decode(b), seed, size, flip=flip),
      eval=lambda b, size: _resize(_decode(b), size, size),
      mean=mean, std=std, default_image_size=32, pad_crop=True, flip=flip)


IMAGENET_PREPROCESSING = Preprocessing(
    train=random_resized_crop_flip,
    eval=lambda b, size: resize_centre_crop(_decode(b), size),
    mean=IMAGENET_MEAN, std=IMAGENET_STD, default_image_size=224)

# The preprocessings by name (``config.data.augment``).
PREPROCESSING: dict[str, Preprocessing] = {
    "cifar10": _cifar_style(CIFAR10_MEAN, CIFAR10_STD),
    "cifar100": _cifar_style(CIFAR100_MEAN, CIFAR100_STD),
    # Digits are not mirror-symmetric (a flipped 2 is no digit): crop only.
    "digits": _cifar_style(DIGITS_MEAN, DIGITS_STD, flip=False),
    # `digits_seg`'s pretraining canvases: normalised as the segmentation input is
    # (ImageNet statistics, as the release's backbones), so the features transfer.
    "digits_canvas": _cifar_style(IMAGENET_MEAN, IMAGENET_STD, flip=False),
    "imagenet": IMAGENET_PREPROCESSING,
}
# Each dataset's own, used when ``config.data.augment`` is unset.
DATASET_PREPROCESSING: dict[str, str] = {
    "cifar10": "cifar10",
    "cifar100": "cifar100",
    "digits": "digits",
    "digits_canvas": "digits_canvas",
    "imagenet2012": "imagenet",
    # Transfer targets (AFD / L2T-ww): ImageNet-style 224 crops, like their teacher's data.
    "caltech_birds2011": "imagenet",
    "stanford_dogs": "imagenet",
    "mit67": "imagenet",
    "stanford40": "imagenet",
}


def base_name(name: str) -> str:
  """'cifar100:3.0.2' or 'imagenet2012/subset' -> the registry key."""
  return name.split(":")[0].split("/")[0]


def preprocessing_name(dataset: str, augment: str | None, names: Iterable[str],
                       defaults: dict[str, str]) -> str:
  """The preprocessing to use: `augment` if set, else `dataset`'s own in `defaults`.

  Raises:
    ValueError: `augment` not among `names`, or `augment` unset and `dataset` without
      one of its own (each names the accepted values).
  """
  if augment is not None:
    if augment not in names:
      raise ValueError(f"unknown config.data.augment={augment!r}; accepted: "
                       f"{', '.join(names)}")
    return augment
  if base_name(dataset) not in defaults:
    raise ValueError(f"dataset {dataset!r} has no preprocessing of its own (those with "
                     f"one: {', '.join(defaults)}); set config.data.augment to one of: "
                     f"{', '.join(names)}")
  return defaults[base_name(dataset)]


def get_preprocessing(name: str, augment: str | None = None) -> Preprocessing:
  """The preprocessing `augment` names, or by default TFDS dataset `name`'s own.

  Raises:
    ValueError: an unknown `augment`, or `augment` None and a dataset without its own.
  """
  return PREPROCESSING[preprocessing_name(name, augment, PREPROCESSING,
                                          DATASET_PREPROCESSING)]
