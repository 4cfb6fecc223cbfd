"""A run that never lies: divergence, workdir identity, interrupts at any instant,
fallback from a corrupt checkpoint, honest logs, validated inputs, quiet errors."""
import glob
import hashlib
import json
import os
import shutil
import signal

import chex
import numpy as np
import pytest

from afd_jax import checkpointing, faults, metric_writer, train, workdir
from config_loading import distill, load, run_main, tiny_config


def _state(wd, sub="checkpoints", step=None):
  d = os.path.join(wd, sub)
  step = step or max(int(s) for s in os.listdir(d) if s.isdigit())
  return step, checkpointing.read_numpy(os.path.join(d, str(step), "state"))


def _all_finite(tree):
  return all(np.all(np.isfinite(x)) for x in __import__("jax").tree.leaves(tree))


def _eval_rows(wd):
  return [(r["step"], r["eval/top1"]) for r in metric_writer.read_metrics(wd)
          if "eval/top1" in r]


@pytest.fixture(scope="module")
def straight(tiny_run):
  """An uninterrupted 8-step run (checkpoints at the epoch ends 4 and 8; conftest.py)."""
  return tiny_run


def _assert_same_run(a, b):
  """Same final state, same best checkpoint, same evals logged once each, in order."""
  chex.assert_trees_all_close(_state(a)[1], _state(b)[1], rtol=1e-6, atol=1e-6)
  (step_a, best_a), (step_b, best_b) = _state(a, "best"), _state(b, "best")
  assert step_a == step_b
  chex.assert_trees_all_close(best_a, best_b, rtol=1e-6, atol=1e-6)
  assert _eval_rows(a) == pytest.approx(_eval_rows(b))
  steps = [r["step"] for r in metric_writer.read_metrics(a) if "train/loss" in r]
  assert steps == sorted(set(steps))


def test_the_injection_hook_parses_its_variable_once(monkeypatch):
  """``AFD_JAX_INJECT`` is parsed once per value, not at every step it is asked about;
  a malformed item is an error naming the accepted form."""
  faults.injections.cache_clear()
  monkeypatch.setenv("AFD_JAX_INJECT", "step@3,save@8:SIGINT")
  for step in range(100):
    faults.inject("step", step + 1000)  # no such instant: nothing sent
  assert faults.injections.cache_info().misses == 1
  assert faults.injections("step@3,save@8:SIGINT") == {"step@3": None,
                                                       "save@8": signal.SIGINT}
  for bad in ("step3", "step@x", "step@3:SIGNOPE"):
    with pytest.raises(ValueError, match=f"'{bad}' is not <where>@<step>"):
      faults.injections(bad)


@pytest.mark.parametrize("instant", ["step@2", "eval@4", "save@4"])
def test_interrupt_at_any_instant_resumes_identically(instant, straight, digits_data_dir,
                                                      tmp_path, monkeypatch):
  wd = str(tmp_path / "run")
  monkeypatch.setenv("AFD_JAX_INJECT", instant)
  handler = signal.getsignal(signal.SIGTERM)
  with pytest.raises(faults.Preempted) as stopped:
    train.train_and_evaluate(tiny_config(digits_data_dir), wd)
  assert stopped.value.signum == signal.SIGTERM
  assert stopped.value.step == int(instant.split("@")[1])  # that very step was saved
  assert checkpointing.latest_step(wd) == stopped.value.step
  assert signal.getsignal(signal.SIGTERM) == handler
  first_seconds = json.load(open(os.path.join(wd, "checkpoints", str(stopped.value.step),
                                               "meta", "metadata")))["train_seconds"]
  monkeypatch.delenv("AFD_JAX_INJECT")
  result = train.train_and_evaluate(tiny_config(digits_data_dir), wd)
  assert result["step"] == 8 and result["train_seconds"] > first_seconds
  _assert_same_run(wd, straight)


