"""Semantic segmentation: a class per pixel, scored by mean IoU.

Labels (B, S, S) int32, 255 (the dataset's ``ignore_label``) = no class; eval sums of a
confusion matrix over the valid pixels and the per-pixel CE
(`steps.segmentation_eval_step`), scored as the TaT-seg release's ``Evaluator``
(`evaluation.segmentation_scores`); the best checkpoint is the best ``miou``;
`afd_jax.seg_transforms` preprocesses image and label map together; after each
evaluation the student's and teacher's class maps are drawn (``predictions.png``,
`analysis.segmentation.prediction_grid_hook`). Not trained as a vmapped seed group.
"""
from __future__ import annotations

import functools

import numpy as np

from afd_jax import steps
from afd_jax import tasks
from afd_jax.analysis import segmentation as pictures


def label_shape(batch: int, image_size: int) -> tuple[int, ...]:
  return (batch, image_size, image_size)


def eval_step(model, info):
  """`steps.segmentation_eval_step` of `model` over the dataset's classes."""
  return functools.partial(steps.segmentation_eval_step, model,
                           num_classes=info.num_classes)


def eval_metrics(sums: dict) -> dict[str, float]:
  """`evaluation.segmentation_scores` of the summed confusion matrix (in percent) and
  the mean per-pixel CE ``'loss'``."""
  from afd_jax import evaluation  # pylint: disable=g-import-not-at-top  (it reads tasks)
  return dict(evaluation.segmentation_scores(np.asarray(sums["confusion"], np.float64)),
              loss=float(sums["loss"] / max(float(sums["pixels"]), 1.0)))


def open_data(dataset, builder, label_key, config_data, image_size):
  """The metadata's class count and ignore label; sets and checks `dataset`'s
  ``base_size``, ``label_fill`` and ``scale_range`` (`input_pipeline.Dataset`).

  Raises:
    ValueError: no ``num_classes`` in the metadata, or sizes out of range.
  """
  del label_key
  from afd_jax import seg_transforms  # pylint: disable=g-import-not-at-top  (TensorFlow)
  metadata = builder.info.metadata or {}
  if "num_classes" not in metadata:
    raise ValueError(f"Segmentation dataset {config_data.name!r} has no 'num_classes' in "
                     "its info metadata (see afd_jax/datasets/segmentation.py).")
  prep = dataset.preprocessing
  dataset.base_size = config_data.get("base_size") or prep.default_base_size
  fill = config_data.get("label_fill")
  dataset.label_fill = prep.label_fill if fill is None else fill
  scale_range = config_data.get("scale_range")
  dataset.scale_range = (seg_transforms.SCALE_RANGE if scale_range is None
                         else seg_transforms.check_scale_range(scale_range))
  seg_transforms.check_sizes(image_size, dataset.base_size, dataset.scale_range)
  return metadata["num_classes"], metadata.get("ignore_label", seg_transforms.IGNORE_LABEL)


def pair(dataset, image, label, key, size):
  """The image and its (size, size) label map, transformed together."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (the pipeline's, loaded)
  prep = dataset.preprocessing
  image, label = (prep.eval(image, label, size) if key is None else
                  prep.train(image, label, key, size, dataset.base_size,
                             dataset.label_fill, dataset.scale_range))
  return image, tf.ensure_shape(label, (size, size))


def padding_label(info, size):
  """A map of `ignore_label` (no pixel counted)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf.fill((size, size), tf.constant(info.ignore_label, tf.int32))


TASK = tasks.Task(
    name="segmentation", score="miou", score_label="mIoU", label_shape=label_shape,
    eval_step=eval_step, eval_metrics=eval_metrics, preprocessing="afd_jax.seg_transforms",
    data=tasks.DataHooks(open=open_data, pair=pair, encoded_label=True,
                         padding_label=padding_label),
    predict=steps.segmentation_predictions, pictures=(pictures.prediction_grid_hook,),
    seed_groups=False, device_data=False)
