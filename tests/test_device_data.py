"""Device-resident data: the augmentation's distribution, the data order, exact runs."""
import dataclasses
import functools
import os
import types

import chex
import flax
import jax
import jax.numpy as jnp
import ml_collections
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
  # 'auto', the default (issue 19, point 9): device on a GPU/TPU, tf.data on a CPU.
  assert cfg.pipeline == "auto"
  assert device_data.choose_pipeline(cfg, dataset, backend="gpu") == "device"
  assert device_data.choose_pipeline(cfg, dataset, backend="tpu") == "device"
  assert device_data.choose_pipeline(cfg, dataset, backend="cpu") == "tfdata"
  del cfg.pipeline  # a config written before the field: tf.data
  assert device_data.choose_pipeline(cfg, dataset, backend="gpu") == "tfdata"
  cfg.pipeline = "auto"
  cfg.device_max_bytes = 1000
  assert device_data.choose_pipeline(cfg, dataset, backend="gpu") == "tfdata"
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
  """k = 2: straight (chunks 1-2, 3-4) == stopped at step 3 (chunks 2, 1) + resumed from
  the middle of the straight run's second chunk (1). (k = 4 at the dispatcher: the test
  above; each step of a chunk is compiled into its program on CPU.)"""
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  train.train_and_evaluate(_device_config(digits_data_dir, steps_per_dispatch=2), straight)
  first = train.train_and_evaluate(
      _device_config(digits_data_dir, steps_per_dispatch=2, max_steps=3), resumed)
  assert first["step"] == 3 and checkpointing.latest_step(resumed) == 3
  train.train_and_evaluate(_device_config(digits_data_dir, steps_per_dispatch=2), resumed)
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


# ---- the last partial batch (issue 19, point 2) ---------------------------------------


@flax.struct.dataclass
class _CountingState:
  """A stand-in train state: how often each example has been trained on."""
  step: jax.Array
  seen: jax.Array


def _counting_step(nets, state, batch, teacher_vars):
  """`steps.train_step`'s signature; counts the batch's examples, reports its size."""
  del nets, teacher_vars
  return (_CountingState(state.step + 1, state.seen.at[batch["index"]].add(1)),
          {"size": jnp.float32(batch["index"].shape[0])})


def _counting_state(n):
  return _CountingState(jnp.int32(0), jnp.zeros((n,), jnp.int32))


def test_sampler_last_batch_ends_each_epoch_with_the_remainder():
  sampler = device_data.Sampler(num_examples=40, batch_size=16, mean=(0.5,) * 3,
                                std=(0.25,) * 3, last_batch=True)
  assert (sampler.steps_per_epoch, sampler.last_batch_size) == (3, 8)
  assert [sampler.size(s) for s in range(6)] == [16, 16, 8] * 2
  for e in (0, 1):
    idx = np.concatenate([sampler.indices(7, 3 * e + b, sampler.size(3 * e + b))
                          for b in range(3)])
    assert sorted(idx.tolist()) == list(range(40))
  # A full step is the 'drop' sampler's, bit for bit (same order, same crops), while
  # both are in epoch 0 (later, the epochs start at other steps).
  drop = dataclasses.replace(sampler, last_batch=False)
  data = {"image": jnp.asarray(np.random.default_rng(0).integers(0, 256, (40, 8, 8, 3)),
                               jnp.uint8), "label": jnp.arange(40, dtype=jnp.int32)}
  chex.assert_trees_all_equal(sampler.batch(data, 7, 1, 16), drop.batch(data, 7, 1))
  with pytest.raises(ValueError, match="last_batch='drop'"):
    sampler.batch(data, 7, 1)  # a caller that does not say the size (vmapped seeds)
  assert device_data.trains_last_batch(ml_collections.ConfigDict()) is False
  with pytest.raises(ValueError, match=r"last_batch='all'; accepted: drop, train"):
    device_data.trains_last_batch(ml_collections.ConfigDict(dict(last_batch="all")))