def test_a_preempted_run_logs_the_rows_of_an_uninterrupted_one(straight, digits_data_dir,
                                                              tmp_path, monkeypatch):
  """SIGTERM at step 3 (between log steps), then during the final save: each run stops
  after saving (no extra train row at 3: its metrics ride in the checkpoint), and the
  finished run's metrics.jsonl equals the uninterrupted one's but for timing fields."""
  wd = str(tmp_path / "run")
  monkeypatch.setenv("AFD_JAX_INJECT", "step@3,save@8")
  with pytest.raises(faults.Preempted) as stopped:
    train.train_and_evaluate(tiny_config(digits_data_dir), wd)
  assert stopped.value.step == 3
  assert [r["step"] for r in metric_writer.read_metrics(wd) if "train/loss" in r] == [2]
  with pytest.raises(faults.Preempted) as stopped:  # in the final save: saved, then stopped
    train.train_and_evaluate(tiny_config(digits_data_dir), wd)
  assert (stopped.value.signum, stopped.value.step) == (signal.SIGTERM, 8)
  assert checkpointing.latest_step(wd) == 8
  monkeypatch.delenv("AFD_JAX_INJECT")
  assert train.train_and_evaluate(tiny_config(digits_data_dir), wd)["step"] == 8
  untimed = lambda d: [{k: v for k, v in r.items()  # noqa: E731
                        if k not in ("time", "train/images_per_sec")}
                       for r in metric_writer.read_metrics(d)]
  assert untimed(wd) == untimed(straight)
  _assert_same_run(wd, straight)


def test_divergence_stops_with_a_clear_error_and_keeps_the_good_state(digits_data_dir,
                                                                      tmp_path):
  wd = str(tmp_path / "run")
  train.train_and_evaluate(tiny_config(digits_data_dir, max_steps=4), wd)
  _, good = _state(wd)
  bad = tiny_config(digits_data_dir)
  bad.optim.lr = 1e8
  with pytest.raises(faults.Diverged, match=r"diverged at step [5-8]: non-finite .*\(lr "):
    train.train_and_evaluate(bad, wd, allow_config_change=True)
  assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["4"]  # kept, finite
  chex.assert_trees_all_equal(_state(wd)[1], good)
  assert _all_finite(_state(wd, "best")[1])
  fresh = str(tmp_path / "fresh")
  with pytest.raises(faults.Diverged):
    train.train_and_evaluate(bad, fresh)
  assert checkpointing.latest_step(fresh) == 0
  # Optional: skip non-finite steps instead.
  bad.optim.skip_nonfinite = True
  skipping = str(tmp_path / "skipping")
  assert train.train_and_evaluate(bad, skipping)["step"] == 8
  skipped = [r["train/skipped"] for r in metric_writer.read_metrics(skipping)
             if "train/skipped" in r]
  assert max(skipped) > 0 and _all_finite(_state(skipping)[1])


def test_a_workdir_belongs_to_the_config_that_created_it(digits_data_dir, straight,
                                                          tmp_path):
  wd = str(tmp_path / "run")
  train.train_and_evaluate(tiny_config(digits_data_dir, max_steps=2), wd)
  kd = distill(tiny_config(digits_data_dir), straight)
  with pytest.raises(workdir.ConfigMismatchError) as err:
    train.train_and_evaluate(kd, wd)
  assert "method.name: 'none' (workdir) -> 'kd' (now)" in str(err.value)
  assert "teacher.name" in str(err.value) and "--allow_config_change" in str(err.value)
  with pytest.raises(workdir.ConfigMismatchError, match=r"seed: 0 \(workdir\) -> 1"):
    train.train_and_evaluate(tiny_config(digits_data_dir, seed=1), wd)
  longer = tiny_config(digits_data_dir)
  longer.schedule.num_epochs = 3
  with pytest.raises(workdir.ConfigMismatchError, match="schedule.num_epochs"):
    train.train_and_evaluate(longer, wd)
  # Bookkeeping may change freely; a result-changing field only when asked, recorded.
  assert train.train_and_evaluate(tiny_config(digits_data_dir, max_steps=3), wd)["step"] == 3
  assert train.train_and_evaluate(longer, wd, allow_config_change=True)["step"] == 12
  with open(os.path.join(wd, "config_history.jsonl")) as f:
    history = [json.loads(line) for line in f]
  assert [h["step"] for h in history] == [3]
  assert history[0]["changed"]["schedule.num_epochs"] == [2, 3]


def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_one(digits_data_dir,
                                                                     straight, tmp_path,
                                                                     caplog):
  wd = str(tmp_path / "run")
  train.train_and_evaluate(tiny_config(digits_data_dir), wd)
  for path in glob.glob(os.path.join(wd, "checkpoints", "8", "state", "**", "*"),
                        recursive=True):
    if os.path.isfile(path):
      with open(path, "wb") as f:
        f.write(b"garbage")
  train.train_and_evaluate(tiny_config(digits_data_dir), wd)
  assert "unreadable" in caplog.text and "resuming from step 4" in caplog.text
  assert os.path.isdir(os.path.join(wd, "checkpoints", "unreadable.8"))  # nothing deleted
  chex.assert_trees_all_close(_state(wd)[1], _state(straight)[1], rtol=1e-6, atol=1e-6)


