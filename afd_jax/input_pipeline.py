"""Deterministic, resumable tf.data input pipelines for TFDS image classification.

Training batches are a pure function of (seed, global step): epoch ``e`` is shuffled with a
seed derived from (seed, e), and every example's augmentation uses TF *stateless* random
ops seeded from (seed, e, process, position in the epoch), so neither parallelism nor
restarting changes them. `create_train_iterator(..., start_step=k)` therefore yields
exactly the batches an uninterrupted run sees from step k on.

Each process reads its own shard (``ds.shard(process_count, process_index)``) and yields
numpy batches of ``global_batch_size // process_count`` examples; `prefetch_to_device`
assembles them into global `jax.Array`s sharded over the mesh's ``data`` axis.

Datasets are TFDS datasets by name. Preprocessing is looked up in a registry (CIFAR-10/100,
`digits`, ImageNet); any other TFDS image-classification dataset gets ImageNet's.
"""
from __future__ import annotations

import collections
import dataclasses
import itertools
import os
import socket
from typing import Any, Callable, Iterable, Iterator

import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from afd_jax import datasets as _local_datasets  # registers `digits` with TFDS

# TF only feeds the host; the accelerators belong to JAX.
tf.config.set_visible_devices([], "GPU")

Batch = dict[str, np.ndarray]
TrainFn = Callable[[tf.Tensor, tf.Tensor, int], tf.Tensor]
EvalFn = Callable[[tf.Tensor, int], tf.Tensor]

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# Per-channel mean/std of the prepared `digits` train split (1,437 images, 32×32, pixels
# / 255), computed once with numpy over all its pixels; the 3 channels are equal (grey).
DIGITS_MEAN, DIGITS_STD = (0.3054, 0.3054, 0.3054), (0.3237, 0.3237, 0.3237)

CIFAR_PADDING = 4
# ImageNet convention: eval resizes the shorter side to 256 for a 224 centre crop.
CENTRE_CROP_FRACTION = 224 / 256
# TFDS looks here first for prepared datasets; if it is unreachable, so is the internet.
_PROBE_HOST, _PROBE_PORT, _PROBE_TIMEOUT_S = "storage.googleapis.com", 443, 5.0


class DatasetNotAvailableError(RuntimeError):
  """A dataset is neither prepared in its data_dir nor could be downloaded and prepared."""


# ----------------------------------------------------------------------------------------
# Image transforms. Images are uint8 (H, W, 3) in, float32 (size, size, 3) in [0, 255] out;
# seeds are int (2,) tensors for TF's stateless random ops.


def _decode(image_bytes: tf.Tensor) -> tf.Tensor:
  """Encoded PNG/JPEG bytes -> uint8 (H, W, 3) (grey images are replicated to RGB)."""
  return tf.io.decode_image(image_bytes, channels=3, expand_animations=False)


def _resize(image: tf.Tensor, height, width) -> tf.Tensor:
  """(H, W, 3) -> float32 (height, width, 3); exact identity when the size is unchanged."""
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
  shorter = round(image_size / crop_fraction)
  hw = tf.cast(tf.shape(image)[:2], tf.float32)
  new_hw = tf.cast(tf.round(hw * (shorter / tf.reduce_min(hw))), tf.int32)
  new_hw = tf.maximum(new_hw, image_size)  # rounding must not leave less than the crop
  image = _resize(image, new_hw[0], new_hw[1])
  top, left = (new_hw[0] - image_size) // 2, (new_hw[1] - image_size) // 2
  return tf.image.crop_to_bounding_box(image, top, left, image_size, image_size)


def normalise(image: tf.Tensor, mean: Iterable[float], std: Iterable[float]) -> tf.Tensor:
  """float32 (..., 3) in [0, 255] -> per-channel standardised ``(x / 255 - mean) / std``."""
  mean = tf.constant(tuple(mean), tf.float32)
  std = tf.constant(tuple(std), tf.float32)
  return (image / 255.0 - mean) / std


