"""Deterministic, resumable, per-process tf.data input pipelines for TFDS image
classification and semantic segmentation.

Multi-host: the training split is cut into ``data.input_shards`` equal parts (default:
one per process) with `tfds.even_splits`, and each process reads only its own parts. The
global batch of a step is the concatenation of one sub-batch per part, in part order, so
the data a step sees depends on (seed, step, input_shards) and not on how many processes
read it: a 1-process run with ``input_shards=2`` sees exactly the batches of a 2-host run.

Each part is one repeated pipeline, built once: epoch ``e`` reshuffles the part with a
seed derived from (seed, e, part), and every example's augmentation uses TF *stateless*
ops seeded from (seed, e, part, position in the epoch). Starting at any global step
therefore yields exactly the batches an uninterrupted run sees from that step on.
Batches never straddle two epochs: an epoch's remainder is dropped
(``data.last_batch='drop'``) or is its last, smaller batch (``'train'``, as PyTorch's
``DataLoader(drop_last=False)``: CIFAR-100 at batch 64 gives 781 batches of 64 and one
of 16 per epoch).

The eval split is cut into one part per process; batches are padded (``mask`` 0) so that
every process yields the same number.

The dataset's task (`afd_jax.tasks`, named by its TFDS features) owns what differs: the
preprocessing module, the label space, how an example becomes a pair and the padding's
label. Segmentation datasets (supervised label an `Image` (H, W, 1) of class ids, e.g.
`voc_aug`, `cocostuff10k`, `digits_seg`) go through the same streams; their labels are
(S, S) maps transformed with the image by `seg_transforms`, 255 (``ignore_label``) = no
class.
"""
from __future__ import annotations

import dataclasses
from typing import Iterator

import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from afd_jax import device_data, tasks, transforms
from afd_jax.datasets import availability
from afd_jax.datasets.availability import DatasetNotAvailableError

# TF only feeds the host; the accelerators belong to JAX.
tf.config.set_visible_devices([], "GPU")

