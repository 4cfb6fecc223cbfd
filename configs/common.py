"""Sections shared by every config, and the argument parsing of ``get_config(arg)``.

A config has these sections (every field can be overridden on the command line, e.g.
``--config.optim.lr=0.1``):

* ``data``: TFDS dataset (``name``, ``data_dir``, ``image_size``, ``download``, splits,
  ``input_shards`` (default one per process), ...), the training input ``pipeline`` and
  ``last_batch``. ``pipeline``: ``'auto'`` (default: on a GPU/TPU the device-resident
  path whenever the dataset can be (pad-crop-flip augmented, fixed-size, train split
  under ``device_max_bytes``, 2 GiB), else tf.data; on a CPU always tf.data, as fast
  there and the data order of earlier CPU runs), ``'tfdata'`` (host tf.data, any
  dataset) or ``'device'`` (the uint8 train split held on the accelerators, batches drawn
  and pad-crop-flip augmented inside the jitted step: CIFAR-10/100, digits; see
  `afd_jax.device_data`). ``last_batch``: ``'drop'`` (default: every step a full batch,
  the remainder of each epoch unused) or ``'train'`` (each epoch ends with the partial
  batch of the remaining examples, as PyTorch's ``DataLoader(drop_last=False)`` in the
  releases: CIFAR-100 at batch 64 is 781 steps of 64 and one of 16; set by the CIFAR-100
  configs);
* ``model``: the student (``name`` from `afd_jax.models.MODEL_NAMES`, compute ``dtype``,
  ``bn1_twice`` for the AFD release's WRN BatchNorm statistics);
* ``teacher``: ``name`` ('' for none), ``checkpoint`` (a teacher run's workdir, or one
  orbax step directory inside it) and ``random_init`` (smoke runs only);
* ``method``: ``name`` from `afd_jax.methods.method_names()` and only the fields that
  differ from that method's published defaults;
* ``optim``, ``schedule``: the optimizer (``name``: ``'sgd'`` or ``'adamw'``,
  `afd_jax.optim`) and the learning-rate schedule (epochs-based; a ``'step'`` schedule
  decays once each of ``decay_epochs`` has finished, see `afd_jax.optim`);
* ``logging``: log/eval/checkpoint cadence;
* top level: ``seed``, ``batch_size`` (global), ``eval_batch_size``, ``num_devices``
  (None = all devices), ``max_steps`` (stop early; the schedule still follows
  ``schedule.num_epochs``), ``steps_per_dispatch`` (train steps per compiled call,
  `afd_jax.multi_step`; logging, evals and checkpoints still land on exact steps),
  ``seeds`` (None: the one run of ``seed``; a tuple, ``--config.seeds=0,1,2``: one run
  per seed and a mean ± std table, an `afd_jax.plan` axis, as are the command line's
  ``--config.sweep.<field>=v1,v2``) and ``vmap_seeds`` (True: runs that differ only in
  seed or numeric hyperparameters train as one vmapped program on the device pipeline,
  `afd_jax.group`; False: one after another).

Every config file accepts ``runlocal`` in its argument: the same models and method on a
few `digits` images for two steps, offline, with a random-init teacher (seconds on a CPU).
"""
from __future__ import annotations

from typing import Any, Callable

import ml_collections

from configs import pairs

