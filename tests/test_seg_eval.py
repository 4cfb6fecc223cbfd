"""Segmentation scoring, per-pixel accuracy, the release's LR schedules and the pictures.

The references here are plain NumPy / Python re-statements of the TaT-seg release's
``utils/metrics.py`` (``Evaluator``) and ``utils/lr_scheduler.py`` (``LR_Scheduler``),
written for these tests.
"""
import math

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest

from afd_jax import evaluation, optim, steps
from afd_jax.analysis import segmentation


def _release_scores(cm):
  """The release's Evaluator methods, restated (in percent)."""
  with np.errstate(divide="ignore", invalid="ignore"):
    acc = np.diag(cm).sum() / cm.sum()
    acc_class = np.nanmean(np.diag(cm) / cm.sum(axis=1))
    iu = np.diag(cm) / (cm.sum(axis=1) + cm.sum(axis=0) - np.diag(cm))
    miou = np.nanmean(iu)
    freq = cm.sum(axis=1) / cm.sum()
    fwiou = (freq[freq > 0] * iu[freq > 0]).sum()
  return {"pixel_acc": 100 * acc, "acc_class": 100 * acc_class, "miou": 100 * miou,
          "fwiou": 100 * fwiou}


def _release_matrix(gt, pred, k):
  mask = (gt >= 0) & (gt < k)
  return np.bincount(k * gt[mask].astype(int) + pred[mask], minlength=k * k).reshape(k, k)


def test_scores_equal_the_release_evaluator_with_absent_and_unpredicted_classes():
  rng = np.random.RandomState(0)
  k = 7
  gt = rng.randint(0, k - 2, size=(3, 20, 20))  # classes 5, 6 never in the ground truth
  gt[:, :2] = 255
  pred = rng.randint(0, k, size=gt.shape)
  pred[pred == 3] = 4  # class 3 never predicted
  cm = _release_matrix(gt, pred, k).astype(np.float64)
  got = evaluation.segmentation_scores(cm)
  want = _release_scores(cm)
  for key in want:
    np.testing.assert_allclose(got[key], want[key], rtol=1e-12, err_msg=key)


class _Logits(nn.Module):
  """A 'model' whose logits are its input: tests the eval step's counting alone."""

  @nn.compact
  def __call__(self, x, train=False):
    return x


def test_eval_step_counts_every_valid_pixel_of_real_examples_once():
  rng = np.random.RandomState(1)
  k, b = 5, 4
  logits = rng.randn(b, 6, 7, k).astype(np.float32)
  labels = rng.randint(0, k, size=(b, 6, 7)).astype(np.int32)
  labels[0, :, :3] = 255
  labels[1, 2, 2] = 9  # outside [0, K): not counted, as the release's mask does
  mask = np.array([1, 1, 1, 0], np.float32)  # the last example is padding
  out = jax.jit(lambda v, bt: steps.segmentation_eval_step(_Logits(), v, bt, k))(
      {}, {"image": logits, "label": labels, "mask": mask})
  want = _release_matrix(labels[:3], logits[:3].argmax(-1), k)
  np.testing.assert_array_equal(np.asarray(out["confusion"]), want)
  valid = (labels[:3] < k)
  assert float(out["pixels"]) == valid.sum()
  lse = np.log(np.exp(logits[:3].astype(np.float64)).sum(-1))
  picked = np.take_along_axis(logits[:3], np.where(valid, labels[:3], 0)[..., None], -1)[..., 0]
  np.testing.assert_allclose(float(out["loss"]), ((lse - picked) * valid).sum(), rtol=1e-5)
  assert float(out["count"]) == 3


def test_pixel_accuracy_ignores_255_and_classification_is_unchanged():
  logits = np.zeros((1, 2, 2, 3), np.float32)
  logits[..., 1] = 1.0  # predicts class 1 everywhere
  labels = np.array([[[1, 255], [0, 255]]], np.int32)
  assert float(steps.pixel_or_top1_accuracy(logits, labels)) == 0.5
  assert float(steps.pixel_or_top1_accuracy(logits, np.full_like(labels, 255))) == 0.0
  cls = np.array([[0.0, 2.0], [3.0, 1.0]], np.float32)
  assert float(steps.pixel_or_top1_accuracy(cls, np.array([1, 1]))) == 0.5


