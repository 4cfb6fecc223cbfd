"""Reliability probe: kill -9 a training run at random instants, rerun it until it
finishes, and compare everything with an uninterrupted run; then the failures around a
run (issue #20), each ending in the same comparison.

    python experiments/reliability_probe.py --kills=8 --seed=0

Each trial starts a fresh workdir of a small digits run (resnet8, 64 images, 4 steps per
epoch, 3 epochs) and sends SIGKILL (no handler can run) at 1-3 instants drawn at random
among: inside a train step, between an evaluation and the best-checkpoint save, and just
before a checkpoint write (the ``AFD_JAX_INJECT`` hook of afd_jax/faults.py makes the
instant exact). After each kill the same command is rerun; the finished run must equal the
uninterrupted one: every checkpoint leaf, the best checkpoint and its step, the eval rows
of metrics.jsonl (each step once, in order), its train rows but for timing fields, and
result.json's metrics.

The cases after the kill trials (``--cases``): ``corrupt`` (4 KiB of random bytes written
into the newest checkpoint's largest data file after a kill: the rerun must move it aside
and resume from the previous one), ``failed_start`` (a typo'd dataset name, then the
corrected command in the same workdir), ``disk_full`` (the workdir on a 1.4 MiB tmpfs, so
that a checkpoint write fails; then the space is freed and the same command rerun; needs
root to mount, else reported as skipped), ``final_save`` (SIGTERM and SIGINT during the
final checkpoint save: exit 143 / 130 after the save) and ``preempt`` (SIGTERM between
two log steps). Each must end with one ``error:`` or ``Preempted:`` line and no
traceback, and the finished run must be identical to the uninterrupted one.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

STEPS = 12  # 3 epochs of 4 steps


def _run(workdir, data_dir, inject="", extra=()):
  args = [sys.executable, "-m", "afd_jax.main",
          "--config=configs/cifar100/teacher.py:model=resnet8,runlocal",
          f"--config.data.data_dir={data_dir}", f"--config.max_steps={STEPS}",
          "--config.schedule.num_epochs=3", "--config.data.num_train_examples=64",
          "--config.logging.log_every_steps=2", f"--workdir={workdir}", *extra]
  env = dict(os.environ, AFD_JAX_INJECT=inject, JAX_PLATFORMS="cpu")
  return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)


def _record(workdir):
  from afd_jax import checkpointing, metric_writer
  ckpt = os.path.join(workdir, "checkpoints")
  step = max(int(s) for s in os.listdir(ckpt) if s.isdigit())
  best = [s for s in os.listdir(os.path.join(workdir, "best")) if s.isdigit()]
  rows = metric_writer.read_metrics(workdir)
  train_steps = [r["step"] for r in rows if "train/loss" in r]
  with open(os.path.join(workdir, "result.json")) as f:
    result = json.load(f)
  return {"state": checkpointing.read_numpy(os.path.join(ckpt, str(step), "state")),
          "best": (best, checkpointing.read_numpy(os.path.join(workdir, "best", best[0],
                                                               "state"))),
          "evals": [(r["step"], r["eval/top1"]) for r in rows if "eval/top1" in r],
          "train_rows": [{k: v for k, v in r.items()
                          if k not in ("time", "train/images_per_sec")}
                         for r in rows if "train/loss" in r],
          "ordered": train_steps == sorted(set(train_steps)),
          "result": {k: v for k, v in result.items() if k != "train_seconds"}}


def _same(a, b) -> list[str]:
  import jax
  problems = []
  leaves = lambda t: jax.tree.leaves(t)  # noqa: E731
  if not all(np.array_equal(x, y) for x, y in zip(leaves(a["state"]), leaves(b["state"]))):
    problems.append("final state differs")
  if a["best"][0] != b["best"][0] or not all(
      np.array_equal(x, y) for x, y in zip(leaves(a["best"][1]), leaves(b["best"][1]))):
    problems.append("best checkpoint differs")
  for key in ("evals", "train_rows", "result"):
    if a[key] != b[key]:
      problems.append(f"{key} differ: {a[key]} vs {b[key]}")
  if not a["ordered"]:
    problems.append("metrics.jsonl steps repeated or out of order")
  return problems


def _one_line(out, prefix: str, says: str = "") -> str | None:
  """None if `out` ended with one line starting with `prefix` (and saying `says`) and
  printed no traceback, else the problem."""
  lines = out.stderr.strip().splitlines()
  if "Traceback" in out.stderr:
    return f"traceback printed (rc {out.returncode})"
  last = lines[-1].lower() if lines else ""
  if not last.startswith(prefix.lower()) or says.lower() not in last:
    return (f"last line {lines[-1:]!r}, not {prefix!r}" + (f"...{says!r}" if says else "")
            + f" (rc {out.returncode})")
  return None


def _scribble(workdir: str) -> str:
  """4 KiB of random bytes into the newest checkpoint's largest data file."""
  ckpt = os.path.join(workdir, "checkpoints")
  step = max(int(s) for s in os.listdir(ckpt) if s.isdigit())
  files = [p for p in glob.glob(os.path.join(ckpt, str(step), "state", "**", "*"),
                                recursive=True) if os.path.isfile(p)]
  path = max(files, key=os.path.getsize)
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 2)
    f.write(os.urandom(4096))
  return path


def _case_corrupt(workdir, data_dir):
  problems, kills = [], 0
  out = _run(workdir, data_dir, "save@12:SIGKILL")
  kills += out.returncode == -9
  path = _scribble(workdir)
  out = _run(workdir, data_dir)
  if out.returncode != 0:
    problems.append(f"rerun failed: {out.stderr[-500:]}")
  elif "does not match its checksum" not in out.stderr:
    problems.append(f"corrupt {path} not reported")
  return problems, kills


