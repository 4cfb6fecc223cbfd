"""Several seeds of one config (`seed_runs`): vmapped == separate runs, tables, resume."""
import json
import os

import chex
import jax
import numpy as np
import pytest

from afd_jax import checkpointing, metric_writer, seed_runs, train
from afd_jax import workdir as workdir_lib
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
  """The same 2 seeds vmapped (stopped at step 2, then resumed to 4), and one after
  another (each seed an ordinary, uninterrupted run)."""
  root = tmp_path_factory.mktemp("seeds")
  out = {"vmapped": str(root / "vmapped"), "sequential": root / "sequential"}
  out["first"] = train.train_and_evaluate(
      _config(digits_data_dir, seeds=SEEDS, vmap_seeds=True, max_steps=2), out["vmapped"])
  out["step_after_first"] = checkpointing.latest_step(out["vmapped"])
  out["result"] = train.train_and_evaluate(
      _config(digits_data_dir, seeds=SEEDS, vmap_seeds=True), out["vmapped"])
  out["sequential_result"] = train.train_and_evaluate(
      _config(digits_data_dir, seeds=SEEDS), str(out["sequential"]))
  for s in SEEDS:
    out[s] = str(out["sequential"] / f"seed_{s}")
    with open(os.path.join(out[s], "result.json"), encoding="utf-8") as f:
      out[f"result{s}"] = json.load(f)
  return out


def test_seeds_one_after_another_are_ordinary_runs_in_subdirectories(runs, digits_data_dir):
  """vmap_seeds=False: seed_<s>/ is the run of config.seed = s (its recorded config)."""
  for s in SEEDS:
    with open(os.path.join(runs[s], workdir_lib.CONFIG_FILE), encoding="utf-8") as f:
      assert json.load(f) == workdir_lib.resolved(_config(digits_data_dir, seed=s))
    assert runs["sequential_result"]["per_seed"][str(s)] == runs[f"result{s}"]
    assert _state(runs[s])[0] == 4
  workdir = runs["sequential"]
  assert (workdir / seed_runs.SUMMARY_FILE).read_text().startswith("| metric |")
  assert json.loads((workdir / "result.json").read_text())["seeds"] == [0, 1]


def test_vmapped_seeds_equal_their_separate_runs(runs):
  """Seed k of the stacked checkpoint == the run with config.seed = k (params, BN, opt),
  though the vmapped run stopped at step 2 and resumed from its stacked checkpoint."""
  assert runs["first"]["step"] == runs["step_after_first"] == 2
  step, stacked = _state(runs["vmapped"])
  assert step == 4 and np.asarray(stacked["step"]).tolist() == [4, 4]
  for k, s in enumerate(SEEDS):
    mine = jax.tree.map(lambda x, k=k: x[k], stacked)
    _, alone = _state(runs[s])
    for part in ("params", "batch_stats", "opt_state"):
      chex.assert_trees_all_close(mine[part], alone[part], rtol=1e-5, atol=1e-5)
  # The seeds really differ (each its own init and batches).
  a, b = (jax.tree.leaves(stacked["params"])[0][k] for k in (0, 1))
  assert not np.allclose(a, b)
  for s in SEEDS:  # the same student, evaluated on the same images
    assert runs["result"]["per_seed"][str(s)]["top1"] == pytest.approx(
        runs[f"result{s}"]["top1"], abs=1e-3)


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
  assert [r["step"] for r in evals] == [2, 4]  # the stop at step 2, the epoch's end
  assert evals[1]["seed1/eval/top1"] == pytest.approx(top1[1], abs=1e-3)
  assert evals[1]["eval/top1"] == pytest.approx(np.mean(top1), abs=1e-3)
  for s in SEEDS:  # each seed's own best over its evaluations
    assert result["per_seed"][str(s)]["best_top1"] == max(r[f"seed{s}/eval/top1"]
                                                          for r in evals)
  train_rows = [r for r in rows if "train/loss" in r]
  assert [r["step"] for r in train_rows] == [2, 4]
  for r in train_rows:
    assert r["train/loss"] == pytest.approx((r["seed0/train/loss"] + r["seed1/train/loss"]) / 2)


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
