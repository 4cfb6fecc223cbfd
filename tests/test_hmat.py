"""HMAT (an interpretation): each attention term against an independent NumPy reference."""
import dataclasses
import math

import chex
import jax
import ml_collections
import numpy as np
import pytest

from afd_jax.methods import FeatureInfo, PairingError, build_method
from afd_jax.methods import hmat
from numpy_reference import fd_check, np_ce, np_kd, np_softmax
from sharding_checks import assert_eager_jit_and_sharded_agree


# ---- independent NumPy reference ------------------------------------------------------


def np_adaptive_pool(x, oh, ow):
  """PyTorch's adaptive_avg_pool2d bins, cell by cell (to the same size: the identity)."""
  b, h, w, c = x.shape
  if (h, w) == (oh, ow):
    return x
  out = np.zeros((b, oh, ow, c))
  for i in range(oh):
    h0, h1 = (i * h) // oh, -(-((i + 1) * h) // oh)
    for j in range(ow):
      w0, w1 = (j * w) // ow, -(-((j + 1) * w) // ow)
      out[:, i, j] = x[:, h0:h1, w0:w1].mean(axis=(1, 2))
  return out


def np_match(s, t):
  h, w = min(s.shape[1], t.shape[1]), min(s.shape[2], t.shape[2])
  return np_adaptive_pool(s, h, w), np_adaptive_pool(t, h, w)


def np_pos_logits(f, p):
  f = np_adaptive_pool(f, min(f.shape[1], p), min(f.shape[2], p))
  x = f.reshape(f.shape[0], -1, f.shape[-1])
  return np.stack([xb @ xb.T for xb in x]) / math.sqrt(x.shape[-1])


def np_ch_logits(g):
  x = g.reshape(g.shape[0], -1, g.shape[-1])
  return np.stack([xb.T @ xb for xb in x]) / math.sqrt(x.shape[1])


def np_distance(ls, lt, kind):
  ps, pt = np_softmax(ls), np_softmax(lt)
  if kind == "kl":
    return np.mean(np.sum(pt * (np.log(pt) - np.log(ps)), axis=-1))
  return np.mean((ps - pt) ** 2)


def np_act(s, t):
  at = lambda f: (lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True))(  # noqa: E731
      (f ** 2).mean(axis=-1).reshape(f.shape[0], -1))
  return np.mean((at(s) - at(t)) ** 2)


def np_bn(x, scale, bias):
  return (x - x.mean(axis=(0, 1, 2))) / np.sqrt(x.var(axis=(0, 1, 2)) + 1e-5) * scale + bias


def np_hmat(p, s_feats, t_feats, pool=16, pos="kl", ch="kl", mid_reduction="mean"):
  pairs = [np_match(s, t) for s, t in zip(s_feats, t_feats)]
  (s_lo, t_lo), (s_hi, t_hi) = pairs[0], pairs[-1]
  g = np_bn(s_hi @ p["channel_proj_conv"]["kernel"][0, 0], p["channel_proj_bn"]["scale"],
            p["channel_proj_bn"]["bias"])
  mids = [np_act(s, t) for s, t in pairs[1:-1]]
  mid = (np.mean(mids) if mid_reduction == "mean" else np.sum(mids)) if mids else 0.0
  return dict(position=np_distance(np_pos_logits(s_lo, pool), np_pos_logits(t_lo, pool), pos),
              channel=np_distance(np_ch_logits(g), np_ch_logits(t_hi), ch),
              act_mid=mid, act_high=np_act(s_hi, t_hi))


def rand(rng, *shape, scale=1.0):
  return (rng.randn(*shape) * scale).astype(np.float32)


def f64(tree):
  return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


# ---- pure functions -------------------------------------------------------------------


def test_position_logits_pool_to_at_most_p():
  rng = np.random.RandomState(0)
  f = rand(rng, 2, 11, 7, 3)
  got = hmat.position_logits(f, max_side=5)  # 11×7 -> 5×5 (uneven PyTorch bins)
  chex.assert_shape(got, (2, 25, 25))
  np.testing.assert_allclose(got, np_pos_logits(np.float64(f), 5), rtol=1e-5, atol=1e-5)
  small = rand(rng, 2, 4, 3, 3)  # already below P: not pooled
  chex.assert_shape(hmat.position_logits(small, max_side=16), (2, 12, 12))


