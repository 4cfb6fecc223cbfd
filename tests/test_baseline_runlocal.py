"""Every CRD-benchmark baseline of issue 9 runs its seconds-long offline smoke version (the
two-stage methods' runs, with their init phase, are in test_two_stage_train.py)."""
import json
import os

import numpy as np
import pytest

from afd_jax import train
from config_loading import load

# ab, ft, fsp: their runlocal runs are in test_two_stage_train.py (with the phase checks).
METHODS = ("sp", "cc", "pkt", "rkd", "nst", "vid", "dkd", "reviewkd", "semckd", "crd")


@pytest.mark.parametrize("method", METHODS)
def test_baseline_runlocal(method, digits_data_dir, tmp_path):
  config = load("cifar100/baselines.py",
                f"method={method},teacher=resnet14,student=resnet8,runlocal")
  config.data.data_dir = digits_data_dir
  result = train.train_and_evaluate(config, str(tmp_path))
  assert result["step"] == config.max_steps == 2
  assert 0 <= result["top1"] <= 100
  with open(os.path.join(tmp_path, "metrics.jsonl"), encoding="utf-8") as f:
    losses = [row["train/loss"] for row in map(json.loads, f) if "train/loss" in row]
  assert losses and np.all(np.isfinite(losses))
