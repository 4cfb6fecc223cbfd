"""PyTorch interop: afd_jax models equal the PyTorch originals, checkpoints round-trip.

The PyTorch side is `tests/torch_models.py` (the tests' own definitions with the zoos'
state_dict keys). Every classifier of the zoo, at every depth, gives the logits and the
sown features of its PyTorch definition on random weights and random BatchNorm running
statistics (eval mode), so an import and an export that err alike cannot hide a mistake.
"""

import jax
import numpy as np
import pytest
import torch
from torch import nn

from afd_jax import checkpointing, models
from afd_jax.interop import torch as interop
import torch_models


# Every image classifier of the zoo, each against its PyTorch definition (the segmentation
# models and the DeepLab backbones as classifiers, which have no PyTorch original:
# test_deeplab.py).
CLASSIFIERS = tuple(n for n in models.MODEL_NAMES
                    if models.task_of(n) == "classification"
                    and not n.endswith("_classifier"))
NUM_CLASSES = 10
# Batch-2 forwards of small models: more threads only contend with the other xdist worker.
torch.set_num_threads(1)


def random_torch_model(name, seed=0, **kwargs):
  """A torch test model with random weights and random, well-scaled BN statistics.

  Running statistics start as the batch statistics of a calibration batch (so the
  activations stay moderate through 50 layers), then are perturbed at random; the
  classifier is rescaled to logits of std ~2 on that batch, the range where an absolute
  1e-4 tolerance is a float32 statement (the residual stream of a deep random ResNet
  reaches hundreds).
  """
  torch.manual_seed(seed)
  model = torch_models.build(name, NUM_CLASSES, **kwargs)
  bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, nn.Conv2d):
        fan_in = m.weight[0].numel()
        m.weight.normal_(0, (2.0 / fan_in) ** 0.5)
        if m.bias is not None:
          m.bias.normal_(0, 0.1)
    for m in bns:
      m.momentum = None  # cumulative average: one batch sets the running stats
      m.reset_running_stats()
    model.train()
    calibration = torch.randn(4, 3, 32, 32)
    model(calibration)
    for m in bns:
      m.momentum = 0.1
      m.running_mean += 0.2 * m.running_var.sqrt() * torch.randn_like(m.running_mean)
      m.running_var *= torch.empty_like(m.running_var).uniform_(0.5, 2.0)
      m.weight.uniform_(0.5, 1.5)
      m.bias.normal_(0, 0.2)
      m.num_batches_tracked.fill_(7)
    model.eval()
    classifier = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    classifier.weight *= 2.0 / model(calibration).std()
  return model


def flax_forward(name, variables, x_nchw, **kwargs):
  """Eval-mode (logits, features NCHW) of the afd_jax model."""
  model = models.get_model(name, NUM_CLASSES, **kwargs)
  x = np.transpose(x_nchw.numpy(), (0, 2, 3, 1))
  logits, state = jax.jit(lambda v, x: model.apply(v, x, train=False,
                                                    mutable=["intermediates"]))(variables, x)
  feats = models.feature_list(state["intermediates"])
  return np.asarray(logits), {
      k: np.transpose(np.asarray(v), (0, 3, 1, 2)) if v.ndim == 4 else np.asarray(v)
      for k, v in feats.items()}


def numpy_state(model):
  return {k: v.numpy() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_eval_logits_and_features_equal_pytorch(name):
  tmodel = random_torch_model(name)
  x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
  with torch.no_grad():
    t_logits = tmodel(x).numpy()
  t_feats = {k: v.numpy() for k, v in tmodel.features.items()}
  state = numpy_state(tmodel)

  variables = interop.state_dict_to_variables(name, state, NUM_CLASSES)
  logits, feats = flax_forward(name, variables, x)

  assert np.std(t_logits) > 0.1  # not a trivially small output
  assert np.max(np.abs(logits - t_logits)) <= 1e-4
  assert sorted(feats) == sorted(t_feats)
  for k in feats:
    # float32 rounding grows with the activations' magnitude (up to ~30 in MobileNetV2).
    scale = max(1.0, float(np.max(np.abs(t_feats[k]))))
    assert np.max(np.abs(feats[k] - t_feats[k])) <= 1e-4 * scale, k

  # Export gives back the PyTorch checkpoint exactly, and PyTorch loads it strictly.
  exported = interop.variables_to_state_dict(name, variables, num_batches_tracked=7)
  assert sorted(exported) == sorted(state)
  for k in state:
    np.testing.assert_array_equal(exported[k], state[k], err_msg=k)
  fresh = torch_models.build(name, NUM_CLASSES)
  fresh.load_state_dict({k: torch.tensor(v) for k, v in exported.items()}, strict=True)
  with torch.no_grad():
    np.testing.assert_array_equal(fresh.eval()(x).numpy(), t_logits)


# The segmentation models' layouts are checked against tests/torch_deeplab.py in
# test_deeplab.py.
@pytest.mark.parametrize("name", CLASSIFIERS)
def test_every_model_has_the_original_layout_and_round_trips(name):
  abstract = interop.abstract_variables(name, NUM_CLASSES)
  # Distinct values in every leaf (exact in float32 below 2^24), so any transpose shows.
  variables = jax.tree.map(
      lambda s: np.arange(np.prod(s.shape), dtype=np.float32).reshape(s.shape), abstract)
  exported = interop.variables_to_state_dict(name, variables)
  with torch.device("meta"):  # shapes only: no weights allocated or initialised
    tmodel = torch_models.build(name, NUM_CLASSES)
  want = {k: tuple(v.shape) for k, v in tmodel.state_dict().items()}
  assert {k: v.shape for k, v in exported.items()} == want
  back = interop.state_dict_to_variables(name, exported, NUM_CLASSES)
  assert jax.tree.structure(back) == jax.tree.structure(variables)
  for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(variables)):
    np.testing.assert_array_equal(np.asarray(a), b)


