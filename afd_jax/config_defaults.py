"""Default experiment configs that the files in ``configs/`` start from and override.

A config has these sections (every field can be overridden on the command line, e.g.
``--config.optim.lr=0.1``):

* ``data``: TFDS dataset (``name``, ``data_dir``, ``image_size``, ``download``, splits, ...);
* ``model``: the student (``name`` from `afd_jax.models.MODEL_NAMES`, compute ``dtype``);
* ``teacher``: ``name`` ('' for none) and ``checkpoint`` (a teacher run's workdir, or one
  orbax step directory inside it);
* ``method``: ``name`` from `afd_jax.methods.method_names()` and that method's fields;
* ``optim``, ``schedule``: SGD and the learning-rate schedule (epochs-based);
* ``logging``: log/eval/checkpoint cadence;
* top level: ``seed``, ``batch_size`` (global), ``eval_batch_size``, ``num_devices``
  (None = all local devices), ``max_steps`` (stop early, e.g. for a preemptible budget;
  the schedule still follows ``schedule.num_epochs``).
"""
from __future__ import annotations

import ml_collections

CIFAR_LR_DECAY = (150, 180, 210)
# CRD's setting: these light students train with lr 0.01 instead of 0.05 on CIFAR-100.
LOW_LR_MODELS = ("MobileNetV2", "ShuffleV1", "ShuffleV2")


def base_config() -> ml_collections.ConfigDict:
  """The CIFAR-100 reference setting of the KD literature (CRD / AFD)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.batch_size = 64
  c.eval_batch_size = 256
  c.num_devices = ml_collections.config_dict.placeholder(int)
  c.max_steps = ml_collections.config_dict.placeholder(int)

  c.data = ml_collections.ConfigDict(dict(
      name="cifar100", data_dir=ml_collections.config_dict.placeholder(str),
      image_size=32, download=True, train_split="train", eval_split="test",
      shuffle_buffer=50_000, num_train_examples=ml_collections.config_dict.placeholder(int),
      prefetch=2))
  c.model = ml_collections.ConfigDict(dict(name="wrn_16_2", dtype="float32"))
  c.teacher = ml_collections.ConfigDict(dict(name="", checkpoint=""))
  c.method = ml_collections.ConfigDict(dict(name="none"))
  c.optim = ml_collections.ConfigDict(dict(
      lr=0.05, momentum=0.9, nesterov=False, weight_decay=5e-4))
  c.schedule = ml_collections.ConfigDict(dict(
      name="step", num_epochs=240, decay_epochs=CIFAR_LR_DECAY, decay_factor=0.1,
      warmup_epochs=0))
  c.logging = ml_collections.ConfigDict(dict(
      log_every_steps=50, eval_every_epochs=1, checkpoint_every_steps=0,
      keep_checkpoints=3, progress_bar=True, heatmap_every_epochs=1))
  return c


def teacher_config(model: str, dataset: str = "cifar100") -> ml_collections.ConfigDict:
  """A teacher (or student baseline) trained with cross-entropy only."""
  c = imagenet_config() if dataset == "imagenet2012" else base_config()
  c.model.name = model
  if dataset != "imagenet2012" and model in LOW_LR_MODELS:
    c.optim.lr = 0.01
  return c


def distill_config(teacher: str, student: str, method: str, dataset: str = "cifar100",
                   teacher_checkpoint: str | None = None,
                   **method_fields) -> ml_collections.ConfigDict:
  """Student `student` distilled from `teacher` with `method` (extra fields go to method).

  The teacher checkpoint defaults to ``runs/<dataset>/<teacher>``, the workdir its teacher
  config's docstring trains it into.
  """
  c = teacher_config(student, dataset)
  c.teacher.name = teacher
  c.teacher.checkpoint = teacher_checkpoint or f"runs/{dataset}/{teacher}"
  c.method = ml_collections.ConfigDict(dict(name=method, **method_fields))
  return c


def imagenet_config() -> ml_collections.ConfigDict:
  """ImageNet (ILSVRC2012) ResNet setting: 100 epochs, lr 0.1 ×0.1 at 30/60/90, wd 1e-4."""
  c = base_config()
  c.batch_size = 256
  c.data.update(dict(name="imagenet2012", image_size=224, eval_split="validation",
                     shuffle_buffer=16_384, prefetch=4))
  c.model.name = "resnet18_imagenet"
  c.optim.update(dict(lr=0.1, weight_decay=1e-4))
  c.schedule.update(dict(num_epochs=100, decay_epochs=(30, 60, 90)))
  c.logging.log_every_steps = 100
  return c


def digits_config() -> ml_collections.ConfigDict:
  """The offline embedded `digits` dataset (scikit-learn's digits at 32×32 RGB)."""
  c = base_config()
  c.data.update(dict(name="digits", shuffle_buffer=2048))
  c.eval_batch_size = 128
  c.schedule.update(dict(name="cosine", num_epochs=15, decay_epochs=()))
  c.logging.update(dict(log_every_steps=10, keep_checkpoints=1))
  return c
