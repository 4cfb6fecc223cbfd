"""Heatmap of the links AFD learned: mean attention, teacher layer × student layer.

    python experiments/plot_afd_links.py --workdir=runs/cifar100/wrn_40_2_wrn_16_2_afd
    python experiments/plot_afd_links.py --workdir=runs/quickstart_afd/student_afd --out=links.png

Reads the run's saved config.json, restores its newest checkpoint (student, meta-network,
BN statistics) and its teacher, runs the first eval batch through both (eval mode) and
writes the batch-mean attention ``att[t, s]`` as a PNG (default ``<workdir>/links.png``),
plus the raw matrix as ``.npy`` beside it. This is the paper's link analysis.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from afd_jax import evaluation, train  # noqa: E402
from afd_jax.analysis import heatmap  # noqa: E402


def main(argv=None) -> str:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True, help="an AFD run's workdir")
  parser.add_argument("--out", default=None, help="PNG path (default <workdir>/links.png)")
  parser.add_argument("--data_dir", default=None, help="override config.data.data_dir")
  args = parser.parse_args(argv)
  path = os.path.join(args.workdir, "config.json")
  if not os.path.exists(path):
    sys.exit(f"error: {path} not found; --workdir must be a run written by afd_jax.main")
  with open(path, encoding="utf-8") as f:
    config = ml_collections.ConfigDict(json.load(f))
  if args.data_dir:
    config.data.data_dir = args.data_dir
  run = train.open_run(config, args.workdir, require_checkpoint=True)
  batch = evaluation.Evaluator(run.dataset, run.mesh, config.eval_batch_size).first_batch()
  att = run.probe(run.state, batch, run.teacher_vars).get("attention")
  if att is None:
    sys.exit(f"error: method {config.method.name!r} of this run has no link attention "
             "(only AFD learns teacher-student links)")
  att = np.asarray(att[-1]).mean(axis=0)
  out = args.out or os.path.join(args.workdir, "links.png")
  d = run.nets.distiller
  heatmap.save_links_png(
      out, att, d.teacher_features, d.student_features,
      title=f"{config.teacher.name} → {config.model.name}, step {int(run.state.step)}")
  np.save(os.path.splitext(out)[0] + ".npy", att)
  run.ckpts.close()
  print(f"wrote {out} ({att.shape[0]} teacher × {att.shape[1]} student features)")
  return out


if __name__ == "__main__":
  main()