# ----------------------------------------------------------------------------------------
# Per-dataset preprocessing registry.


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """How one dataset's encoded images become normalised float32 (size, size, 3) inputs.

  Attributes:
    train: (image_bytes, seed (2,), image_size) -> float32 (size, size, 3) in [0, 255].
    eval: (image_bytes, image_size) -> float32 (size, size, 3) in [0, 255].
    mean, std: per-channel statistics of pixels / 255 used by `normalise`.
    default_image_size: used when ``config_data.image_size`` is unset.
  """
  train: TrainFn
  eval: EvalFn
  mean: tuple[float, float, float]
  std: tuple[float, float, float]
  default_image_size: int


def _cifar_style(mean, std, flip: bool = True) -> Preprocessing:
  return Preprocessing(
      train=lambda b, seed, size: pad_crop_flip(_decode(b), seed, size, flip=flip),
      eval=lambda b, size: _resize(_decode(b), size, size),
      mean=mean, std=std, default_image_size=32)


IMAGENET_PREPROCESSING = Preprocessing(
    train=random_resized_crop_flip,
    eval=lambda b, size: resize_centre_crop(_decode(b), size),
    mean=IMAGENET_MEAN, std=IMAGENET_STD, default_image_size=224)

PREPROCESSING: dict[str, Preprocessing] = {
    "cifar10": _cifar_style(CIFAR10_MEAN, CIFAR10_STD),
    "cifar100": _cifar_style(CIFAR100_MEAN, CIFAR100_STD),
    # Digits are not mirror-symmetric (a flipped 2 is no digit): crop only.
    "digits": _cifar_style(DIGITS_MEAN, DIGITS_STD, flip=False),
    "imagenet2012": IMAGENET_PREPROCESSING,
}


def _base_name(name: str) -> str:
  """'cifar100:3.0.2' or 'imagenet2012/subset' -> the registry key."""
  return name.split(":")[0].split("/")[0]


def get_preprocessing(name: str) -> Preprocessing:
  """The registered preprocessing of TFDS dataset `name`; ImageNet's for any other."""
  return PREPROCESSING.get(_base_name(name), IMAGENET_PREPROCESSING)


# ----------------------------------------------------------------------------------------
# Opening datasets.

_OFFLINE_PREPARED = ("digits",)  # built from data shipped with a package: always prepared


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the training loop needs to know about a dataset.

  Attributes:
    name: TFDS name.
    num_classes: number of labels.
    num_train_examples: training examples per epoch (after ``num_train_examples`` cap).
    num_eval_examples: examples in the eval split (after ``num_eval_examples`` cap).
    image_size: side of the (square) images the pipeline yields.
  """
  name: str
  num_classes: int
  num_train_examples: int
  num_eval_examples: int
  image_size: int

  def steps_per_epoch(self, global_batch_size: int) -> int:
    """Training steps per epoch: full global batches only (the remainder is dropped)."""
    return self.num_train_examples // global_batch_size

  def num_eval_batches(self, global_batch_size: int) -> int:
    """Batches `create_eval_iterator` yields (the last one padded)."""
    per_process = -(-self.num_eval_examples // jax.process_count())
    return -(-per_process // _local_batch_size(global_batch_size))


@dataclasses.dataclass(frozen=True)
class _Opened:
  """A prepared TFDS builder with what the pipelines read from the config."""
  builder: tfds.core.DatasetBuilder
  image_key: str
  label_key: str
  preprocessing: Preprocessing
  info: DatasetInfo


def _obtain_hint(name: str, data_dir: str) -> str:
  """How a person gets dataset `name` into `data_dir`."""
  if _base_name(name) == "imagenet2012":
    return (f"download ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar (registration "
            f"at https://image-net.org) into {data_dir}/downloads/manual/, then run "
            f"`tfds build imagenet2012 --data_dir={data_dir}`")
  return (f"run `tfds build {name} --data_dir=<dir>` on a machine with internet access "
          f"and copy <dir>/{_base_name(name)} into {data_dir} (or set "
          f"config.data.download=True on a machine with internet access)")


def _network_reachable() -> bool:
  """Whether TFDS's host answers; without it TFDS retries each URL for ~200 s offline."""
  if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
    return True  # through a proxy a direct connection proves nothing: let TFDS try
  try:
    socket.create_connection((_PROBE_HOST, _PROBE_PORT), timeout=_PROBE_TIMEOUT_S).close()
    return True
  except OSError:
    return False