def _release_lr(mode, base, epochs, iters, epoch, i):
  """``LR_Scheduler.__call__``'s lr at iteration i of `epoch` (no warm-up)."""
  t, n = epoch * iters + i, epochs * iters
  if mode == "cos":
    return 0.5 * base * (1 + math.cos(1.0 * t / n * math.pi))
  return base * pow((1 - 1.0 * t / n), 0.9)


@pytest.mark.parametrize("mode,name", [("cos", "cosine"), ("poly", "poly")])
def test_per_iteration_schedule_equals_the_release_lr_scheduler(mode, name):
  base, epochs, iters = 0.007, 5, 13
  cfg = ml_collections.ConfigDict(dict(name=name, num_epochs=epochs, warmup_epochs=0,
                                       decay_epochs=(), decay_factor=0.1, power=0.9))
  schedule = optim.create_learning_rate_schedule(cfg, base, iters)
  for epoch in range(epochs):
    for i in range(iters):
      np.testing.assert_allclose(float(schedule(epoch * iters + i)),
                                 _release_lr(mode, base, epochs, iters, epoch, i),
                                 rtol=1e-5, atol=1e-9, err_msg=f"epoch {epoch} iter {i}")


def test_voc_palette_and_the_grid_read_back_in_order():
  palette = segmentation.voc_palette()
  # Facts of the Pascal VOC colour map: background, aeroplane, bicycle, person.
  assert tuple(palette[0]) == (0, 0, 0)
  assert tuple(palette[1]) == (128, 0, 0)
  assert tuple(palette[2]) == (0, 128, 0)
  assert tuple(palette[15]) == (192, 128, 128)
  n, h, w = 2, 5, 6
  labels = np.array([np.full((h, w), 1), np.full((h, w), 2)])
  labels[0, 0, 0] = 255
  student = np.array([np.full((h, w), 15), np.full((h, w), 0)])
  teacher = np.array([np.full((h, w), 3), np.full((h, w), 4)])
  images = np.random.RandomState(0).randn(n, h, w, 3)
  grid = segmentation.prediction_grid(images, labels, student, teacher)
  gap = 2
  assert grid.shape == (n * (h + gap) - gap, 4 * (w + gap) - gap, 3)
  panel = lambda i, j: grid[i * (h + gap):i * (h + gap) + h, j * (w + gap):j * (w + gap) + w]  # noqa
  # Columns: image, ground truth, teacher, student; rows: images in order.
  assert tuple(panel(0, 1)[0, 0]) == segmentation.IGNORE_COLOUR
  assert tuple(panel(0, 1)[1, 1]) == (128, 0, 0)
  assert tuple(panel(1, 1)[1, 1]) == (0, 128, 0)
  assert tuple(panel(0, 2)[1, 1]) == tuple(palette[3])
  assert tuple(panel(1, 2)[1, 1]) == tuple(palette[4])
  assert tuple(panel(0, 3)[1, 1]) == (192, 128, 128)
  assert tuple(panel(1, 3)[1, 1]) == (0, 0, 0)
  np.testing.assert_array_equal(panel(0, 0).argmax(-1) >= 0, True)
  assert panel(1, 0).min() == 0 and panel(1, 0).max() == 255  # stretched per image
  assert (grid[h:h + gap] == 255).all()  # white gap between rows
  no_teacher = segmentation.prediction_grid(images, labels, student)
  assert no_teacher.shape[1] == 3 * (w + gap) - gap
  assert tuple(no_teacher[1, 2 * (w + gap) + 1]) == (192, 128, 128)
  # The PNG of small canvases: each pixel a block, panels at least MIN_PANEL high.
  big = segmentation.enlarged(grid, h)
  factor = -(-segmentation.MIN_PANEL // h)
  assert big.shape == (grid.shape[0] * factor, grid.shape[1] * factor, 3)
  np.testing.assert_array_equal(big[::factor, ::factor], grid)
  assert (big[:factor, :factor] == grid[0, 0]).all()
  assert segmentation.enlarged(grid, segmentation.MIN_PANEL) is not None
  np.testing.assert_array_equal(segmentation.enlarged(grid, 513), grid)
