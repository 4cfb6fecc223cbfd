"""The input pipeline: the `digits` builder, determinism, exact resume, eval coverage,
augmentations, and clear errors for missing or unknown datasets."""
import itertools

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from afd_jax import input_pipeline, parallel, transforms
from afd_jax.datasets import availability

NUM_TRAIN, NUM_TEST = 1437, 360


def data_config(data_dir, name="digits", **overrides) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict(dict(
      name=name, data_dir=data_dir, image_size=32, shuffle_buffer=2048, download=False,
      train_split="train", eval_split="test",
      num_train_examples=ml_collections.config_dict.placeholder(int)))
  c.update(overrides)
  return c


def take(iterator, n):
  return list(itertools.islice(iterator, n))


def assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["image"], y["image"])
    np.testing.assert_array_equal(x["label"], y["label"])


def test_digits_builder_splits_features_and_stratification(digits_data_dir):
  builder = tfds.builder("digits", data_dir=digits_data_dir)
  assert builder.info.version == "1.0.0"
  assert builder.info.splits["train"].num_examples == NUM_TRAIN
  assert builder.info.splits["test"].num_examples == NUM_TEST
  assert builder.info.features["image"].shape == (32, 32, 3)
  assert builder.info.features["label"].num_classes == 10
  test = list(tfds.as_numpy(builder.as_dataset("test")))
  images = np.stack([e["image"] for e in test])
  assert images.dtype == np.uint8 and images.max() > 200
  np.testing.assert_array_equal(images[..., 0], images[..., 2])  # grey replicated
  counts = np.bincount([e["label"] for e in test], minlength=10)
  assert counts.min() >= 34 and counts.max() <= 38  # stratified: 20% of ~180 per class


def test_digits_is_prepared_automatically_offline(tmp_path):
  info = input_pipeline.Dataset(data_config(str(tmp_path))).info
  assert (info.num_classes, info.num_train_examples, info.num_eval_examples) == (
      10, NUM_TRAIN, NUM_TEST)
  assert (tmp_path / "digits" / "1.0.0" / "dataset_info.json").exists()


def test_dataset_info_and_train_batch_shapes(digits_data_dir):
  config = data_config(digits_data_dir, num_train_examples=64)
  info = input_pipeline.Dataset(config).info
  assert (info.num_train_examples, info.image_size) == (64, 32)
  assert info.steps_per_epoch(16) == 4
  assert input_pipeline.Dataset(data_config(digits_data_dir)).info.steps_per_epoch(
      64) == NUM_TRAIN // 64
  batch = next(input_pipeline.Dataset(config).train_iterator(16, seed=0))
  assert batch["image"].shape == (16, 32, 32, 3) and batch["image"].dtype == np.float32
  assert batch["label"].shape == (16,) and batch["label"].dtype == np.int32


@pytest.mark.parametrize("shards,cap", [(1, 100), (3, 100), (2, None)])
def test_index_is_the_examples_position_in_the_training_split(digits_data_dir, shards, cap):
  """What CRD's memory bank relies on: ``labels[index] == label`` in every batch, and an
  epoch visits distinct indices, each part its own block."""
  config = data_config(digits_data_dir, num_train_examples=cap, input_shards=shards)
  dataset = input_pipeline.Dataset(config)
  n = cap or NUM_TRAIN
  builder = tfds.builder("digits", data_dir=digits_data_dir)
  stored = np.array([e["label"] for e in tfds.as_numpy(builder.as_dataset(
      "train", shuffle_files=False))])[:n]
  labels = dataset.train_labels()
  assert labels.dtype == np.int32
  np.testing.assert_array_equal(labels, stored)
  steps = dataset.steps_per_epoch(24)
  batches = take(dataset.train_iterator(24, seed=1), steps)
  index = np.concatenate([b["index"] for b in batches])
  assert index.dtype == np.int32 and len(set(index)) == len(index)
  np.testing.assert_array_equal(labels[index], np.concatenate([b["label"] for b in batches]))
  per_part, part_batch = n // shards, 24 // shards
  for part in range(shards):  # part p's sub-batch reads its own block of the split
    block = np.concatenate([b["index"][part * part_batch:(part + 1) * part_batch]
                            for b in batches])
    assert block.min() >= part * per_part and block.max() < (part + 1) * per_part


def test_eval_covers_every_example_once_and_is_standardised(digits_data_dir):
  config = data_config(digits_data_dir)
  batches = list(input_pipeline.Dataset(config).eval_iterator(128))
  info = input_pipeline.Dataset(config).info
  assert len(batches) == info.num_eval_batches(128) == 3  # 360 = 128 + 128 + 104
  mask = np.concatenate([b["mask"] for b in batches])
  assert mask.dtype == np.float32 and mask.shape == (384,) and mask.sum() == NUM_TEST
  np.testing.assert_array_equal(mask, np.arange(384) < NUM_TEST)  # padding only at the end
  labels = np.concatenate([b["label"] for b in batches])[:NUM_TEST]
  builder = tfds.builder("digits", data_dir=digits_data_dir)
  expected = [e["label"] for e in tfds.as_numpy(builder.as_dataset("test"))]
  np.testing.assert_array_equal(labels, expected)
  images = np.concatenate([b["image"] for b in batches])
  assert not images[NUM_TEST:].any()
  real = images[:NUM_TEST]
  assert abs(real.mean()) < 0.1 and abs(real.std() - 1.0) < 0.1


