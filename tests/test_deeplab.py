"""DeepLabV3+ (OS16): the afd_jax models equal the TaT-seg release's PyTorch ones.

The PyTorch side is `tests/torch_deeplab.py` (the tests' own re-statement with the
release's state_dict keys). Random weights and random BN running statistics; inputs of
49 x 41, not multiples of 16 and not square, so the align_corners resizes, the odd-size
strides and any H/W mix-up show.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn
import torch.nn.functional as F

from afd_jax import models
from afd_jax.interop import torch as interop
from afd_jax.interop import torch_layouts
from afd_jax.models import deeplab, deeplab_backbones
import torch_deeplab
import torch_models


NAMES = ("deeplabv3p_resnet101", "deeplabv3p_resnet18", "deeplabv3p_mobilenetv2")
NUM_CLASSES = 21
# Parameter counts at 21 classes of the release's models (`sum(p.numel() for p in
# model.parameters())`, as its training scripts print), and of its 1x (backbone) and 10x
# (ASPP + decoder) learning-rate groups.
PARAM_COUNTS = {
    "deeplabv3p_resnet101": (59_344_309, 42_500_160, 16_844_149),
    "deeplabv3p_resnet18": (16_608_181, 11_176_512, 5_431_669),
    "deeplabv3p_mobilenetv2": (5_816_053, 1_811_712, 4_004_341),
}
INPUT_HW = (49, 41)


@functools.lru_cache(maxsize=None)
def random_torch_model(name, seed=0):
  """A torch DeepLab with random weights and random, well-scaled BN statistics (eval)."""
  torch.manual_seed(seed)
  model = torch_deeplab.build(name, NUM_CLASSES)
  bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
  calibration = torch.randn(2, 3, *INPUT_HW)
  with torch.no_grad():
    for m in bns:
      m.momentum = None  # cumulative average: one batch sets the running stats
      m.reset_running_stats()
    model.train()
    model.extract_feature(calibration)
    for m in bns:
      m.momentum = 0.1
      m.running_mean += 0.2 * m.running_var.sqrt() * torch.randn_like(m.running_mean)
      m.running_var *= torch.empty_like(m.running_var).uniform_(0.5, 2.0)
      m.weight.uniform_(0.5, 1.5)
      m.bias.normal_(0, 0.2)
      m.num_batches_tracked.fill_(7)
    model.eval()
    model.decoder.last_conv[8].bias.normal_(0, 0.1)
    model.decoder.last_conv[8].weight *= 2.0 / model(calibration).std()
  return model


def numpy_state(model):
  return {k: v.numpy() for k, v in model.state_dict().items()}


def nhwc(x_nchw):
  return np.transpose(np.asarray(x_nchw), (0, 2, 3, 1))


def _abstract_params(name):
  return interop.abstract_variables(name, NUM_CLASSES)["params"]


def _count(tree):
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(tree))


@pytest.mark.parametrize("name", NAMES)
def test_param_counts_and_lr_groups_match_pytorch(name):
  total, backbone, head = PARAM_COUNTS[name]
  with torch.device("meta"):
    tmodel = torch_deeplab.build(name, NUM_CLASSES)
  assert sum(p.numel() for p in tmodel.parameters()) == total
  assert torch_deeplab.lr_group_sizes(tmodel) == (backbone, head)

  params = _abstract_params(name)
  assert _count(params) == total
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  is_head = [deeplab.head_param_filter(tuple(k.key for k in path)) for path, _ in flat]
  sizes = [int(np.prod(v.shape)) for _, v in flat]
  assert sum(n for n, h in zip(sizes, is_head) if h) == head
  assert sum(n for n, h in zip(sizes, is_head) if not h) == backbone


def test_release_init_schemes():
  """ResNet backbone N(0, sqrt(2 / (k k C_out))); heads kaiming fan-in; torch bias."""
  model = models.get_model("deeplabv3p_resnet18", NUM_CLASSES)
  # Only the params leave the jit: XLA drops the forward pass.
  init = jax.jit(lambda key, x: model.init(key, x, train=False)["params"])
  params = init(jax.random.key(0, impl="rbg"), jnp.zeros((1, 33, 33, 3)))
  backbone_kernel = params["backbone"]["stage2_block1"]["conv1"]["kernel"]  # 3x3, 64->128
  np.testing.assert_allclose(np.std(backbone_kernel), np.sqrt(2 / (9 * 128)), rtol=0.05)
  aspp_kernel = params["aspp_head"]["aspp2"]["atrous_conv"]["kernel"]  # 3x3, 512->256
  np.testing.assert_allclose(np.std(aspp_kernel), np.sqrt(2 / (9 * 512)), rtol=0.05)
  fuse_kernel = params["decoder_head"]["last_conv1"]["kernel"]  # 3x3, 304->256
  np.testing.assert_allclose(np.std(fuse_kernel), np.sqrt(2 / (9 * 304)), rtol=0.05)
  bias = np.asarray(params["decoder_head"]["classifier"]["bias"])
  assert 0.5 / 16 < np.max(np.abs(bias)) <= 1 / 16  # uniform(+-1/sqrt(256))
  for bn in (params["backbone"]["bn1"], params["aspp_head"]["bn1"]):
    np.testing.assert_array_equal(bn["scale"], 1.0)
    np.testing.assert_array_equal(bn["bias"], 0.0)


def test_bfloat16_compute_keeps_float32_params_and_logits():
  model = models.get_model("deeplabv3p_mobilenetv2", NUM_CLASSES, dtype=jnp.bfloat16)

  def init_and_train(x):
    variables = model.init(jax.random.key(0), x, train=False)
    logits, _ = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)},
                            mutable=["batch_stats", "intermediates"])
    return variables["params"], logits

  params, logits = jax.eval_shape(init_and_train, jnp.zeros((2, 33, 35, 3)))
  assert logits.dtype == jnp.float32 and logits.shape == (2, 33, 35, NUM_CLASSES)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))


def test_registry_names_and_their_task():
  for name in NAMES:
    assert name in models.MODEL_NAMES and models.task_of(name) == "segmentation"
  assert models.task_of("resnet18_imagenet") == "classification"
  assert models.task_of("MobileNetV2") == "classification"


@pytest.mark.parametrize("name", NAMES)
def test_eval_logits_features_and_export_equal_pytorch(name):
  tmodel = random_torch_model(name)
  x = torch.randn(2, 3, *INPUT_HW, generator=torch.Generator().manual_seed(1))
  with torch.no_grad():
    t_feats, t_logits = tmodel.extract_feature(x)
    np.testing.assert_array_equal(tmodel(x).numpy(), t_logits.numpy())
  state = numpy_state(tmodel)

  variables = interop.state_dict_to_variables(name, state, NUM_CLASSES)
  model = models.get_model(name, NUM_CLASSES)
  logits, mut = jax.jit(lambda v, x: model.apply(v, x, train=False,
                                                 mutable=["intermediates"]))(variables,
                                                                             nhwc(x))
  feats = models.feature_list(mut["intermediates"])

  assert logits.dtype == jnp.float32 and logits.shape == (2, *INPUT_HW, NUM_CLASSES)
  assert np.std(t_logits.numpy()) > 0.5
  np.testing.assert_allclose(logits, nhwc(t_logits), rtol=0, atol=1e-4)
  assert list(feats) == list(torch_deeplab.FEATURE_NAMES)  # depth order, decoder last
  for k, t_feat in zip(torch_deeplab.FEATURE_NAMES, t_feats):
    want = nhwc(t_feat)
    scale = max(1.0, float(np.max(np.abs(want))))
    assert feats[k].shape == want.shape, k
    np.testing.assert_allclose(feats[k], want, rtol=0, atol=1e-4 * scale, err_msg=k)

  # Export gives back the release's state_dict exactly (the MobileNet's duplicated
  # low/high_level_features keys included), and PyTorch loads it strictly.
  exported = interop.variables_to_state_dict(name, variables, num_batches_tracked=7)
  assert sorted(exported) == sorted(state)
  for k in state:
    np.testing.assert_array_equal(exported[k], state[k], err_msg=k)
  fresh = torch_deeplab.build(name, NUM_CLASSES)
  fresh.load_state_dict({k: torch.tensor(v) for k, v in exported.items()}, strict=True)


def _bn_stats(name, batch_stats, params):
  """{torch running_mean/var key: array} of afd_jax batch_stats."""
  state = interop.variables_to_state_dict(name, {"params": params,
                                                 "batch_stats": batch_stats})
  return {k: v for k, v in state.items() if k.endswith(("running_mean", "running_var"))}


def test_mobilenet_train_mode_running_stats_follow_extract_feature_and_forward():
  """One train step moves every BN as the release does, on both of its paths.

  Features asked for (distillation): ``extract_feature``, i.e. no ASPP dropout and the
  three tapped expansion BNs updated twice. Not asked for: ``forward``, ASPP dropout,
  single updates. BNs after a dropout depend on its mask and are left out.
  """
  name = "deeplabv3p_mobilenetv2"
  tmodel = random_torch_model(name)
  state = numpy_state(tmodel)
  variables = interop.state_dict_to_variables(name, state, NUM_CLASSES)
  model = models.get_model(name, NUM_CLASSES)
  x = torch.randn(2, 3, *INPUT_HW, generator=torch.Generator().manual_seed(2))
  rngs = {"dropout": jax.random.key(0)}

  def torch_train_stats(fn):
    fresh = torch_deeplab.build(name, NUM_CLASSES)
    fresh.load_state_dict(tmodel.state_dict())
    fresh.train()
    with torch.no_grad():
      out = fn(fresh, x)
    return out, {k: v.numpy() for k, v in fresh.state_dict().items()
                 if k.endswith(("running_mean", "running_var"))}

  (t_feats, _), t_extract = torch_train_stats(lambda m, x: m.extract_feature(x))
  _, t_forward = torch_train_stats(lambda m, x: m(x))

  @jax.jit
  def train_apply(v, x):
    _, with_feats = model.apply(v, x, train=True, rngs=rngs,
                                mutable=["batch_stats", "intermediates"])
    _, plain = model.apply(v, x, train=True, rngs=rngs, mutable=["batch_stats"])
    return with_feats, plain

  with_feats, plain = train_apply(variables, nhwc(x))
  feats = models.feature_list(with_feats["intermediates"])
  for k in ("stage1.out", "stage2.out", "stage3.out", "stage4.out", "aspp"):
    want = nhwc(t_feats[torch_deeplab.FEATURE_NAMES.index(k)])
    scale = max(1.0, float(np.max(np.abs(want))))
    # Train-mode BN over this batch of 2 amplifies rounding: torch's own ASPP output moves
    # by 4.8e-4 (of 1.2) between 1 and 2 CPU threads. The backbone stays at 1e-4.
    tol = 2e-3 if k == "aspp" else 1e-4
    np.testing.assert_allclose(feats[k], want, rtol=0, atol=tol * scale, err_msg=k)

  tapped = "backbone.features.4.conv.1.running_mean"
  assert not np.allclose(t_extract[tapped], t_forward[tapped], atol=1e-4)  # twice vs once
  for got, want, after_dropout in (
      (with_feats, t_extract, ("decoder.last_conv.5.",)),
      (plain, t_forward, ("decoder.last_conv.1.", "decoder.last_conv.5.")),
  ):
    stats = _bn_stats(name, got["batch_stats"], variables["params"])
    checked = [k for k in stats if not k.startswith(after_dropout)]
    assert len(checked) >= len(stats) - 4
    for k in checked:
      scale = max(1.0, float(np.max(np.abs(want[k]))))
      np.testing.assert_allclose(stats[k], want[k], rtol=0, atol=1e-4 * scale, err_msg=k)


@pytest.mark.parametrize("in_hw,out_hw", [
    ((5, 7), (13, 17)), ((13, 17), (5, 7)), ((1, 1), (4, 3)), ((6, 4), (1, 1)),
    ((4, 5), (4, 9)), ((33, 33), (129, 129)), ((9, 8), (49, 41))])
def test_align_corners_resize_matches_torch(in_hw, out_hw):
  x = torch.randn(2, 3, *in_hw, generator=torch.Generator().manual_seed(0))
  want = F.interpolate(x, size=out_hw, mode="bilinear", align_corners=True)
  got = deeplab.resize_bilinear_align_corners(jnp.asarray(nhwc(x)), out_hw)
  assert got.shape == (2, *out_hw, 3)
  np.testing.assert_allclose(got, nhwc(want), rtol=0, atol=1e-6)


def _distinct_variables(name, num_classes=NUM_CLASSES):
  """Variables whose every leaf holds distinct values (any mix-up shows)."""
  abstract = interop.abstract_variables(name, num_classes)
  return jax.tree.map(
      lambda s: np.arange(np.prod(s.shape), dtype=np.float32).reshape(s.shape) + 0.5,
      abstract)


def _backbone_keys(name, variables):
  return [key for _, _, key, _, _, _ in torch_layouts.layout(name, variables)
          if key.startswith("backbone.")]


def _assert_only_backbone_set(name, before, after, set_keys, source, source_key):
  """`after` holds `source[source_key(key)]` for backbone keys, `before` elsewhere."""
  assert set_keys == _backbone_keys(name, before)
  exported = interop.variables_to_state_dict(name, after)
  original = interop.variables_to_state_dict(name, before)
  for key, value in exported.items():
    if key.endswith("num_batches_tracked") or not key.startswith(("backbone.", "aspp.",
                                                                    "decoder.")):
      continue
    if key.startswith("backbone.") and "_level_features." not in key:
      np.testing.assert_array_equal(value, source[source_key(key)], err_msg=key)
    elif not key.startswith("backbone."):
      np.testing.assert_array_equal(value, original[key], err_msg=key)


def test_init_from_torchvision_resnet18_sets_the_backbone_only():
  torch.manual_seed(3)
  tv = torch_models.torchvision_resnet(18, 1000)  # torchvision's keys, fc included
  for m in tv.modules():
    if isinstance(m, nn.BatchNorm2d):
      with torch.no_grad():
        m.running_mean.normal_()
        m.running_var.uniform_(0.5, 2.0)
  source = numpy_state(tv)
  name = "deeplabv3p_resnet18"
  before = _distinct_variables(name)
  after, set_keys = interop.init_from_checkpoint(name, before, tv.state_dict(),
                                                 NUM_CLASSES)
  assert len(set_keys) == 100  # 20 convs + 20 BNs x (weight, bias, mean, var)
  _assert_only_backbone_set(name, before, after, set_keys, source,
                            lambda k: k[len("backbone."):])

  # The classification model takes the whole torchvision state_dict.
  cls_before = _distinct_variables("resnet18_imagenet", 1000)
  cls_after, cls_keys = interop.init_from_checkpoint("resnet18_imagenet", cls_before,
                                                     source, 1000)
  assert len(cls_keys) == len(torch_layouts.layout("resnet18_imagenet", cls_before))
  exported = interop.variables_to_state_dict("resnet18_imagenet", cls_after)
  for k, v in source.items():
    if not k.endswith("num_batches_tracked"):
      np.testing.assert_array_equal(exported[k], v, err_msg=k)


# torchvision's mobilenet_v2 nesting of the release's flat ``conv.{j}`` indices, written
# out from torchvision's module: t = 1 (features.1) and t = 6 blocks.
_TV_T1 = {"0": "0.0", "1": "0.1", "3": "1", "4": "2"}
_TV_T6 = {"0": "0.0", "1": "0.1", "3": "1.0", "4": "1.1", "6": "2", "7": "3"}


def _torchvision_mobilenet_key(flat_key):
  parts = flat_key.split(".")  # features.{i}.conv.{j}.{leaf}, or features.{0,18}.{0,1}.*
  if parts[2] != "conv":
    return flat_key
  table = _TV_T1 if parts[1] == "1" else _TV_T6
  return ".".join(parts[:3] + [table[parts[3]]] + parts[4:])


def test_init_mobilenet_from_imagenet_checkpoints_and_full_deeplab():
  name = "deeplabv3p_mobilenetv2"
  backbone = torch_deeplab.MobileNetBackbone()
  # The release's ImageNet file: the backbone's own `features.*` keys, plus the
  # classifier head the backbone has no place for.
  release = {k: v for k, v in numpy_state(backbone).items() if k.startswith("features.")}
  release["features.18.0.weight"] = np.zeros((1280, 320, 1, 1), np.float32)
  release["classifier.1.weight"] = np.zeros((1000, 1280), np.float32)
  torchvision = {_torchvision_mobilenet_key(k): v for k, v in release.items()
                 if not k.startswith("classifier")}
  before = _distinct_variables(name)
  for source, source_key in (
      (release, lambda k: k[len("backbone."):]),
      (torchvision, lambda k: _torchvision_mobilenet_key(k[len("backbone."):]))):
    after, set_keys = interop.init_from_checkpoint(name, before, source, NUM_CLASSES)
    _assert_only_backbone_set(name, before, after, set_keys, source, source_key)

  # A full release checkpoint fills everything, as state_dict_to_variables does.
  full = numpy_state(random_torch_model(name))
  after, set_keys = interop.init_from_checkpoint(name, before, {"state_dict": full},
                                                 NUM_CLASSES)
  assert len(set_keys) == len(torch_layouts.layout(name, before))
  want = interop.state_dict_to_variables(name, full, NUM_CLASSES)
  jax.tree.map(np.testing.assert_array_equal, after, want)


def test_init_from_checkpoint_errors_name_the_keys():
  name = "deeplabv3p_mobilenetv2"
  before = _distinct_variables(name)
  full = numpy_state(torch_deeplab.build(name, 10))  # another number of classes
  with pytest.raises(interop.TorchCheckpointError,
                     match=r"decoder\.last_conv\.8\.weight.*\(10, 256, 1, 1\)"):
    interop.init_from_checkpoint(name, before, full, NUM_CLASSES)
  with pytest.raises(interop.TorchCheckpointError, match=r"fills no tensor.*'fc\.weight'"):
    interop.init_from_checkpoint(name, before, {"fc.weight": np.zeros((3, 3))},
                                 NUM_CLASSES)


# The CPU-sized DeepLabV3+ of the offline quickstart: (params, of which ASPP + decoder)
# at 21 classes, and the sown features' (H, W, C) at a 64 x 64 input (output stride 8:
# the last two stages dilated instead of strided).
TINY = {
    "deeplabv3p_tiny_resnet18": (1_630_101, {"stage1.out": (16, 16, 32),
                                             "stage2.out": (8, 8, 64),
                                             "stage3.out": (8, 8, 128),
                                             "stage4.out": (8, 8, 128)}),
    "deeplabv3p_tiny_resnet10": (376_261, {"stage1.out": (16, 16, 16),
                                           "stage2.out": (8, 8, 32),
                                           "stage3.out": (8, 8, 64),
                                           "stage4.out": (8, 8, 64)}),
}


@pytest.mark.parametrize("name", sorted(TINY))
def test_tiny_deeplabs_sow_the_release_features_at_os8(name):
  total, stages = TINY[name]
  model = models.get_model(name, NUM_CLASSES)
  assert models.task_of(name) == "segmentation"

  def init_and_extract(x):
    variables = model.init(jax.random.key(0), x, train=False)
    logits, state = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)},
                                mutable=["batch_stats", "intermediates"])
    return variables["params"], logits, state["intermediates"]

  params, logits, feats = jax.eval_shape(init_and_extract, jnp.zeros((2, 64, 64, 3)))
  assert logits.shape == (2, 64, 64, NUM_CLASSES) and logits.dtype == jnp.float32
  shapes = {k: v[0].shape[1:] for k, v in feats.items()}
  # Teacher and student share the head (64 channels), so FitNet-style pairs match.
  assert shapes == {**stages, "aspp": (8, 8, 64), "decoder": (16, 16, 64)}
  assert set(feats) == set(deeplab.FEATURE_NAMES)
  assert _count(params) == total
  assert set(params) == {"backbone", "aspp_head", "decoder_head"}


def test_a_tiny_backbone_refuses_an_output_stride_it_has_no_layout_for():
  backbone = deeplab_backbones.TinyResNetBackbone((8, 8, 8, 8), 1, output_stride=32)
  with pytest.raises(ValueError, match=r"^output_stride=32; accepted: 16, 8\n"):
    jax.eval_shape(lambda x: backbone.init(jax.random.key(0), x, train=False),
                   jnp.zeros((1, 32, 32, 3)))
  at16 = deeplab_backbones.TinyResNetBackbone((8, 8, 8, 8), 1, output_stride=16)
  feats, _, _ = jax.eval_shape(lambda x: at16.init_with_output(
      jax.random.key(0), x, train=False)[0], jnp.zeros((1, 64, 64, 3)))
  assert [f.shape[1] for f in feats] == [16, 8, 4, 4]
