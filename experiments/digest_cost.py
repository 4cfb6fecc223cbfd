"""What checkpoint digests cost: seconds to hash (on save) and to verify (on restore) one
checkpoint of the CIFAR-100 AFD wrn_40_2 -> wrn_16_2 train state, beside orbax's save.

    python experiments/digest_cost.py --repeats=5

Builds the state of ``configs/cifar100/afd.py`` (student, AFD meta-network, optimizer
state; the teacher is not in it), saves it ``--repeats`` times with
`checkpointing.RunCheckpoints` into a temporary directory and prints, per checkpoint, its
size, orbax's save time (digest included) and the digest's write and verify times
(median of the repeats).
"""
from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args(argv)
  import jax  # pylint: disable=g-import-not-at-top
  from afd_jax import checkpointing, train_state  # pylint: disable=g-import-not-at-top
  from configs.cifar100 import afd  # pylint: disable=g-import-not-at-top

  config = afd.get_config("teacher=wrn_40_2,student=wrn_16_2")
  nets = train_state.build_networks(config, 100, steps_per_epoch=782)
  state = jax.jit(functools.partial(train_state.create, nets, image_size=32))(
      jax.random.PRNGKey(0))
  jax.block_until_ready(state)
  with tempfile.TemporaryDirectory() as tmp:
    ckpts = checkpointing.RunCheckpoints(tmp, keep=args.repeats + 1)
    saves, writes, verifies = [], [], []
    for step in range(1, args.repeats + 1):
      t = time.perf_counter()
      ckpts.save(step, state, {"epoch": step})
      saves.append(time.perf_counter() - t)
      step_dir = os.path.join(tmp, "checkpoints", str(step))
      t = time.perf_counter()
      checkpointing.write_digest(step_dir)
      writes.append(time.perf_counter() - t)
      t = time.perf_counter()
      checkpointing.verify_digest(step_dir)
      verifies.append(time.perf_counter() - t)
    size = sum(os.path.getsize(os.path.join(r, f))
               for r, _, fs in os.walk(os.path.join(tmp, "checkpoints", "1")) for f in fs)
    ckpts.close()
  leaves = sum(x.size for x in jax.tree.leaves(state))
  print(f"AFD wrn_40_2 -> wrn_16_2 state: {leaves:,} numbers, checkpoint {size / 2**20:.1f} "
        f"MiB; per checkpoint (median of {args.repeats}): save {statistics.median(saves):.3f}"
        f" s (digest included), digest write {statistics.median(writes):.4f} s, verify "
        f"{statistics.median(verifies):.4f} s")


if __name__ == "__main__":
  main()