def test_channel_logits():
  rng = np.random.RandomState(1)
  g = rand(rng, 2, 3, 4, 5)
  got = hmat.channel_logits(g)
  chex.assert_shape(got, (2, 5, 5))
  np.testing.assert_allclose(got, np_ch_logits(np.float64(g)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["kl", "mse"])
def test_attention_distance_value_and_gradient(kind):
  rng = np.random.RandomState(2)
  ls, lt = rand(rng, 3, 6, 6), rand(rng, 3, 6, 6)
  np.testing.assert_allclose(hmat.attention_distance(ls, lt, kind),
                             np_distance(np.float64(ls), np.float64(lt), kind), rtol=1e-5)
  with jax.enable_x64(True):  # float64 gradient, checked at every coordinate to 1e-6
    grad = np.asarray(jax.grad(lambda x: hmat.attention_distance(x, np.float64(lt), kind))(
        np.float64(ls)))
  assert grad.dtype == np.float64
  fd_check(lambda x: np_distance(x, np.float64(lt), kind), grad, ls)
  # KL(teacher ‖ student) is zero only on identical rows.
  np.testing.assert_allclose(hmat.attention_distance(lt, lt, kind), 0.0, atol=1e-6)


def test_position_and_activation_losses_gradient_through_features():
  rng = np.random.RandomState(3)
  # 6×6 -> 4×4: PyTorch's overlapping bins ([0, 2), [1, 3), [3, 5), [4, 6)), of 2 cells so
  # that the bin weights (float32 constants in afd_jax's pooling) are exact in float64.
  s, t = rand(rng, 2, 6, 6, 3), np.abs(rand(rng, 2, 6, 6, 4))
  loss = lambda x, t: (hmat.attention_distance(  # noqa: E731
      hmat.position_logits(x, 4), hmat.position_logits(t, 4)) + hmat.activation_loss(x, t))
  ref = lambda x: (np_distance(np_pos_logits(x, 4), np_pos_logits(np.float64(t), 4), "kl")
                   + np_act(x, np.float64(t)))
  np.testing.assert_allclose(loss(s, t), ref(np.float64(s)), rtol=1e-5)
  # All 216 coordinates: every position of every bin.
  with jax.enable_x64(True):
    grad = np.asarray(jax.grad(loss)(np.float64(s), np.float64(t)))
  assert grad.dtype == np.float64
  fd_check(ref, grad, s)


# ---- the module ---------------------------------------------------------------------


S_SHAPES = ((4, 20, 20, 3), (4, 4, 4, 4), (4, 4, 4, 5))
T_SHAPES = ((4, 20, 20, 5), (4, 8, 8, 6), (4, 4, 4, 7))  # stage 2: teacher pooled to 4×4


def make(fields, s_shapes=S_SHAPES, t_shapes=T_SHAPES, seed=0):
  cfg = ml_collections.ConfigDict(dict(name="hmat", **fields))
  student = FeatureInfo("s", {f"stage{i}.out": sh for i, sh in enumerate(s_shapes, 1)})
  teacher = FeatureInfo("t", {f"stage{i}.out": sh for i, sh in enumerate(t_shapes, 1)})
  d = build_method(cfg, student=student, teacher=teacher)
  rng = np.random.RandomState(seed)
  s = [rand(rng, *sh) for sh in s_shapes]
  t = [np.abs(rand(rng, *sh)) for sh in t_shapes]
  b = s_shapes[0][0]
  batch = (s, t, rand(rng, b, 10, scale=2), rand(rng, b, 10, scale=2), rng.randint(0, 10, b))
  variables = jax.jit(lambda *a: d.module.init(*a, train=False))(jax.random.PRNGKey(seed),
                                                                  *batch)
  keys = iter(jax.random.split(jax.random.PRNGKey(seed + 1), 100))
  params = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(next(keys), p.shape),
                        variables["params"])
  return d, {**variables, "params": params}, batch


def apply_loss(d, variables, batch):
  (loss, metrics), _ = d.module.apply(variables, *batch, train=True, mutable=["batch_stats"])
  return loss, metrics


