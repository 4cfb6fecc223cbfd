"""TaT: every loss term against an independent float64 NumPy reference (value, gradient)."""
import functools

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from afd_jax.methods import FeatureInfo, PairingError, build_method
from afd_jax.methods import tat
from numpy_reference import fd_check, np_ce, np_softmax
from sharding_checks import assert_eager_jit_and_sharded_agree


fd_check = functools.partial(fd_check, rtol=2e-3, atol=2e-6)  # this file's tolerances


# ---- independent NumPy reference ------------------------------------------------------


def np_one_to_all(q, k, v, temp=1.0):
  """q (B, N, C), k (B, M, C), v (B, M, Cv), one sample at a time."""
  return np.stack([np_softmax(q[b] @ k[b].T / temp) @ v[b] for b in range(q.shape[0])])


def np_global(q, k, v, t, temp=1.0):
  b = q.shape[0]
  tok = lambda x: x.reshape(b, -1, x.shape[-1])
  out = np_one_to_all(tok(q), tok(k), tok(v), temp)
  return np.mean((out - tok(t)) ** 2)


def np_anchor_pool(x, ah, aw):
  b, hh, ww, c = x.shape
  kh, kw = hh // ah, ww // aw
  out = np.zeros((b, hh // kh, ww // kw, c))
  for i in range(hh // kh):
    for j in range(ww // kw):
      out[:, i, j] = x[:, i * kh:(i + 1) * kh, j * kw:(j + 1) * kw].mean(axis=(1, 2))
  return out


def np_conv(x, w):
  """'Same' cross-correlation, w (kh, kw, Cin, Cout), zero padding k//2."""
  kh, kw = w.shape[:2]
  xp = np.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
  h, ww = x.shape[1:3]
  return sum(xp[:, i:i + h, j:j + ww] @ w[i, j] for i in range(kh) for j in range(kw))


def np_bn(x, scale, bias):
  mean = x.mean(axis=(0, 1, 2))
  var = x.var(axis=(0, 1, 2))
  return (x - mean) / np.sqrt(var + 1e-5) * scale + bias


def rand(rng, *shape, scale=0.5):
  return (rng.randn(*shape) * scale).astype(np.float32)


# ---- pure functions -------------------------------------------------------------------


def test_one_to_all_value_and_shape():
  rng = np.random.RandomState(0)
  q, k, v = rand(rng, 2, 5, 4), rand(rng, 2, 7, 4), rand(rng, 2, 7, 3)
  out = tat.one_to_all(q, k, v, temperature=2.0)
  chex.assert_shape(out, (2, 5, 3))
  np.testing.assert_allclose(out, np_one_to_all(q, k, v, 2.0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("which", [0, 1, 2])
def test_global_loss_value_and_gradient(which):
  rng = np.random.RandomState(1)
  args = [rand(rng, 2, 3, 4, 5) for _ in range(4)]
  value = tat.global_tat_loss(*args, temperature=1.0)
  np.testing.assert_allclose(value, np_global(*map(np.float64, args)), rtol=1e-5)
  grad = jax.grad(lambda x: tat.global_tat_loss(*args[:which], x, *args[which + 1:]))(
      args[which])

  def f(x):
    a = [np.float64(y) for y in args]
    a[which] = x
    return np_global(*a)
  fd_check(f, grad, args[which], seed=which)


# The hierarchical (segmentation-release) losses and module are specified against the
# release's per-sample NumPy reference in tests/test_seg_methods.py.


def test_patch_group_trivial_grid_is_the_global_operator():
  rng = np.random.RandomState(4)
  args = [rand(rng, 3, 4, 5, 6) for _ in range(4)]
  np.testing.assert_allclose(jnp.mean(tat.patch_group_loss(*args, grid=(1, 1), heads=1)),
                             tat.global_tat_loss(*args), rtol=1e-6)


def test_hierarchical_grid_heads_and_anchors_that_do_not_fit_are_rejected():
  with pytest.raises(ValueError, match=r"patch grid \(8, 8\).*4×4"):
    tat.check_hierarchical((4, 4), 2, (8, 8), 4, (2, 2))
  with pytest.raises(ValueError, match=r"heads=3 .*4×4 patches × 2 channels = 32"):
    tat.check_hierarchical((8, 8), 2, (4, 4), 3, (2, 2))
  with pytest.raises(ValueError, match=r"anchor grid \(8, 8\).*4×6"):
    tat.check_hierarchical((4, 6), 2, (2, 2), 4, (8, 8))
  with pytest.raises(ValueError, match="anchor grid"):
    tat.anchor_pool(jnp.zeros((1, 4, 6, 2)), (8, 8))


@pytest.mark.parametrize("hw, anchors, out_hw", [
    ((13, 10), (4, 3), (4, 3)),    # kernel (3, 3): 12×9 kept
    ((8, 8), (2, 2), (2, 2)),      # kernel (4, 4)
    ((4, 6), (4, 3), (4, 3)),      # kernel (1, 2)
    ((64, 64), (32, 32), (32, 32)),
])
def test_anchor_pool_shapes_and_values(hw, anchors, out_hw):
  rng = np.random.RandomState(5)
  x = rand(rng, 2, *hw, 3)
  got = tat.anchor_pool(x, anchors)
  chex.assert_shape(got, (2, *out_hw, 3))
  np.testing.assert_allclose(got, np_anchor_pool(x, *anchors), rtol=1e-5, atol=1e-6)


# ---- the module ---------------------------------------------------------------------


def info(model, **shapes):
  return FeatureInfo(model, {k.replace("_", "."): v for k, v in shapes.items()})


def make(cfg_fields, s_shape, t_shape, seed=0):
  """Builds the method, random inputs and variables with random BN affine parameters."""
  cfg = ml_collections.ConfigDict(dict(name="tat", **cfg_fields))
  student = info("s", stage1_out=(8, 16, 16, 4), stage2_out=s_shape)
  teacher = info("t", stage1_out=(8, 16, 16, 4), stage2_out=t_shape)
  d = build_method(cfg, student=student, teacher=teacher)
  assert (d.student_features, d.teacher_features) == (("stage2.out",), ("stage2.out",))
  rng = np.random.RandomState(seed)
  s, t = rand(rng, *s_shape, scale=0.7), np.abs(rand(rng, *t_shape, scale=0.7))
  sl, tl = rand(rng, s_shape[0], 10, scale=2), rand(rng, s_shape[0], 10, scale=2)
  y = rng.randint(0, 10, s_shape[0])
  init = jax.jit(lambda *a: d.module.init(*a, train=False))
  variables = init(jax.random.PRNGKey(seed), [s], [t], sl, tl, y)
  keys = iter(jax.random.split(jax.random.PRNGKey(seed + 1), 100))
  params = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(next(keys), p.shape),
                        variables["params"])
  variables = {**variables, "params": params}
  return d, variables, (s, t, sl, tl, y)


def apply_loss(d, variables, s, t, sl, tl, y):
  """(loss, metrics) in train mode (batch-statistics BN)."""
  (loss, metrics), _ = d.module.apply(variables, [s], [t], sl, tl, y, train=True,
                                      mutable=["batch_stats"])
  return loss, metrics


def np_params(variables):
  return jax.tree.map(lambda p: np.asarray(p, np.float64), variables["params"])


def np_global_module(p, s, t, learnable_key=False):
  emb = lambda x, n: np_bn(np_conv(x, p[f"{n}_conv"]["kernel"]),  # noqa: E731
                           p[f"{n}_bn"]["scale"], p[f"{n}_bn"]["bias"])
  k = emb(t, "key") if learnable_key else t
  return np_global(emb(s, "query"), k, emb(s, "value"), t)


@pytest.mark.parametrize("learnable_key", [False, True])
def test_global_module_value_and_gradient(learnable_key):
  d, variables, (s, t, sl, tl, y) = make({"learnable_key": learnable_key},
                                         (4, 4, 4, 6), (4, 4, 4, 5))
  (loss, metrics), (grad, g_t) = jax.jit(jax.value_and_grad(
      lambda x, tt: apply_loss(d, variables, x, tt, sl, tl, y), argnums=(0, 1),
      has_aux=True))(s, t)
  p = np_params(variables)
  ref_tat = np_global_module(p, np.float64(s), np.float64(t), learnable_key)
  np.testing.assert_allclose(metrics["tat"], ref_tat, rtol=1e-4)
  # The released ImageNet recipe (train_local.sh -> ..._attn.yaml): 0.1·CE + 0.2·TaT.
  ref = 0.1 * np_ce(sl, y) + 0.2 * ref_tat
  np.testing.assert_allclose(loss, ref, rtol=1e-4)
  fd_check(lambda x: 0.2 * np_global_module(p, x, np.float64(t), learnable_key), grad, s,
           rtol=5e-3, atol=1e-6)
  # The teacher is a fixed target: no gradient flows into it.
  np.testing.assert_array_equal(g_t, 0.0)


def test_global_module_pools_the_larger_map():
  d, variables, (s, t, sl, tl, y) = make({}, (4, 4, 4, 6), (4, 8, 8, 5))
  _, metrics = jax.jit(lambda *a: apply_loss(d, variables, *a))(s, t, sl, tl, y)
  t_pooled = np.float64(t).reshape(4, 4, 2, 4, 2, 5).mean(axis=(2, 4))
  ref = np_global_module(np_params(variables), np.float64(s), t_pooled)
  np.testing.assert_allclose(metrics["tat"], ref, rtol=1e-4)


def test_jit_nojit_and_eight_devices_agree():
  d, variables, args = make({}, (16, 4, 4, 6), (16, 4, 4, 5))
  assert_eager_jit_and_sharded_agree(lambda v, a: apply_loss(d, v, *a)[0], variables, args)


# ---- building -----------------------------------------------------------------------


def test_default_features_are_the_last_stages():
  student = info("resnet8x4", stage1_out=(2, 32, 32, 64), stage2_out=(2, 16, 16, 128),
                 stage3_out=(2, 8, 8, 256))
  teacher = info("vgg13", stage1_out=(2, 32, 32, 64), stage4_out=(2, 4, 4, 512),
                 stage5_out=(2, 4, 4, 512))
  d = build_method(ml_collections.ConfigDict(dict(name="tat")), student=student,
                   teacher=teacher)
  assert d.student_features == ("stage3.out",) and d.teacher_features == ("stage5.out",)
  assert d.module.teacher_channels == 512


def test_pairing_errors_name_both_feature_lists():
  student = info("resnet20", stage1_out=(2, 32, 32, 16), stage3_out=(2, 8, 8, 64))
  teacher = info("resnet56", stage1_out=(2, 32, 32, 16), stage3_out=(2, 8, 8, 64))
  cfg = ml_collections.ConfigDict(dict(name="tat", teacher_feature="stage9.out"))
  with pytest.raises(PairingError, match=r"stage9\.out.*resnet20.*stage3\.out.*resnet56"):
    build_method(cfg, student=student, teacher=teacher)
  no_stages = FeatureInfo("mystery", {"pooled": (2, 64)})
  with pytest.raises(PairingError, match=r"no stage outputs.*mystery.*pooled.*resnet56"):
    build_method(ml_collections.ConfigDict(dict(name="tat")), student=no_stages,
                 teacher=teacher)


def test_hierarchical_grid_is_checked_at_build_time():
  student = info("s", stage3_out=(2, 8, 8, 64))
  teacher = info("t", stage3_out=(2, 8, 8, 64))
  cfg = ml_collections.ConfigDict(dict(name="tat", mode="hierarchical"))  # 16×16 grid
  with pytest.raises(ValueError, match=r"patch grid \(16, 16\).*8×8 map with 64 channels"):
    build_method(cfg, student=student, teacher=teacher)
  with pytest.raises(ValueError, match="unknown mode"):
    build_method(ml_collections.ConfigDict(dict(name="tat", mode="local")),
                 student=student, teacher=teacher)


def test_defaults_are_the_runs_the_releases_launch():
  """Global: sihaoevery/TaT@a6cc329 train_local.sh -> resnet18_from_resnet34_attn.yaml
  (KDLoss alpha 0.1 beta 0.0, MaskedFM factor 0.2, the teacher's key nn.Identity);
  hierarchical: TaT-seg train_voc_resnet18.sh (ALPHA 0.1, no KD, learnable key)."""
  g = tat.Config()
  assert (g.ce_weight, g.kd_weight, g.weight, g.learnable_key) == (0.1, 0.0, 0.2, False)
  h = tat.Config(mode="hierarchical")
  assert (h.ce_weight, h.kd_weight, h.weight, h.learnable_key) == (1.0, 0.0, 0.1, True)
  assert tat.Config(weight=0.3).weight == 0.3
