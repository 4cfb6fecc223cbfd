"""Several seeds of one config (`seed_runs`): vmapped == separate runs, tables, resume."""
import json
import os

import chex
import jax
import numpy as np
import pytest

from afd_jax import checkpointing, metric_writer, seed_runs, train
from config_loading import tiny_config

SEEDS = (0, 1)


def _config(data_dir, **overrides):
  """digits on the device path: one epoch of 4 steps, 2 per dispatch, 16 eval images.

  lr 0.002: at lr 0.05 one step of seed 0 on digits amplifies the vmapped convolutions'
  different float rounding (1e-8) a thousandfold, past the 1e-5 compared here.
  """
  c = tiny_config(data_dir, **overrides)
  c.optim.lr = 0.002
  c.data.update(dict(pipeline="device", num_eval_examples=16))
  c.eval_batch_size = 16
  c.schedule.num_epochs = 1
  c.steps_per_dispatch = 2
  return c


def _state(workdir):
  step = checkpointing.latest_step(workdir)
  return step, checkpointing.read_numpy(os.path.join(workdir, "checkpoints", str(step),
                                                     "state"))


@pytest.fixture(scope="module")
def runs(digits_data_dir, tmp_path_factory):
  """The 2-seed vmapped run and each seed's own ordinary run: their workdirs, results."""
  root = tmp_path_factory.mktemp("seeds")
  out = {"vmapped": str(root / "vmapped"), "root": root}
  out["result"] = train.train_and_evaluate(
      _config(digits_data_dir, seeds=SEEDS, vmap_seeds=True), out["vmapped"])
  for s in SEEDS:
    out[s] = str(root / f"alone{s}")
    out[f"result{s}"] = train.train_and_evaluate(_config(digits_data_dir, seed=s), out[s])
  return out


def test_vmapped_seeds_equal_their_separate_runs(runs):
  """Seed k of the stacked checkpoint == the run with config.seed = k (params, BN, opt)."""
  step, stacked = _state(runs["vmapped"])
  assert step == 4 and np.asarray(stacked["step"]).tolist() == [4, 4]
  for k, s in enumerate(SEEDS):
    alone_step, alone = _state(runs[s])
    assert alone_step == 4
    mine = jax.tree.map(lambda x, k=k: x[k], stacked)
    for part in ("params", "batch_stats", "opt_state"):
      chex.assert_trees_all_close(mine[part], alone[part], rtol=1e-5, atol=1e-5)
  # The seeds really differ (each its own init and batches).
  a, b = (jax.tree.leaves(stacked["params"])[0][k] for k in (0, 1))
  assert not np.allclose(a, b)
  for s in SEEDS:  # the same student, evaluated on the same images
    mine = runs["result"]["per_seed"][str(s)]
    assert mine["top1"] == pytest.approx(runs[f"result{s}"]["top1"], abs=1e-3)
    assert mine["best_top1"] == pytest.approx(runs[f"result{s}"]["best_top1"], abs=1e-3)


def test_result_summary_and_metrics_per_seed(runs):
  result, workdir = runs["result"], runs["vmapped"]
  with open(os.path.join(workdir, "result.json"), encoding="utf-8") as f:
    assert json.load(f) == json.loads(json.dumps(result))
  top1 = [runs[f"result{s}"]["top1"] for s in SEEDS]
  assert result["seeds"] == [0, 1] and result["step"] == 4
  assert result["mean"]["top1"] == pytest.approx(np.mean(top1), abs=1e-3)
  assert result["std"]["top1"] == pytest.approx(np.std(top1, ddof=1), abs=1e-3)
  assert result["top1"] == result["mean"]["top1"]
  with open(os.path.join(workdir, seed_runs.SUMMARY_FILE), encoding="utf-8") as f:
    table = f.read()
  assert table.splitlines()[0] == "| metric | mean ± std | seeds |"
  mean, std = result["mean"]["top1"], result["std"]["top1"]
  assert f"| top1 | {mean:.4g} ± {std:.2g} | 2 |" in table
  rows = metric_writer.read_metrics(workdir)
  evals = [r for r in rows if "eval/top1" in r]
  assert [r["step"] for r in evals] == [4]
  assert evals[0]["seed1/eval/top1"] == pytest.approx(top1[1], abs=1e-3)
  assert evals[0]["eval/top1"] == pytest.approx(np.mean(top1), abs=1e-3)
  train_rows = [r for r in rows if "train/loss" in r]
  assert [r["step"] for r in train_rows] == [2, 4]
  for r in train_rows:
    assert r["train/loss"] == pytest.approx((r["seed0/train/loss"] + r["seed1/train/loss"]) / 2)


def test_vmapped_resume_equals_uninterrupted(runs, digits_data_dir):
  """Stopped at step 2 (stacked checkpoint) and resumed == the straight 4 steps."""
  workdir = str(runs["root"] / "resumed")
  first = train.train_and_evaluate(
      _config(digits_data_dir, seeds=SEEDS, vmap_seeds=True, max_steps=2), workdir)
  assert first["step"] == 2 and checkpointing.latest_step(workdir) == 2
  again = train.train_and_evaluate(
      _config(digits_data_dir, seeds=SEEDS, vmap_seeds=True), workdir)
  assert again["step"] == 4
  chex.assert_trees_all_close(_state(workdir)[1]["params"],
                              _state(runs["vmapped"])[1]["params"], rtol=1e-6, atol=1e-6)
  assert again["per_seed"] == pytest.approx(runs["result"]["per_seed"])


def test_seeds_one_after_another_in_subdirectories(runs, digits_data_dir):
  """vmap_seeds=False: ordinary runs in seed_<s>/, the same as each seed's own run."""
  workdir = runs["root"] / "sequential"
  result = train.train_and_evaluate(_config(digits_data_dir, seeds=SEEDS), str(workdir))
  for s in SEEDS:
    chex.assert_trees_all_equal(_state(str(workdir / f"seed_{s}"))[1]["params"],
                                _state(runs[s])[1]["params"])
    assert result["per_seed"][str(s)]["top1"] == runs[f"result{s}"]["top1"]
  assert (workdir / seed_runs.SUMMARY_FILE).read_text().startswith("| metric |")
  assert json.loads((workdir / "result.json").read_text())["seeds"] == [0, 1]


@pytest.mark.parametrize("overrides, match", [
    (dict(seeds=(0, 1), vmap_seeds=True, pipeline="tfdata"),
     r"config.data.pipeline='tfdata'; accepted: device, auto"),
    (dict(seeds=(0, 0)), r"config.seeds=\(0, 0\); accepted: distinct integers"),
    (dict(seeds=("a",)), r"accepted: distinct integers"),
])
def test_clear_errors(overrides, match, tmp_path):
  c = _config(None, seeds=overrides["seeds"], vmap_seeds=overrides.get("vmap_seeds", False))
  c.data.pipeline = overrides.get("pipeline", "device")
  with pytest.raises(ValueError, match=match):
    train.train_and_evaluate(c, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")  # refused before anything was written