def test_same_seed_same_batches_other_seed_differs(digits_data_dir):
  config = data_config(digits_data_dir)
  first = take(input_pipeline.Dataset(config).train_iterator(32, seed=3), 3)
  again = take(input_pipeline.Dataset(config).train_iterator(32, seed=3), 3)
  other = take(input_pipeline.Dataset(config).train_iterator(32, seed=4), 3)
  assert_same_batches(first, again)
  assert not np.array_equal(first[0]["label"], other[0]["label"])
  assert not np.array_equal(first[0]["image"], other[0]["image"])


def test_start_step_resumes_exactly_across_epochs(digits_data_dir):
  config = data_config(digits_data_dir, num_train_examples=64)  # 4 steps per epoch
  straight = take(input_pipeline.Dataset(config).train_iterator(16, seed=0), 8)
  for k in (2, 3, 5):  # within epoch 0, across the 0 -> 1 boundary, within epoch 1
    resumed = take(input_pipeline.Dataset(config).train_iterator(16, seed=0, start_step=k), 2)
    assert_same_batches(resumed, straight[k:k + 2])
  # Each epoch shows the same 64 examples, reshuffled and re-augmented.
  labels = [np.concatenate([b["label"] for b in straight[e * 4:e * 4 + 4]]) for e in (0, 1)]
  np.testing.assert_array_equal(np.sort(labels[0]), np.sort(labels[1]))
  assert not np.array_equal(labels[0], labels[1])


def test_prefetch_to_device_builds_global_sharded_arrays(digits_data_dir):
  config = data_config(digits_data_dir, num_train_examples=64)
  mesh = Mesh(np.array(jax.devices()), ("data",))
  sharding = NamedSharding(mesh, P("data"))
  host = take(input_pipeline.Dataset(config).train_iterator(16, seed=0), 3)
  on_device = list(parallel.prefetch_to_device(iter(host), 2, sharding))
  assert len(on_device) == 3
  for h, d in zip(host, on_device):
    assert isinstance(d["image"], jax.Array) and d["image"].sharding == sharding
    np.testing.assert_array_equal(np.asarray(d["image"]), h["image"])
    np.testing.assert_array_equal(np.asarray(d["label"]), h["label"])


def test_pad_crop_flip_pads_with_zeros_crops_and_flips():
  ramp = np.tile(np.arange(1, 33, dtype=np.uint8)[None, :, None] * 7, (32, 1, 3))
  outputs = [transforms.pad_crop_flip(tf.constant(ramp), tf.constant([s, 0]), 32).numpy()
             for s in range(24)]
  for out in outputs:
    assert out.shape == (32, 32, 3) and out.dtype == np.float32
  assert any((out == 0).all(-1).any() for out in outputs)  # black padding shows up
  rows = [out[16, :, 0] for out in outputs]  # the middle row is never padding
  increasing = [np.all(np.diff(r[r > 0]) > 0) for r in rows]
  assert any(increasing) and not all(increasing)  # some flipped, some not
  again = transforms.pad_crop_flip(tf.constant(ramp), tf.constant([5, 0]), 32).numpy()
  np.testing.assert_array_equal(again, outputs[5])


def test_the_preprocessing_is_the_datasets_own_or_the_one_named_by_data_augment():
  """Each dataset's own by default; `augment` names another; a dataset without its own
  and no `augment`, or an unknown `augment`, is a one-line error listing the accepted."""
  own = {name: transforms.get_preprocessing(name) for name in (
      "cifar10", "cifar100:3.0.2", "digits", "imagenet2012", "mit67", "stanford_dogs")}
  assert own["cifar100:3.0.2"].mean == transforms.CIFAR100_MEAN
  assert own["cifar10"].mean == transforms.CIFAR10_MEAN and own["cifar10"].pad_crop
  assert own["digits"].pad_crop and not own["digits"].flip
  assert own["mit67"] is own["stanford_dogs"] is transforms.IMAGENET_PREPROCESSING
  assert own["imagenet2012"] is transforms.IMAGENET_PREPROCESSING
  assert transforms.get_preprocessing("cifar100", "digits") is own["digits"]
  with pytest.raises(ValueError) as e:
    transforms.get_preprocessing("oxford_flowers102")
  assert str(e.value) == (
      "dataset 'oxford_flowers102' has no preprocessing of its own (those with one: "
      "cifar10, cifar100, digits, digits_canvas, imagenet2012, caltech_birds2011, "
      "stanford_dogs, mit67, stanford40); set config.data.augment to one of: cifar10, "
      "cifar100, digits, digits_canvas, imagenet")
  with pytest.raises(ValueError) as e:
    transforms.get_preprocessing("cifar100", "imagenet2012")
  assert str(e.value) == ("unknown config.data.augment='imagenet2012'; accepted: cifar10, "
                          "cifar100, digits, digits_canvas, imagenet")