@pytest.mark.parametrize("fields", [
    dict(position_pool=8),
    dict(position_pool=8, position_distance="mse", channel_distance="mse", kd_weight=0.5,
         temperature=2.0, position_weight=3.0, activation_weight=10.0, channel_weight=7.0),
])
def test_module_value_and_gradient(fields):
  # 11×11 -> 8×8 position pooling: PyTorch's bins of 2 and 3 cells, overlapping. The
  # gradients are float32 (the module computes its losses in float32), checked at every
  # coordinate of every level.
  d, variables, batch = make(fields, ((2, 11, 11, 3), (2, 4, 4, 4), (2, 4, 4, 5)),
                             ((2, 11, 11, 5), (2, 8, 8, 6), (2, 4, 4, 7)))
  s_feats, t_feats, sl, tl, y = batch
  (loss, metrics), grad = jax.jit(jax.value_and_grad(
      lambda s: apply_loss(d, variables, (s, t_feats, sl, tl, y)), has_aux=True))(s_feats)
  p, t64 = f64(variables["params"]), f64(t_feats)
  kinds = (fields.get("position_distance", "kl"), fields.get("channel_distance", "kl"))
  ref = lambda s: np_hmat(p, s, t64, 8, *kinds)  # noqa: E731
  terms = ref(f64(s_feats))
  for name, value in terms.items():
    np.testing.assert_allclose(metrics[name], value, rtol=1e-4, atol=1e-9, err_msg=name)
  w = dataclasses.asdict(hmat.Config(**fields))
  weighted = lambda t: (w["position_weight"] * t["position"]  # noqa: E731
                        + w["activation_weight"] * (t["act_mid"] + t["act_high"])
                        + w["channel_weight"] * t["channel"])
  want = (np_ce(np.float64(sl), y) + w["kd_weight"] * np_kd(np.float64(sl), np.float64(tl),
                                                            w["temperature"])
          + weighted(terms))
  np.testing.assert_allclose(loss, want, rtol=1e-4)
  s64 = f64(s_feats)
  for k in range(3):
    fd_check(lambda x, k=k: weighted(ref(s64[:k] + [x] + s64[k + 1:])), grad[k], s_feats[k])


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_several_mid_levels(reduction):
  shapes = ((4, 8, 8, 3), (4, 8, 8, 4), (4, 4, 4, 5), (4, 4, 4, 6))
  d, variables, batch = make({"mid_reduction": reduction}, shapes, shapes)
  _, metrics = jax.jit(lambda b: apply_loss(d, variables, b))(batch)
  want = np_hmat(f64(variables["params"]), *f64(batch[:2]), mid_reduction=reduction)
  np.testing.assert_allclose(metrics["act_mid"], want["act_mid"], rtol=1e-4)


def test_two_stage_pairs_have_no_mid_level():
  d, variables, batch = make({}, S_SHAPES[::2], T_SHAPES[::2])
  _, metrics = jax.jit(lambda b: apply_loss(d, variables, b))(batch)
  assert float(metrics["act_mid"]) == 0.0


def test_jit_nojit_and_eight_devices_agree():
  shapes_s = tuple((8, *sh[1:]) for sh in S_SHAPES)
  shapes_t = tuple((8, *sh[1:]) for sh in T_SHAPES)
  d, variables, batch = make({"position_pool": 8}, shapes_s, shapes_t)
  assert_eager_jit_and_sharded_agree(lambda v, b: apply_loss(d, v, b), variables, batch)


# ---- building -----------------------------------------------------------------------


def test_pairing_errors():
  three = FeatureInfo("ShuffleV2", {f"stage{i}.out": (2, 4, 4, 8) for i in (1, 2, 3)})
  five = FeatureInfo("vgg13", {f"stage{i}.out": (2, 4, 4, 8) for i in range(1, 6)})
  cfg = ml_collections.ConfigDict(dict(name="hmat"))
  with pytest.raises(PairingError, match=r"ShuffleV2.*stage3\.out.*vgg13.*stage5\.out"):
    build_method(cfg, student=three, teacher=five)
  cfg = ml_collections.ConfigDict(dict(name="hmat", student_stages=(1, 2, 3),
                                       teacher_stages=(1, 3, 5)))
  d = build_method(cfg, student=three, teacher=five)
  assert d.teacher_features == ("stage1.out", "stage3.out", "stage5.out")
  cfg = ml_collections.ConfigDict(dict(name="hmat", student_stages=(3,), teacher_stages=(5,)))
  with pytest.raises(PairingError, match="at least two"):
    build_method(cfg, student=three, teacher=five)
  with pytest.raises(ValueError, match="position_distance"):
    build_method(ml_collections.ConfigDict(dict(name="hmat", position_distance="l1")),
                 student=three, teacher=three)