Batch = dict[str, np.ndarray]
_EPOCHS = 2**40  # "forever": the repeated pipeline's epoch range


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the training loop needs to know about a dataset.

  Attributes:
    name: TFDS name.
    num_classes: number of labels.
    num_train_examples: training examples (after the ``num_train_examples`` cap).
    num_eval_examples: examples in the eval split (after the ``num_eval_examples`` cap).
    image_size: side of the (square) images the pipeline yields (segmentation: the crop).
    task: the `afd_jax.tasks` name: 'classification' (labels (b,)), 'segmentation'
      (labels (b, S, S)), or one registered beside them.
    ignore_label: the label value of "no class" pixels (segmentation; None otherwise).
  """
  name: str
  num_classes: int
  num_train_examples: int
  num_eval_examples: int
  image_size: int
  task: str = "classification"
  ignore_label: int | None = None

  def steps_per_epoch(self, global_batch_size: int, input_shards: int = 1,
                      last_batch: bool = False) -> int:
    """Global batches per epoch: each of the `input_shards` equal parts (the split's
    remainder dropped) gives ``global_batch_size / input_shards`` examples per step; the
    part's remainder is dropped, or with `last_batch` one more, smaller step."""
    return device_data.epoch_steps(self.num_train_examples // input_shards,
                                   global_batch_size // input_shards, last_batch)

  def last_batch_size(self, global_batch_size: int, input_shards: int = 1,
                      last_batch: bool = False) -> int:
    """Examples in the last global batch of an epoch (`global_batch_size` unless that
    step is a partial one: ``input_shards ×`` each part's remainder)."""
    rest = (self.num_train_examples // input_shards) % (global_batch_size // input_shards)
    return input_shards * rest if last_batch and rest else global_batch_size

  def num_eval_batches(self, global_batch_size: int) -> int:
    """Batches `Dataset.eval_iterator` yields on every process (the last ones padded)."""
    per_process = -(-self.num_eval_examples // jax.process_count())
    return -(-per_process // _local_batch_size(global_batch_size))


def _task(features, keys) -> str | None:
  """'classification' (ClassLabel label), 'segmentation' (Image (H, W, 1) label) or None."""
  if not (keys[0] in features and isinstance(features[keys[0]], tfds.features.Image)
          and keys[1] in features):
    return None
  label = features[keys[1]]
  if isinstance(label, tfds.features.ClassLabel):
    return "classification"
  if isinstance(label, tfds.features.Image) and label.shape[-1] == 1:
    return "segmentation"
  return None


def _open_builder(config_data) -> tuple[tfds.core.DatasetBuilder, str, str, str]:
  """The prepared builder of `config_data.name`, its (image, label) keys and task."""
  name = config_data.name
  try:
    builder = tfds.builder(name, data_dir=config_data.data_dir)
  except tfds.core.DatasetNotFoundError:
    # `from None`: TFDS's own message lists every dataset it knows (hundreds of lines).
    raise ValueError(f"Unknown dataset {name!r}: it is not a TFDS dataset (nor "
                     f"{', '.join(availability.LOCAL_DATASETS)}, this project's own).") from None
  availability.ensure_prepared(builder, name, bool(config_data.get("download", False)))
  keys = builder.info.supervised_keys or ("image", "label")
  task = _task(builder.info.features, keys)
  if task is None:
    raise ValueError(f"Dataset {name!r} is neither an image-classification nor a "
                     f"semantic-segmentation dataset (supervised keys {keys}).")
  return builder, keys[0], keys[1], task


def _local_batch_size(global_batch_size: int, parts: int | None = None) -> int:
  """This process's share of a global batch (or one part's, with `parts`)."""
  parts = parts or jax.process_count()
  if global_batch_size % parts:
    raise ValueError(f"Global batch size {global_batch_size} is not divisible by the "
                     f"{parts} processes / input shards.")
  return global_batch_size // parts


def _capped(split: str, cap: int | None) -> str:
  """The first `cap` examples of `split` (all of it for None), as a TFDS split string."""
  return split if cap is None else f"{split}[:{cap}]"


class Dataset:
  """A TFDS image-classification or semantic-segmentation dataset opened once for a run.

  Args:
    config_data: reads ``name``, ``data_dir``, ``download``, ``train_split``,
      ``eval_split``, ``shuffle_buffer``, ``image_size`` and the optional
      ``num_train_examples`` / ``num_eval_examples`` caps, ``input_shards`` and ``task``
      (a registered `afd_jax.tasks` name to read the dataset as; unset: the task its
      features name);
      segmentation also the optional ``base_size`` (the random scale's base),
      ``label_fill`` (label of the training crop's padding), unset the dataset's
      `seg_transforms.SegPreprocessing` defaults, and ``scale_range`` (the short side's
      range as multiples of ``base_size``), unset the release's (0.5, 2.0).

  Raises:
    ValueError: unknown dataset name, not an image-classification or segmentation
      dataset, or segmentation sizes out of range.
    DatasetNotAvailableError: not prepared in ``data_dir`` and not downloadable.
  """

  def __init__(self, config_data: ml_collections.ConfigDict):
    self.config = config_data
    self.builder, self.image_key, self.label_key, task = _open_builder(config_data)
    self.task = tasks.get(config_data.get("task") or task)
    self.preprocessing = self.task.preprocessing_for(config_data.name,
                                                     config_data.get("augment"))
    splits = self.builder.info.splits
    image_size = config_data.get("image_size") or self.preprocessing.default_image_size
    num_classes, ignore_label = self.task.data.open(self, self.builder, self.label_key,
                                                    config_data, image_size)

    def count(split, cap):
      n = splits[split].num_examples
      return n if cap is None else min(n, cap)

    self.info = DatasetInfo(
        name=config_data.name,
        num_classes=num_classes,
        num_train_examples=count(config_data.train_split,
                                 config_data.get("num_train_examples")),
        num_eval_examples=count(config_data.eval_split,
                                config_data.get("num_eval_examples")),
        image_size=image_size, task=self.task.name, ignore_label=ignore_label)
    self._eval = {}

  def _pair(self, ex, key=None) -> tuple[tf.Tensor, tf.Tensor]:
    """Normalised float32 (S, S, 3) image and int32 label (() or (S, S)) of a raw example:
    the training transform with stateless seed `key`, the eval transform without."""
    prep, size = self.preprocessing, self.info.image_size
    image, label = self.task.data.pair(self, ex[self.image_key], ex[self.label_key], key,
                                       size)
    image = transforms.normalise(image, prep.mean, prep.std)
    return tf.ensure_shape(image, (size, size, 3)), label

  @property
  def input_shards(self) -> int:
    """Parts the training split is cut into (default: one per process)."""
    shards = self.config.get("input_shards") or jax.process_count()
    if shards % jax.process_count():
      raise ValueError(f"config.data.input_shards={shards} must be a multiple of the "
                       f"{jax.process_count()} processes")
    return shards

  @property
  def last_batch(self) -> bool:
    """Whether each epoch ends with its partial batch (``data.last_batch='train'``)."""
    return device_data.trains_last_batch(self.config)

  def steps_per_epoch(self, global_batch_size: int) -> int:
    return self.info.steps_per_epoch(global_batch_size, self.input_shards, self.last_batch)

  def last_batch_size(self, global_batch_size: int) -> int:
    """Examples in the last global batch of an epoch (see `DatasetInfo`)."""
    return self.info.last_batch_size(global_batch_size, self.input_shards, self.last_batch)

  def _read(self, split, autocache: bool = True) -> tf.data.Dataset:
    """Raw examples (images, and label maps, still encoded) of `split` in stored order."""
    encoded = (self.image_key,) + ((self.label_key,) if self.task.data.encoded_label
                                   else ())
    ds = self.builder.as_dataset(
        split=split, shuffle_files=False, read_config=tfds.ReadConfig(
            try_autocache=autocache),
        decoders={k: tfds.decode.SkipDecoding() for k in encoded})
    options = tf.data.Options()
    options.deterministic = True  # parallel map must keep order, or batches would vary
    return ds.with_options(options)

  def _part_stream(self, part: int, seed: int, part_batch: int, steps_per_epoch: int,
                   first_epoch: int, skip: int, transform) -> tf.data.Dataset:
    """Endless batches of ``transform(part, {'epoch', 'position', 'index', image,
    label})`` of training part `part`, from position `skip` of epoch `first_epoch` on;
    each epoch uses the same examples and ends its own batches (the last one partial
    with ``data.last_batch='train'``)."""
    split = tfds.even_splits(_capped(self.config.train_split,
                                     self.config.get("num_train_examples")),
                             n=self.input_shards, drop_remainder=True)[part]
    # No cache: an epoch may stop before the end of the part (remainder dropped), and a
    # partly read cache is discarded with a warning every epoch.
    raw = self._read(split, autocache=False)
    # Each example's position in the (capped) training split: the parts are consecutive
    # blocks of N // shards examples. Enumerated before shuffling (the order is unchanged).
    offset = part * (self.info.num_train_examples // self.input_shards)
    raw = raw.enumerate().map(
        lambda i, ex: dict(ex, index=tf.cast(i + offset, tf.int32)))
    per_epoch = min(steps_per_epoch * part_batch,
                    self.info.num_train_examples // self.input_shards)
    buffer = self.config.shuffle_buffer

    def epoch(e):
      shuffle_seed = (seed * 1_000_003 + e) * 1_009 + part
      ds = raw.shuffle(buffer, seed=shuffle_seed).take(per_epoch).enumerate()
      ds = ds.skip(tf.where(e == first_epoch, tf.constant(skip, tf.int64), 0))
      ds = ds.map(lambda pos, ex: transform(part, dict(ex, epoch=e, position=pos)),
                  num_parallel_calls=tf.data.AUTOTUNE)
      return ds.batch(part_batch)  # per_epoch: whole batches, or a partial last one

    return tf.data.Dataset.range(first_epoch, _EPOCHS).flat_map(epoch)

  def train_iterator(self, global_batch_size: int, seed: int, start_step: int = 0,
                     num_devices: int | None = None) -> Iterator[Batch]:
    """Endless training batches of this process, from global step `start_step` on.

    `num_devices`: the devices a global batch is split over (None: all of them), which
    a partial last batch must split over evenly too.

    Yields:
      ``{'image': float32 (b, H, W, 3) normalised, 'label': int32 (b,), 'index': int32
      (b,)}`` numpy arrays (``index``: the example's position in the training split, as
      in `train_labels`); segmentation: 'label' int32 (b, H, W), `ignore_label` = none,
      ``b = global_batch_size // jax.process_count()``: this process's parts' sub-batches
      concatenated in part order (the last step of an epoch ``last_batch_size(...) //
      jax.process_count()`` with ``data.last_batch='train'``).

    Raises:
      ValueError: the split holds fewer examples than one global batch, or a partial
        last batch that does not split evenly over the devices.
    """
    shards = self.input_shards
    last = self.last_batch_size(global_batch_size)
    devices = num_devices or jax.device_count()
    if last != global_batch_size and last % devices:
      raise ValueError(
          f"config.data.last_batch='train': each epoch's last batch holds {last} examples "
          f"of {self.info.name!r}, which do not split evenly over the {devices} devices; "
          "accepted: data.last_batch='drop', or a batch size and device count for which "
          "that remainder is a multiple of the devices")
    part_batch = _local_batch_size(global_batch_size, shards)
    steps = self.steps_per_epoch(global_batch_size)
    if steps < 1:
      raise ValueError(f"Global batch size {global_batch_size} exceeds the "
                       f"{self.info.num_train_examples} training examples of "
                       f"{self.info.name!r} ({shards} input shards).")
    first_epoch, skip_steps = divmod(start_step, steps)
    per_process = shards // jax.process_count()
    parts = range(jax.process_index() * per_process, (jax.process_index() + 1) * per_process)
    base_key = tf.constant(np.array([seed % 2**31, 0x5EED], np.int64))

    def example(part, ex):
      key = base_key
      for value in (ex["epoch"], part, ex["position"]):
        key = tf.random.experimental.stateless_fold_in(key, value)
      image, label = self._pair(ex, key)
      return {"image": image, "label": label, "index": ex["index"]}

    streams = [self._part_stream(part, seed, part_batch, steps, first_epoch,
                                 skip_steps * part_batch, example) for part in parts]
    ds = streams[0] if len(streams) == 1 else tf.data.Dataset.zip(tuple(streams)).map(
        lambda *bs: {k: tf.concat([b[k] for b in bs], 0) for k in bs[0]})
    return ds.prefetch(tf.data.AUTOTUNE).as_numpy_iterator()

  def train_labels(self) -> np.ndarray:
    """int32 (N,): the labels of the (capped) training split in index order.

    Raises:
      ValueError: a segmentation dataset (its labels are maps, not classes).
    """
    if self.task.label_shape(1, self.info.image_size) != (1,):
      raise ValueError(f"train_labels() is for classification: {self.info.name!r} is a "
                       f"{self.info.task} dataset (no class per example).")
    split = _capped(self.config.train_split, self.config.get("num_train_examples"))
    ds = self._read(split, autocache=False).map(
        lambda ex: tf.cast(ex[self.label_key], tf.int32))
    return np.concatenate(list(ds.batch(8192).as_numpy_iterator()))

  def eval_iterator(self, global_batch_size: int) -> Iterator[Batch]:
    """One pass over this process's part of the eval split, in full batches.

    Yields:
      ``{'image': float32 (b, H, W, 3), 'label': int32 (b,), 'mask': float32 (b,)}``
      numpy arrays, mask 0 on the padding that evens out the last batches; segmentation:
      'label' int32 (b, H, W), all `ignore_label` on the padding;
      ``b = global_batch_size // jax.process_count()``.
    """
    if global_batch_size not in self._eval:
      self._eval[global_batch_size] = self._eval_dataset(global_batch_size)
    return self._eval[global_batch_size].as_numpy_iterator()

  def _eval_dataset(self, global_batch_size: int) -> tf.data.Dataset:
    local_batch = _local_batch_size(global_batch_size)
    size = self.info.image_size
    split = tfds.even_splits(_capped(self.config.eval_split,
                                     self.config.get("num_eval_examples")),
                             n=jax.process_count())[jax.process_index()]

    def example(ex):
      image, label = self._pair(ex)
      return {"image": image, "label": label, "mask": tf.constant(1.0, tf.float32)}

    no_label = self.task.data.padding_label(self.info, size)
    padding = tf.data.Dataset.from_tensors({
        "image": tf.zeros((size, size, 3), tf.float32),
        "label": no_label,
        "mask": tf.constant(0.0, tf.float32)}).repeat()
    ds = self._read(split).map(example, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.concatenate(padding).take(self.info.num_eval_batches(global_batch_size)
                                      * local_batch)
    return ds.batch(local_batch).prefetch(tf.data.AUTOTUNE)