@pytest.mark.parametrize("path", ["device", "tfdata"])
def test_dispatcher_trains_the_partial_batch_in_chunks_as_one_by_one(monkeypatch, path):
  """k = 4 over epochs of 16, 16, 8: the chunks split before the partial step; the same
  steps, sizes and examples as one step per dispatch, each example once per epoch."""
  monkeypatch.setattr(steps, "train_step", _counting_step)
  sampler = device_data.Sampler(num_examples=40, batch_size=16, mean=(0.5,) * 3,
                                std=(0.25,) * 3, last_batch=True)
  data = {"image": jnp.zeros((40, 8, 8, 3), jnp.uint8),
          "label": jnp.arange(40, dtype=jnp.int32)}
  mesh = parallel.make_mesh(8)

  def dispatcher():
    if path == "device":
      return multi_step.Dispatcher(None, mesh, None, sampler=sampler, data=data, seed=3)
    host = (jax.tree.map(np.asarray, sampler.batch(data, 3, s, sampler.size(s)))
            for s in range(100))
    return multi_step.Dispatcher(None, mesh, None, batches=parallel.prefetch_to_device(
        host, 2, parallel.batch_sharded(mesh)))

  single, one = dispatcher(), _counting_state(40)
  sizes = []
  for _ in range(6):
    one, m = single(one, 1)
    sizes.append(float(np.reshape(m["size"], -1)[0]))
  chunked, state, chunk_sizes = dispatcher(), _counting_state(40), []
  for n in (3, 1, 2):  # chunks with the partial step inside, alone, at the end
    state, m = chunked(state, n)
    assert m["size"].shape == ((n,) if n > 1 or path == "device" else ())
    chunk_sizes += np.reshape(m["size"], -1).tolist()
  assert sizes == chunk_sizes == [16, 16, 8] * 2
  np.testing.assert_array_equal(one.seen, 2)
  np.testing.assert_array_equal(state.seen, 2)
  assert int(state.step) == int(one.step) == 6
  # A chunk ending on the partial step: 3 full steps then the partial one.
  big = device_data.Sampler(num_examples=72, batch_size=16, mean=(0.5,) * 3,
                            std=(0.25,) * 3, last_batch=True)
  assert [big.size(s) for s in range(5)] == [16, 16, 16, 16, 8]
  assert multi_step.pieces([big.size(s) for s in range(1, 5)], 4) == [(2, 16), (1, 16),
                                                                      (1, 8)]


def test_dispatcher_refuses_a_partial_batch_that_does_not_split_over_the_devices():
  sampler = device_data.Sampler(num_examples=44, batch_size=16, mean=(0.5,) * 3,
                                std=(0.25,) * 3, last_batch=True)  # last batch: 12
  with pytest.raises(ValueError, match=r"last batch holds 12 examples .* 8 devices"):
    multi_step.Dispatcher(None, parallel.make_mesh(8), None, sampler=sampler,
                          data={}, seed=0)


@pytest.mark.slow
def test_a_run_trains_the_partial_batch_and_resumes_exactly_across_it(digits_data_dir,
                                                                      tmp_path):
  """40 examples at batch 16, ``last_batch='train'``: 3 steps per epoch (16, 16, 8);
  stopped after step 2 and resumed, the run ends where the straight one does. (The
  tf.data path, the CPU default; the device path's steps are the dispatcher test's.)"""
  pipeline = "tfdata"
  def config(**kw):
    c = _device_config(digits_data_dir, **kw)
    c.data.update(dict(num_train_examples=40, last_batch="train", pipeline=pipeline))
    c.logging.log_every_steps = 1
    return c

  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  assert train.train_and_evaluate(config(), straight)["step"] == 3
  assert train.train_and_evaluate(config(max_steps=2), resumed)["step"] == 2
  train.train_and_evaluate(config(), resumed)
  assert _params(straight)[0] == _params(resumed)[0] == 3
  chex.assert_trees_all_close(_params(resumed)[1], _params(straight)[1], rtol=1e-6,
                              atol=1e-6)