# ×0.1 once 150, 180, 210 epochs have finished: RepDistiller's rule (helper/util.py
# adjust_learning_rate, `epoch > d` with 1-indexed epochs), which CRD, mdistiller and
# SemCKD share. The AFD release decays one epoch earlier (`AFD_LR_DECAY`).
CIFAR_LR_DECAY = (150, 180, 210)
# clovaai/attention-feature-distillation@dd990d0 main.py + utils.adjust_learning_rate:
# `if epoch in args.schedule` at the start of 1-indexed epochs 150/180/210, i.e. after
# 149/179/209 finished epochs.
AFD_LR_DECAY = (149, 179, 209)
# CRD's setting: these light students train with lr 0.01 instead of 0.05 on CIFAR-100.
LOW_LR_MODELS = ("MobileNetV2", "ShuffleV1", "ShuffleV2")


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """``'teacher=wrn_40_2,student=wrn_16_2,runlocal'`` -> ConfigDict over `defaults`.

  A bare word sets a boolean to True; values are strings unless the default is a bool.

  Raises:
    ValueError: a key that is not in `defaults` (the message lists the accepted ones).
  """
  out = ml_collections.ConfigDict(dict(defaults, runlocal=False))
  for item in filter(None, (arg or "").split(",")):
    key, _, value = item.partition("=")
    if key not in out:
      raise ValueError(f"config argument {key!r} unknown; accepted: {', '.join(out)}")
    out[key] = (value.lower() in ("", "1", "true")) if isinstance(out[key], bool) else value
  return out


