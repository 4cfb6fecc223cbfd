"""Methods × teacher→student pairs × seeds as one plan, one comparison table and chart.

    python -m afd_jax.compare --dataset=digits --methods=all --seeds=0,1,2 --vmap \
        --workdir=runs/compare_digits
    python -m afd_jax.compare --dataset=cifar100 --methods=all --seeds=0,1,2 \
        --pairs=wrn_40_2:wrn_16_2,resnet56:resnet20 \
        --teacher_checkpoint='runs/cifar100/{teacher}' --workdir=runs/compare_cifar100

A plan (`afd_jax.plan`) of ordinary runs: the teacher in ``<workdir>/<teacher>`` (trained
once, seed 0, shared by its pairs; not trained when ``--teacher_checkpoint`` names it),
the student alone (``none``) and each method in
``<workdir>/<teacher>-<student>/<method>[/seed_<k>]``. Every run is validated before any
trains; a finished run is skipped, an interrupted one resumes, so a rerun only rewrites
``<workdir>/results.{md,json,png}`` (per pair: mean ± std over seeds of the final and best
top-1, Δ vs the student alone, the published number from configs/pairs.py, the bar
chart). A method that cannot distil a pair (a PairingError, e.g. unequal channels) or
diverges is an ``n/a (reason)`` row; the other runs go on.

Settings come from the config files: ``digits`` is configs/quickstart.py (the teacher
sees all 1,437 training images for 10 epochs, students the first 150 for 40; cosine from
lr 0.1), ``cifar100`` is configs/cifar100/teacher.py for the teacher and the student
alone and configs/cifar100/<method>.py, else baselines.py, for a method. ``--epochs``,
``--teacher_epochs``, ``--num_train_examples`` and ``--max_steps`` shrink them (CIFAR's
step decays keep their relative place in the shortened run); ``--runlocal`` is every
config file's smoke setting (a few digits images, two steps). ``--vmap`` trains the seeds
of each row as one vmapped program.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
import time

import ml_collections

# The config files (``configs/``) live beside the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from afd_jax import checkpointing, methods, plan as plan_lib, plan_results  # noqa: E402
from afd_jax.analysis import comparison  # noqa: E402
from afd_jax.datasets.availability import DatasetNotAvailableError  # noqa: E402
from configs import pairs as pairs_lib  # noqa: E402
from configs import quickstart  # noqa: E402

DEFAULT_PAIRS = {"digits": f"{quickstart.TEACHER}:{quickstart.STUDENT}",
                 "cifar100": "wrn_40_2:wrn_16_2"}


def parse_pairs(text: str) -> list[tuple[str, str]]:
  """``'wrn_40_2:wrn_16_2,resnet56:resnet20'`` -> [(teacher, student), ...]."""
  out = []
  for item in filter(None, text.split(",")):
    teacher, sep, student = item.partition(":")
    if not (sep and teacher and student):
      raise ValueError(f"--pairs item {item!r} is not <teacher>:<student>")
    out.append((teacher, student))
  return out


def parse_methods(text: str) -> list[str]:
  """Method names (``'all'``: every registered method that distils), without ``none``
  (the student alone is always a row)."""
  distilling = [m for m in methods.method_names() if methods.needs_teacher(m)]
  names = distilling if text == "all" else [m for m in filter(None, text.split(","))]
  unknown = [m for m in names if m not in methods.method_names()]
  if unknown:
    raise ValueError(f"unknown methods {unknown}; registered: "
                     f"{', '.join(methods.method_names())}, or 'all'")
  return list(dict.fromkeys(m for m in names if m != comparison.BASELINE))


def _config_module(dataset: str, name: str):
  return importlib.import_module(f"configs.{dataset}.{name}")


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


def build_config(args: argparse.Namespace, teacher: str, student: str, method: str,
                 seed: int) -> ml_collections.ConfigDict:
  """The config of one run, from the dataset's config files.

  Args:
    args: the parsed flags.
    teacher, student: the pair.
    method: ``'teacher'`` (the teacher run), ``'none'`` (the student alone) or a method.
    seed: ``config.seed``.
  """
  runlocal = ",runlocal" if args.runlocal else ""
  if args.dataset == "digits":  # the quickstart suite's runs: teacher, student, student_<m>
    names = {comparison.TEACHER: "teacher", comparison.BASELINE: "student"}
    suite_methods = "" if method in names else method
    runs = quickstart.get_config(f"methods={suite_methods}{runlocal}").runs
    c = runs[names.get(method, f"student_{method}")]
  elif method == comparison.TEACHER:
    c = _config_module(args.dataset, "teacher").get_config(f"model={teacher}{runlocal}")
  elif method == comparison.BASELINE:
    c = _config_module(args.dataset, "teacher").get_config(f"model={student}{runlocal}")
  else:
    own = importlib.util.find_spec(f"configs.{args.dataset}.{method}") is not None
    c = _config_module(args.dataset, method if own else "baselines").get_config(
        f"method={method},teacher={teacher},student={student}{runlocal}")
  c.seed = seed
  if args.data_dir:
    c.data.data_dir = args.data_dir
  if args.max_steps:
    c.max_steps = args.max_steps
  if method == comparison.TEACHER:
    c.model.name = teacher
    scale_epochs(c, args.teacher_epochs)
    return c
  c.model.name = student
  scale_epochs(c, args.epochs)
  if args.num_train_examples:
    c.data.num_train_examples = args.num_train_examples
  if method != comparison.BASELINE:
    c.teacher.update(dict(name=teacher, checkpoint=teacher_dir(args, teacher),
                          random_init=False))
  return c


def teacher_dir(args: argparse.Namespace, teacher: str) -> str:
  """The teacher's run: ``--teacher_checkpoint`` with ``{teacher}`` filled, else
  ``{workdir}/<teacher>`` (the plan's run of it)."""
  if args.teacher_checkpoint:
    return os.path.abspath(args.teacher_checkpoint.format(teacher=teacher))
  return f"{plan_lib.TEACHER_REF}{teacher}"


def build_plan(args: argparse.Namespace) -> plan_lib.Plan:
  """The comparison's runs: per pair the teacher (unless imported), the student alone and
  every method, over the seeds."""
  runs, teachers = [], {}
  for teacher, student in args.pairs:
    pair = (teacher, student)
    if not args.teacher_checkpoint:
      if teacher not in teachers:
        c = build_config(args, teacher, student, comparison.TEACHER, 0)
        teachers[teacher] = plan_lib.PlannedRun(teacher, c, comparison.TEACHER, (), teacher)
        runs.append(teachers[teacher])
      teachers[teacher].pairs += (pair,)
    for method in [comparison.BASELINE, *args.methods]:
      base = f"{comparison.pair_name(teacher, student)}/{method}"
      needs = (teacher,) if method != comparison.BASELINE and not args.teacher_checkpoint \
          else ()
      for seed in args.seeds:
        c = build_config(args, teacher, student, method, seed)
        name = f"{base}/seed_{seed}" if len(args.seeds) > 1 else base
        runs.append(plan_lib.PlannedRun(name, c, method, (pair,), base, needs=needs))
  return plan_lib.Plan(runs, args.dataset, args.vmap, pairs_lib.expected_top1)


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m afd_jax.compare",
                                   description=__doc__.splitlines()[0])
  parser.add_argument("--dataset", choices=("digits", "cifar100"), default="digits")
  parser.add_argument("--methods", default="kd,at,afd",
                      help="comma-separated method names, or 'all' (every method that "
                      "distils); the student alone and the teacher are always rows")
  parser.add_argument("--pairs", default=None,
                      help="<teacher>:<student>,... (default: resnet20:resnet8 on digits, "
                      "wrn_40_2:wrn_16_2 on cifar100)")
  parser.add_argument("--seeds", default="0", help="comma-separated seeds, e.g. 0,1,2")
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--teacher_checkpoint", default="",
                      help="teacher run pattern with {teacher}, e.g. "
                      "'runs/cifar100/{teacher}' (default: train it in <workdir>/<teacher>)")
  parser.add_argument("--epochs", type=int, default=None,
                      help="students' epochs (default: the config's)")
  parser.add_argument("--teacher_epochs", type=int, default=None,
                      help="the teacher's epochs (default: the config's)")
  parser.add_argument("--num_train_examples", type=int, default=None,
                      help="students' training images (default: the config's)")
  parser.add_argument("--max_steps", type=int, default=None, help="stop every run early")
  parser.add_argument("--data_dir", default=None, help="TFDS data_dir")
  parser.add_argument("--runlocal", action="store_true",
                      help="the config files' seconds-long smoke setting")
  parser.add_argument("--vmap", action="store_true",
                      help="each row's seeds as one vmapped program (device pipeline)")
  args = parser.parse_args(argv)
  args.workdir = os.path.abspath(os.path.expanduser(args.workdir))
  try:
    args.pairs = parse_pairs(args.pairs or DEFAULT_PAIRS[args.dataset])
    args.methods = parse_methods(args.methods)
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
  except ValueError as e:
    parser.error(str(e))
  if not (args.pairs and args.seeds):
    parser.error("--pairs and --seeds need at least one entry each")
  if len(set(args.seeds)) != len(args.seeds):
    parser.error(f"--seeds={args.seeds} repeats a seed; accepted: distinct integers")
  return args


def main(argv=None) -> dict:
  """Runs the comparison; returns `plan.run_plan`'s ``{'runs', 'table'}``."""
  args = parse_args(argv)
  start = time.time()
  out = plan_lib.run_plan(build_plan(args), args.workdir)
  print(f"wrote {os.path.join(args.workdir, plan_results.RESULTS)}.{{md,json,png}} "
        f"({time.time() - start:.0f} s)", flush=True)
  return out


if __name__ == "__main__":
  try:
    main()
  # A workdir made by another config, a missing teacher, a dataset not found, ...
  except (ValueError, checkpointing.CheckpointError, DatasetNotAvailableError) as e:
    sys.exit(f"error: {e}")
