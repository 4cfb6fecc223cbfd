"""KD, FitNet and AT against plain-NumPy references written here (values and gradients)."""
import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from afd_jax import methods
from afd_jax.methods import at as at_lib
from afd_jax.methods import base
from afd_jax.methods import fitnet as fitnet_lib
from afd_jax.methods import kd as kd_lib
from numpy_reference import np_pool


# ---- independent NumPy references (float64) --------------------------------------------

def np_log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_kd(s, t, tau):
  ls, lt = np_log_softmax(s / tau), np_log_softmax(t / tau)
  return tau ** 2 * np.mean(np.sum(np.exp(lt) * (lt - ls), -1))


def np_ce(s, y):
  return -np.mean(np_log_softmax(s)[np.arange(len(y)), y])


def np_at_map(f):
  a = (f ** 2).mean(-1).reshape(f.shape[0], -1)
  return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)


def np_at(s_list, t_list):
  total = 0.0
  for s, t in zip(s_list, t_list):
    h, w = min(s.shape[1], t.shape[1]), min(s.shape[2], t.shape[2])
    total += np.mean((np_at_map(np_pool(s, h, w)) - np_at_map(np_pool(t, h, w))) ** 2)
  return total


def np_fitnet_hint(s, t, kernel, bias, scale, shift):
  """relu(BN_train(conv1x1(s))) vs t, mean squared error."""
  r = np.einsum("bhwc,cd->bhwd", s, kernel) + bias
  mu = r.mean((0, 1, 2))
  var = r.var((0, 1, 2))
  r = (r - mu) / np.sqrt(var + 1e-5) * scale + shift
  return np.mean((np.maximum(r, 0) - t) ** 2)


def fd_grad(f, x, coords, eps=1e-5):
  """Central finite differences of scalar f at the given flat coordinates of x."""
  out = []
  for k in coords:
    xp, xm = x.copy().ravel(), x.copy().ravel()
    xp[k] += eps
    xm[k] -= eps
    out.append((f(xp.reshape(x.shape)) - f(xm.reshape(x.shape))) / (2 * eps))
  return np.array(out)


def cfg(**kw):
  return ml_collections.ConfigDict(kw)


# ---- tests -------------------------------------------------------------------------------

def test_kd_value_and_gradient():
  rng = np.random.default_rng(0)
  s, t = rng.normal(size=(6, 10)) * 3, rng.normal(size=(6, 10)) * 3
  for tau in (1.0, 4.0):
    got = base.kd_loss(jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32), tau)
    np.testing.assert_allclose(got, np_kd(s, t, tau), rtol=1e-5)
    grad = jax.grad(base.kd_loss)(jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32),
                                  tau)
    # d/ds τ²·KL = τ·(softmax(s/τ) − softmax(t/τ)) / B
    ps, pt = np.exp(np_log_softmax(s / tau)), np.exp(np_log_softmax(t / tau))
    np.testing.assert_allclose(grad, tau * (ps - pt) / len(s), rtol=1e-4, atol=1e-7)


def test_kd_method_total_objective():
  rng = np.random.default_rng(1)
  s, t = rng.normal(size=(8, 5)), rng.normal(size=(8, 5))
  y = rng.integers(0, 5, 8)
  module = kd_lib.LogitObjective(kd_lib.Config(ce_weight=0.3, kd_weight=0.7, temperature=2.0))
  (loss, metrics) = module.apply({}, [], [], jnp.asarray(s, jnp.float32),
                                 jnp.asarray(t, jnp.float32), jnp.asarray(y), train=True)
  np.testing.assert_allclose(loss, 0.3 * np_ce(s, y) + 0.7 * np_kd(s, t, 2.0), rtol=1e-5)
  np.testing.assert_allclose(metrics["ce"], np_ce(s, y), rtol=1e-5)


def test_at_value_and_gradient_with_pooling():
  rng = np.random.default_rng(2)
  # stage 1 shares a size; stage 2 pools the teacher 8x8 -> 6x6 (uneven bins)
  s_list = [rng.normal(size=(4, 8, 8, 3)), rng.normal(size=(4, 6, 6, 5))]
  t_list = [rng.normal(size=(4, 8, 8, 7)), rng.normal(size=(4, 8, 8, 2))]
  got = at_lib.at_loss([jnp.asarray(a, jnp.float32) for a in s_list],
                       [jnp.asarray(a, jnp.float32) for a in t_list])
  np.testing.assert_allclose(got, np_at(s_list, t_list), rtol=1e-4)

  grads = jax.grad(lambda s0, s1: at_lib.at_loss([s0, s1], [jnp.asarray(a, jnp.float32)
                                                           for a in t_list]),
                   argnums=(0, 1))(*[jnp.asarray(a, jnp.float32) for a in s_list])
  for idx in range(2):
    coords = rng.choice(s_list[idx].size, 12, replace=False)

    def f(x, idx=idx):
      ss = list(s_list)
      ss[idx] = x
      return np_at(ss, t_list)
    np.testing.assert_allclose(np.asarray(grads[idx]).ravel()[coords],
                               fd_grad(f, s_list[idx], coords), rtol=2e-3, atol=1e-7)


