"""Real multi-process training: 2 processes of ``python -m afd_jax.main`` on localhost (an
explicit launch, 4 CPU devices each) equal 1 process with 8 devices at the same global
batch, and resume identically."""
import json
import os
import socket
import subprocess
import sys
import time

import chex
import pytest

from afd_jax import checkpointing, train
from config_loading import load, run_main
import xla_test_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = ("cifar100/teacher.py", "model=resnet8,runlocal")


def _overrides(data_dir, max_steps):
  """A CE run of resnet8 on digits, global batch 16 in 2 input shards (4 steps per epoch),
  on every device. A small lr: data-parallel runs differ only in the order of float
  reductions, which a large lr amplifies step after step (1 vs 8 devices in one process
  alike: ~1e-3 after 6 steps at lr 0.2)."""
  return {"data.data_dir": data_dir, "max_steps": max_steps, "optim.lr": 0.002,
          "schedule.num_epochs": 2,
          # the global batch's data does not depend on the process count
          "data.input_shards": 2}


def multihost_config(data_dir, max_steps):
  """`_overrides` applied to `CONFIG`, as the command line applies them."""
  c = load(*CONFIG)
  for path, value in _overrides(data_dir, max_steps).items():
    *parents, last = path.split(".")
    node = c
    for key in parents:
      node = node[key]
    node[last] = value
  return c


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _run_two_processes(data_dir, workdir, max_steps):
  """Process 0 is told the launch by flags, process 1 by environment variables."""
  address = f"localhost:{_free_port()}"
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": ("--xla_force_host_platform_device_count=4 " +
                       xla_test_flags.COMPILE_FLAGS)}
  command = [sys.executable, "-m", "afd_jax.main", f"--config=configs/{CONFIG[0]}:{CONFIG[1]}",
             f"--workdir={workdir}"] + [
                 f"--config.{k}={v}" for k, v in _overrides(data_dir, max_steps).items()]
  launches = [(["--coordinator_address", address, "--num_processes=2", "--process_id=0"],
               {}),
              ([], {"JAX_COORDINATOR_ADDRESS": address, "JAX_NUM_PROCESSES": "2",
                    "JAX_PROCESS_ID": "1"})]
  procs = [subprocess.Popen(command + flags, env={**env, **extra}, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for flags, extra in launches]
  outputs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]
  for i, out in enumerate(outputs):
    assert f"jax.distributed: process {i} of 2" in out, out[-3000:]
  # Process 0 alone prints the run's result line.
  assert [f"{workdir}: top1" in out for out in outputs] == [True, False]


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


@pytest.mark.parametrize("flags,env,message", [
    ({"coordinator_address": "localhost:1"}, {},
     "error: --coordinator_address=localhost:1 given without --num_processes and "
     "--process_id; accepted: all three of --coordinator_address"),
    ({"num_processes": 2}, {"JAX_COORDINATOR_ADDRESS": "localhost:1"},
     "error: JAX_COORDINATOR_ADDRESS=localhost:1, --num_processes=2 given without "
     "--process_id; accepted:"),
    ({"num_processes": 2, "process_id": 2}, {"JAX_COORDINATOR_ADDRESS": "localhost:1"},
     "error: --process_id=2 with --num_processes=2; accepted: 0..1"),
])
def test_an_incomplete_explicit_launch_is_one_error_line(flags, env, message, tmp_path,
                                                         capfd, monkeypatch):
  from absl import flags as absl_flags  # pylint: disable=g-import-not-at-top

  from afd_jax import main  # noqa: F401  (defines the flags)  pylint: disable=g-import-not-at-top
  for var in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES",
              "MEGASCALE_COORDINATOR_ADDRESS", "JAX_COORDINATOR_ADDRESS",
              "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    monkeypatch.delenv(var, raising=False)
  for var, value in env.items():
    monkeypatch.setenv(var, value)
  absl_flags.FLAGS(["afd_jax.main"] + [f"--{k}={v}" for k, v in flags.items()])
  code, err = run_main(multihost_config(str(tmp_path), 1), tmp_path / "run", capfd)
  assert code == 1
  assert err.strip().splitlines()[-1].startswith(message), err[-2000:]
  assert "Traceback" not in err and not (tmp_path / "run").exists()
