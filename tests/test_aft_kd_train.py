"""AFT-KD's loss history inside the real train step (tiny CIFAR ResNets, batch 8).

One plain step per method is in `test_method_steps.py`; this checks that the
``method_state`` collection advances through `train.train_step` and drives the weights.
"""
import functools

import jax
import ml_collections
import numpy as np

from afd_jax import train_state
from afd_jax.steps import train_step
from configs import common


def run_steps(method_fields, steps=3, steps_per_epoch=1):
  """`steps` jitted train steps of resnet8 distilled from a random-init resnet8."""
  c = common.base()
  c.model.name, c.teacher.name = "resnet8", "resnet8"
  c.method = ml_collections.ConfigDict(method_fields)
  nets = train_state.build_networks(c, 10, steps_per_epoch=steps_per_epoch)
  state = jax.jit(functools.partial(train_state.create, nets, image_size=32))(
      jax.random.PRNGKey(0))
  # Same architecture: a second random init serves as the (random) teacher.
  teacher_state = jax.jit(functools.partial(train_state.create, nets, image_size=32))(
      jax.random.PRNGKey(1))
  teacher_vars = {"params": teacher_state.params["student"],
                  "batch_stats": teacher_state.batch_stats["student"]}
  first = state
  step = jax.jit(functools.partial(train_step, nets))
  rng = np.random.default_rng(0)
  history = []
  for _ in range(steps):
    batch = {"image": rng.normal(size=(8, 32, 32, 3)).astype(np.float32),
             "label": rng.integers(0, 10, 8).astype(np.int32)}
    state, metrics = step(state, batch, teacher_vars)
    history.append(jax.device_get(metrics))
  return first, jax.device_get(state), history


def assert_method_params_moved(first, last):
  moved = jax.tree.map(lambda a, b: not np.allclose(a, b), first.params["method"],
                       last.params["method"])
  assert jax.tree.leaves(moved) and all(jax.tree.leaves(moved))


def test_aft_kd_history_advances_in_the_train_state():
  first, last, history = run_steps(dict(name="aft_kd"), steps=3, steps_per_epoch=1)
  assert all(np.isfinite(m["loss"]) for m in history)
  assert_method_params_moved(first, last)
  assert int(first.method_state["step"]) == 0
  assert int(last.method_state["step"]) == 3 and int(last.method_state["windows"]) == 3
  names = ["ce", "kd", "afb1", "afb2", "afb3"]
  # One-step windows: the third step is weighted by the rates of steps 2 over 1.
  rates = np.array([history[1][n] / history[0][n] for n in names]) / 2.0
  want = len(names) * np.exp(rates) / np.exp(rates).sum()
  np.testing.assert_allclose([history[2][f"w_{n}"] for n in names], want, rtol=1e-4)
  assert all(history[i][f"w_{n}"] == 1.0 for i in (0, 1) for n in names)
