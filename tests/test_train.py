"""The training loop: multi-device equivalence, exact resume, teachers, logs, bad input."""
import functools
import json
import os

import chex
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from afd_jax import checkpointing, metric_writer, parallel, steps, train
from afd_jax import train_state
from config_loading import distill, tiny_config
from configs import common


def read_state(workdir, sub="checkpoints"):
  d = os.path.join(workdir, sub)
  step = max(int(s) for s in os.listdir(d) if s.isdigit())
  return step, ocp.StandardCheckpointer().restore(os.path.join(d, str(step), "state"))


@pytest.fixture(scope="module")
def teacher_dir(tiny_run):
  """The shared finished 8-step run (conftest.py), here a teacher."""
  return tiny_run


def test_teacher_run_writes_checkpoints_logs_and_config(teacher_dir):
  assert sorted(os.listdir(os.path.join(teacher_dir, "checkpoints"))) == ["4", "8"]
  assert len(os.listdir(os.path.join(teacher_dir, "best"))) == 1
  with open(os.path.join(teacher_dir, "metrics.jsonl")) as f:
    lines = [json.loads(line) for line in f]
  assert any("eval/top1" in l for l in lines) and any("train/loss" in l for l in lines)
  assert all(np.isfinite(l["train/loss"]) for l in lines if "train/loss" in l)
  assert os.listdir(os.path.join(teacher_dir, "tensorboard"))
  with open(os.path.join(teacher_dir, "config.json")) as f:
    written = json.load(f)
  assert written["model"]["name"] == "resnet8"
  assert written["method"] == {"name": "none", "batch_average": True}
  with open(os.path.join(teacher_dir, "result.json")) as f:
    assert 0.0 <= json.load(f)["top1"] <= 100.0


def test_stop_and_resume_equals_uninterrupted(digits_data_dir, teacher_dir, tmp_path):
  """KD student: stop at step 3 (mid-epoch), resume, finish == one uninterrupted run."""
  straight = str(tmp_path / "straight")
  train.train_and_evaluate(distill(tiny_config(digits_data_dir), teacher_dir), straight)
  resumed = str(tmp_path / "resumed")
  first = train.train_and_evaluate(
      distill(tiny_config(digits_data_dir, max_steps=3), teacher_dir), resumed)
  assert first["step"] == 3
  with open(os.path.join(resumed, "metrics.jsonl")) as f:
    n_lines_before = len(f.readlines())
  second = train.train_and_evaluate(distill(tiny_config(digits_data_dir), teacher_dir),
                                    resumed)
  assert second["step"] == 8 and "teacher_top1" in second
  (step_a, a), (step_b, b) = read_state(straight), read_state(resumed)
  assert step_a == step_b == 8
  chex.assert_trees_all_close(a, b, rtol=1e-6, atol=1e-6)
  with open(os.path.join(resumed, "metrics.jsonl")) as f:
    assert len(f.readlines()) > n_lines_before  # the rerun appended, nothing lost
  # Each step logged once, in order; the teacher's row once.
  rows = metric_writer.read_metrics(resumed)
  train_steps = [r["step"] for r in rows if "train/loss" in r]
  assert train_steps == sorted(set(train_steps)) == [2, 3, 4, 6, 8]
  assert sum("teacher/top1" in r for r in rows) == 1
  with open(os.path.join(resumed, "config.json")) as f:  # resolved method fields
    assert json.load(f)["method"] == {"name": "kd", "ce_weight": 0.1, "kd_weight": 0.9,
                                      "temperature": 4.0}
  # a finished run, rerun, trains nothing more and keeps its checkpoints
  again = train.train_and_evaluate(distill(tiny_config(digits_data_dir), teacher_dir),
                                   resumed)
  assert again["step"] == 8
  chex.assert_trees_all_close(read_state(resumed)[1], b)


def _one_step(config, mesh_devices, batch, teacher_vars):
  nets = train_state.build_networks(config, 10, steps_per_epoch=4)
  mesh = parallel.make_mesh(mesh_devices)
  repl, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  state = jax.jit(functools.partial(train_state.create, nets, image_size=32),
                  out_shardings=repl)(jax.random.PRNGKey(0))
  step = jax.jit(functools.partial(steps.train_step, nets),
                 in_shardings=(repl, data, repl), out_shardings=(repl, repl))
  state, metrics = step(state, jax.device_put(batch, data),
                        jax.device_put(teacher_vars, repl))
  return jax.device_get(state), jax.device_get(metrics)


