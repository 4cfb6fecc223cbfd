"""The loop's init phase (AB, FT, FSP) and CRD's memory bank in real runs: what each phase
trains, the hand-over between phases, exact resume after a kill in either phase, and the
bank checkpointed, resumed and sharded over devices."""
import json
import os

import chex
import jax
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from afd_jax import checkpointing, faults, init_phase, metric_writer, plan, train
from config_loading import distill, load, tiny_config


@pytest.fixture(scope="module")
def teacher_dir(tiny_run):
  """The shared finished 8-step run (conftest.py), here a teacher."""
  return tiny_run


def _config(data_dir, teacher_dir, method, **fields):
  """4 steps per epoch; 1 distillation epoch; two-stage methods: a 1-epoch init phase."""
  if method in ("ab", "ft", "fsp"):
    fields.setdefault("init_epochs", 1)
  config = distill(tiny_config(data_dir), teacher_dir, method, **fields)
  config.schedule.num_epochs = 1
  return config


def _final(wd, sub="checkpoints"):
  d = os.path.join(wd, sub)
  step = max(int(s) for s in os.listdir(d) if s.isdigit())
  return step, checkpointing.read_numpy(os.path.join(d, str(step), "state"))


def _fresh(config, wd):
  """The state a run of `config` starts from (its init phase too): same seed, no steps."""
  run = train.open_run(config, wd)
  run.ckpts.close()
  return jax.tree.map(np.asarray, {"params": run.state.params,
                                   "batch_stats": run.state.batch_stats})


def _changed(a, b) -> dict:
  """{top-level module: whether any of its arrays differ} for two param subtrees."""
  return {k: any(not np.array_equal(x, y) for x, y in
                 zip(jax.tree.leaves(a[k]), jax.tree.leaves(b[k]))) for k in a}


@pytest.mark.parametrize("method", ["ab", "ft", "fsp"])
def test_runlocal_init_phase_trains_only_its_parts_and_hands_over(method, digits_data_dir,
                                                                  tmp_path):
  """The method's CIFAR-100 config in its `runlocal` smoke form (2 init-phase steps, then
  2 distillation steps, random-init resnet14 teacher → resnet8)."""
  config = load("cifar100/baselines.py",
                f"method={method},teacher=resnet14,student=resnet8,runlocal")
  config.data.data_dir = digits_data_dir
  fresh = _fresh(config, str(tmp_path / "fresh"))
  wd = str(tmp_path / "run")
  handed = []

  def phase(run):  # `init_phase.run`, its seconds recorded (and marked: + 1000 s)
    state, seconds = init_phase.run(run)
    handed.append(seconds)
    return state, seconds + 1000.0

  result = train.train_and_evaluate(config, wd, init_phase=phase)
  assert result["step"] == config.max_steps == 2
  losses = [r["train/loss"] for r in metric_writer.read_metrics(wd) if "train/loss" in r]
  assert losses and np.all(np.isfinite(losses))
  step, phase = _final(wd, "init_phase/checkpoints")
  assert step == 2 and os.path.exists(os.path.join(wd, "init_phase", "metrics.jsonl"))
  student = _changed(fresh["params"]["student"], phase["params"]["student"])
  method_parts = _changed(fresh["params"]["method"], phase["params"]["method"])
  head = next(k for k in student if k in ("fc", "classifier", "linear"))
  assert not student.pop(head)  # the classifier never trains in the init phase
  if method == "ft":  # only the paraphraser trains; the student runs in eval mode
    assert not any(student.values())
    chex.assert_trees_all_equal(fresh["batch_stats"]["student"],
                                phase["batch_stats"]["student"])
    assert method_parts == {"paraphraser": True, "translator": False}
  else:  # the student's feature layers (AB: and its connectors)
    assert all(student.values())
    assert all(method_parts.values())  # AB's connectors (identities on this pair)
    assert method == "ab" or not method_parts
  _, final = _final(wd)
  if method == "ft":  # hand-over, then the paraphraser stays frozen while distilling
    chex.assert_trees_all_equal(final["params"]["method"]["paraphraser"],
                                phase["params"]["method"]["paraphraser"])
    assert _changed(phase["params"]["method"], final["params"]["method"])["translator"]
  assert _changed(phase["params"]["student"], final["params"]["student"])[head]
  # The phase's time (as its last checkpoint saved it) is the run's time too: it was once
  # left out of result.json.
  with open(os.path.join(wd, "init_phase", "checkpoints", "2", "meta", "metadata"),
            encoding="utf-8") as f:
    assert handed == [json.load(f)["train_seconds"]] and handed[0] > 0
  assert result["train_seconds"] > handed[0] + 1000.0


