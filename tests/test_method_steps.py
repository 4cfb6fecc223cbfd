"""One real jitted training step per method on real model pairs (student + method update)."""
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from afd_jax import steps, train_state
from configs import common

CASES = [
    ("afd", "wrn_16_2", "wrn_16_1"),  # the WRN feature choice (act_in, final.act)
    ("tat", "resnet20", "resnet8"),
    ("aft_kd", "resnet20", "resnet8"),
    ("hmat", "resnet20", "resnet8"),
    ("fitnet", "resnet20", "resnet8"),
    ("kd", "resnet20", "resnet8"),
]


@pytest.mark.parametrize("method,teacher,student", CASES)
def test_one_training_step(method, teacher, student):
  c = common.digits()
  c.model.name, c.teacher.name = student, teacher
  c.teacher.checkpoint = "unused"
  c.method = ml_collections.ConfigDict(dict(name=method))
  nets = train_state.build_networks(c, num_classes=10, steps_per_epoch=4)
  state = jax.jit(functools.partial(train_state.create, nets, image_size=32))(
      jax.random.PRNGKey(0))
  teacher_vars = nets.teacher.init(jax.random.key(1, impl="rbg"), jnp.zeros((2, 32, 32, 3)),
                                   train=False)
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.normal(size=(8, 32, 32, 3)), jnp.float32),
           "label": jnp.asarray(rng.integers(0, 10, 8), jnp.int32)}
  before = jax.device_get(state.params)
  new_state, metrics = jax.jit(functools.partial(steps.train_step, nets))(
      state, batch, teacher_vars)
  assert int(new_state.step) == 1
  assert np.isfinite(metrics["loss"]) and metrics["loss"] > 0
  assert "ce" in metrics
  moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - b).max()),
                       new_state.params, before)
  assert max(jax.tree.leaves(moved["student"])) > 0
  if jax.tree.leaves(before["method"]):  # learnable parts train with the student
    assert max(jax.tree.leaves(moved["method"])) > 0
  # the teacher is frozen: nothing of it lives in the train state
  assert set(new_state.params) == {"student", "method"}
