"""The importer's and exporter's rough edges: which failures suggest --allow_pickle, the
exporter's one-line errors, BatchNorm counters through import → export, and the AFD
release's ``wrn28x1`` / ``resnet101`` checkpoints."""
import argparse
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch

import torch_models
from afd_jax import checkpointing
from afd_jax import models
from afd_jax.interop import torch as interop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES = 10
torch.set_num_threads(1)


def test_allow_pickle_is_suggested_only_for_the_weights_only_guard(tmp_path):
  good = tmp_path / "good.pth"
  torch.save(torch_models.build("resnet8", NUM_CLASSES).state_dict(), good)
  data = good.read_bytes()
  (tmp_path / "empty.pth").write_bytes(b"")
  (tmp_path / "truncated.pth").write_bytes(data[:len(data) // 2])
  for name in ("missing.pth", "empty.pth", "truncated.pth"):
    with pytest.raises(interop.TorchCheckpointError) as err:
      interop.load_state_dict(str(tmp_path / name))
    assert name in str(err.value)
    assert "--allow_pickle" not in str(err.value), str(err.value)
  # RepDistiller-style: the state_dict beside a pickled argparse Namespace
  pickled = tmp_path / "pickled.pth"
  torch.save({"model": torch.load(good), "opt": argparse.Namespace(lr=0.05)}, pickled)
  with pytest.raises(interop.TorchCheckpointError) as err:
    interop.load_state_dict(str(pickled))
  assert "--allow_pickle" in str(err.value) and "Namespace" in str(err.value)
  assert sorted(interop.load_state_dict(str(pickled), allow_pickle=True)) == sorted(
      torch.load(good))


def test_export_errors_are_one_error_line(tmp_path):
  teacher = tmp_path / "resnet8_run"
  abstract = interop.abstract_variables("resnet8", NUM_CLASSES)
  checkpointing.write_teacher_checkpoint(
      str(teacher), jax.tree.map(lambda s: np.zeros(s.shape, np.float32), abstract),
      {"model": "resnet8"})
  cases = {"missing": [f"--workdir={tmp_path / 'nothing'}", "--model=resnet8"],
           "wrong_model": [f"--workdir={teacher}", "--model=resnet14"]}
  procs = {k: subprocess.Popen(
      [sys.executable, "-m", "afd_jax.export_torch", *argv, f"--output={tmp_path / k}.pth",
       f"--num_classes={NUM_CLASSES}"], cwd=ROOT, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
           for k, argv in cases.items()}
  for name, proc in procs.items():
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0, name
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: "), err
    assert ("no teacher checkpoint" if name == "missing" else "resnet14") in last, last
    assert not os.path.exists(tmp_path / f"{name}.pth")


def test_num_batches_tracked_survives_import_then_export(tmp_path):
  tmodel = torch_models.build("resnet8", NUM_CLASSES)
  bns = [m for m in tmodel.modules() if isinstance(m, torch.nn.BatchNorm2d)]
  for i, m in enumerate(bns):
    m.num_batches_tracked.fill_(1000 + 7 * i)  # a different count per BN
  state = tmodel.state_dict()
  torch.save({"model": state}, tmp_path / "teacher.pth")
  interop.import_teacher("resnet8", str(tmp_path / "teacher.pth"), str(tmp_path / "run"),
                         NUM_CLASSES)
  interop.export_run(str(tmp_path / "run"), "resnet8", str(tmp_path / "out.pth"),
                     NUM_CLASSES)
  exported = torch.load(tmp_path / "out.pth")
  counters = [k for k in state if k.endswith("num_batches_tracked")]
  assert len(counters) == len(bns)
  for k in counters:
    assert exported[k].dtype == torch.int64
    assert int(exported[k]) == int(state[k]), k


def random_state(model):
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.normal_(0, 0.1)
        m.running_var.uniform_(0.5, 1.5)
        m.weight.uniform_(0.5, 1.5)
        m.bias.normal_(0, 0.1)
  return model.eval()


def test_afd_release_wrn28x1_imports_with_its_logits(tmp_path):
  # The AFD release's wrn28x1 (models/wrn.py), saved as its trained/ file: a bare state_dict
  tmodel = random_state(torch_models.WideResNet(28, 1, NUM_CLASSES))
  torch.save(tmodel.state_dict(), tmp_path / "model.pth")
  variables = interop.import_teacher("wrn_28_1", str(tmp_path / "model.pth"),
                                     str(tmp_path / "run"), NUM_CLASSES)
  x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
  with torch.no_grad():
    want = tmodel(x).numpy()
  logits = models.get_model("wrn_28_1", NUM_CLASSES).apply(
      variables, np.transpose(x.numpy(), (0, 2, 3, 1)), train=False)
  np.testing.assert_allclose(np.asarray(logits), want, atol=1e-4, rtol=1e-4)


def test_afd_release_resnet101_imports_and_exports_its_layout():
  # The AFD release's resnet101 (models/resnetv2.py): Bottlenecks [3, 4, 23, 3], CIFAR stem,
  # ``shortcut`` projections, ``linear`` classifier.
  with torch.device("meta"):
    tmodel = torch_models.ResNet(torch_models.Bottle, (3, 4, 23, 3), (64, 128, 256, 512), 64,
                                 NUM_CLASSES, shortcut="shortcut", fc="linear")
  want = {k: tuple(v.shape) for k, v in tmodel.state_dict().items()}
  rng = np.random.default_rng(0)
  state = {k: (np.asarray(3, np.int64) if k.endswith("num_batches_tracked")
               else rng.standard_normal(s).astype(np.float32)) for k, s in want.items()}
  variables = interop.state_dict_to_variables("resnet101", state, NUM_CLASSES)
  back = interop.variables_to_state_dict("resnet101", variables, num_batches_tracked=3)
  assert sorted(back) == sorted(state)
  for k, v in state.items():
    np.testing.assert_array_equal(back[k], v, err_msg=k)
