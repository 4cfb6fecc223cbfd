"""Device-resident training data: the whole train split on the accelerators, each batch
drawn and augmented inside the jitted train step.

For datasets that fit in accelerator memory (CIFAR-10/100, digits: anything whose
preprocessing is `transforms.pad_crop_flip` and whose uint8 train split is smaller than
``data.device_max_bytes``). The split is read once through TFDS (the only use of
TensorFlow on this path) into uint8 (N, H, W, 3) images and int32 (N,) labels, replicated
on every device of the mesh; with several processes, each process reads the whole split
(it is small by construction) and holds its devices' replicas. Evaluation stays on the
tf.data path (`input_pipeline.Dataset.eval_iterator`): it runs once per epoch.

Everything a batch is made of is a pure function of (seed, step, position in the batch),
so resuming at any step and any number of devices give the very same batches:

* order: epoch ``e`` visits ``jax.random.permutation(fold_in(order_key(seed), e), N)``;
  global step ``s`` (0-based) of epoch ``e = s // steps_per_epoch`` takes the examples
  at ``permutation[b·B:(b+1)·B]``, ``b = s % steps_per_epoch``. The remainder of N / B is
  dropped (``data.last_batch='drop'``) or is the epoch's last step, a batch of
  ``N − b·B`` examples (``'train'``, as PyTorch's ``DataLoader(drop_last=False)``).
* augmentation: example ``i`` of step ``s`` uses ``fold_in(fold_in(augment_key(seed), s),
  i)``: zero-pad by 4, random crop back to (H, W) (offsets uniform in 0..8), horizontal
  flip with probability 1/2 (not for digits), then per-channel normalisation. This has
  the distribution of the tf.data path's `transforms.pad_crop_flip`, not its bits.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from afd_jax import parallel, tasks, transforms

PIPELINES = ("tfdata", "device", "auto")
LAST_BATCH = ("drop", "train")
_ORDER, _AUGMENT = 0, 1  # fold_in purposes of the seed's key


def _key(seed: jax.Array, purpose: int) -> jax.Array:
  return jax.random.fold_in(jax.random.PRNGKey(seed), purpose)


def pad_crop_flip(image: jax.Array, key: jax.Array, padding: int = transforms.CIFAR_PADDING,
                  flip: bool = True) -> jax.Array:
  """CIFAR augmentation of one image, as `transforms.pad_crop_flip` (same distribution).

  Args:
    image: uint8 (H, W, C).
    key: PRNG key.
    padding: zero border added on each side before the random (H, W) crop.
    flip: whether to flip horizontally with probability 1/2.

  Returns:
    float32 (H, W, C) in [0, 255].
  """
  crop_key, flip_key = jax.random.split(key)
  h, w, c = image.shape
  padded = jnp.pad(image, ((padding, padding), (padding, padding), (0, 0)))
  offset = jax.random.randint(crop_key, (2,), 0, 2 * padding + 1)
  out = jax.lax.dynamic_slice(padded, (offset[0], offset[1], 0), (h, w, c))
  out = out.astype(jnp.float32)
  return jnp.where(jax.random.bernoulli(flip_key), out[:, ::-1], out) if flip else out


def trains_last_batch(config_data: ml_collections.ConfigDict) -> bool:
  """Whether ``config_data.last_batch`` is ``'train'`` (absent: ``'drop'``, the runs
  written before it existed).

  Raises:
    ValueError: a value not in `LAST_BATCH`.
  """
  mode = config_data.get("last_batch", "drop")
  if mode not in LAST_BATCH:
    raise ValueError(f"config.data.last_batch={mode!r}; accepted: {', '.join(LAST_BATCH)}")
  return mode == "train"


def epoch_steps(num_examples: int, batch_size: int, last_batch: bool) -> int:
  """Steps per epoch: the full batches, plus one for the remainder with `last_batch`."""
  full, rest = divmod(num_examples, batch_size)
  return full + (1 if last_batch and rest else 0)


@dataclasses.dataclass(frozen=True)
class Sampler:
  """How a global step becomes a batch of the device-resident split (static, hashable).

  Attributes:
    num_examples: N, examples in the split held on the devices.
    batch_size: B, the global batch size.
    mean, std: per-channel statistics of pixels / 255 (`transforms.normalise`).
    flip: whether the augmentation flips.
    last_batch: whether each epoch ends with the partial batch of the remaining
      ``N mod B`` examples (``data.last_batch='train'``).
  """
  num_examples: int
  batch_size: int
  mean: tuple[float, ...]
  std: tuple[float, ...]
  flip: bool = True
  last_batch: bool = False

  @property
  def steps_per_epoch(self) -> int:
    return epoch_steps(self.num_examples, self.batch_size, self.last_batch)

  @property
  def last_batch_size(self) -> int:
    """Examples in the last step of an epoch (B unless it is a partial one)."""
    rest = self.num_examples % self.batch_size
    return rest if self.last_batch and rest else self.batch_size

  @property
  def has_partial(self) -> bool:
    return self.last_batch_size != self.batch_size

  def size(self, step: int) -> int:
    """The (static) batch size of global step `step` (a Python int)."""
    last = step % self.steps_per_epoch == self.steps_per_epoch - 1
    return self.last_batch_size if last else self.batch_size

  def _size(self, size: int | None) -> int:
    if size is not None:
      return size
    if self.has_partial:
      raise ValueError(
          f"this sampler trains each epoch's last partial batch of {self.last_batch_size} "
          "examples (config.data.last_batch='train'), so its caller must give each step's "
          "batch size (`Sampler.size`); this path does not (e.g. config.vmap_seeds=True): "
          "accepted here: config.data.last_batch='drop'")
    return self.batch_size

  def indices(self, seed: jax.Array, step: jax.Array, size: int | None = None
              ) -> jax.Array:
    """int32 (size,): the examples of global step `step` (0-based) in the split.

    `size`: the step's batch size, `Sampler.size` (None: B, when no step is partial).
    """
    size = self._size(size)
    epoch, b = jnp.divmod(step, self.steps_per_epoch)
    order = jax.random.permutation(jax.random.fold_in(_key(seed, _ORDER), epoch),
                                   self.num_examples)
    return jax.lax.dynamic_slice_in_dim(order, b * self.batch_size, size)

  def batch(self, data: dict[str, jax.Array], seed: jax.Array, step: jax.Array,
            size: int | None = None) -> dict[str, jax.Array]:
    """``{'image': float32 (b, H, W, 3) normalised, 'label': int32 (b,), 'index': int32
    (b,)}`` of `step` (``index``: the examples' positions in the split).

    Args:
      data: ``{'image': uint8 (N, H, W, 3), 'label': int32 (N,)}`` (from `load`).
      seed: int32 scalar, the run's seed.
      step: int32 scalar, the global step (``state.step`` before the update).
      size: b, the step's batch size (static: `Sampler.size` of the step); None: B,
        allowed only when no step is partial.

    Raises:
      ValueError: `size` None on a sampler with partial last batches.
    """
    size = self._size(size)
    idx = self.indices(seed, step, size)
    step_key = jax.random.fold_in(_key(seed, _AUGMENT), step)
    keys = jax.vmap(lambda i: jax.random.fold_in(step_key, i))(jnp.arange(size))
    images = jax.vmap(lambda x, k: pad_crop_flip(x, k, flip=self.flip))(
        data["image"][idx], keys)
    mean, std = jnp.asarray(self.mean, jnp.float32), jnp.asarray(self.std, jnp.float32)
    return {"image": (images / 255.0 - mean) / std, "label": data["label"][idx],
            "index": idx}


def _unsupported(config_data: ml_collections.ConfigDict, dataset) -> str | None:
  """Why `dataset` cannot be device-resident (None if it can)."""
  prep = transforms.get_preprocessing(config_data.name, config_data.get("augment"))
  shape = tuple(dataset.builder.info.features[dataset.image_key].shape)
  size = dataset.info.image_size
  nbytes = dataset.info.num_train_examples * size * size * 3
  if not prep.pad_crop:
    return f"{config_data.name!r} is not augmented with pad-crop-flip"
  if shape[:2] != (size, size):
    return f"its images are {shape[:2]}, not fixed at data.image_size={size}"
  if nbytes >= config_data.get("device_max_bytes", 2**31):
    return (f"its train split takes {nbytes} bytes >= data.device_max_bytes="
            f"{config_data.get('device_max_bytes', 2**31)}")
  return None


def choose_pipeline(config_data: ml_collections.ConfigDict, dataset,
                    backend: str | None = None) -> str:
  """``'device'`` or ``'tfdata'``, per ``config_data.pipeline``.

  ``'auto'`` (the default of new configs): on a GPU/TPU `backend`, device whenever the
  dataset can be device-resident; on a CPU, tfdata — measured as fast there
  (docs/speed.md, "Benchmarks": 13 images/s both, wrn_16_2 at batch 64 on 2 cores) and the data
  order every earlier CPU run had. A config without the field (runs written before
  ``'auto'`` was the default) means ``'tfdata'``. Segmentation datasets always use
  ``'tfdata'`` (the device sampler only pad-crops images with one class label each).

  Args:
    config_data: the config's ``data`` section.
    dataset: the run's `input_pipeline.Dataset`.
    backend: ``jax.default_backend()`` when None.

  Raises:
    ValueError: an unknown pipeline, or ``'device'`` for a dataset that cannot be.
  """
  mode = config_data.get("pipeline", "tfdata")
  if mode not in PIPELINES:
    raise ValueError(f"config.data.pipeline={mode!r}; accepted: {', '.join(PIPELINES)}")
  task = getattr(dataset.info, "task", "classification")
  if not tasks.get(task).device_data:
    if mode == "device":
      able = ", ".join(n for n in tasks.names() if tasks.get(n).device_data)
      raise ValueError(f"config.data.pipeline='device' cannot hold {config_data.name!r}: "
                       f"it is a {task} dataset and device-resident data is for "
                       f"{able} only; use 'tfdata' or 'auto'")
    return "tfdata"
  if mode == "tfdata":
    return mode
  if mode == "auto" and (backend or jax.default_backend()) == "cpu":
    return "tfdata"
  why = _unsupported(config_data, dataset)
  if mode == "device" and why:
    raise ValueError(f"config.data.pipeline='device' cannot hold {config_data.name!r} on "
                     f"the devices: {why}; use 'tfdata' or 'auto'")
  return "tfdata" if why else "device"


def load(dataset, mesh, batch_size: int) -> tuple[Sampler, dict[str, jax.Array]]:
  """Reads the train split of `dataset` (an `input_pipeline.Dataset`) onto `mesh`.

  Returns:
    the `Sampler` and ``{'image': uint8 (N, H, W, 3), 'label': int32 (N,)}`` replicated.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  cfg = dataset.config
  cap = cfg.get("num_train_examples")
  split = cfg.train_split if cap is None else f"{cfg.train_split}[:{cap}]"
  arrays = tfds.as_numpy(dataset.builder.as_dataset(split=split, batch_size=-1,
                                                    shuffle_files=False))
  images = np.asarray(arrays[dataset.image_key], np.uint8)
  if images.shape[-1] == 1:
    images = np.repeat(images, 3, axis=-1)  # grey -> RGB, as the tf.data decoder does
  labels = np.asarray(arrays[dataset.label_key], np.int32)
  rep = parallel.replicated(mesh)
  data = {k: jax.make_array_from_callback(a.shape, rep, lambda idx, a=a: a[idx])
          for k, a in (("image", images), ("label", labels))}
  prep = dataset.preprocessing
  return Sampler(len(labels), batch_size, tuple(prep.mean), tuple(prep.std),
                 prep.flip, last_batch=trains_last_batch(cfg)), data
