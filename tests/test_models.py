"""Specification tests for the model zoo: parameter counts, sown features, forward passes.

Shape-level checks use `jax.eval_shape`, so they trace but never compute.
"""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from afd_jax.models import MODEL_NAMES, feature_list, get_model, task_of
from afd_jax.models.shufflenet import channel_shuffle


# Parameter counts (params collection: weights, biases, BN scale/bias) of the PyTorch
# originals: RepDistiller's zoo with 100 classes, torchvision's ResNets with 1000
# (wrn_28_1, resnet101: counted on tests/torch_models.py, which gives the others exactly).
PYTORCH_PARAM_COUNTS = {
    "resnet20": (100, 278_324),
    "resnet56": (100, 861_620),
    "resnet110": (100, 1_736_564),
    "resnet8x4": (100, 1_233_540),
    "resnet32x4": (100, 7_433_860),
    "wrn_16_2": (100, 703_284),
    "wrn_28_1": (100, 375_348),
    "wrn_28_2": (100, 1_479_220),
    "wrn_40_2": (100, 2_255_156),
    "vgg8": (100, 3_965_028),
    "vgg13": (100, 9_462_180),
    "MobileNetV2": (100, 812_836),
    "ShuffleV1": (100, 949_258),
    "ShuffleV2": (100, 1_355_528),
    "ResNet50": (100, 23_705_252),
    "resnet18": (100, 11_220_132),
    "resnet34": (100, 21_328_292),
    "resnet101": (100, 42_697_380),
    "resnet18_imagenet": (1000, 11_689_512),
    "resnet34_imagenet": (1000, 21_797_672),
    "resnet50_imagenet": (1000, 25_557_032),
}

