"""Tasks: what a run learns to predict, declared in one place per task.

A `Task` says what its labels look like, how a dataset's examples become training and
eval pairs (the preprocessing module and the per-task part of `input_pipeline`), how a
model is evaluated (the eval step's sums and the metrics made of them), the score that
picks a run's ``best/`` checkpoint and heads its results-table column, and the pictures
drawn after each evaluation. The loop, the plan and the evaluation ask the run's task
(``tasks.get(models.task_of(name))`` or ``tasks.get(dataset.info.task)``) and know no
task by name.

Registered: ``'classification'`` (`classification.py`) and ``'segmentation'``
(`segmentation.py`); `register` adds one (a test's throwaway task, a new kind of run).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn


@dataclasses.dataclass(frozen=True)
class Task:
  """One task's declarations.

  Attributes:
    name: the registry key (a dataset's ``info.task``, `models.task_of`).
    score: the eval metric that picks ``best/`` (higher is better) and is tabulated.
    score_label: the results table's name for `score` (e.g. ``'top-1'``).
    label_shape: ``label_shape(batch, image_size)``: the shape of a batch's labels.
    eval_step: ``eval_step(model, info) -> step(variables, batch) -> sums``: the jittable
      step of one eval batch (``{'image' (B, S, S, 3), 'label', 'mask' (B,)}``), whose
      dict of arrays is summed over batches; `info` is the dataset's ``DatasetInfo``.
    eval_metrics: ``eval_metrics(sums) -> {name: float}`` of the summed host arrays; it
      holds `score` and ``'loss'``.
    preprocessing: the module whose ``get_preprocessing(dataset, augment)`` gives the
      dataset's transforms.
    data: the task's part of `input_pipeline.Dataset` (`DataHooks`).
    predict: ``predict(nets, state, batch, teacher_vars) -> dict`` (jitted by the loop),
      the eval-mode outputs `pictures` draw (``AnalysisContext.predictions``), or None.
    pictures: analysis hooks ``hook(ctx)`` run after every evaluation.
    seed_groups: whether runs of the task train as a vmapped group (``config.seeds``,
      a plan's ``vmap``).
    device_data: whether its train split may be device-resident (`afd_jax.device_data`:
      one label per image, pad-crop-flip drawn in the step).
    no_score: the best score recorded while a run has none (below every real score).
    model_task: the task whose models' outputs this task reads (None: its own name; a
      regression read off a classifier's logits: ``'classification'``).
  """
  name: str
  score: str
  score_label: str
  label_shape: Callable[[int, int], tuple[int, ...]]
  eval_step: Callable[[nn.Module, Any], Callable[..., dict]]
  eval_metrics: Callable[[dict], dict[str, float]]
  preprocessing: str
  data: "DataHooks"
  predict: Callable[..., dict] | None = None
  pictures: tuple[Callable[..., None], ...] = ()
  seed_groups: bool = True
  device_data: bool = True
  no_score: float = -1.0
  model_task: str | None = None

  @property
  def models(self) -> str:
    """The `models.task_of` of the models that train this task."""
    return self.model_task or self.name

  def preprocessing_for(self, dataset: str, augment: str | None):
    """``get_preprocessing(dataset, augment)`` of the task's preprocessing module."""
    import importlib  # pylint: disable=g-import-not-at-top
    return importlib.import_module(self.preprocessing).get_preprocessing(dataset, augment)


@dataclasses.dataclass(frozen=True)
class DataHooks:
  """The task's part of the tf.data pipeline (`input_pipeline.Dataset`).

  Attributes:
    open: ``open(dataset, builder, label_key, config_data, image_size) -> (num_classes,
      ignore_label)``: reads the label space off the TFDS builder and checks (and sets on
      `dataset`) the task's own sizes. Raises ValueError.
    pair: ``pair(dataset, image, label, key, size) -> (image, label)``: one raw example's
      float image in [0, 1] (before normalising) and its label; `key` None: the eval
      transform, else the training one seeded by `key`.
    encoded_label: whether the label is stored encoded (an image), decoded by `pair`.
    padding_label: ``padding_label(info, size)``: the label of an eval padding example.
  """
  open: Callable[..., tuple[int, int | None]]
  pair: Callable[..., tuple[Any, Any]]
  encoded_label: bool
  padding_label: Callable[[Any, int], Any]


_REGISTRY: dict[str, Task] = {}


def register(task: Task) -> Task:
  """Adds `task` under its name (replacing one of that name); returns it."""
  _REGISTRY[task.name] = task
  return task


def unregister(name: str) -> None:
  """Removes task `name` (a test's throwaway task)."""
  _REGISTRY.pop(name, None)


def names() -> tuple[str, ...]:
  """The registered tasks' names."""
  return tuple(_REGISTRY)


def get(name: str) -> Task:
  """The registered task `name`.

  Raises:
    ValueError: an unknown name; the message lists the accepted ones.
  """
  if name not in _REGISTRY:
    raise ValueError(f"Unknown task {name!r}; accepted: {', '.join(map(repr, _REGISTRY))}")
  return _REGISTRY[name]


def of_model(name: str) -> Task:
  """The task of model `name` (`models.task_of`).

  Raises:
    ValueError: an unknown model name.
  """
  from afd_jax import models  # pylint: disable=g-import-not-at-top  (the zoo, when asked)
  return get(models.task_of(name))


def of_score(score: str) -> Task:
  """The registered task scored by metric `score`.

  Raises:
    ValueError: no task is; the message lists the tasks' scores.
  """
  for task in _REGISTRY.values():
    if task.score == score:
      return task
  raise ValueError(f"No task is scored by {score!r}; accepted: "
                   f"{', '.join(repr(t.score) for t in _REGISTRY.values())}")


def of_result(result: dict) -> Task:
  """The task of a run's result (``result.json``), read off its keys: the first task
  whose score (or best score) it holds, else classification (a result without any)."""
  for task in _REGISTRY.values():
    if task.score in result or f"best_{task.score}" in result:
      return task
  return get(DEFAULT)


DEFAULT = "classification"  # what a run is without any other sign

# pylint: disable=g-import-not-at-top,wrong-import-position
from afd_jax.tasks import classification, segmentation  # noqa: E402

register(classification.TASK)
register(segmentation.TASK)