def _case_failed_start(workdir, data_dir):
  problems = []
  for extra, says in ((["--config.data.name=digitz"], "Unknown dataset 'digitz'"),
                      (["--config.optim.lrr=0.1"], "unknown field optim.lrr")):
    out = _run(workdir, data_dir, extra=extra)
    problem = _one_line(out, "error:", says)
    problems += [f"{extra[0]}: {problem}"] if problem else []
  if os.path.exists(workdir):
    problems.append(f"the failed starts left {sorted(os.listdir(workdir))}")
  out = _run(workdir, data_dir)
  if out.returncode != 0:
    problems.append(f"the corrected command failed: {out.stderr[-500:]}")
  return problems, 0


def _case_disk_full(workdir, data_dir):
  """The workdir on a tmpfs too small for the run: one error line, no temporary left,
  then (space freed) the same command finishes the run."""
  mount = os.path.join(os.path.dirname(workdir), "tmpfs")
  small = os.path.join(mount, "run")
  os.makedirs(mount, exist_ok=True)
  if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1400k", "tmpfs", mount],
                    capture_output=True).returncode:
    return None, 0
  try:
    problems = []
    out = _run(small, data_dir)
    problem = _one_line(out, "error:", "no space left on device")
    problems += [problem] if problem else []
    left = glob.glob(os.path.join(small, "**", "*orbax-checkpoint-tmp*"), recursive=True)
    problems += [f"temporary files left: {left}"] if left else []
    subprocess.run(["mount", "-o", "remount,size=64m", mount], check=True)
    out = _run(small, data_dir)
    if out.returncode != 0:
      problems.append(f"rerun after freeing space failed: {out.stderr[-500:]}")
    else:  # compared off the tmpfs
      shutil.copytree(small, workdir)
    return problems, 0
  finally:
    subprocess.run(["umount", mount], capture_output=True)


def _case_final_save(sig):
  def case(workdir, data_dir):
    out = _run(workdir, data_dir, f"save@{STEPS}:{sig}")
    code = 128 + getattr(signal, sig)
    problems = [] if out.returncode == code else [f"exit {out.returncode}, not {code}"]
    problem = _one_line(out, "Preempted: stopped by signal")
    problems += [problem] if problem else []
    out = _run(workdir, data_dir)
    problems += [] if out.returncode == 0 else [f"rerun failed: {out.stderr[-500:]}"]
    return problems, 0
  return case


def _case_preempt(workdir, data_dir):
  out = _run(workdir, data_dir, "step@3:SIGTERM")
  problems = [] if out.returncode == 143 else [f"exit {out.returncode}, not 143"]
  out = _run(workdir, data_dir)
  problems += [] if out.returncode == 0 else [f"rerun failed: {out.stderr[-500:]}"]
  return problems, 0


CASES = {"corrupt": _case_corrupt, "failed_start": _case_failed_start,
         "disk_full": _case_disk_full, "final_save_sigterm": _case_final_save("SIGTERM"),
         "final_save_sigint": _case_final_save("SIGINT"), "preempt": _case_preempt}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--kills", type=int, default=8, help="trials (each 1-3 kills)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--data_dir", default=None, help="TFDS dir (digits prepared there)")
  parser.add_argument("--cases", default=",".join(CASES),
                      help=f"comma-separated, of {', '.join(CASES)} (empty: none)")
  args = parser.parse_args(argv)
  rng = random.Random(args.seed)
  tmp = tempfile.mkdtemp(prefix="reliability_")
  data_dir = args.data_dir or os.path.join(tmp, "tfds")
  reference = os.path.join(tmp, "reference")
  out = _run(reference, data_dir)
  assert out.returncode == 0, out.stderr[-3000:]
  ref = _record(reference)
  kills, failures = 0, []
  for trial in range(args.kills):
    points = sorted({(rng.choice(["step", "eval", "save"]), rng.randrange(1, STEPS + 1))
                     for _ in range(rng.randint(1, 3))}, key=lambda p: p[1])
    points = [(w, s - s % 4 or 4) if w == "eval" else (w, s) for w, s in points]
    workdir = os.path.join(tmp, f"trial{trial}")
    for where, step in points:
      out = _run(workdir, data_dir, f"{where}@{step}:SIGKILL")
      kills += out.returncode == -9
    out = _run(workdir, data_dir)
    assert out.returncode == 0, out.stderr[-3000:]
    problems = _same(_record(workdir), ref)
    print(f"trial {trial}: killed at {points}: "
          f"{'identical' if not problems else '; '.join(problems)}", flush=True)
    failures += [(trial, problems)] if problems else []
  print(f"{kills} kill -9s in {args.kills} trials; runs identical to the uninterrupted "
        f"one: {args.kills - len(failures)}/{args.kills}")
  summary = []
  for name in filter(None, args.cases.split(",")):
    workdir = os.path.join(tmp, name, "run")
    problems, case_kills = CASES[name](workdir, data_dir)
    kills += case_kills
    if problems is None:
      summary.append(f"{name}: skipped (cannot mount a small tmpfs here: needs root)")
    else:
      problems += _same(_record(workdir), ref) if os.path.isdir(workdir) else ["no run"]
      summary.append(f"{name}: {'identical' if not problems else 'different: ' + '; '.join(problems)}")
      failures += [(name, problems)] if problems else []
    print(summary[-1], flush=True)
  print("summary:\n  " + "\n  ".join(
      [f"kill trials: {args.kills}, identical: {args.kills - sum(1 for f in failures if isinstance(f[0], int))}"]
      + summary) + f"\n  kill -9s in all: {kills}")
  return 1 if failures else 0


if __name__ == "__main__":
  sys.exit(main())