def test_rerunning_a_finished_run_changes_no_file(digits_data_dir, straight):
  def snapshot():
    out = {}
    for root, _, files in os.walk(straight):
      for name in files:
        path = os.path.join(root, name)
        with open(path, "rb") as f:
          out[path] = (os.path.getmtime(path), hashlib.sha1(f.read()).hexdigest())
    return out
  before = snapshot()
  result = train.train_and_evaluate(tiny_config(digits_data_dir), straight)
  assert snapshot() == before
  with open(os.path.join(straight, "result.json")) as f:
    assert json.load(f) == result


def test_steps_replayed_after_a_kill_and_the_teacher_are_logged_once(digits_data_dir,
                                                                      straight, tmp_path):
  """As after kill -9 between logging steps 5-8 and saving step 8: the resumed run replays
  them; each step (and the teacher's row) is then in metrics.jsonl once, in order."""
  wd = str(tmp_path / "run")
  first = train.train_and_evaluate(distill(tiny_config(digits_data_dir), straight), wd)
  shutil.rmtree(os.path.join(wd, "checkpoints", "8"))
  os.remove(os.path.join(wd, "result.json"))
  again = train.train_and_evaluate(distill(tiny_config(digits_data_dir), straight), wd)
  rows = metric_writer.read_metrics(wd)
  steps = [r["step"] for r in rows if "train/loss" in r]
  assert steps == sorted(set(steps)) and steps[-1] == 8
  assert [r["step"] for r in rows if "teacher/top1" in r] == [0]
  assert [s for s, _ in _eval_rows(wd)] == [4, 8]
  assert again["top1"] == first["top1"] and again["teacher_top1"] == first["teacher_top1"]


@pytest.mark.parametrize("field,value,message", [
    ("optim.lr", -0.1, r"optim.lr=-0.1 is out of range; accepted: > 0"),
    ("data.image_size", 0, r"image_size=0 is out of range"),
    ("schedule.num_epochs", 0, r"num_epochs=0 is out of range"),
])
def test_inputs_are_validated_before_anything_runs(field, value, message, digits_data_dir,
                                                    tmp_path):
  config = tiny_config(digits_data_dir)
  section, key = field.split(".")
  config[section][key] = value
  with pytest.raises(ValueError, match=message):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_an_image_size_too_small_for_the_model_names_the_minimum(digits_data_dir, tmp_path):
  config = tiny_config(digits_data_dir, model="vgg8")
  config.data.image_size = 4
  with pytest.raises(ValueError, match=r"image_size=4 is too small for model 'vgg8'.*>= 8"):
    train.train_and_evaluate(config, str(tmp_path / "run"))


def test_command_line_errors_are_the_last_thing_printed(digits_data_dir, tmp_path, capfd,
                                                       monkeypatch):
  """`afd_jax.main` as the command runs it (in this process; test_failures.py runs the
  flag parsing itself in subprocesses): a missing dataset, a preemption and a corrupt
  checkpoint each end with one line and the documented exit status."""
  c = load("cifar100/teacher.py", "model=resnet8,runlocal")
  c.data.name = "no_such_dataset_xyz"
  code, err = run_main(c, tmp_path / "a", capfd)
  assert code == 1
  lines = err.strip().splitlines()
  assert lines[-1].startswith("error: ")
  assert "Unknown dataset 'no_such_dataset_xyz'" in lines[-1]
  assert len(lines) < 40 and "Traceback" not in err
  wd = str(tmp_path / "b")
  c = load("cifar100/teacher.py", "model=resnet8,runlocal")
  c.data.data_dir = digits_data_dir
  monkeypatch.setenv("AFD_JAX_INJECT", "step@1")
  code, err = run_main(c, wd, capfd)
  monkeypatch.delenv("AFD_JAX_INJECT")
  assert code == 128 + signal.SIGTERM, err[-2000:]
  assert "Traceback" not in err
  assert err.strip().splitlines()[-1].startswith("Preempted: stopped by signal")
  for path in glob.glob(os.path.join(wd, "checkpoints", "1", "state", "**", "*"),
                        recursive=True):
    if os.path.isfile(path):
      with open(path, "wb") as f:
        f.write(b"garbage")
  code, err = run_main(c, wd, capfd)
  assert code == 1
  assert err.strip().splitlines()[-1].startswith("error: cannot resume from checkpoint")