# Blocks per stage, whether a stem is sown, and whether the net is pre-activation (WRN).
_CIFAR_RESNET = {f"resnet{d}": ((d - 2) // 6,) * 3 for d in (8, 14, 20, 32, 44, 56, 110)}
_WRN = {f"wrn_{d}_{k}": ((d - 4) // 6,) * 3
        for d, k in ((16, 1), (16, 2), (28, 1), (28, 2), (40, 1), (40, 2))}
_VGG = {"vgg8": (1, 1, 1, 1, 1), "vgg11": (1, 1, 2, 2, 2), "vgg13": (2, 2, 2, 2, 2),
        "vgg16": (2, 2, 3, 3, 3), "vgg19": (2, 2, 4, 4, 4)}
BLOCKS_PER_STAGE = {
    **_CIFAR_RESNET, **_WRN, **_VGG,
    "resnet8x4": (1, 1, 1), "resnet32x4": (5, 5, 5),
    "MobileNetV2": (3, 3, 7, 4), "ShuffleV1": (4, 8, 4), "ShuffleV2": (4, 8, 4),
    "ResNet50": (3, 4, 6, 3), "resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3),
    "resnet101": (3, 4, 23, 3),
    "resnet18_imagenet": (2, 2, 2, 2), "resnet34_imagenet": (3, 4, 6, 3),
    "resnet50_imagenet": (3, 4, 6, 3),
}


# Image classifiers; the segmentation models and the DeepLab backbones as classifiers
# (``*_classifier``) are specified in test_deeplab.py.
CLASSIFIER_NAMES = tuple(n for n in MODEL_NAMES
                         if task_of(n) == "classification"
                         and not n.endswith("_classifier"))


def _input_size(name):
  return 64 if name.endswith("_imagenet") else 32


def _expected_feature_names(name):
  """Feature names in depth order, written out from the documented convention."""
  pre_activation = name in _WRN
  names = [] if name in _VGG else ["stem"]
  for i, num_blocks in enumerate(BLOCKS_PER_STAGE[name], 1):
    for j in range(1, num_blocks + 1):
      if pre_activation:
        names.append(f"stage{i}.block{j}.act_in")
      names.append(f"stage{i}.block{j}")
    names += [f"stage{i}.preact"] + ([f"stage{i}.bn_preact"] if pre_activation else []) + [
        f"stage{i}.out"]
  if pre_activation:
    names.append("final.act")
  return names + ["pooled"]


@functools.lru_cache(maxsize=None)
def _abstract_train_apply(name, dtype=jnp.float32):
  """Cached eval_shape of init + train-mode apply.

  Returns:
    ((logits, {'batch_stats', 'intermediates'}), params), all as ShapeDtypeStructs.
  """
  model = get_model(name, 10, dtype=dtype)
  size = _input_size(name)
  x = jnp.zeros((2, size, size, 3), jnp.float32)

  def init_and_apply(x):
    variables = model.init(jax.random.key(0), x, train=False)
    out = model.apply(variables, x, train=True,
                      mutable=["batch_stats", "intermediates"])
    return out, variables["params"]

  return jax.eval_shape(init_and_apply, x)


def _param_count(params):
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))


def test_registry_covers_requested_names():
  assert set(CLASSIFIER_NAMES) == set(BLOCKS_PER_STAGE)
  assert len(CLASSIFIER_NAMES) == 30


@pytest.mark.parametrize("name", sorted(PYTORCH_PARAM_COUNTS))
def test_param_count_matches_pytorch(name):
  num_classes, expected = PYTORCH_PARAM_COUNTS[name]
  model = get_model(name, num_classes)
  size = _input_size(name)
  variables = jax.eval_shape(
      lambda x: model.init(jax.random.key(0), x, train=False),
      jnp.zeros((1, size, size, 3)))
  assert _param_count(variables["params"]) == expected


@pytest.mark.parametrize("name", CLASSIFIER_NAMES)
def test_logits_and_feature_names(name):
  (logits, state), _ = _abstract_train_apply(name)
  chex.assert_shape(logits, (2, 10))
  assert logits.dtype == jnp.float32
  assert "batch_stats" in state
  feats = feature_list(state["intermediates"])
  assert list(feats) == _expected_feature_names(name)
  for i in range(1, len(BLOCKS_PER_STAGE[name]) + 1):
    last = f"stage{i}.block{BLOCKS_PER_STAGE[name][i - 1]}"
    chex.assert_equal_shape([feats[f"stage{i}.preact"], feats[f"stage{i}.out"]])
    assert feats[f"stage{i}.out"].ndim == 4
    if name not in _WRN:
      chex.assert_equal_shape([feats[last], feats[f"stage{i}.out"]])
  assert feats["pooled"].ndim == 2 and feats["pooled"].shape[0] == 2


def _shapes(name):
  (_, state), _ = _abstract_train_apply(name)
  return {k: v.shape for k, v in feature_list(state["intermediates"]).items()}


def test_resnet20_feature_shapes():
  shapes = _shapes("resnet20")
  blocks = [k for k in shapes if ".block" in k]
  assert len(blocks) == 9
  for i, (hw, c) in enumerate(((32, 16), (16, 32), (8, 64)), 1):
    for j in (1, 2, 3):
      assert shapes[f"stage{i}.block{j}"] == (2, hw, hw, c)
    assert shapes[f"stage{i}.out"] == (2, hw, hw, c)
  assert shapes["stem"] == (2, 32, 32, 16)
  assert shapes["pooled"] == (2, 64)


def test_resnet110_has_54_blocks():
  shapes = _shapes("resnet110")
  assert len([k for k in shapes if ".block" in k]) == 54


def test_wrn_16_2_pre_activation_features():
  shapes = _shapes("wrn_16_2")
  expected_act_in = {
      "stage1.block1.act_in": (2, 32, 32, 16),   # relu(bn1(stem))
      "stage1.block2.act_in": (2, 32, 32, 32),
      "stage2.block1.act_in": (2, 32, 32, 32),   # input of the strided block
      "stage2.block2.act_in": (2, 16, 16, 64),
      "stage3.block1.act_in": (2, 16, 16, 64),
      "stage3.block2.act_in": (2, 8, 8, 128),
  }
  for k, shape in expected_act_in.items():
    assert shapes[k] == shape, k
  assert shapes["final.act"] == (2, 8, 8, 128)
  assert shapes["stage1.out"] == shapes["stage2.block1.act_in"]
  assert shapes["stage2.out"] == shapes["stage3.block1.act_in"]
  assert shapes["stage3.out"] == shapes["final.act"]
  assert shapes["stage3.block2"] == (2, 8, 8, 128)


def test_resnet18_feature_shapes():
  shapes = _shapes("resnet18")
  blocks = [k for k in shapes if ".block" in k]
  assert len(blocks) == 8
  for i, (hw, c) in enumerate(((32, 64), (16, 128), (8, 256), (4, 512)), 1):
    assert shapes[f"stage{i}.block1"] == shapes[f"stage{i}.block2"] == (2, hw, hw, c)
  assert shapes["pooled"] == (2, 512)


def test_resnet18_imagenet_stem_downsamples_by_4():
  shapes = _shapes("resnet18_imagenet")
  assert shapes["stem"] == (2, 16, 16, 64)
  assert shapes["stage4.out"] == (2, 2, 2, 512)


def test_mobilenetv2_stages_follow_crd_taps():
  shapes = _shapes("MobileNetV2")
  assert [shapes[f"stage{i}.out"] for i in range(1, 5)] == [
      (2, 16, 16, 12), (2, 8, 8, 16), (2, 4, 4, 48), (2, 2, 2, 160)]
  assert shapes["pooled"] == (2, 1280)


def test_bfloat16_compute_keeps_float32_params_and_logits():
  (logits, _), params = _abstract_train_apply("resnet8", dtype=jnp.bfloat16)
  assert logits.dtype == jnp.float32
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))