def _ensure_prepared(builder: tfds.core.DatasetBuilder, name: str, download: bool) -> None:
  """Prepares `builder` if needed and allowed; else raises DatasetNotAvailableError."""
  if builder.is_prepared():
    return
  data_dir = os.fspath(builder.data_dir_root)
  if _base_name(name) in _OFFLINE_PREPARED:
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return
  online = download and _network_reachable()
  # Datasets whose archives a person downloads by hand (ImageNet) prepare offline.
  manual = bool(builder.MANUAL_DOWNLOAD_INSTRUCTIONS)
  if not download:
    cause = "it is not prepared there and config.data.download is False"
  elif not (online or manual):
    cause = f"it is not prepared there and there is no network ({_PROBE_HOST} unreachable)"
  else:
    try:
      builder.download_and_prepare(
          download_config=tfds.download.DownloadConfig(try_download_gcs=online))
      return
    except Exception as e:  # any failure of TFDS's download/prepare means the same to us
      raise DatasetNotAvailableError(
          f"Dataset {name!r} is not available in data_dir {data_dir!r}: download and "
          f"prepare failed with {type(e).__name__}: {str(e).rstrip('.')}. To obtain it, "
          f"{_obtain_hint(name, data_dir)}.") from e
  raise DatasetNotAvailableError(
      f"Dataset {name!r} is not available in data_dir {data_dir!r}: {cause}. To obtain "
      f"it, {_obtain_hint(name, data_dir)}.")


def _open(config_data: ml_collections.ConfigDict) -> _Opened:
  """Opens (preparing if needed and allowed) the dataset `config_data` names."""
  name = config_data.name
  try:
    builder = tfds.builder(name, data_dir=config_data.data_dir)
  except tfds.core.DatasetNotFoundError as e:
    raise ValueError(f"Unknown dataset {name!r}: it is not a TFDS dataset (nor "
                     f"{', '.join(_OFFLINE_PREPARED)}, this project's own).") from e
  _ensure_prepared(builder, name, bool(config_data.get("download", False)))
  keys = builder.info.supervised_keys or ("image", "label")
  image_key, label_key = keys[0], keys[1]
  features = builder.info.features
  if not (image_key in features and isinstance(features[image_key], tfds.features.Image)
          and label_key in features
          and isinstance(features[label_key], tfds.features.ClassLabel)):
    raise ValueError(f"Dataset {name!r} is not an image-classification dataset "
                     f"(supervised keys {keys}).")
  preprocessing = get_preprocessing(name)
  splits = builder.info.splits

  def count(split, cap):
    n = splits[split].num_examples
    return n if cap is None else min(n, cap)

  info = DatasetInfo(
      name=name, num_classes=features[label_key].num_classes,
      num_train_examples=count(config_data.train_split, config_data.get("num_train_examples")),
      num_eval_examples=count(config_data.eval_split, config_data.get("num_eval_examples")),
      image_size=config_data.get("image_size") or preprocessing.default_image_size)
  return _Opened(builder, image_key, label_key, preprocessing, info)


def get_dataset_info(config_data: ml_collections.ConfigDict) -> DatasetInfo:
  """Sizes and classes of the dataset `config_data` names, preparing it if needed/allowed.

  Raises:
    ValueError: unknown dataset name, or not an image-classification dataset.
    DatasetNotAvailableError: not prepared in ``data_dir`` and not downloadable.
  """
  return _open(config_data).info


# ----------------------------------------------------------------------------------------
# Iterators.