def test_fitnet_value_and_gradient():
  rng = np.random.default_rng(3)
  s = rng.normal(size=(4, 4, 4, 3))
  t = np.abs(rng.normal(size=(4, 4, 4, 6)))
  y = rng.integers(0, 10, 4)
  logits = rng.normal(size=(4, 10))
  module = fitnet_lib.FitNet(fitnet_lib.Config(beta=100.0, ce_weight=1.0, kd_weight=0.0),
                            teacher_channels=6)
  args = ([jnp.asarray(s, jnp.float32)], [jnp.asarray(t, jnp.float32)],
          jnp.asarray(logits, jnp.float32), None, jnp.asarray(y))
  variables = module.init(jax.random.PRNGKey(0), *args, train=True)
  p = jax.tree.map(np.asarray, variables["params"])
  kernel = p["regressor"]["kernel"].reshape(3, 6).astype(np.float64)
  bias = p["regressor"]["bias"].astype(np.float64)
  scale = rng.uniform(0.5, 1.5, 6)  # non-trivial BN affine
  shift = rng.normal(size=6) * 0.1
  variables = {"params": {**variables["params"],
                          "regressor_bn": {"scale": jnp.asarray(scale, jnp.float32),
                                           "bias": jnp.asarray(shift, jnp.float32)}},
               "batch_stats": variables["batch_stats"]}

  (loss, metrics), _ = module.apply(variables, *args, train=True, mutable=["batch_stats"])
  want = np_fitnet_hint(s, t, kernel, bias, scale, shift)
  np.testing.assert_allclose(metrics["fitnet"], want, rtol=1e-4)
  np.testing.assert_allclose(loss, np_ce(logits, y) + 100.0 * want, rtol=1e-4)

  def loss_of_s(s_arr):
    return module.apply(variables, [s_arr], *args[1:], train=True,
                        mutable=["batch_stats"])[0][1]["fitnet"]
  grad = jax.grad(loss_of_s)(args[0][0])
  coords = rng.choice(s.size, 12, replace=False)
  fd = fd_grad(lambda x: np_fitnet_hint(x, t, kernel, bias, scale, shift), s, coords)
  np.testing.assert_allclose(np.asarray(grad).ravel()[coords], fd, rtol=2e-3, atol=1e-6)


def _info(model, shapes):
  return methods.FeatureInfo(model, dict(shapes))


def test_builders_select_stage_features_and_reject_bad_pairs():
  student = _info("s", [("stage1.block1", (2, 8, 8, 4)), ("stage1.out", (2, 8, 8, 4)),
                        ("stage2.out", (2, 4, 4, 8))])
  teacher = _info("t", [("stage1.out", (2, 8, 8, 6)), ("stage2.out", (2, 4, 4, 12)),
                        ("stage3.out", (2, 2, 2, 24))])
  with pytest.raises(methods.PairingError, match="stage3.out"):
    methods.build_method(cfg(name="at"), student=student, teacher=teacher)
  d = methods.build_method(cfg(name="at", student_stages=(1, 2), teacher_stages=(2, 3)),
                           student=student, teacher=teacher)
  assert d.student_features == ("stage1.out", "stage2.out")
  assert d.teacher_features == ("stage2.out", "stage3.out")
  d = methods.build_method(cfg(name="fitnet"), student=student, teacher=teacher)
  assert d.student_features == ("stage2.out",) and d.teacher_features == ("stage2.out",)
  with pytest.raises(methods.PairingError, match="lacks features"):
    methods.build_method(cfg(name="fitnet", hint_stage=3), student=student,
                         teacher=teacher)


def test_unknown_method_and_missing_teacher_are_clear_errors():
  info = _info("s", [("stage1.out", (2, 8, 8, 4))])
  with pytest.raises(ValueError, match=r"'nope'.*accepted: .*kd"):
    methods.build_method(cfg(name="nope"), student=info, teacher=None)
  with pytest.raises(ValueError, match="needs a teacher"):
    methods.build_method(cfg(name="kd"), student=info, teacher=None)
  assert not methods.build_method(cfg(name="none"), student=info, teacher=None).needs_teacher


def test_adaptive_pool_matches_loops_up_and_down():
  from afd_jax.methods.pooling import adaptive_avg_pool
  rng = np.random.default_rng(4)
  x = rng.normal(size=(2, 7, 5, 3))
  for oh, ow in ((3, 2), (7, 5), (10, 8), (1, 1)):
    chex.assert_trees_all_close(adaptive_avg_pool(jnp.asarray(x), (oh, ow)),
                                np_pool(x, oh, ow), rtol=1e-5, atol=1e-6)


def test_l2_normalize_of_an_all_zero_map_has_finite_gradient():
  from afd_jax.methods.pooling import attention_map
  f = jnp.zeros((2, 4, 4, 3)).at[1].set(1.0)  # sample 0: a dead (all-zero) ReLU map
  g = jax.grad(lambda x: jnp.sum(attention_map(x) ** 2 * jnp.arange(16.0)))(f)
  assert np.all(np.isfinite(np.asarray(g)))


def test_at_with_odd_p_uses_the_release_signed_power():
  # RepDistiller's at(f) = normalize(f.pow(p).mean(1)): for p = 3 negative activations
  # subtract, where |f|^p would add.
  rng = np.random.default_rng(12)
  s, t = rng.normal(size=(3, 4, 4, 5)), rng.normal(size=(3, 4, 4, 6))

  def release_map(f, p):
    a = (f ** p).mean(-1).reshape(f.shape[0], -1)
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)

  want = np.mean((release_map(s, 3) - release_map(t, 3)) ** 2)
  got = at_lib.at_loss([jnp.asarray(s, jnp.float32)], [jnp.asarray(t, jnp.float32)], p=3.0)
  np.testing.assert_allclose(got, want, rtol=1e-4)
