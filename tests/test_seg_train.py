"""Segmentation runs end to end on the embedded `digits_seg`: the segmentation quickstart
at runlocal scale (both backbones pretrained as `digits` classifiers, a tiny DeepLabV3+
ResNet teacher, a smaller student alone and one distilled with TaT's patch-group +
anchor-point loss, the teacher in train mode), its mIoU table and pictures; the
students' backbones copied from their pretraining run; its TaT run killed mid-run and resumed identically, and its first
step on 4 devices equal to 1 device's. The VOC / COCOStuff configs' own networks and recipes are traced at the
real crop in test_seg_configs.py (no compile: a run would add nothing but minutes)."""
import contextlib
import io
import json
import os
import signal

import chex
import numpy as np
from PIL import Image
import pytest

import jax

from afd_jax import checkpointing, faults, metric_writer, models, plan, pretrained, train_state
from afd_jax.analysis import segmentation
from config_loading import load


def _quickstart(data_dir):
  """configs/seg_quickstart.py:runlocal with TaT only, on 1 device (runlocal's batch of
  4: 2 steps)."""
  c = load("seg_quickstart.py", "methods=tat,runlocal")
  for name in c.run_order:
    c.runs[name].data.data_dir = data_dir
    c.runs[name].num_devices = 1
  return c


def _tat_config(data_dir, root, **overrides):
  """The quickstart's TaT student, as the plan runs it, taught by the plan's teacher."""
  run = next(r for r in plan.from_config(_quickstart(data_dir)).runs
             if r.name == "student_tat")
  c = run.config
  c.teacher.checkpoint = os.path.join(root, "teacher")
  c.model.init = os.path.join(root, "pretrain_student")
  for key, value in overrides.items():
    c[key] = value
  return c


def _state(wd, step):
  return checkpointing.read_numpy(os.path.join(wd, "checkpoints", str(step), "state"))


@pytest.fixture(scope="module")
def quickstart(digits_seg_data_dir, tmp_path_factory):
  """The quickstart plan, run once: (its workdir, {run: result}, what it printed)."""
  root = str(tmp_path_factory.mktemp("seg_quickstart"))
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    results = plan.run_plan(plan.from_config(_quickstart(digits_seg_data_dir)), root)
  return root, results["runs"], out.getvalue()


def test_segmentation_quickstart_runs_end_to_end(quickstart):
  root, results, printed = quickstart
  assert list(results) == ["pretrain_teacher", "pretrain_student", "teacher", "student",
                           "student_tat"]
  for name in ("pretrain_teacher", "pretrain_student"):
    assert results.pop(name)["step"] == 2  # classification runs, not in the table
  for name, r in results.items():
    assert r["step"] == 2
    assert set(r) >= {"miou", "best_miou", "pixel_acc", "fwiou", "acc_class"}
    assert 0 <= r["miou"] <= r["best_miou"] <= 100
  with open(os.path.join(root, "results.md"), encoding="utf-8") as f:
    table = f.read()
  assert "| method | model | mIoU (%) | best mIoU (%) | Δ vs none | seeds |" in table
  assert "### deeplabv3p_tiny_resnet18 → deeplabv3p_tiny_resnet10" in table
  assert "pretrain" not in table and "classifier" not in table
  tat = next(line for line in table.splitlines() if line.startswith("| tat |"))
  assert tat.split(" | ")[1:3] == ["deeplabv3p_tiny_resnet10",
                                   f"{results['student_tat']['miou']:.2f}"]
  assert table in printed
  for name in results:  # every segmentation run drew its pictures; the students' have a teacher column
    grid = np.asarray(Image.open(os.path.join(root, name, segmentation.PREDICTIONS_PNG)))
    # (64-pixel panels, 2-pixel gaps, each pixel a 3x3 block: panels >= MIN_PANEL)
    assert grid.shape == (3 * (4 * 66 - 2), 3 * ((4 if name == "student_tat" else 3) * 66 - 2),
                          3)
    grid = grid[::3, ::3]
    # Ground truth panels are drawn in the palette: digits_seg's classes 0..10 or 255.
    palette = {tuple(c) for c in segmentation.voc_palette()[:11]} | {
        segmentation.IGNORE_COLOUR}
    assert {tuple(c) for c in grid[:64, 66:130].reshape(-1, 3)} <= palette


