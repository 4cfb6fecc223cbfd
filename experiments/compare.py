"""Methods × teacher→student pairs × seeds in one loop, one comparison table and chart.

    python experiments/compare.py --dataset=digits --methods=kd,at,fitnet,sp,afd \
        --seeds=0,1 --epochs=6 --workdir=runs/compare_digits
    python experiments/compare.py --dataset=cifar100 --methods=all --seeds=0,1,2 \
        --pairs=wrn_40_2:wrn_16_2,resnet56:resnet20 \
        --teacher_checkpoint='runs/cifar100/{teacher}' --workdir=runs/compare_cifar100

Each run is an ordinary `afd_jax.train` run in its own workdir: the teacher in
``<workdir>/<teacher>`` (trained once, seed 0, shared by its pairs; not trained when
``--teacher_checkpoint`` names it), the student alone (``none``) and each method in
``<workdir>/<teacher>-<student>/<method>/seed<k>``. A finished run (``result.json`` with
the same config) is skipped, an interrupted one resumes, so a rerun only re-writes
``<workdir>/comparison.md`` (per pair: mean ± std over seeds of the final and best top-1,
the published number beside it from configs/pairs.py), ``comparison.json`` (the raw
numbers) and ``comparison.png`` (`afd_jax.analysis.comparison`). A method that cannot
distil a pair (a PairingError, e.g. unequal channels) or diverges is an ``n/a (reason)``
row; the other runs go on.

Settings come from the config files: ``digits`` is configs/quickstart.py (the teacher
sees all 1,437 training images for 8 epochs, students the first 500 for 15; cosine from
lr 0.2), ``cifar100`` is configs/cifar100/teacher.py for the teacher and the student
alone and configs/cifar100/<method>.py, else baselines.py, for a method. ``--epochs``,
``--teacher_epochs``, ``--num_train_examples`` and ``--max_steps`` shrink them (CIFAR's
step decays scale with ``--epochs``); ``--runlocal`` is every config file's smoke
setting (a few digits images, two steps).
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ml_collections  # noqa: E402

from afd_jax import checkpointing, methods, suite, train  # noqa: E402
from afd_jax import workdir as workdir_lib  # noqa: E402
from afd_jax.analysis import comparison  # noqa: E402
from afd_jax.datasets.availability import DatasetNotAvailableError  # noqa: E402
from configs import pairs as pairs_lib  # noqa: E402
from configs import quickstart  # noqa: E402

DEFAULT_PAIRS = {"digits": f"{quickstart.TEACHER}:{quickstart.STUDENT}",
                 "cifar100": "wrn_40_2:wrn_16_2"}
OUTPUT = "comparison"  # <workdir>/comparison.{md,json,png}


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


def _scale_epochs(c: ml_collections.ConfigDict, epochs: int | None) -> None:
  if epochs is None:
    return
  old = c.schedule.num_epochs
  c.schedule.num_epochs = epochs
  # The step schedule's decays keep their place in the shortened run.
  c.schedule.decay_epochs = tuple(sorted({max(1, round(e * epochs / old))
                                          for e in c.schedule.decay_epochs if e < old}))


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
    _scale_epochs(c, args.teacher_epochs)
    return c
  c.model.name = student
  _scale_epochs(c, args.epochs)
  if args.num_train_examples:
    c.data.num_train_examples = args.num_train_examples
  if method != comparison.BASELINE:
    c.teacher.update(dict(name=teacher, checkpoint=teacher_dir(args, teacher),
                          random_init=False))
  return c


def teacher_dir(args: argparse.Namespace, teacher: str) -> str:
  """The teacher's run: ``--teacher_checkpoint`` with ``{teacher}`` filled, else
  ``<workdir>/<teacher>``."""
  if args.teacher_checkpoint:
    return os.path.abspath(args.teacher_checkpoint.format(teacher=teacher))
  return os.path.join(args.workdir, teacher)


def finished_result(config: ml_collections.ConfigDict, run_dir: str) -> dict | None:
  """The result of a run that `config` would not continue (same config, same
  ``max_steps``), else None: then `train.train_and_evaluate` trains or resumes it."""
  paths = [os.path.join(run_dir, f) for f in (workdir_lib.RESULT_FILE,
                                               workdir_lib.CONFIG_FILE)]
  if not all(os.path.exists(p) for p in paths):
    return None
  with open(paths[1], encoding="utf-8") as f:
    recorded = json.load(f)
  if (recorded.get("max_steps") != config.max_steps or
      workdir_lib.differences(recorded, workdir_lib.resolved(config))):
    return None
  with open(paths[0], encoding="utf-8") as f:
    return json.load(f)


def run_seeds(args: argparse.Namespace, teacher: str, student: str, method: str,
              run_dirs: dict[int, str]) -> dict:
  """Trains (or skips, if finished) `method` for every seed, in ``run_dirs[seed]``.

  Returns:
    the `comparison` RUN record; ``{'model', 'error'}`` if the method cannot distil the
    pair (PairingError) or diverged: the remaining seeds are not tried.
  """
  model = teacher if method == comparison.TEACHER else student
  record = {"model": model, "seeds": [], "top1": [], "best_top1": [], "train_seconds": []}
  for seed, path in run_dirs.items():
    config = build_config(args, teacher, student, method, seed)
    result = finished_result(config, path)
    label = f"{method} {teacher}→{student} seed {seed}"
    if result is not None:
      label += " (finished earlier)"
    else:
      print(f"=== {label} -> {path}", flush=True)
      try:
        result = train.train_and_evaluate(config, path)
      except methods.PairingError as e:
        return {"model": model, "error": f"{type(e).__name__}: {e}"}
      except train.Diverged as e:
        return {"model": model, "error": f"diverged (seed {seed}): {e}"}
    print(suite.format_result(label, result), flush=True)
    record["seeds"].append(seed)
    for key in ("top1", "best_top1", "train_seconds"):
      record[key].append(result.get(key))
    if "teacher_top1" in result:
      record["teacher_top1"] = result["teacher_top1"]
  return record


def imported_teacher(args: argparse.Namespace, teacher: str, runs: dict) -> dict:
  """The teacher row of a ``--teacher_checkpoint`` teacher: its run's result.json, else
  the top-1 the students' runs measured when they loaded it."""
  record = {"model": teacher, "seeds": [0], "top1": [], "best_top1": [None]}
  path = os.path.join(teacher_dir(args, teacher), workdir_lib.RESULT_FILE)
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      result = json.load(f)
    return dict(record, top1=[result["top1"]], best_top1=[result.get("best_top1")])
  measured = [r["teacher_top1"] for r in runs.values() if "teacher_top1" in r]
  if measured:
    return dict(record, top1=measured[:1])
  return {"model": teacher, "error": "no result.json in the teacher's run and no student "
          "measured it"}