def base() -> ml_collections.ConfigDict:
  """The CIFAR-100 reference setting of the KD literature (CRD / AFD): SGD lr 0.05,
  momentum 0.9, wd 5e-4, batch 64, 240 epochs, ×0.1 after 150/180/210 finished epochs
  (RepDistiller's rule; the AFD release's is one epoch earlier, `AFD_LR_DECAY`)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.seeds = ml_collections.config_dict.placeholder(tuple)
  c.vmap_seeds = False
  c.batch_size = 64
  c.eval_batch_size = 256
  c.num_devices = ml_collections.config_dict.placeholder(int)
  c.max_steps = ml_collections.config_dict.placeholder(int)
  c.steps_per_dispatch = 1
  # augment: the preprocessing by name (a key of afd_jax.transforms.PREPROCESSING, or of
  # seg_transforms.SEG_PREPROCESSING for segmentation); None: the dataset's own.
  c.data = ml_collections.ConfigDict(dict(
      name="cifar100", data_dir=ml_collections.config_dict.placeholder(str),
      augment=ml_collections.config_dict.placeholder(str),
      image_size=32, download=True, train_split="train", eval_split="test",
      shuffle_buffer=50_000, num_train_examples=ml_collections.config_dict.placeholder(int),
      num_eval_examples=ml_collections.config_dict.placeholder(int),
      input_shards=ml_collections.config_dict.placeholder(int), prefetch=2,
      pipeline="auto", device_max_bytes=2**31, last_batch="drop"))
  # bn1_twice: the AFD release's WRN BatchNorm statistics (off: PyTorch's usual ones).
  # init: pretrained student weights for a fresh start (a PyTorch file or an afd_jax run;
  # `afd_jax.pretrained`), '' for none.
  c.model = ml_collections.ConfigDict(dict(name="wrn_16_2", dtype="float32",
                                           bn1_twice=False, init=""))
  # num_classes: the teacher's classifier width (None: the dataset's; 1000 for an ImageNet
  # teacher on a transfer target, whose logits are then never used).
  c.teacher = ml_collections.ConfigDict(dict(
      name="", checkpoint="", random_init=False,
      num_classes=ml_collections.config_dict.placeholder(int)))
  c.method = ml_collections.ConfigDict(dict(name="none"))
  # skip_nonfinite: skip a step whose loss or gradient is not finite (as some large-scale
  # trainers do) instead of stopping the run with an error.
  # head_lr_multiplier: the student's head (a DeepLabV3+'s ASPP + decoder) at this × lr.
  # name: 'sgd' or 'adamw' (torch.optim.AdamW; momentum/nesterov unused).
  c.optim = ml_collections.ConfigDict(dict(
      name="sgd", lr=0.05, momentum=0.9, nesterov=False, weight_decay=5e-4,
      skip_nonfinite=False, head_lr_multiplier=1.0))
  # name: 'step', 'cosine' or 'poly' (power: its exponent).
  c.schedule = ml_collections.ConfigDict(dict(
      name="step", num_epochs=240, decay_epochs=CIFAR_LR_DECAY, decay_factor=0.1,
      warmup_epochs=0, power=0.9))
  c.logging = ml_collections.ConfigDict(dict(
      log_every_steps=50, eval_every_epochs=1, checkpoint_every_steps=0,
      keep_checkpoints=3, progress_bar=True, heatmap_every_epochs=1))
  return c


def cifar100() -> ml_collections.ConfigDict:
  """`base`, training on each epoch's last partial batch as the CIFAR releases do
  (RepDistiller's and AFD's ``DataLoader`` keep it: 782 steps per epoch at batch 64)."""
  c = base()
  c.data.last_batch = "train"
  return c


def imagenet() -> ml_collections.ConfigDict:
  """ImageNet (ILSVRC2012) ResNet setting: 100 epochs, lr 0.1 ×0.1 at 30/60/90, wd 1e-4,
  global batch 256 (torchvision's reference recipe, used by CRD and AFD)."""
  c = base()
  c.batch_size = 256
  c.data.update(dict(name="imagenet2012", image_size=224, eval_split="validation",
                     shuffle_buffer=16_384, prefetch=4))
  c.model.name = "resnet18_imagenet"
  c.optim.update(dict(lr=0.1, weight_decay=1e-4))
  c.schedule.update(dict(num_epochs=100, decay_epochs=(30, 60, 90)))
  c.logging.log_every_steps = 100
  return c


def digits() -> ml_collections.ConfigDict:
  """The offline embedded `digits` dataset (scikit-learn's digits at 32×32 RGB)."""
  c = base()
  c.data.update(dict(name="digits", shuffle_buffer=2048))
  c.eval_batch_size = 128
  c.schedule.update(dict(name="cosine", num_epochs=15, decay_epochs=()))
  c.logging.update(dict(log_every_steps=10, keep_checkpoints=2))
  return c


_DATASETS = {"cifar100": cifar100, "imagenet2012": imagenet, "digits": digits}


def runlocal(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks `c` to a seconds-long offline smoke run with the same models and method."""
  c.data.update(dict(name="digits", image_size=32, download=False, shuffle_buffer=64,
                     train_split="train", eval_split="test",
                     num_train_examples=64, num_eval_examples=32, prefetch=1))
  c.batch_size, c.eval_batch_size = 16, 16
  c.max_steps = 2
  c.model.init = ""  # offline: no pretrained weights
  c.schedule.update(dict(num_epochs=1, decay_epochs=(), warmup_epochs=0))
  c.logging.update(dict(log_every_steps=1, keep_checkpoints=2, progress_bar=False))
  if c.teacher.name:
    c.teacher.update(dict(checkpoint="", random_init=True))
  return c


def teacher_config(dataset: str, arg: str | None, model: str) -> ml_collections.ConfigDict:
  """A model trained with cross-entropy only (a teacher, or a student baseline).

  Args:
    dataset: ``'cifar100'`` or ``'imagenet2012'``.
    arg: ``'model=<name>[,runlocal]'``.
    model: the default model.
  """
  a = parse_arg(arg, model=model)
  c = _DATASETS[dataset]()
  c.model.name = a.model
  if dataset == "cifar100" and a.model in LOW_LR_MODELS:
    c.optim.lr = 0.01
  return runlocal(c) if a.runlocal else c


def distill_config(dataset: str, method: str, arg: str | None, teacher: str, student: str,
                   method_fields: Callable[[Any], dict] | None = None,
                   recipe: Callable[[Any, ml_collections.ConfigDict], None] | None = None
                   ) -> ml_collections.ConfigDict:
  """A student distilled from a teacher with `method`.

  Args:
    dataset: ``'cifar100'`` or ``'imagenet2012'``.
    method: default method name (``arg`` may choose another with ``method=``).
    arg: ``'teacher=<name>,student=<name>[,method=<name>][,runlocal]'``.
    teacher, student: the default pair.
    method_fields: ``f(parsed arg) -> {field: value}``, the config file's overrides of the
      method's defaults (e.g. a per-pair weight).
    recipe: ``f(parsed arg, config)``, edits the config in place (a release's optimizer,
      schedule or batch size) before ``runlocal`` shrinks it.

  The teacher checkpoint is ``runs/<dataset>/<teacher>``, the workdir that
  ``configs/<dataset>/teacher.py:model=<teacher>`` trains (or a PyTorch import writes).
  """
  a = parse_arg(arg, teacher=teacher, student=student, method=method)
  c = teacher_config(dataset, f"model={a.student}", a.student)
  c.teacher.update(dict(name=a.teacher, checkpoint=f"runs/{dataset}/{a.teacher}"))
  c.method = ml_collections.ConfigDict(dict(name=a.method,
                                            **(method_fields(a) if method_fields else {})))
  if recipe:
    recipe(a, c)
  return runlocal(c) if a.runlocal else c


def expected(dataset: str, method: str, teacher: str, student: str) -> str:
  """A docstring-ready line with the published top-1 of this run, from `pairs`."""
  found = pairs.expected_top1(dataset, method, student, teacher)
  return "no published number" if found is None else f"{found[0]:.2f} ({found[1]})"


# ---- semantic segmentation (TaT's segmentation release, sihaoevery/TaT-seg) -------------

SEG_DATASETS = {"voc": "voc_aug", "cocostuff10k": "cocostuff10k"}
SEG_STUDENTS = {"resnet18": "deeplabv3p_resnet18", "mobilenetv2": "deeplabv3p_mobilenetv2"}
SEG_TEACHER = "deeplabv3p_resnet101"
# The ImageNet weights the release's backbones load (`_load_pretrained_model`), as files
# a person downloads into pretrained/ (the URLs are in configs/voc/teacher.py).
PRETRAINED = {"deeplabv3p_resnet18": "pretrained/resnet18-5c106cde.pth",
              "deeplabv3p_resnet101": "pretrained/resnet101-5d3b4d8f.pth",
              "deeplabv3p_mobilenetv2": "pretrained/mobilenet_v2-6a65762b.pth"}


def segmentation(dataset: str) -> ml_collections.ConfigDict:
  """The TaT segmentation release's common setting (its ``train_*.sh`` and argparse
  defaults): DeepLabV3+ at output stride 16, crop 513 and base size 513, SGD with
  Nesterov momentum 0.9 and weight decay 5e-4, the head (ASPP + decoder) at 10× the
  learning rate, a per-iteration schedule, 100 epochs, CE ignoring label 255 (divided by
  the batch size as well: the release's ``batch_average``), evaluation every epoch with
  mIoU keeping the best checkpoint, students from ImageNet weights.

  Args:
    dataset: ``'voc'`` (VOC 2012 + SBD, train_aug 10,582 / val 1,449) or
      ``'cocostuff10k'`` (9,000 / 1,000).
  """
  c = base()
  c.batch_size = 16
  c.eval_batch_size = 16
  c.data.update(dict(name=SEG_DATASETS[dataset], image_size=513, base_size=513,
                     train_split="train",
                     eval_split="validation" if dataset == "voc" else "test",
                     shuffle_buffer=10_582, download=False))
  c.model.update(dict(name=SEG_STUDENTS["resnet18"], init=PRETRAINED[SEG_STUDENTS["resnet18"]]))
  c.optim.update(dict(lr=0.007, momentum=0.9, nesterov=True, weight_decay=5e-4,
                      head_lr_multiplier=10.0))
  c.schedule.update(dict(name="cosine", num_epochs=100, decay_epochs=(), power=0.9))
  c.logging.update(dict(log_every_steps=50, heatmap_every_epochs=1))
  return c


def seg_runlocal(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`runlocal` for segmentation: the same networks and method on 16 `digits_seg`
  canvases (cropped to 64×64), batch 4, two steps, a random-init teacher, no pretrained
  weights."""
  c.data.update(dict(name="digits_seg", image_size=64, base_size=64, download=False,
                     shuffle_buffer=16, train_split="train", eval_split="test",
                     num_train_examples=16, num_eval_examples=8, prefetch=1))
  c.batch_size, c.eval_batch_size = 4, 4
  c.max_steps = 2
  c.model.init = ""
  c.schedule.update(dict(num_epochs=1, warmup_epochs=0))
  c.logging.update(dict(log_every_steps=1, keep_checkpoints=2, progress_bar=False))
  if c.teacher.name:
    c.teacher.update(dict(checkpoint="", random_init=True))
  return c


def seg_teacher_config(dataset: str, arg: str | None) -> ml_collections.ConfigDict:
  """The DeepLabV3+ ResNet-101 teacher (or any DeepLab baseline) trained with CE only."""
  a = parse_arg(arg, model="resnet101")
  c = segmentation(dataset)
  name = SEG_TEACHER if a.model == "resnet101" else _seg_student(a.model)
  c.model.update(dict(name=name, init=PRETRAINED[name]))
  return c  # the file sets its recipe, then applies `seg_runlocal` if asked


def _seg_student(student: str) -> str:
  if student not in SEG_STUDENTS:
    raise ValueError(f"config argument student={student!r} unknown; accepted: "
                     f"{', '.join(SEG_STUDENTS)}")
  return SEG_STUDENTS[student]


def seg_distill_config(dataset: str, method: str, arg: str | None,
                       recipe: Callable[[Any, ml_collections.ConfigDict], dict]
                       ) -> ml_collections.ConfigDict:
  """A DeepLabV3+ student distilled from the ResNet-101 teacher.

  Args:
    dataset: ``'voc'`` or ``'cocostuff10k'``.
    method: the method's name.
    arg: ``'student=resnet18|mobilenetv2[,runlocal]'``.
    recipe: ``f(parsed arg, config) -> method fields``; may also set the config's
      batch size, lr, schedule (the release's per-script settings).

  The teacher checkpoint is ``runs/<dataset>/deeplabv3p_resnet101``: the workdir that
  ``configs/<dataset>/teacher.py`` trains or that ``python -m afd_jax.import_torch
  --model=deeplabv3p_resnet101 --num_classes=<K> --checkpoint=<the release's .pth.tar>``
  writes.
  """
  a = parse_arg(arg, student="resnet18")
  c = segmentation(dataset)
  name = _seg_student(a.student)
  c.model.update(dict(name=name, init=PRETRAINED[name]))
  c.teacher.update(dict(name=SEG_TEACHER, checkpoint=f"runs/{dataset}/{SEG_TEACHER}"))
  c.method = ml_collections.ConfigDict(dict(name=method, **recipe(a, c)))
  return seg_runlocal(c) if a.runlocal else c


def teacher_student_suite(teacher_run: ml_collections.ConfigDict,
                          student_run: Callable[[], ml_collections.ConfigDict],
                          teacher: str, methods: str,
                          method_fields: dict[str, dict] | None = None
                          ) -> ml_collections.ConfigDict:
  """A suite (a plan, `afd_jax.plan`): the teacher, the student alone, then one student per
  method distilled from that teacher (trained first, in ``<workdir>/teacher``).

  Args:
    teacher_run: the teacher's config.
    student_run: makes a fresh student config.
    teacher: the teacher's model name.
    methods: '+'-separated method names.
    method_fields: per method, fields that differ from its defaults.
  """
  c = ml_collections.ConfigDict()
  c.seeds = (0,)
  c.single_seed_runs = ("teacher",)
  c.runs = ml_collections.ConfigDict()
  c.runs.teacher = teacher_run
  c.runs.student = student_run()
  order = ["teacher", "student"]
  for name in filter(None, methods.split("+")):
    run = student_run()
    run.teacher.update(dict(name=teacher, checkpoint="{workdir}/teacher", random_init=False))
    run.method = ml_collections.ConfigDict(dict(name=name,
                                                **(method_fields or {}).get(name, {})))
    c.runs[f"student_{name}"] = run
    order.append(f"student_{name}")
  c.run_order = tuple(order)
  return c
