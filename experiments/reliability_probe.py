"""Reliability probe: kill -9 a training run at random instants, rerun it until it
finishes, and compare everything with an uninterrupted run.

    python experiments/reliability_probe.py --kills=8 --seed=0

Each trial starts a fresh workdir of a small digits run (resnet8, 64 images, 4 steps per
epoch, 3 epochs) and sends SIGKILL (no handler can run) at 1-3 instants drawn at random
among: inside a train step, between an evaluation and the best-checkpoint save, and just
before a checkpoint write (the ``AFD_JAX_INJECT`` hook of afd_jax/train.py makes the
instant exact). After each kill the same command is rerun; the finished run must equal the
uninterrupted one: every checkpoint leaf, the best checkpoint and its step, the eval rows
of metrics.jsonl (each step once, in order) and result.json's metrics.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

STEPS = 12  # 3 epochs of 4 steps


def _run(workdir, data_dir, inject=""):
  args = [sys.executable, "-m", "afd_jax.main",
          "--config=configs/cifar100/teacher.py:model=resnet8,runlocal",
          f"--config.data.data_dir={data_dir}", f"--config.max_steps={STEPS}",
          "--config.schedule.num_epochs=3", "--config.data.num_train_examples=64",
          "--config.logging.log_every_steps=2", f"--workdir={workdir}"]
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
  for key in ("evals", "result"):
    if a[key] != b[key]:
      problems.append(f"{key} differ: {a[key]} vs {b[key]}")
  if not a["ordered"]:
    problems.append("metrics.jsonl steps repeated or out of order")
  return problems


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--kills", type=int, default=8, help="trials (each 1-3 kills)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--data_dir", default=None, help="TFDS dir (digits prepared there)")
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
  return 1 if failures else 0


if __name__ == "__main__":
  sys.exit(main())