def test_the_tfdata_pipeline_takes_the_preprocessing_data_augment_names(digits_data_dir):
  config = data_config(digits_data_dir, augment=None)
  assert input_pipeline.Dataset(config).preprocessing is transforms.get_preprocessing("digits")
  config.augment = "cifar10"
  assert (input_pipeline.Dataset(config).preprocessing
          is transforms.get_preprocessing("cifar10"))


def test_imagenet_preprocessing_gives_224_crops():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
  jpeg, png = tf.io.encode_jpeg(image), tf.io.encode_png(image)
  prep = transforms.get_preprocessing("imagenet2012")
  assert transforms.get_preprocessing("some_other_tfds_dataset", "imagenet") is prep
  for encoded in (jpeg, png):
    assert prep.eval(encoded, 224).shape == (224, 224, 3)
    crop = prep.train(encoded, tf.constant([1, 2]), 224)
    assert crop.shape == (224, 224, 3)
    np.testing.assert_array_equal(crop, prep.train(encoded, tf.constant([1, 2]), 224))
  # Eval keeps the centre: resizing the shorter side to 256 and cropping 224.
  centre = transforms.resize_centre_crop(tf.constant(image), 224).numpy()
  resized = tf.image.resize(image, (256, 341), antialias=True).numpy()
  np.testing.assert_allclose(centre, resized[16:240, 58:282], atol=1e-4)


def test_missing_dataset_raises_one_clear_error(tmp_path, monkeypatch):
  with pytest.raises(input_pipeline.DatasetNotAvailableError) as err:
    input_pipeline.Dataset(data_config(str(tmp_path), "cifar100"))
  assert "cifar100" in str(err.value) and str(tmp_path) in str(err.value)
  assert "tfds build cifar100" in str(err.value)
  # download=True offline fails at once instead of TFDS retrying for minutes.
  monkeypatch.setattr(availability, "_network_reachable", lambda: False)
  with pytest.raises(input_pipeline.DatasetNotAvailableError, match="no network"):
    input_pipeline.Dataset(data_config(str(tmp_path), "cifar100", download=True))
  # ImageNet prepares from hand-downloaded archives, offline too: say where they go.
  with pytest.raises(input_pipeline.DatasetNotAvailableError, match="imagenet2012") as err:
    input_pipeline.Dataset(data_config(str(tmp_path), "imagenet2012", download=True))
  assert f"{tmp_path}/downloads/manual/" in str(err.value)


def test_unknown_dataset_name_raises_value_error(tmp_path):
  with pytest.raises(ValueError, match="no_such_dataset_xyz"):
    input_pipeline.Dataset(data_config(str(tmp_path), "no_such_dataset_xyz"))


# ---- the last partial batch (issue 19, point 2) ---------------------------------------


def test_last_batch_train_ends_each_epoch_with_the_remainder_and_resumes_exactly(
    digits_data_dir, shards=2):
  """40 examples at batch 16: epochs of 16, 16, 8 (PyTorch's drop_last=False), each
  example once per epoch; starting at any step, including the partial one and the one
  after it, gives the uninterrupted stream. Two input shards: each part's remainder
  (20 = 8 + 8 + 4) ends its epoch, the parts' sub-batches concatenated. (One shard:
  `test_device_data.test_a_run_trains_the_partial_batch_and_resumes_exactly_across_it`.)"""
  config = data_config(digits_data_dir, num_train_examples=40, last_batch="train",
                       input_shards=shards)
  dataset = input_pipeline.Dataset(config)
  assert dataset.steps_per_epoch(16) == 3 and dataset.last_batch_size(16) == 8
  straight = take(dataset.train_iterator(16, seed=0, num_devices=1), 7)
  assert [len(b["label"]) for b in straight] == [16, 16, 8] * 2 + [16]
  for e in (0, 1):
    seen = np.concatenate([b["index"] for b in straight[3 * e:3 * e + 3]])
    assert sorted(seen.tolist()) == list(range(40))
  for k in (1, 2, 3, 5):
    resumed = take(dataset.train_iterator(16, seed=0, start_step=k, num_devices=1), 2)
    assert_same_batches(resumed, straight[k:k + 2])
  # 'drop' (the default) keeps the full batches only: the same first two of each epoch.
  dropped = take(input_pipeline.Dataset(data_config(
      digits_data_dir, num_train_examples=40, input_shards=shards)).train_iterator(16, 0), 4)
  assert_same_batches(dropped, straight[0:2] + straight[3:5])


def test_last_batch_values_and_device_split_are_checked(digits_data_dir):
  dataset = input_pipeline.Dataset(data_config(digits_data_dir, num_train_examples=40,
                                               last_batch="train"))
  with pytest.raises(ValueError, match=r"last batch holds 8 examples .* 16 devices"):
    dataset.train_iterator(16, seed=0, num_devices=16)
  with pytest.raises(ValueError, match=r"last_batch='keep'; accepted: drop, train"):
    input_pipeline.Dataset(data_config(digits_data_dir, last_batch="keep")).steps_per_epoch(16)
