"""Training curves of a run: loss terms, learning rate, eval top-1 (and the teacher's).

    python experiments/plot_curves.py --workdir=runs/quickstart/student_afd
    python experiments/plot_curves.py --workdir=runs/cifar100/afd --out=afd_curves.png

Reads ``<workdir>/metrics.jsonl`` and writes a PNG (default ``<workdir>/curves.png``).
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from afd_jax.analysis import curves  # noqa: E402


def main(argv=None) -> str:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True, help="a run's workdir")
  parser.add_argument("--out", default=None, help="PNG path (default <workdir>/curves.png)")
  args = parser.parse_args(argv)
  try:
    out = curves.plot_run(args.workdir, args.out)
  except FileNotFoundError as e:
    sys.exit(f"error: {e}")
  print(f"wrote {out}")
  return out


if __name__ == "__main__":
  main()