def test_tat_run_logs_its_terms_and_evaluates(quickstart):
  root, _, _ = quickstart
  wd = os.path.join(root, "student_tat")
  rows = metric_writer.read_metrics(wd)
  train_rows = [r for r in rows if "train/loss" in r]
  assert [r["step"] for r in train_rows] == [1, 2]
  # The method's terms are logged: CE (÷B), the patch-group and anchor losses.
  assert {"train/ce", "train/tat", "train/tat_patch", "train/tat_anchor"} <= set(
      train_rows[0])
  for r in train_rows:
    assert np.isfinite(r["train/loss"]) and r["train/tat_patch"] > 0
    assert r["train/tat_anchor"] > 0
  assert [r["step"] for r in rows if "eval/miou" in r] == [2]
  with open(os.path.join(wd, "config.json"), encoding="utf-8") as f:
    method = json.load(f)["method"]
  assert (method["mode"], method["patch_grid"], method["heads"], method["anchor_grid"],
          method["weight"]) == ("hierarchical", [4, 4], 4, [6, 6], 0.005)


def test_kill_and_resume_is_identical_and_four_devices_see_one_global_batch(
    quickstart, digits_seg_data_dir, tmp_path, monkeypatch):
  root, _, _ = quickstart
  straight = os.path.join(root, "student_tat")
  wd = str(tmp_path / "killed")
  monkeypatch.setenv("AFD_JAX_INJECT", "step@1")
  with pytest.raises(faults.Preempted) as stopped:
    plan.train_run(_tat_config(digits_seg_data_dir, root), wd)
  assert stopped.value.signum == signal.SIGTERM and stopped.value.step == 1
  assert checkpointing.latest_step(wd) == 1
  monkeypatch.delenv("AFD_JAX_INJECT")
  assert plan.train_run(_tat_config(digits_seg_data_dir, root), wd)["step"] == 2
  chex.assert_trees_all_close(_state(wd, 2), _state(straight, 2), rtol=1e-6, atol=1e-6)
  # 4 devices, one canvas each: the first step's logged terms equal 1 device's, so the
  # global batch is the same canvases in the same order, BN normalises over all of it
  # (per-device statistics of 1 canvas would change every term), and CE ÷ B and TaT's
  # terms are global means. Later steps are not compared: a random-init DeepLabV3+ at a
  # 64×64 crop is so ill-conditioned (4×4 maps at stride 16, batch statistics of 64
  # values per channel through ~50 BNs) that two programs' float rounding gives gradients
  # differing by O(1) in places (even in float64, jit vs eager; also against finite
  # differences), which no tolerance separates from a bug. One train step across device
  # counts is compared exactly where it is well-conditioned: test_train.py (classification)
  # and test_seg_methods.py (TaT's hierarchical module on 8 devices).
  # (Stopped by a preemption after step 1: the run's eval programs are not compiled.)
  four = str(tmp_path / "four_devices")
  monkeypatch.setenv("AFD_JAX_INJECT", "step@1")
  with pytest.raises(faults.Preempted):
    plan.train_run(_tat_config(digits_seg_data_dir, root, num_devices=4), four)
  first = [next(r for r in metric_writer.read_metrics(w) if r.get("step") == 1
                and "train/loss" in r) for w in (four, straight)]
  terms = ("train/loss", "train/ce", "train/tat", "train/tat_patch", "train/tat_anchor")
  for term in terms:
    assert first[0][term] == pytest.approx(first[1][term], rel=1e-5, abs=1e-6), term


def test_a_deeplab_starts_from_its_pretraining_runs_backbone(quickstart):
  """``model.init`` = a `tiny_resnet10_classifier` run: the DeepLab's ``backbone`` (params
  and BN statistics) becomes that run's, ASPP + decoder keep their fresh values."""
  root, _, _ = quickstart
  name = "deeplabv3p_tiny_resnet10"
  fresh = jax.device_get(jax.jit(lambda k: models.get_model(name, 11).init(
      k, train_state.dummy_batch(64), train=False))(jax.random.key(3)))
  fresh = {"params": fresh["params"], "batch_stats": fresh["batch_stats"]}
  source = checkpointing.read_run_variables(os.path.join(root, "pretrain_student"))
  assert set(source["params"]) == {"backbone", "classifier"}
  got = pretrained.load_student_init(os.path.join(root, "pretrain_student"), name, fresh,
                                     11)
  for part in ("params", "batch_stats"):
    chex.assert_trees_all_equal(got[part]["backbone"], source[part]["backbone"])
    for module in set(fresh[part]) - {"backbone"}:
      chex.assert_trees_all_equal(got[part][module], fresh[part][module])
  assert set(got["params"]) == {"backbone", "aspp_head", "decoder_head"}
  # A run sharing no module of the same shapes (the teacher's wider backbone): an error.
  with pytest.raises(checkpointing.CheckpointError, match="shares no module"):
    pretrained.load_student_init(os.path.join(root, "pretrain_teacher"), name, fresh, 11)
