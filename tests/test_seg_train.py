"""Segmentation runs end to end on the embedded `digits_seg`: the VOC TaT config's runlocal
form (ResNet-101 teacher in train mode, ResNet-18 student) on 8 devices, killed mid-run
and resumed identically, equal to 1 device; the segmentation quickstart at runlocal
scale (teacher, student, TaT student, the mIoU table, the pictures)."""
import json
import os
import signal

import chex
import numpy as np
from PIL import Image
import pytest

from afd_jax import checkpointing, metric_writer, plan, train
from afd_jax.analysis import segmentation
from config_loading import load


def _voc_tat(data_dir, **overrides):
  """configs/voc/tat.py:student=resnet18,runlocal, 16 canvases in batches of 8: 2 steps
  per epoch, 2 epochs (4 steps, evaluations at 2 and 4)."""
  c = load("voc/tat.py", "student=resnet18,runlocal")
  c.data.data_dir = data_dir
  c.batch_size = c.eval_batch_size = 8
  c.max_steps = None
  c.schedule.num_epochs = 2
  for key, value in overrides.items():
    c[key] = value
  return c


def _state(wd, step):
  return checkpointing.read_numpy(os.path.join(wd, "checkpoints", str(step), "state"))


@pytest.fixture(scope="module")
def straight(digits_seg_data_dir, tmp_path_factory):
  """The uninterrupted 4-step run on the 8 (fake) devices."""
  wd = str(tmp_path_factory.mktemp("seg_straight"))
  result = train.train_and_evaluate(_voc_tat(digits_seg_data_dir), wd)
  return wd, result


def test_voc_tat_runlocal_trains_evaluates_and_draws(straight):
  wd, result = straight
  assert result["step"] == 4
  assert set(result) >= {"miou", "best_miou", "pixel_acc", "fwiou", "acc_class"}
  assert 0.0 <= result["miou"] <= result["best_miou"] <= 100.0
  rows = metric_writer.read_metrics(wd)
  train_rows = [r for r in rows if "train/loss" in r]
  assert [r["step"] for r in train_rows] == [1, 2, 3, 4]
  # The method's terms are logged: CE (÷B), the patch-group and anchor losses.
  assert {"train/ce", "train/tat", "train/tat_patch", "train/tat_anchor"} <= set(
      train_rows[0])
  assert all(np.isfinite(r["train/loss"]) for r in train_rows)
  assert [r["step"] for r in rows if "eval/miou" in r] == [2, 4]
  with open(os.path.join(wd, "config.json")) as f:
    method = json.load(f)["method"]
  assert (method["mode"], method["patch_grid"], method["heads"]) == (
      "hierarchical", [2, 2], 64)  # the VOC ResNet-18 script's grid ÷ 8 at runlocal
  grid = np.asarray(Image.open(os.path.join(wd, segmentation.PREDICTIONS_PNG)))
  assert grid.shape == (4 * 66 - 2, 4 * 66 - 2, 3)  # 4 images × (image, GT, T, S)
  # Ground truth panels are drawn in the palette: digits_seg's classes 0..10 or 255.
  palette = {tuple(c) for c in segmentation.voc_palette()[:11]} | {
      segmentation.IGNORE_COLOUR}
  gt = grid[:64, 66:130].reshape(-1, 3)
  assert {tuple(c) for c in gt} <= palette


def test_kill_and_resume_is_identical_and_eight_devices_equal_one(
    straight, digits_seg_data_dir, tmp_path, monkeypatch):
  wd_straight, _ = straight
  wd = str(tmp_path / "killed")
  monkeypatch.setenv("AFD_JAX_INJECT", "step@3")
  with pytest.raises(train.Preempted) as stopped:
    train.train_and_evaluate(_voc_tat(digits_seg_data_dir), wd)
  assert stopped.value.signum == signal.SIGTERM and stopped.value.step == 3
  monkeypatch.delenv("AFD_JAX_INJECT")
  assert train.train_and_evaluate(_voc_tat(digits_seg_data_dir), wd)["step"] == 4
  chex.assert_trees_all_close(_state(wd, 4), _state(wd_straight, 4), rtol=1e-6, atol=1e-6)
  # One device, the first epoch: the same parameters and BN statistics as the 8-device
  # run's step 2, to float reduction order (largest differences ~3e-5, in the embeddings'
  # BN running means of values ~1e-2). The momentum traces are left out: a pre-ReLU value
  # within rounding of 0 can flip between the two programs and change one channel's
  # gradient (seen once: 9 of 131,072 elements of an ASPP kernel's trace).
  one = str(tmp_path / "one_device")
  train.train_and_evaluate(_voc_tat(digits_seg_data_dir, num_devices=1, max_steps=2), one)
  a, b = _state(one, 2), _state(wd_straight, 2)
  for key in ("params", "batch_stats", "method_state", "step"):
    chex.assert_trees_all_close(a[key], b[key], rtol=2e-4, atol=1e-4)


def test_segmentation_quickstart_runs_end_to_end(digits_seg_data_dir, tmp_path, capsys):
  c = load("seg_quickstart.py", "runlocal")
  for name in c.run_order:
    c.runs[name].data.data_dir = digits_seg_data_dir
    c.runs[name].num_devices = 1  # runlocal's batch of 4 (the tests have 8 fake devices)
  results = plan.run_plan(plan.from_config(c), str(tmp_path))["runs"]
  assert list(results) == ["teacher", "student", "student_tat"]
  for name, r in results.items():
    assert 0 <= r["miou"] <= 100 and r["best_miou"] >= r["miou"]
  table = open(tmp_path / "results.md").read()
  assert "| method | model | mIoU (%) | best mIoU (%) | Δ vs none | seeds |" in table
  assert "### deeplabv3p_resnet18 → deeplabv3p_mobilenetv2" in table
  tat = next(line for line in table.splitlines() if line.startswith("| tat |"))
  assert tat.split(" | ")[1:3] == ["deeplabv3p_mobilenetv2", f"{results['student_tat']['miou']:.2f}"]
  assert table in capsys.readouterr().out
  for name in results:  # every run drew its pictures; the students' have a teacher column
    grid = np.asarray(Image.open(tmp_path / name / segmentation.PREDICTIONS_PNG))
    assert grid.shape[1] == (4 if name == "student_tat" else 3) * 66 - 2
