"""Methods × teacher→student pairs × seeds as one plan, one comparison table and chart.

    python -m afd_jax.main --config=configs/compare.py:dataset=digits,methods=all,seeds=0+1+2,vmap \
        --workdir=runs/compare_digits
    python -m afd_jax.main --config=configs/compare.py:dataset=cifar100,methods=all,seeds=0+1+2,pairs=wrn_40_2:wrn_16_2+resnet56:resnet20,teacher_checkpoint=runs/cifar100/{teacher} \
        --workdir=runs/compare_cifar100

A suite (`afd_jax.plan`) of ordinary runs: the teacher in ``<workdir>/<teacher>`` (trained
once, with the first seed, shared by its pairs; not trained when ``teacher_checkpoint``
names it), the student alone (``none``, once per student) and each method in
``<workdir>/<teacher>-<student>/<method>[/seed_<k>]``. Every run is validated before any
trains; a finished run is skipped, an interrupted one resumes, so a rerun only rewrites
``<workdir>/results.{md,json,png}`` (per pair: mean ± std over seeds of the final and best
top-1, Δ vs the student alone, the published number from configs/pairs.py, the bar
chart). A method that cannot distil a pair (a PairingError, e.g. unequal channels) or
diverges is an ``n/a (reason)`` row; the other runs go on.

Arguments (``,``-separated; lists ``+``-separated):

* ``dataset``: ``digits`` (default: configs/quickstart.py's runs: the teacher sees all
  1,437 training images for 10 epochs, students the first 150 for 40; cosine from lr 0.1)
  or ``cifar100`` (configs/cifar100/teacher.py for the teacher and the student alone,
  configs/cifar100/<method>.py, else baselines.py, for a method);
* ``methods``: method names (default ``kd+at+afd``), or ``all`` (every registered method
  that distils); the student alone and the teacher are always rows;
* ``pairs``: ``<teacher>:<student>`` items (default the quickstart's ``resnet14:resnet8``
  on digits, ``wrn_40_2:wrn_16_2`` on cifar100);
* ``seeds``: e.g. ``0+1+2`` (default ``0``);
* ``teacher_checkpoint``: a teacher run, ``{teacher}`` standing for the pair's teacher
  (default: the plan trains it);
* ``epochs``, ``teacher_epochs``, ``num_train_examples``, ``max_steps``: shrink the runs
  (a step schedule's decays keep their relative place); ``data_dir``: TFDS data_dir;
* ``vmap``: each row's seeds as one vmapped program (the device pipeline);
* ``runlocal``: every config file's smoke setting (a few digits images, two steps).
"""
from __future__ import annotations

import importlib
import importlib.util
import os

import ml_collections

from configs import common
from configs import pairs as pairs_lib
from configs import quickstart

DATASETS = ("digits", "cifar100")
DEFAULT_PAIRS = {"digits": f"{quickstart.TEACHER}:{quickstart.STUDENT}",
                 "cifar100": "wrn_40_2:wrn_16_2"}
# The plan's row names (`afd_jax.analysis.comparison.TEACHER`, `.BASELINE`).
TEACHER, ALONE = "teacher", "none"


def parse_pairs(text: str) -> list[tuple[str, str]]:
  """``'wrn_40_2:wrn_16_2+resnet56:resnet20'`` -> [(teacher, student), ...] (repeats
  dropped)."""
  out = []
  for item in filter(None, text.split("+")):
    teacher, sep, student = item.partition(":")
    if not (sep and teacher and student):
      raise ValueError(f"config argument pairs: item {item!r} is not <teacher>:<student>")
    out.append((teacher, student))
  return list(dict.fromkeys(out))


def parse_methods(text: str) -> list[str]:
  """Method names (``'all'``: every registered method that distils), without ``none``
  (the student alone is always a row)."""
  from afd_jax import methods  # pylint: disable=g-import-not-at-top  (imports jax)
  distilling = [m for m in methods.method_names() if methods.needs_teacher(m)]
  names = distilling if text == "all" else list(filter(None, text.split("+")))
  unknown = [m for m in names if m not in methods.method_names()]
  if unknown:
    raise ValueError(f"config argument methods: unknown {unknown}; registered: "
                     f"{', '.join(methods.method_names())}, or 'all'")
  return list(dict.fromkeys(m for m in names if m != ALONE))


def parse_seeds(text: str) -> tuple[int, ...]:
  """``'0+1+2'`` -> (0, 1, 2)."""
  try:
    seeds = tuple(int(s) for s in text.split("+") if s.strip())
  except ValueError:
    raise ValueError(f"config argument seeds={text!r}; accepted: distinct integers "
                     "joined by '+', e.g. seeds=0+1+2") from None
  if not seeds or len(set(seeds)) != len(seeds):
    raise ValueError(f"config argument seeds={text!r}; accepted: distinct integers "
                     "joined by '+', e.g. seeds=0+1+2")
  return seeds


