"""Tasks (`afd_jax.tasks`): every model's task is registered, an unknown task is a
one-line error, and a task written here, unknown to the loop, trains, evaluates, keeps
its best checkpoint by its own score and resumes through the unchanged loop."""
import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from afd_jax import checkpointing, metric_writer, models, tasks, train
from afd_jax.tasks import classification
from config_loading import tiny_config


def test_every_model_names_a_registered_task():
  for name in models.MODEL_NAMES:
    assert tasks.of_model(name).name == models.task_of(name)
  assert models.task_of("deeplabv3p_tiny_resnet10") == "segmentation"
  assert models.task_of("resnet8") == "classification"


def test_an_unknown_task_is_a_one_line_error_naming_the_accepted_ones():
  with pytest.raises(ValueError) as e:
    tasks.get("detection")
  message = str(e.value)
  assert "\n" not in message and "'detection'" in message
  assert "'classification'" in message and "'segmentation'" in message


def test_scores_and_their_tasks():
  assert tasks.get("classification").score == "top1"
  assert tasks.get("segmentation").score == "miou"
  assert tasks.of_result({"best_miou": 3.0, "miou": 2.0}).name == "segmentation"
  assert tasks.of_result({"best_top1": 3.0, "top1": 2.0}).name == "classification"
  assert tasks.of_result({"error": "x"}).name == "classification"


# The throwaway task: the digit's value read off a classifier's softmax (its expectation
# over 0..K-1), scored by the negative mean squared error against the label.

def _value_eval_step(model, info):
  del info

  def step(variables, batch):
    logits = model.apply(variables, batch["image"], train=False).astype(jnp.float32)
    value = jax.nn.softmax(logits) @ jnp.arange(logits.shape[-1], dtype=jnp.float32)
    err = (value - batch["label"].astype(jnp.float32)) ** 2
    return {"squared": jnp.sum(err * batch["mask"]), "count": jnp.sum(batch["mask"])}
  return step


def _value_metrics(sums):
  mse = float(sums["squared"] / max(float(sums["count"]), 1.0))
  return {"neg_mse": -mse, "mse": mse, "loss": mse}


def _write_value_picture(ctx):
  """The task's picture: a file per evaluation (what the loop's hooks are handed)."""
  if ctx.is_chief:
    with open(os.path.join(ctx.workdir, f"value_{ctx.step}.txt"), "w") as f:
      f.write(str(ctx.step))


VALUE = tasks.Task(
    name="digit_value", score="neg_mse", score_label="−MSE",
    label_shape=classification.label_shape, eval_step=_value_eval_step,
    eval_metrics=_value_metrics, preprocessing="afd_jax.transforms",
    data=classification.TASK.data, pictures=(_write_value_picture,),
    no_score=float("-inf"), model_task="classification")


@pytest.fixture
def value_task():
  tasks.register(VALUE)
  yield VALUE
  tasks.unregister(VALUE.name)


def _config(data_dir, **overrides):
  c = tiny_config(data_dir, **overrides)
  c.data.task = VALUE.name
  return c


def _eval_rows(wd):
  return [r for r in metric_writer.read_metrics(wd) if "eval/neg_mse" in r]


def test_a_task_unknown_to_the_loop_trains_evaluates_and_resumes(
    value_task, digits_data_dir, tmp_path):
  del value_task
  straight = str(tmp_path / "straight")
  whole = train.train_and_evaluate(_config(digits_data_dir), straight)
  resumed = str(tmp_path / "resumed")
  first = train.train_and_evaluate(_config(digits_data_dir, max_steps=6), resumed)
  assert first["step"] == 6
  second = train.train_and_evaluate(_config(digits_data_dir), resumed)
  assert whole["step"] == second["step"] == 8
  # Its own metrics, score and best: no top1 anywhere in the result.
  assert set(second) == {"step", "best_neg_mse", "train_seconds", "neg_mse", "mse"}
  rows = _eval_rows(resumed)
  assert [r["step"] for r in rows] == [4, 6, 8]
  for r in rows:
    np.testing.assert_allclose(r["eval/neg_mse"], -r["eval/mse"])
    assert r["eval/mse"] >= 0.0
  assert second["best_neg_mse"] == pytest.approx(max(r["eval/neg_mse"] for r in rows))
  best_step = max(rows, key=lambda r: r["eval/neg_mse"])["step"]
  assert checkpointing.best_meta(resumed)["best_neg_mse"] == pytest.approx(
      second["best_neg_mse"])
  assert os.listdir(os.path.join(resumed, "best")) and best_step in (4, 6, 8)
  # Resumed == uninterrupted, numbers and state.
  assert second["neg_mse"] == pytest.approx(whole["neg_mse"], rel=1e-5)
  a = checkpointing.read_numpy(os.path.join(straight, "checkpoints", "8", "state"))
  b = checkpointing.read_numpy(os.path.join(resumed, "checkpoints", "8", "state"))
  chex.assert_trees_all_close(a, b, rtol=1e-6, atol=1e-6)
  # The task's pictures, after every evaluation of both segments.
  assert sorted(f for f in os.listdir(resumed) if f.startswith("value_")) == [
      "value_4.txt", "value_6.txt", "value_8.txt"]
  with open(os.path.join(resumed, "result.json")) as f:
    assert json.load(f)["best_neg_mse"] == second["best_neg_mse"]
