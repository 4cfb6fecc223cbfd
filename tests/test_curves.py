"""Training-curve plots: panels, titles and lines from a metrics.jsonl, and a real run."""
import json
import os
import subprocess
import sys

import matplotlib.colors
import numpy as np
import pytest
from PIL import Image

from afd_jax import train
from afd_jax.analysis import curves
from config_loading import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _synthetic_rows():
  """An AFD-like run: 3 train logs, 2 evals, the teacher's top-1 at step 0."""
  rows = [{"step": 0, "time": 0.0, "teacher/top1": 71.5, "teacher/top5": 90.0}]
  for step in (10, 20, 30):
    rows.append({"step": step, "time": float(step), "train/loss": 3.0 - step / 20,
                 "train/ce": 2.0 - step / 30, "train/kd": 0.5, "train/afd": 0.01 * step,
                 "train/lr": 0.1 * (1 - step / 40), "train/top1": 20.0 + step,
                 "train/grad_norm": 4.0 / step, "train/skipped": 0.0,
                 "train/images_per_sec": 900.0})
  rows += [{"step": 20, "eval/top1": 41.0, "eval/top5": 80.0},
           {"step": 30, "eval/top1": 55.0, "eval/top5": 85.0}]
  return rows


def _write_jsonl(workdir, rows):
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "metrics.jsonl"), "w", encoding="utf-8") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
    f.write('{"step": 40, "train/lo')  # a torn last line (killed run) is skipped


def test_figure_panels_titles_and_lines_from_metrics():
  fig = curves.curves_figure(_synthetic_rows(), title="run")
  loss, grad, lr, top1 = fig.axes
  assert [a.get_title() for a in fig.axes] == ["train loss terms", "gradient norm",
                                               "learning rate", "eval top-1"]
  assert (loss.get_xlabel(), lr.get_ylabel(), top1.get_ylabel()) == (
      "step", "lr", "top-1 (%)")
  # Every loss term, and nothing that is not one (lr, grad_norm, top1, images/s, skipped).
  assert [line.get_label() for line in loss.lines] == ["loss", "ce", "kd", "afd"]
  np.testing.assert_allclose(loss.lines[3].get_ydata(), [0.1, 0.2, 0.3])
  # The gradient norm in a panel of its own.
  assert len(grad.lines) == 1
  np.testing.assert_allclose(grad.lines[0].get_xdata(), [10, 20, 30])
  np.testing.assert_allclose(grad.lines[0].get_ydata(), [0.4, 0.2, 4 / 30])
  np.testing.assert_allclose(lr.lines[0].get_xdata(), [10, 20, 30])
  np.testing.assert_allclose(lr.lines[0].get_ydata(), [0.075, 0.05, 0.025])
  student, teacher = top1.lines
  np.testing.assert_allclose(student.get_ydata(), [41.0, 55.0])
  np.testing.assert_allclose(teacher.get_ydata(), [71.5, 71.5])  # horizontal line
  assert teacher.get_label() == "teacher (71.50)"
  assert fig.texts[0].get_text() == "run"  # suptitle


def test_no_teacher_line_without_teacher_and_render_is_rgb():
  rows = [r for r in _synthetic_rows() if "teacher/top1" not in r]
  fig = curves.curves_figure(rows)
  assert len(fig.axes[3].lines) == 1
  image = curves.render_curves(rows)
  assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
  assert image.shape[1] > image.shape[0] > 200 and image.std() > 1  # not blank


def test_plot_run_and_script_write_png(tmp_path):
  workdir = str(tmp_path / "run")
  _write_jsonl(workdir, _synthetic_rows())
  out = curves.plot_run(workdir)
  assert out == os.path.join(workdir, "curves.png")
  with open(out, "rb") as f:
    assert f.read(8) == PNG_MAGIC
  # Read back: the file is the figure of the run's rows (titled by the run), panels left
  # to right loss, gradient norm, lr, top-1, and the lr line drawn through its (step, lr)
  # points.
  png = np.asarray(Image.open(out).convert("RGB"))
  assert png.shape == (360, 1700, 3)
  rows = curves.metric_writer.read_metrics(workdir)
  np.testing.assert_array_equal(png, curves.render_curves(rows, title="run"))
  fig = curves.curves_figure(rows, title="run")
  fig.canvas.draw()
  lefts = [a.get_position().x0 for a in fig.axes]
  assert lefts == sorted(lefts) and [a.get_title() for a in fig.axes] == [
      "train loss terms", "gradient norm", "learning rate", "eval top-1"]
  purple = np.asarray(matplotlib.colors.to_rgb("tab:purple")) * 255
  lr_axes = fig.axes[2]
  for step, lr in zip((10, 20, 30), (0.075, 0.05, 0.025)):
    x, y = lr_axes.transData.transform((step, lr))
    pixel = png[int(round(png.shape[0] - y)), int(round(x))]
    np.testing.assert_allclose(pixel, purple, atol=40, err_msg=f"lr line at step {step}")
  # A point off the line is background.
  x, y = lr_axes.transData.transform((10, 0.025))
  assert np.all(png[int(round(png.shape[0] - y)), int(round(x))] > 240)
  other = str(tmp_path / "sub" / "c.png")
  done = subprocess.run([sys.executable, "experiments/plot_curves.py",
                         f"--workdir={workdir}", f"--out={other}"], cwd=ROOT,
                        capture_output=True, text=True)
  assert done.returncode == 0, done.stderr
  assert os.path.getsize(other) > 10_000 and f"wrote {other}" in done.stdout
  empty = subprocess.run([sys.executable, "experiments/plot_curves.py",
                          f"--workdir={tmp_path / 'nothing'}"], cwd=ROOT,
                         capture_output=True, text=True)
  assert empty.returncode == 1 and "no metrics in" in empty.stderr


@pytest.mark.slow
def test_curves_of_a_real_run(digits_data_dir, tmp_path):
  config = tiny_config(digits_data_dir, num_devices=1)
  config.schedule.num_epochs = 1  # 4 steps, logs at 2 and 4, one eval
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(config, workdir)
  fig = curves.curves_figure(curves.metric_writer.read_metrics(workdir))
  loss, grad, lr, top1 = fig.axes
  assert {line.get_label() for line in loss.lines} >= {"loss", "ce"}
  assert "grad_norm" not in {line.get_label() for line in loss.lines}
  np.testing.assert_array_equal(grad.lines[0].get_xdata(), [2, 4])
  np.testing.assert_array_equal(lr.lines[0].get_xdata(), [2, 4])
  assert len(top1.lines) == 1 and len(top1.lines[0].get_ydata()) == 1
  out = curves.plot_run(workdir, str(tmp_path / "curves.png"))
  assert Image.open(out).size == (1700, 360)