def _local_batch_size(global_batch_size: int) -> int:
  """This process's share of a global batch."""
  if global_batch_size % jax.process_count():
    raise ValueError(f"Global batch size {global_batch_size} is not divisible by the "
                     f"{jax.process_count()} processes.")
  return global_batch_size // jax.process_count()


def _derived_seed(*entropy: int, words: int = 1) -> np.ndarray:
  """`words` uint32 seeds that are a fixed function of the integers `entropy`."""
  return np.random.SeedSequence([e % 2**64 for e in entropy]).generate_state(words)


def _read(opened: _Opened, split: str, cap: int | None, shuffle_seed: int | None):
  """The raw split (images still encoded) as tf.data, this process's shard only.

  Without a cap, files are read in an order shuffled by `shuffle_seed` (None: stored
  order); a capped split is always its first `cap` examples in stored order, so the subset
  never changes between epochs.
  """
  shuffle_files = shuffle_seed is not None and cap is None
  # No auto-cache under a cap: TFDS would cache the whole split, then warn that take()
  # read it only partly.
  read_config = tfds.ReadConfig(shuffle_seed=shuffle_seed if shuffle_files else None,
                                try_autocache=cap is None)
  ds = opened.builder.as_dataset(
      split=split, shuffle_files=shuffle_files, read_config=read_config,
      decoders={opened.image_key: tfds.decode.SkipDecoding()})
  if cap is not None:
    ds = ds.take(cap)
  options = tf.data.Options()
  options.deterministic = True  # parallel map must keep order, or batches would vary
  ds = ds.with_options(options)
  return ds.shard(jax.process_count(), jax.process_index())


