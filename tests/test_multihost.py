"""Real multi-process training: 2 processes on localhost (`jax.distributed`, 4 CPU devices
each) equal 1 process with 8 devices at the same global batch, and resume identically."""
import json
import os
import socket
import subprocess
import sys
import time

import chex
import pytest

from afd_jax import checkpointing, train
from config_loading import tiny_config

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "multihost_worker.py")


def multihost_config(data_dir, max_steps):
  """CE run of resnet8 on digits, global batch 16 in 2 input shards (4 steps per epoch),
  on every device. A small lr: data-parallel runs differ only in the order of float
  reductions, which a large lr amplifies step after step (1 vs 8 devices in one process
  alike: ~1e-3 after 6 steps at lr 0.2)."""
  c = tiny_config(data_dir, num_devices=None, max_steps=max_steps)
  c.optim.lr = 0.002
  c.data.input_shards = 2  # the global batch's data does not depend on the process count
  return c


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _run_two_processes(data_dir, workdir, max_steps):
  port = _free_port()
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
  procs = [subprocess.Popen([sys.executable, WORKER, str(port), "2", str(i), data_dir,
                             workdir, str(max_steps)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outputs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]
  results = sorted(line.split() for out in outputs for line in out.splitlines()
                   if line.startswith("RESULT "))
  assert results == [["RESULT", "0", "8", str(max_steps)], ["RESULT", "1", "8", str(max_steps)]]


def _state(workdir, step):
  return checkpointing.read_numpy(os.path.join(workdir, "checkpoints", str(step), "state"))


def test_two_processes_equal_one_process_and_resume_identically(digits_data_dir, tmp_path):
  t0 = time.time()
  multi = str(tmp_path / "multi")
  _run_two_processes(digits_data_dir, multi, max_steps=3)  # stops mid-epoch 1
  print(f"2-process run: {time.time() - t0:.1f} s")
  assert sorted(os.listdir(os.path.join(multi, "checkpoints"))) == ["3"]
  # Process 0 alone wrote the run's files.
  with open(os.path.join(multi, "result.json")) as f:
    assert json.load(f)["step"] == 3
  assert sorted(r for r in os.listdir(multi) if r.endswith(".json")) == [
      "config.json", "result.json"]
  single = str(tmp_path / "single")
  config = multihost_config(digits_data_dir, 6)
  config.logging.update(dict(checkpoint_every_steps=1, keep_checkpoints=10))
  result = train.train_and_evaluate(config, single)
  assert result["step"] == 6
  chex.assert_trees_all_close(_state(multi, 3), _state(single, 3), rtol=1e-5, atol=1e-5)
  # The 2-process checkpoint resumes (here on 1 process, 8 devices) identically.
  resumed = train.train_and_evaluate(multihost_config(digits_data_dir, 6), multi)
  assert resumed["step"] == 6
  for step in (4, 6):  # across the epoch boundary
    chex.assert_trees_all_close(_state(multi, step), _state(single, step), rtol=1e-5,
                                atol=1e-5)
  assert resumed["top1"] == pytest.approx(result["top1"])
