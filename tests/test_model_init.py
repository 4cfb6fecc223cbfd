"""Initialisation follows each PyTorch original, checked on the scale of the draws.

RepDistiller/torchvision ResNets and WRNs: Kaiming-normal fan-out convs (untruncated);
ShuffleNets: PyTorch's default conv init, uniform(+-1/sqrt(fan_in)); VGG and
MobileNetV2 classifiers: N(0, 0.01) with zero bias; WRN classifier: zero bias; other
classifiers: PyTorch's nn.Linear default, uniform(+-1/sqrt(fan_in)) weight and bias.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from afd_jax import models
from afd_jax.models.resnet import Bottleneck, ResNet


@functools.lru_cache(maxsize=None)
def _params(name, **kwargs):
  """Initial params of ``name`` (a zoo name, or a model class of `models` or ``ResNet``
  with its fields as kwargs, num_classes 100)."""
  cls = ResNet if name == "ResNet" else getattr(models, name, None)
  model = models.get_model(name, 100) if not kwargs else cls(num_classes=100, **kwargs)
  # The 'rbg' key compiles several times faster than threefry on CPU; the initialisers'
  # distributions do not depend on the generator.
  init = jax.jit(lambda key: model.init(key, jnp.zeros((1, 32, 32, 3)), train=False)["params"])
  return jax.tree.map(np.asarray, init(jax.random.key(0, impl="rbg")))


def _assert_uniform(w, bound):
  """uniform(-bound, bound): inside the bound, filling it, std = bound / sqrt(3)."""
  assert np.max(np.abs(w)) <= bound
  assert np.max(np.abs(w)) >= 0.95 * bound
  np.testing.assert_allclose(np.std(w), bound / np.sqrt(3), rtol=0.05)


def _assert_normal(w, std):
  """N(0, std), untruncated: about 4.6 % of the draws lie beyond 2 std."""
  np.testing.assert_allclose(np.std(w), std, rtol=0.05)
  assert 0.035 < np.mean(np.abs(w) > 2 * std) < 0.06


# Kaiming fan-out is told from fan-in only where a conv changes the channel count: one such
# conv per family, (kh, kw, C_in, C_out) with C_out = 2..8 x C_in, so the two stds differ
# by a factor sqrt(C_out / C_in) >= 1.41 (the std of a few thousand draws is within 5 %).
FAN_OUT_CONVS = [
    ("resnet20", ("stage2_block1", "conv1"), (3, 3, 16, 32)),  # CIFAR ResNets
    ("wrn_16_2", ("stage2_block1", "conv1"), (3, 3, 32, 64)),  # WRNs
    ("vgg8", ("stage3_conv1",), (3, 3, 128, 256)),  # VGG
    ("MobileNetV2", ("conv_head",), (1, 1, 160, 1280)),  # MobileNetV2
    ("resnet18", ("stage2_block1", "conv1"), (3, 3, 64, 128)),  # RepDistiller resnetv2
    # ResNet50's Bottleneck, in a ResNet of one block per stage (faster to compile).
    ("ResNet", ("stage2_block1", "conv3"), (1, 1, 128, 512)),
    ("resnet18_imagenet", ("stage2_block1", "conv1"), (3, 3, 64, 128)),  # torchvision
]


SMALL_KWARGS = {"ResNet": dict(block_cls=Bottleneck, stage_sizes=(1, 1, 1, 1),
                               widths=(64, 128, 256, 512), stem_width=64)}


@pytest.mark.parametrize("name,path,shape", FAN_OUT_CONVS, ids=[c[0] for c in FAN_OUT_CONVS])
def test_convs_are_kaiming_normal_fan_out(name, path, shape):
  kernel = _params(name, **SMALL_KWARGS.get(name, {}))
  for key in path + ("kernel",):
    kernel = kernel[key]
  assert kernel.shape == shape
  kh, kw, c_in, c_out = shape
  fan_in, fan_out = kh * kw * c_in, kh * kw * c_out
  assert fan_out >= 2 * fan_in  # a fan-in init would be >= 41 % off
  _assert_normal(kernel, np.sqrt(2 / fan_out))


def test_resnet_linear_is_torch_default():
  p = _params("resnet20")
  _assert_uniform(p["fc"]["kernel"], 1 / np.sqrt(64))
  assert 0 < np.max(np.abs(p["fc"]["bias"])) <= 1 / np.sqrt(64)  # 100 draws: bound only


def test_wrn_classifier_bias_is_zero():
  p = _params("wrn_16_2")
  np.testing.assert_array_equal(p["fc"]["bias"], 0)
  _assert_uniform(p["fc"]["kernel"], 1 / np.sqrt(128))


@pytest.mark.parametrize("name", ["vgg8", "MobileNetV2"])
def test_vgg_and_mobilenet_classifiers_are_small_normal(name):
  p = _params(name)
  _assert_normal(p["classifier"]["kernel"], 0.01)
  np.testing.assert_array_equal(p["classifier"]["bias"], 0)


def test_vgg_conv_biases_are_zero():
  p = _params("vgg8")
  np.testing.assert_array_equal(p["stage3_conv1"]["bias"], 0)
  np.testing.assert_array_equal(p["stage4_conv1"]["bias"], 0)


def test_shufflenet_convs_keep_pytorch_default_init():
  """uniform(+-1/sqrt(fan_in)), checked on convs whose fan-out differs, so that a fan-out
  bound (PyTorch counts fan_out = C_out·k·k, groups or not) would fail `_assert_uniform`
  (too wide a bound exceeds it, too narrow a one never fills it)."""
  # Fewer blocks per stage than the zoo's (4, 8, 4): same modules, faster to compile.
  p = _params("ShuffleNetV1", stage_sizes=(1, 2, 1))
  # Grouped 1x1 conv: 480 inputs in 3 groups -> fan_in 160; fan_out 120.
  assert p["stage2_block2"]["conv1"]["kernel"].shape == (1, 1, 160, 120)
  _assert_uniform(p["stage2_block2"]["conv1"]["kernel"], 1 / np.sqrt(160))
  # Depthwise 3x3: fan_in 9; fan_out 9·120.
  assert p["stage2_block2"]["conv2"]["kernel"].shape == (3, 3, 1, 120)
  _assert_uniform(p["stage2_block2"]["conv2"]["kernel"], 1 / 3)
  p = _params("ShuffleNetV2", stage_sizes=(1, 1, 1))
  # The downsampling unit's 1x1 branch conv: 24 -> 58 channels.
  assert p["stage1_block1"]["conv2"]["kernel"].shape == (1, 1, 24, 58)
  _assert_uniform(p["stage1_block1"]["conv2"]["kernel"], 1 / np.sqrt(24))
  assert p["stage2_block2"]["conv2"]["kernel"].shape == (3, 3, 1, 116)  # depthwise
  _assert_uniform(p["stage2_block2"]["conv2"]["kernel"], 1 / 3)