def test_eight_devices_equal_one_device():
  assert jax.local_device_count() == 8
  c = common.digits()
  c.model.name = "resnet8"
  c.teacher.name = "resnet14"
  c.method = ml_collections.ConfigDict(dict(name="at", kd_weight=0.5))
  rng = np.random.default_rng(0)
  batch = {"image": rng.normal(size=(16, 32, 32, 3)).astype(np.float32),
           "label": rng.integers(0, 10, 16).astype(np.int32)}
  teacher = train_state.build_networks(c, 10, 4).teacher
  teacher_vars = teacher.init(jax.random.PRNGKey(1), jnp.zeros((2, 32, 32, 3)), train=False)
  one, m1 = _one_step(c, 1, batch, teacher_vars)
  eight, m8 = _one_step(c, 8, batch, teacher_vars)
  chex.assert_trees_all_close(one.params, eight.params, atol=1e-5, rtol=1e-5)
  chex.assert_trees_all_close(one.batch_stats, eight.batch_stats, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(m1["loss"], m8["loss"], rtol=1e-5)


def test_bad_configs_raise_clear_errors(digits_data_dir, teacher_dir, tmp_path):
  with pytest.raises(ValueError, match=r"'resnet9'.*resnet8"):
    train.train_and_evaluate(tiny_config(digits_data_dir, model="resnet9"), str(tmp_path / "a"))
  c = tiny_config(digits_data_dir, num_devices=8)
  c.batch_size = 12
  with pytest.raises(ValueError, match=r"batch_size=12 .* 8 devices"):
    train.train_and_evaluate(c, str(tmp_path / "b"))
  with pytest.raises(ValueError, match="num_devices=99"):
    train.train_and_evaluate(tiny_config(digits_data_dir, num_devices=99), str(tmp_path / "c"))
  c = tiny_config(digits_data_dir)
  c.schedule.name = "linear"
  with pytest.raises(ValueError, match=r"'linear'.*'step', 'cosine'"):
    train.train_and_evaluate(c, str(tmp_path / "d"))
  with pytest.raises(checkpointing.CheckpointError, match="no teacher checkpoint"):
    train.train_and_evaluate(distill(tiny_config(digits_data_dir), str(tmp_path / "none")),
                             str(tmp_path / "e"))
  with pytest.raises(checkpointing.CheckpointError, match="does not fit model 'resnet14'"):
    train.train_and_evaluate(
        distill(tiny_config(digits_data_dir), teacher_dir, teacher="resnet14"),
        str(tmp_path / "f"))
  with pytest.raises(ValueError, match=r"'kd' has no field.*'beta'.*temperature=4\.0"):
    train.train_and_evaluate(distill(tiny_config(digits_data_dir), teacher_dir, beta=1.0),
                             str(tmp_path / "g"))


def test_corrupt_checkpoint_is_a_clear_error_and_is_kept(digits_data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(tiny_config(digits_data_dir, max_steps=4), workdir)
  state_dir = os.path.join(workdir, "checkpoints", "4", "state")
  for root, _, files in os.walk(state_dir):
    for name in files:
      with open(os.path.join(root, name), "wb") as f:
        f.write(b"garbage")
  with pytest.raises(checkpointing.CheckpointError, match="cannot resume from checkpoint"):
    train.train_and_evaluate(tiny_config(digits_data_dir), workdir)
  assert os.path.isdir(state_dir)  # nothing deleted


def test_afd_run_logs_and_plots_its_links(digits_data_dir, teacher_dir, tmp_path):
  """A short AFD run writes its link heatmap; experiments/plot_afd_links.py redraws it."""
  import importlib.util
  workdir = str(tmp_path / "afd")
  c = distill(tiny_config(digits_data_dir, max_steps=2), teacher_dir, method="afd")
  result = train.train_and_evaluate(c, workdir)
  assert result["step"] == 2 and np.isfinite(result["top1"])
  assert os.listdir(os.path.join(workdir, "tensorboard"))
  with open(os.path.join(workdir, "links.png"), "rb") as f:  # the eval hook's heatmap
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  path = os.path.join(os.path.dirname(__file__), "..", "experiments", "plot_afd_links.py")
  spec = importlib.util.spec_from_file_location("plot_afd_links", path)
  script = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(script)
  out = script.main(["--workdir", workdir, "--out", str(tmp_path / "links.png")])
  with open(out, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  att = np.load(str(tmp_path / "links.npy"))
  assert att.shape == (3, 3)  # resnet8: 3 blocks on each side
  np.testing.assert_allclose(att.sum(axis=1), 1.0, rtol=1e-5)  # softmax over students


def test_model_init_starts_the_student_from_a_run_and_only_a_fresh_start(
    digits_data_dir, teacher_dir, tmp_path):
  """``config.model.init``: the student's first state is the given run's weights."""
  c = tiny_config(digits_data_dir, max_steps=1)
  c.model.init = teacher_dir
  run = train.open_run(c, str(tmp_path / "init"))
  try:
    want = checkpointing.load_teacher_variables(
        teacher_dir, jax.eval_shape(lambda: train_state.student_variables(run.state)),
        "resnet8")
    chex.assert_trees_all_close(train_state.student_variables(run.state), want)
    assert int(run.state.step) == 0
  finally:
    run.ckpts.close()
  c.model.init = str(tmp_path / "missing")
  with pytest.raises(ValueError, match="config.model.init=.*missing.*neither"):
    train.train_and_evaluate(c, str(tmp_path / "bad"))
  assert not os.path.exists(tmp_path / "bad")  # refused before the workdir was claimed