@pytest.mark.parametrize("layout", ["bare", "model", "state_dict", "net"])
@pytest.mark.parametrize("prefix", ["", "module."])
def test_pth_layouts(tmp_path, layout, prefix):
  state = torch_models.build("resnet8", NUM_CLASSES).state_dict()
  sd = {prefix + k: v for k, v in state.items()}
  obj = sd if layout == "bare" else {layout: sd, "epoch": 240, "best_acc": torch.tensor(70.)}
  path = tmp_path / "ckpt.pth"
  torch.save(obj, path)
  loaded = interop.load_state_dict(str(path))
  assert sorted(loaded) == sorted(state)
  for k, v in state.items():
    np.testing.assert_array_equal(loaded[k], v.numpy())


def _problem(state, name="resnet8"):
  with pytest.raises(interop.TorchCheckpointError) as e:
    interop.state_dict_to_variables(name, state, NUM_CLASSES)
  return str(e.value)


def test_mismatched_keys_are_one_clear_error():
  state = numpy_state(torch_models.build("resnet8", NUM_CLASSES))
  missing = dict(state)
  del missing["layer2.0.downsample.0.weight"]
  msg = _problem(missing)
  assert "missing key 'layer2.0.downsample.0.weight'" in msg and "(32, 16, 1, 1)" in msg
  assert "'resnet8'" in msg

  extra = dict(state, **{"layer4.0.conv1.weight": np.zeros((3, 3, 3, 3), np.float32)})
  msg = _problem(extra)
  assert "unexpected key 'layer4.0.conv1.weight'" in msg and "(3, 3, 3, 3)" in msg

  msg = _problem(numpy_state(torch_models.build("resnet8", 100)))
  assert "'fc.weight' has shape (100, 64)" in msg and "expects (10, 64)" in msg
  assert "'resnet8'" in msg

  msg = _problem(state, name="resnet14")  # a deeper net: its extra blocks are missing
  assert "missing key 'layer1.1.conv1.weight'" in msg


def test_import_then_export_files(tmp_path):
  tmodel = random_torch_model("wrn_16_2")
  ckpt = tmp_path / "ckpt_epoch_240.pth"
  torch.save({"model": {"module." + k: v for k, v in tmodel.state_dict().items()},
              "epoch": 240}, ckpt)
  workdir = tmp_path / "teacher"
  interop.import_teacher("wrn_16_2", str(ckpt), str(workdir), NUM_CLASSES)

  # Distillation runs read it as any teacher run.
  abstract = interop.abstract_variables("wrn_16_2", NUM_CLASSES)
  variables = checkpointing.load_teacher_variables(str(workdir), abstract, "wrn_16_2")
  x = torch.randn(2, 3, 32, 32)
  with torch.no_grad():
    t_logits = tmodel(x).numpy()
  logits, _ = flax_forward("wrn_16_2", variables, x)
  assert np.max(np.abs(logits - t_logits)) <= 1e-4
  with pytest.raises(checkpointing.CheckpointError, match="refusing to overwrite"):
    interop.import_teacher("wrn_16_2", str(ckpt), str(workdir), NUM_CLASSES)

  out = tmp_path / "student.pth"
  interop.export_run(str(workdir), "wrn_16_2", str(out), NUM_CLASSES)
  fresh = torch_models.build("wrn_16_2", NUM_CLASSES)
  fresh.load_state_dict(torch.load(out), strict=True)
  for k, v in tmodel.state_dict().items():
    if not k.endswith("num_batches_tracked"):
      np.testing.assert_array_equal(fresh.state_dict()[k].numpy(), v.numpy())


# That the package imports torch only inside the .pth readers and writers is checked in a
# fresh interpreter with torch blocked, together with the benchmark run there
# (test_speed.py::test_training_and_the_benchmark_need_neither_tensorflow_nor_torch).
