"""Device-resident data: the augmentation's distribution, the data order, exact runs."""
import functools
import os
import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from afd_jax import (checkpointing, device_data, multi_step, parallel, steps, train,
                     train_state, transforms)
from config_loading import tiny_config, tiny_device_setup

DRAWS = 2000


def _ramp_image():
  """uint8 (32, 32, 3): channel 0 = row + 1, channel 1 = column + 1 (0 is padding)."""
  rows, cols = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
  return np.stack([rows + 1, cols + 1, np.zeros_like(rows)], -1).astype(np.uint8)


def _crop_and_flip(images):
  """(M, 32, 32, 3) augmented ramps -> row offsets, column offsets (0..8), flipped."""
  images = np.asarray(images)
  centre, right = images[:, 16, 16], images[:, 16, 17]
  flipped = right[:, 1] < centre[:, 1]
  dy = centre[:, 0] - 1 - 12
  dx = centre[:, 1] - 1 - np.where(flipped, 11, 12)
  return dy.astype(int), dx.astype(int), flipped


def _tf_draws(flip):
  import tensorflow as tf
  image = tf.constant(_ramp_image())
  ds = tf.data.Dataset.range(DRAWS).map(lambda i: transforms.pad_crop_flip(
      image, tf.stack([tf.constant(7, tf.int64), i]), 32, flip=flip))
  return next(iter(ds.batch(DRAWS))).numpy()


def _device_draws(flip):
  keys = jax.random.split(jax.random.PRNGKey(7), DRAWS)
  image = jnp.asarray(_ramp_image())
  return jax.jit(jax.vmap(lambda k: device_data.pad_crop_flip(image, k, flip=flip)))(keys)


@pytest.mark.parametrize("flip", [True, False])
def test_augmentation_has_the_distribution_of_the_tfdata_path(flip):
  """Offsets uniform on 0..8 in both axes, flips at rate 1/2 (none for digits)."""
  for draws in (_tf_draws(flip), _device_draws(flip)):
    dy, dx, flipped = _crop_and_flip(draws)
    assert dy.min() >= 0 and dy.max() <= 8 and dx.min() >= 0 and dx.max() <= 8
    for offsets in (dy, dx):
      # Binomial std of a bin frequency at 2000 draws is 0.007: 5 sigma.
      np.testing.assert_allclose(np.bincount(offsets, minlength=9) / DRAWS, 1 / 9,
                                 atol=0.035)
    assert abs(flipped.mean() - (0.5 if flip else 0.0)) < 0.04
  tf_dy, tf_dx, tf_flip = _crop_and_flip(_tf_draws(flip))
  dev_dy, dev_dx, dev_flip = _crop_and_flip(_device_draws(flip))
  for a, b in ((tf_dy, dev_dy), (tf_dx, dev_dx)):
    np.testing.assert_allclose(np.bincount(a, minlength=9) / DRAWS,
                               np.bincount(b, minlength=9) / DRAWS, atol=0.045)
  assert abs(tf_flip.mean() - dev_flip.mean()) < 0.05


def test_each_epoch_is_a_permutation_that_depends_only_on_seed_and_epoch():
  sampler = device_data.Sampler(num_examples=50, batch_size=8, mean=(0.5,) * 3,
                                std=(0.25,) * 3)
  assert sampler.steps_per_epoch == 6
  indices = jax.jit(sampler.indices)
  epoch = lambda seed, e: np.concatenate([indices(seed, 6 * e + b) for b in range(6)])
  assert len(set(epoch(0, 0))) == 48 and epoch(0, 0).max() < 50
  # The order is a function of (seed, epoch) alone, not of how an epoch is cut into
  # batches: a sampler with batch 10 walks the same permutation, all 50 in 5 batches.
  tens = device_data.Sampler(num_examples=50, batch_size=10, mean=(0.5,) * 3,
                             std=(0.25,) * 3)
  whole = np.concatenate([jax.jit(tens.indices)(0, 5 + b) for b in range(5)])  # epoch 1
  assert sorted(whole.tolist()) == list(range(50))
  np.testing.assert_array_equal(whole[:48], epoch(0, 1))
  assert not np.array_equal(epoch(0, 0), epoch(0, 1))
  assert not np.array_equal(epoch(0, 0), epoch(1, 0))
  data = {"image": jnp.full((50, 32, 32, 3), 128, jnp.uint8),
          "label": jnp.arange(50, dtype=jnp.int32)}
  batch = jax.jit(sampler.batch)(data, 0, 9)
  np.testing.assert_array_equal(batch["label"], indices(0, 9))
  centre = np.asarray(batch["image"])[:, 12:20, 12:20]  # never reached by the padding
  np.testing.assert_allclose(centre, (128 / 255 - 0.5) / 0.25, atol=1e-6)


def test_pipeline_choice():
  dataset = types.SimpleNamespace(
      builder=types.SimpleNamespace(info=types.SimpleNamespace(
          features={"image": types.SimpleNamespace(shape=(32, 32, 3))})),
      image_key="image", info=types.SimpleNamespace(image_size=32, num_train_examples=100))
  cfg = tiny_config(None).data
  assert device_data.choose_pipeline(cfg, dataset) == "tfdata"  # the default
  cfg.pipeline = "auto"
  assert device_data.choose_pipeline(cfg, dataset) == "device"
  cfg.device_max_bytes = 1000
  assert device_data.choose_pipeline(cfg, dataset) == "tfdata"
  cfg.pipeline = "device"
  with pytest.raises(ValueError, match="device_max_bytes"):
    device_data.choose_pipeline(cfg, dataset)
  cfg.pipeline = "gpu"
  with pytest.raises(ValueError, match="accepted: tfdata, device, auto"):
    device_data.choose_pipeline(cfg, dataset)


