"""Train-step speed of distillation methods on one teacher/student pair.

    python experiments/benchmark.py                      # wrn_40_2 -> wrn_16_2, batch 64
    python experiments/benchmark.py --methods=kd,afd --steps=50 --out=runs/bench.json

For each method: the real jitted train step of `afd_jax.train` (teacher forward, student
forward/backward, method loss, SGD update) on synthetic CIFAR-100-shaped data over all
local devices. Compile time is measured apart. After `--warmup` steps, the methods are
timed in interleaved rounds (`--rounds` rounds of `--steps`/`--rounds` steps each, every
step waited for with `block_until_ready`), so slow drifts of the machine hit every method
alike; the median and interquartile range over all timed steps are reported, with
images/s at the median. Prints a table and writes JSON.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402
import numpy as np  # noqa: E402

from afd_jax import parallel, steps, train_state  # noqa: E402
from configs import common  # noqa: E402

NUM_CLASSES = 100


class MethodBench:
  """One method's compiled train step and its state, ready to be timed."""

  def __init__(self, method: str, args):
    if method == "none":
      config = common.teacher_config("cifar100", None, args.student)
    else:
      config = common.distill_config("cifar100", method, None, args.teacher, args.student)
    config.model.dtype = args.dtype
    nets = train_state.build_networks(config, NUM_CLASSES, steps_per_epoch=782)
    mesh = parallel.make_mesh(None)
    repl, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    self.method, self.batch_size, self.times = method, args.batch, []
    self.state = jax.jit(functools.partial(train_state.create, nets, image_size=32),
                         out_shardings=repl)(jax.random.PRNGKey(0))
    self.teacher_vars = None
    if nets.teacher is not None:
      self.teacher_vars = jax.jit(functools.partial(
          train_state.random_teacher_variables, nets, 32), out_shardings=repl)(
              jax.random.PRNGKey(1))
    rng = np.random.default_rng(0)
    self.batch = jax.device_put(
        {"image": rng.normal(size=(args.batch, 32, 32, 3)).astype(np.float32),
         "label": rng.integers(0, NUM_CLASSES, args.batch).astype(np.int32)}, data)
    step = jax.jit(functools.partial(steps.train_step, nets),
                   in_shardings=(repl, data, repl), out_shardings=(repl, repl),
                   donate_argnums=(0,))
    t0 = time.perf_counter()
    self.compiled = step.lower(self.state, self.batch, self.teacher_vars).compile()
    self.compile_s = time.perf_counter() - t0
    self.run(args.warmup, record=False)

  def run(self, steps: int, record: bool = True) -> None:
    """Runs `steps` train steps, timing each one."""
    for _ in range(steps):
      t0 = time.perf_counter()
      self.state, self.metrics = self.compiled(self.state, self.batch, self.teacher_vars)
      jax.block_until_ready((self.state, self.metrics))
      if record:
        self.times.append(time.perf_counter() - t0)

  def row(self) -> dict:
    ms = np.asarray(self.times) * 1e3
    med = float(np.median(ms))
    return {"method": self.method, "compile_s": self.compile_s, "median_ms": med,
            "p25_ms": float(np.percentile(ms, 25)), "p75_ms": float(np.percentile(ms, 75)),
            "images_per_s": self.batch_size / (med / 1e3), "steps": len(ms),
            "loss": float(self.metrics["loss"])}


def main(argv=None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--teacher", default="wrn_40_2")
  parser.add_argument("--student", default="wrn_16_2")
  parser.add_argument("--methods", default="none,kd,afd,at,fitnet,tat,aft_kd,hmat")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--steps", type=int, default=20, help="timed steps per method")
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--out", default="runs/benchmark.json")
  args = parser.parse_args(argv)
  device = f"{jax.device_count()}x {jax.devices()[0].device_kind}"
  print(f"{args.teacher} -> {args.student}, global batch {args.batch}, {args.dtype}, "
        f"{device}, jax {jax.__version__}", flush=True)
  benches = []
  for method in [m for m in args.methods.split(",") if m]:
    benches.append(MethodBench(method, args))
    print(f"  compiled {method} in {benches[-1].compile_s:.1f} s", flush=True)
  per_round = max(1, args.steps // args.rounds)
  for _ in range(args.rounds):
    for bench in benches:
      bench.run(per_round)
  rows = [b.row() for b in benches]
  kd = next((r for r in rows if r["method"] == "kd"), None)
  print("\n| method | ms/step (median) | IQR ms | images/s | compile s | × KD |")
  print("|---|---|---|---|---|---|")
  for r in rows:
    ratio = f"{r['median_ms'] / kd['median_ms']:.2f}" if kd else "-"
    print(f"| {r['method']} | {r['median_ms']:.1f} | {r['p25_ms']:.1f}–{r['p75_ms']:.1f} | "
          f"{r['images_per_s']:.0f} | {r['compile_s']:.1f} | {ratio} |")
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w", encoding="utf-8") as f:
    json.dump({"teacher": args.teacher, "student": args.student, "batch": args.batch,
               "dtype": args.dtype, "device": device, "host": platform.node(),
               "jax": jax.__version__, "rows": rows}, f, indent=2)
  print(f"wrote {args.out}")
  return rows


if __name__ == "__main__":
  main()