def run_pair(args: argparse.Namespace, teacher: str, student: str) -> dict:
  """The teacher (unless ``--teacher_checkpoint``), the student alone and every method
  of one pair; the pair's `comparison` record."""
  teacher_run = None
  if not args.teacher_checkpoint:
    teacher_run = run_seeds(args, teacher, student, comparison.TEACHER,
                            {0: teacher_dir(args, teacher)})
  name, runs = comparison.pair_name(teacher, student), {}
  for method in [comparison.BASELINE, *args.methods]:
    runs[method] = run_seeds(args, teacher, student, method, {
        s: os.path.join(args.workdir, name, method, f"seed{s}") for s in args.seeds})
  teacher_run = teacher_run or imported_teacher(args, teacher, runs)
  return {"teacher": teacher, "student": student,
          "runs": {comparison.TEACHER: teacher_run, **runs}}


def write_outputs(results: dict, workdir: str) -> dict[str, str]:
  """comparison.md / .json / .png in `workdir`; returns {extension: path}."""
  paths = {ext: os.path.join(workdir, f"{OUTPUT}.{ext}") for ext in ("md", "json", "png")}
  with open(paths["md"], "w", encoding="utf-8") as f:
    f.write(comparison.markdown(results, pairs_lib.expected_top1))
  with open(paths["json"], "w", encoding="utf-8") as f:
    json.dump(comparison.summary_json(results, pairs_lib.expected_top1), f, indent=2)
  comparison.save_png(results, paths["png"], pairs_lib.expected_top1)
  return paths


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
  return args


def main(argv=None) -> dict:
  """Runs the comparison; returns the collected results (`comparison`'s format)."""
  args = parse_args(argv)
  start = time.time()
  os.makedirs(args.workdir, exist_ok=True)
  results = {"dataset": args.dataset, "pairs": []}
  for teacher, student in args.pairs:
    results["pairs"].append(run_pair(args, teacher, student))
    paths = write_outputs(results, args.workdir)
  print(comparison.markdown(results, pairs_lib.expected_top1))
  print(f"wrote {', '.join(paths.values())} ({time.time() - start:.0f} s)")
  return results


if __name__ == "__main__":
  try:
    main()
  # A workdir made by another config, a missing teacher, a dataset not found, ...
  except (ValueError, checkpointing.CheckpointError, DatasetNotAvailableError) as e:
    sys.exit(f"error: {e}")