def _device_config(data_dir, **overrides):
  """tiny_config on the device path: one epoch of 4 steps, 16 eval images."""
  c = tiny_config(data_dir, **overrides)
  c.data.update(dict(pipeline="device", num_eval_examples=16))
  c.eval_batch_size = 16
  c.schedule.num_epochs = 1
  c.logging.log_every_steps = 4
  return c


def _params(workdir):
  step = checkpointing.latest_step(workdir)
  state = checkpointing.read_numpy(os.path.join(workdir, "checkpoints", str(step), "state"))
  return step, state["params"]


def test_batches_do_not_depend_on_the_number_of_devices():
  sampler = device_data.Sampler(num_examples=40, batch_size=16, mean=(0.5,) * 3,
                                std=(0.25,) * 3)
  rng = np.random.default_rng(0)
  data = {"image": jnp.asarray(rng.integers(0, 256, (40, 32, 32, 3)), jnp.uint8),
          "label": jnp.arange(40, dtype=jnp.int32)}
  one = jax.jit(sampler.batch)(data, 3, 5)
  mesh = parallel.make_mesh(8)
  sharded = jax.jit(sampler.batch, out_shardings=parallel.batch_sharded(mesh))(
      jax.device_put(data, parallel.replicated(mesh)), 3, 5)
  chex.assert_trees_all_equal(jax.device_get(one), jax.device_get(sharded))


def test_k_steps_per_dispatch_equal_k_single_steps_and_trace_once(monkeypatch):
  """One program of 4 steps == 4 one-step calls; 3 calls trace the program once."""
  nets, sampler, data = tiny_device_setup()
  mesh = parallel.make_mesh(1)
  # As `train.open_run` makes it: already laid out on the mesh, as the step's outputs are.
  init = lambda: jax.jit(functools.partial(train_state.create, nets, image_size=32),  # noqa
                         out_shardings=parallel.replicated(mesh))(jax.random.PRNGKey(0))
  # Two programs (1 and 4 steps), traced once however often called; on CPU the 4 steps
  # are unrolled in the program (`multi_step.repeat`): 4 traces there, once.
  traces = 1 + (4 if jax.default_backend() == "cpu" else 1)
  monkeypatch.setattr(steps, "train_step",
                      chex.assert_max_traces(steps.train_step, n=traces))
  dispatch = multi_step.Dispatcher(nets, mesh, None, sampler=sampler, data=data, seed=0)
  single = init()
  for _ in range(4):
    single, _ = dispatch(single, 1)
  chunked, metrics = dispatch(init(), 4)
  assert metrics["loss"].shape == (4,) and int(chunked.step) == 4
  chex.assert_trees_all_close(chunked.params, single.params, rtol=1e-5, atol=1e-6)
  for _ in range(2):  # no retrace, the donated state is replaced each time
    chunked, _ = dispatch(chunked, 4)
  assert int(chunked.step) == 12


def test_repeat_scanned_equals_unrolled():
  """`multi_step.repeat` as a lax.scan (GPU/TPU) == unrolled (CPU), stacked metrics too."""
  body = lambda c, x: (c * 0.5 + x, {"c": c.sum(), "x": x})  # noqa: E731
  xs = jnp.arange(12.0).reshape(3, 2, 2)
  scanned = multi_step.repeat(body, jnp.ones((2, 2)), 3, xs, unroll=False)
  unrolled = multi_step.repeat(body, jnp.ones((2, 2)), 3, xs, unroll=True)
  chex.assert_trees_all_close(scanned, unrolled)
  assert unrolled[1]["x"].shape == (3, 2, 2)
  np.testing.assert_allclose(unrolled[0], ((1 * 0.5 + xs[0]) * 0.5 + xs[1]) * 0.5 + xs[2])


@pytest.mark.slow
def test_resume_from_a_mid_chunk_step_is_exact(digits_data_dir, tmp_path):
  """k = 4: straight (one chunk of 4) == stopped at step 3 (chunks 2, 1) + resumed (1)."""
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  train.train_and_evaluate(_device_config(digits_data_dir, steps_per_dispatch=4), straight)
  first = train.train_and_evaluate(
      _device_config(digits_data_dir, steps_per_dispatch=4, max_steps=3), resumed)
  assert first["step"] == 3 and checkpointing.latest_step(resumed) == 3
  train.train_and_evaluate(_device_config(digits_data_dir, steps_per_dispatch=4), resumed)
  assert _params(straight)[0] == _params(resumed)[0] == 4
  chex.assert_trees_all_close(_params(resumed)[1], _params(straight)[1], rtol=1e-6,
                              atol=1e-6)


def test_device_split_is_in_index_order_and_batches_carry_their_index(digits_data_dir):
  """The device path's ``index`` means what the tf.data path's does (CRD's bank rows)."""
  from afd_jax import input_pipeline
  from test_input_pipeline import data_config
  dataset = input_pipeline.Dataset(data_config(digits_data_dir, num_train_examples=100))
  mesh = parallel.make_mesh(2)
  sampler, data = device_data.load(dataset, mesh, 20)
  np.testing.assert_array_equal(np.asarray(data["label"]), dataset.train_labels())
  seen = []
  for step in range(sampler.steps_per_epoch):
    batch = sampler.batch(data, jnp.int32(3), jnp.int32(step))
    np.testing.assert_array_equal(np.asarray(batch["index"]),
                                  np.asarray(sampler.indices(jnp.int32(3), jnp.int32(step))))
    np.testing.assert_array_equal(np.asarray(data["label"])[np.asarray(batch["index"])],
                                  np.asarray(batch["label"]))
    seen.extend(np.asarray(batch["index"]).tolist())
  assert sorted(seen) == list(range(100))