def _real_init(model, x):
  """Jitted init from an RBG key: threefry's per-shape compiles dominate on CPU."""
  init = jax.jit(functools.partial(model.init, train=False))
  return init(jax.random.key(0, impl="rbg"), x)


@pytest.fixture(scope="module")
def resnet8():
  model = get_model("resnet8", 10)
  x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 32, 32, 3)), jnp.float32)
  return model, x, _real_init(model, x)


def test_resnet8_forward_train_and_eval(resnet8):
  model, x, variables = resnet8
  train_apply = jax.jit(functools.partial(
      model.apply, train=True, mutable=["batch_stats", "intermediates"]))
  logits, state = train_apply(variables, x)
  chex.assert_shape(logits, (4, 10))
  chex.assert_tree_all_finite(logits)
  old_mean = variables["batch_stats"]["bn1"]["mean"]
  new_mean = state["batch_stats"]["bn1"]["mean"]
  assert not np.allclose(old_mean, new_mean)
  feats = feature_list(state["intermediates"])
  for i in (1, 2, 3):
    np.testing.assert_allclose(feats[f"stage{i}.out"],
                               jax.nn.relu(feats[f"stage{i}.preact"]))
    np.testing.assert_array_equal(feats[f"stage{i}.out"], feats[f"stage{i}.block1"])

  eval_logits = jax.jit(functools.partial(model.apply, train=False))(variables, x)
  chex.assert_shape(eval_logits, (4, 10))
  chex.assert_tree_all_finite(eval_logits)
  assert not np.allclose(eval_logits, logits)  # running vs batch statistics


def test_resnet8_init_matches_pytorch_schemes(resnet8):
  params = resnet8[2]["params"]
  # Kaiming normal, fan_out = 3 * 3 * 32, on a conv whose fan_in (3 * 3 * 16) differs: a
  # fan-in init would be sqrt(2) too wide.
  kernel = params["stage2_block1"]["conv1"]["kernel"]
  assert kernel.shape == (3, 3, 16, 32)
  np.testing.assert_allclose(np.std(kernel), np.sqrt(2.0 / (9 * 32)), rtol=0.05)
  bound = 1.0 / np.sqrt(64)  # nn.Linear default: uniform(+-1/sqrt(fan_in)).
  assert np.abs(params["fc"]["kernel"]).max() <= bound
  assert np.abs(params["fc"]["bias"]).max() <= bound
  assert np.abs(params["fc"]["kernel"]).max() > 0.8 * bound


def test_wrn_runs_each_bn1_once_per_step():
  model = get_model("wrn_16_1", 10)
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 32, 32, 3)), jnp.float32)
  train_apply = jax.jit(functools.partial(
      model.apply, train=True, mutable=["batch_stats", "intermediates"]))
  _, state = train_apply(_real_init(model, x), x)
  stem = state["intermediates"]["stem"][0]
  # From a zero running mean, one update with momentum 0.9 leaves 0.1 * batch mean.
  np.testing.assert_allclose(state["batch_stats"]["stage1_block1"]["bn1"]["mean"],
                             0.1 * stem.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)


def test_channel_shuffle_matches_nchw_reference():
  x = np.arange(2 * 1 * 1 * 6, dtype=np.float32).reshape(2, 1, 1, 6)
  # NCHW reference: view (N, g, C/g) -> permute to (N, C/g, g) -> flatten.
  ref = x.reshape(2, 1, 1, 3, 2).transpose(0, 1, 2, 4, 3).reshape(2, 1, 1, 6)
  np.testing.assert_array_equal(channel_shuffle(jnp.asarray(x), 3), ref)
  np.testing.assert_array_equal(channel_shuffle(jnp.asarray(x), 3)[0, 0, 0],
                                [0, 2, 4, 1, 3, 5])


def test_unknown_model_name_lists_accepted_names():
  with pytest.raises(ValueError) as err:
    get_model("resnet21", 10)
  message = str(err.value)
  assert "resnet21" in message
  for name in MODEL_NAMES:
    assert name in message