def scale_epochs(c: ml_collections.ConfigDict, epochs: int | None) -> None:
  """``epochs`` instead of the config's; a step schedule's decays keep their relative
  place (fractional epochs: CIFAR's 150/180/210 of 240 at 2 epochs are 1.25, 1.5 and
  1.75, three decays as in the full run)."""
  if epochs is None:
    return
  old = c.schedule.num_epochs
  c.schedule.num_epochs = epochs
  c.schedule.decay_epochs = tuple(e * epochs / old for e in c.schedule.decay_epochs
                                  if e < old)


def _int(a, key: str) -> int | None:
  try:
    return int(a[key]) if a[key] else None
  except ValueError:
    raise ValueError(f"config argument {key}={a[key]!r}; accepted: an integer") from None


def _config_module(dataset: str, name: str):
  return importlib.import_module(f"configs.{dataset}.{name}")


def run_config(a, teacher: str, student: str, method: str) -> ml_collections.ConfigDict:
  """The config of one run, from the dataset's config files.

  Args:
    a: the parsed argument.
    teacher, student: the pair.
    method: ``'teacher'`` (the teacher run), ``'none'`` (the student alone) or a method.
  """
  runlocal = ",runlocal" if a.runlocal else ""
  if a.dataset == "digits":  # the quickstart suite's runs: teacher, student, student_<m>
    names = {TEACHER: "teacher", ALONE: "student"}
    suite_methods = "" if method in names else method
    runs = quickstart.get_config(f"methods={suite_methods}{runlocal}").runs
    c = runs[names.get(method, f"student_{method}")]
  elif method == TEACHER:
    c = _config_module(a.dataset, "teacher").get_config(f"model={teacher}{runlocal}")
  elif method == ALONE:
    c = _config_module(a.dataset, "teacher").get_config(f"model={student}{runlocal}")
  else:
    own = importlib.util.find_spec(f"configs.{a.dataset}.{method}") is not None
    c = _config_module(a.dataset, method if own else "baselines").get_config(
        f"method={method},teacher={teacher},student={student}{runlocal}")
  if a.data_dir:
    c.data.data_dir = a.data_dir
  if _int(a, "max_steps"):
    c.max_steps = _int(a, "max_steps")
  if method == TEACHER:
    c.model.name = teacher
    scale_epochs(c, _int(a, "teacher_epochs"))
    return c
  c.model.name = student
  scale_epochs(c, _int(a, "epochs"))
  if _int(a, "num_train_examples"):
    c.data.num_train_examples = _int(a, "num_train_examples")
  if method != ALONE:
    c.teacher.update(dict(name=teacher, checkpoint=_teacher_checkpoint(a, teacher),
                          random_init=False))
  return c


def _teacher_checkpoint(a, teacher: str) -> str:
  """``teacher_checkpoint`` with ``{teacher}`` filled, else the plan's run of it."""
  if a.teacher_checkpoint:
    return os.path.abspath(a.teacher_checkpoint.format(teacher=teacher))
  return f"{{workdir}}/{teacher}"


def _published(dataset: str, rows) -> tuple[tuple[str, str, str, float, str], ...]:
  """The plan's ``published`` entries ``(method, model, teacher ('' alone), top-1,
  source)`` for `rows` ``(method, model, teacher)``, from configs/pairs.py."""
  out = []
  for method, model, teacher in dict.fromkeys(rows):
    found = pairs_lib.expected_top1(dataset, method, model, teacher or None)
    if found is not None:
      out.append((method, model, teacher, float(found[0]), found[1]))
  return tuple(out)


def get_config(arg=None) -> ml_collections.ConfigDict:
  """Suite config of the comparison (arguments: the module docstring)."""
  a = common.parse_arg(arg, dataset="digits", methods="kd+at+afd", pairs="", seeds="0",
                       teacher_checkpoint="", epochs="", teacher_epochs="",
                       num_train_examples="", max_steps="", data_dir="", vmap=False)
  if a.dataset not in DATASETS:
    raise ValueError(f"config argument dataset={a.dataset!r}; accepted: "
                     f"{', '.join(DATASETS)}")
  pairs = parse_pairs(a.pairs or DEFAULT_PAIRS[a.dataset])
  if not pairs:
    raise ValueError("config argument pairs has no <teacher>:<student> item")
  method_names = parse_methods(a.methods)
  c = ml_collections.ConfigDict()
  c.seeds = parse_seeds(a.seeds)
  c.vmap_seeds = a.vmap
  c.runs = ml_collections.ConfigDict()
  order, teachers, alone, published = [], [], set(), []  # (ConfigDict sorts its keys)
  for teacher, student in pairs:
    if not a.teacher_checkpoint and teacher not in teachers:
      c.runs[teacher] = run_config(a, teacher, student, TEACHER)
      order.append(teacher)
      teachers.append(teacher)
    published.append((ALONE, teacher, ""))
    # The student alone depends on the student only: one run for all its pairs.
    for method in ([ALONE] if student not in alone else []) + method_names:
      name = f"{teacher}-{student}/{method}"
      c.runs[name] = run_config(a, teacher, student, method)
      order.append(name)
      published.append((method, student, "" if method == ALONE else teacher))
    alone.add(student)
  c.run_order = tuple(order)
  c.single_seed_runs = tuple(teachers)
  c.published = _published(a.dataset, published)
  return c