def _fsp_config(data_dir, teacher_dir):
  """A 4-step init phase, then 8 distillation steps."""
  c = _config(data_dir, teacher_dir, "fsp")
  c.schedule.num_epochs = 2
  return c


@pytest.fixture(scope="module")
def fsp_straight(digits_data_dir, teacher_dir, tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("fsp_straight"))
  plan.train_run(_fsp_config(digits_data_dir, teacher_dir), wd)
  return wd


@pytest.mark.parametrize("instant", ["step@2", "step@6"])  # init phase / distillation
def test_a_kill_in_either_phase_resumes_identically(instant, digits_data_dir, teacher_dir,
                                                    fsp_straight, tmp_path, monkeypatch):
  wd = str(tmp_path / "killed")
  monkeypatch.setenv("AFD_JAX_INJECT", instant)
  with pytest.raises(faults.Preempted) as stopped:
    plan.train_run(_fsp_config(digits_data_dir, teacher_dir), wd)
  assert stopped.value.step == int(instant[5:])
  in_init = checkpointing.latest_step(wd) == 0
  assert in_init == (instant == "step@2")
  phase_files = sorted(os.listdir(os.path.join(wd, "init_phase", "checkpoints")))
  monkeypatch.delenv("AFD_JAX_INJECT")
  plan.train_run(_fsp_config(digits_data_dir, teacher_dir), wd)
  if not in_init:  # a finished init phase is never rerun
    assert sorted(os.listdir(os.path.join(wd, "init_phase", "checkpoints"))) == phase_files
  for sub in ("checkpoints", "init_phase/checkpoints"):
    (step_a, a), (step_b, b) = _final(wd, sub), _final(fsp_straight, sub)
    assert step_a == step_b
    chex.assert_trees_all_close(a, b, rtol=1e-6, atol=1e-6)


def _banks(state) -> dict:
  return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in
          jax.tree_util.tree_leaves_with_path(state["method_state"])
          if "memory" in jax.tree_util.keystr(path)}


def test_crd_bank_sharded_over_8_devices_checkpointed_and_resumed_identically(
    digits_data_dir, teacher_dir, tmp_path, monkeypatch):
  config = _config(digits_data_dir, teacher_dir, "crd", nce_k=32)
  # A small lr: exp(score / 0.07) amplifies the devices' different summation order.
  config.optim.lr = 0.002
  one = str(tmp_path / "one")
  plan.train_run(config, one)
  config.num_devices = 8
  run = train.open_run(config, str(tmp_path / "fresh"))
  run.ckpts.close()
  fresh = _banks({"method_state": run.state.method_state})
  specs = [leaf.sharding.spec for path, leaf in
           jax.tree_util.tree_leaves_with_path(run.state.method_state)
           if "memory" in jax.tree_util.keystr(path)]
  assert specs == [P("data")] * 2  # 64 rows: 8 per device
  eight = str(tmp_path / "eight")
  plan.train_run(config, eight)
  _, done = _final(eight)
  # (The gradients, i.e. momentum traces, differ by the summation order times CRD's
  # 1/τ-scaled magnitudes: ~1e-3; after lr 0.002 steps the variables agree closely.)
  variables = lambda s: {k: s[k] for k in ("params", "batch_stats", "method_state")}  # noqa
  chex.assert_trees_all_close(variables(done), variables(_final(one)[1]), rtol=1e-4,
                              atol=1e-5)
  banks = _banks(done)
  assert len(banks) == 2 and all(b.shape == (64, 128) for b in banks.values())
  for name, bank in banks.items():  # 4 steps × 16 examples: every row was updated once
    assert np.all(np.any(bank != fresh[name], axis=1)), name
    np.testing.assert_allclose(np.linalg.norm(bank, axis=1), 1.0, rtol=1e-5)
  killed = str(tmp_path / "killed")
  monkeypatch.setenv("AFD_JAX_INJECT", "step@2")
  with pytest.raises(faults.Preempted):
    plan.train_run(config, killed)
  monkeypatch.delenv("AFD_JAX_INJECT")
  plan.train_run(config, killed)
  chex.assert_trees_all_close(_final(killed)[1], done, rtol=1e-6, atol=1e-6)
