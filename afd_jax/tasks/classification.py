"""Image classification: one class per image, scored by top-1 accuracy.

Labels (B,) int32; eval sums of correct top-1 / top-5 predictions and CE
(`steps.eval_step`); the best checkpoint is the best ``top1``; `afd_jax.transforms`
preprocesses.
"""
from __future__ import annotations

import functools

from afd_jax import steps
from afd_jax import tasks


def label_shape(batch: int, image_size: int) -> tuple[int, ...]:
  del image_size
  return (batch,)


def eval_step(model, info):
  """`steps.eval_step` of `model` (`info` unused: top-5 needs no class count)."""
  del info
  return functools.partial(steps.eval_step, model)


def eval_metrics(sums: dict) -> dict[str, float]:
  """``{'top1', 'top5'}`` in percent and the mean CE ``'loss'`` of the split's sums."""
  n = max(float(sums["count"]), 1.0)
  return {"top1": float(100.0 * sums["correct1"] / n),
          "top5": float(100.0 * sums["correct5"] / n), "loss": float(sums["loss"] / n)}


def open_data(dataset, builder, label_key, config_data, image_size):
  """The ClassLabel's class count; no ignore label."""
  del dataset, config_data, image_size
  return builder.info.features[label_key].num_classes, None


def pair(dataset, image, label, key, size):
  """The (image, int32 class) of one example, transformed by the dataset's preprocessing."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (the pipeline's, loaded)
  prep = dataset.preprocessing
  image = prep.eval(image, size) if key is None else prep.train(image, key, size)
  return image, tf.cast(label, tf.int32)


def padding_label(info, size):
  del info, size
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf.constant(0, tf.int32)


TASK = tasks.Task(
    name="classification", score="top1", score_label="top-1", label_shape=label_shape,
    eval_step=eval_step, eval_metrics=eval_metrics, preprocessing="afd_jax.transforms",
    data=tasks.DataHooks(open=open_data, pair=pair, encoded_label=False,
                         padding_label=padding_label))