def _train_epoch(opened: _Opened, config_data, seed: int, epoch: int, local_batch: int,
                 num_batches: int, skip_batches: int) -> tf.data.Dataset:
  """Batches `skip_batches`.. `num_batches`-1 of training epoch `epoch` on this process."""
  shuffle_seed, = _derived_seed(seed, epoch)
  augment_seed = tf.constant(
      _derived_seed(seed, epoch, jax.process_index(), words=2).astype(np.int64))
  prep, size = opened.preprocessing, opened.info.image_size

  def example(position, ex):
    ex_seed = tf.random.experimental.stateless_fold_in(augment_seed, position)
    image = prep.train(ex[opened.image_key], ex_seed, size)
    return {"image": tf.ensure_shape(normalise(image, prep.mean, prep.std), (size, size, 3)),
            "label": tf.cast(ex[opened.label_key], tf.int32)}

  ds = _read(opened, config_data.train_split, config_data.get("num_train_examples"),
             int(shuffle_seed))
  ds = ds.shuffle(config_data.shuffle_buffer, seed=int(shuffle_seed))
  # Positions are counted before skipping, so a resumed epoch augments like the original.
  ds = ds.enumerate().skip(skip_batches * local_batch)
  ds = ds.map(example, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(local_batch, drop_remainder=True)
  # Every process yields the same number of batches, even if its shard is a little larger.
  return ds.take(num_batches - skip_batches).prefetch(tf.data.AUTOTUNE)


def create_train_iterator(config_data: ml_collections.ConfigDict, global_batch_size: int,
                          seed: int, start_step: int = 0) -> Iterator[Batch]:
  """Endless training batches of this process, starting at global step `start_step`.

  Epoch ``e = step // steps_per_epoch`` is shuffled with a seed derived from (seed, e);
  the iterator starts ``start_step % steps_per_epoch`` batches into its epoch, so a resumed
  run sees exactly the batches an uninterrupted one would. Incomplete batches are dropped.

  Args:
    config_data: reads ``name``, ``data_dir``, ``download``, ``train_split``,
      ``shuffle_buffer``, ``image_size`` and the optional cap ``num_train_examples``.
    global_batch_size: examples per step over all processes.
    seed: data seed (shuffling and augmentation).
    start_step: global step of the first batch yielded.

  Yields:
    ``{'image': float32 (b, H, W, 3) normalised, 'label': int32 (b,)}`` numpy arrays,
    ``b = global_batch_size // jax.process_count()``.

  Raises:
    ValueError / DatasetNotAvailableError: as `get_dataset_info`; also if the split holds
    fewer examples than one global batch.
  """
  opened = _open(config_data)
  local_batch = _local_batch_size(global_batch_size)
  steps_per_epoch = opened.info.steps_per_epoch(global_batch_size)
  if steps_per_epoch < 1:
    raise ValueError(f"Global batch size {global_batch_size} exceeds the "
                     f"{opened.info.num_train_examples} training examples of "
                     f"{opened.info.name!r}.")
  first_epoch, skip = divmod(start_step, steps_per_epoch)

  def batches():
    for epoch in itertools.count(first_epoch):
      ds = _train_epoch(opened, config_data, seed, epoch, local_batch, steps_per_epoch,
                        skip if epoch == first_epoch else 0)
      yield from ds.as_numpy_iterator()

  return batches()


def create_eval_iterator(config_data: ml_collections.ConfigDict,
                         global_batch_size: int) -> Iterator[Batch]:
  """One pass over the eval split, every example exactly once, in full batches.

  The last batches are padded with zero images whose ``mask`` is 0; every process yields
  the same number of batches (`DatasetInfo.num_eval_batches`).

  Args:
    config_data: reads ``name``, ``data_dir``, ``download``, ``eval_split``,
      ``image_size`` and the optional cap ``num_eval_examples``.
    global_batch_size: examples per batch over all processes.

  Yields:
    ``{'image': float32 (b, H, W, 3), 'label': int32 (b,), 'mask': float32 (b,)}`` numpy
    arrays (mask 1 for real examples, 0 for padding), ``b = global_batch_size //
    jax.process_count()``.
  """
  opened = _open(config_data)
  local_batch = _local_batch_size(global_batch_size)
  prep, size = opened.preprocessing, opened.info.image_size

  def example(ex):
    image = normalise(prep.eval(ex[opened.image_key], size), prep.mean, prep.std)
    return {"image": tf.ensure_shape(image, (size, size, 3)),
            "label": tf.cast(ex[opened.label_key], tf.int32),
            "mask": tf.constant(1.0, tf.float32)}

  padding = tf.data.Dataset.from_tensors({
      "image": tf.zeros((size, size, 3), tf.float32),
      "label": tf.constant(0, tf.int32),
      "mask": tf.constant(0.0, tf.float32)}).repeat()
  ds = _read(opened, config_data.eval_split, config_data.get("num_eval_examples"), None)
  ds = ds.map(example, num_parallel_calls=tf.data.AUTOTUNE).concatenate(padding)
  ds = ds.take(opened.info.num_eval_batches(global_batch_size) * local_batch)
  return ds.batch(local_batch).prefetch(tf.data.AUTOTUNE).as_numpy_iterator()


# ----------------------------------------------------------------------------------------
# To devices.


def shard_batch(batch: dict[str, np.ndarray],
                sharding: jax.sharding.Sharding) -> dict[str, jax.Array]:
  """This process's numpy batch -> global `jax.Array`s laid out by `sharding`.

  Args:
    batch: arrays with leading dimension b (this process's share).
    sharding: typically ``NamedSharding(mesh, P('data'))``.

  Returns:
    the same keys, as global arrays of leading dimension ``b * jax.process_count()``.
  """
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def prefetch_to_device(iterator: Iterable[dict[str, np.ndarray]], size: int,
                       sharding: jax.sharding.Sharding) -> Iterator[dict[str, jax.Array]]:
  """`shard_batch` over `iterator`, keeping `size` batches on the devices ahead of use."""
  queue: collections.deque[Any] = collections.deque()
  iterator = iter(iterator)

  def enqueue(n: int) -> None:
    for batch in itertools.islice(iterator, n):
      queue.append(shard_batch(batch, sharding))

  enqueue(max(size, 1))
  while queue:
    yield queue.popleft()
    enqueue(1)
