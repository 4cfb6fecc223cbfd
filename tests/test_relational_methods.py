"""SP, PKT, RKD, CC, NST and DKD against plain-NumPy float64 references written here
(values and gradients w.r.t. the student's features / logits)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from afd_jax.methods import cc, dkd, nst, pkt, rkd, sp
from numpy_reference import fd_check, np_ce, np_pool, np_softmax


def f32(x):
  return jnp.asarray(x, jnp.float32)


def check_grad(f_np, grad, x, n=6, seed=0):
  """fd_check with an absolute tolerance scaled to the gradient's size."""
  scale = float(np.max(np.abs(np.asarray(grad))))
  fd_check(f_np, grad, x, n=n, seed=seed, rtol=3e-3, atol=1e-3 * scale + 1e-12)


# ---- independent NumPy references (float64) --------------------------------------------


def np_sp(s, t):
  b = s.shape[0]
  def gram(f):
    f = f.reshape(b, -1)
    g = f @ f.T
    return g / np.maximum(np.sqrt((g ** 2).sum(1, keepdims=True)), 1e-12)
  return ((gram(t) - gram(s)) ** 2).sum() / b ** 2


def np_pkt(s, t, eps=1e-7):
  def probs(x):
    x = x / (np.linalg.norm(x, axis=1, keepdims=True) + eps)
    k = (x @ x.T + 1) / 2
    return k / k.sum(1, keepdims=True)
  ps, pt = probs(s), probs(t)
  return np.mean(pt * np.log((pt + eps) / (ps + eps)))


def np_huber(x):
  a = np.abs(x)
  return np.mean(np.where(a < 1, 0.5 * a ** 2, a - 0.5))


def np_rkd(s, t, wd=25.0, wa=50.0):
  def dist(e):
    b = len(e)
    d = np.array([[np.linalg.norm(e[i] - e[j]) for j in range(b)] for i in range(b)])
    return d / d[d > 0].mean()
  def ang(e):
    b = len(e)
    out = np.zeros((b, b, b))
    for i in range(b):
      for j in range(b):
        for k in range(b):
          u, v = e[j] - e[i], e[k] - e[i]
          nu, nv = np.linalg.norm(u), np.linalg.norm(v)
          out[i, j, k] = 0.0 if nu == 0 or nv == 0 else u @ v / (nu * nv)
    return out
  return wd * np_huber(dist(s) - dist(t)) + wa * np_huber(ang(s) - ang(t))


def np_cc(es, et):
  d = np.abs(es - et)
  return np.mean([np.sum(d[i] * d[i + 1]) for i in range(len(d) - 1)])


def np_nst(s_list, t_list):
  total = 0.0
  for s, t in zip(s_list, t_list):
    h = min(s.shape[1], t.shape[1])
    s, t = np_pool(s, h, h), np_pool(t, h, h)
    def maps(f):  # (B, C, P), each channel's spatial map normalised
      m = f.reshape(f.shape[0], -1, f.shape[-1]).transpose(0, 2, 1)
      return m / np.linalg.norm(m, axis=2, keepdims=True)
    ms, mt = maps(s), maps(t)
    k = lambda a, b: np.mean([(a[n] @ b[n].T) ** 2 for n in range(len(a))])  # noqa: E731
    total += k(mt, mt) + k(ms, ms) - 2 * k(ms, mt)
  return total


def np_dkd(s, t, y, temp):
  """(TCKD, NCKD) sample by sample, the non-target distribution over the K−1 others."""
  tck, nck = [], []
  for zs, zt, c in zip(s, t, y):
    ps, pt = np_softmax(zs / temp), np_softmax(zt / temp)
    bs, bt = np.array([ps[c], 1 - ps[c]]), np.array([pt[c], 1 - pt[c]])
    tck.append(np.sum(bt * np.log(bt / bs)))
    others = np.arange(len(zs)) != c
    qs, qt = np_softmax(zs[others] / temp), np_softmax(zt[others] / temp)
    nck.append(np.sum(qt * np.log(qt / qs)))
  return temp ** 2 * np.mean(tck), temp ** 2 * np.mean(nck)


# ---- tests -------------------------------------------------------------------------------


def test_sp_value_and_gradient():
  rng = np.random.default_rng(0)
  s, t = rng.normal(size=(6, 4, 4, 3)), rng.normal(size=(6, 2, 2, 5))
  np.testing.assert_allclose(sp.sp_loss(f32(s), f32(t)), np_sp(s, t), rtol=1e-4)
  grad = jax.grad(sp.sp_loss)(f32(s), f32(t))
  check_grad(lambda x: np_sp(x, t), grad, s)


def test_pkt_value_and_gradient():
  rng = np.random.default_rng(1)
  s, t = rng.normal(size=(6, 7)), rng.normal(size=(6, 9))
  np.testing.assert_allclose(pkt.pkt_loss(f32(s), f32(t)), np_pkt(s, t), rtol=1e-4)
  grad = jax.grad(pkt.pkt_loss)(f32(s), f32(t))
  check_grad(lambda x: np_pkt(x, t), grad, s)


def test_rkd_value_and_gradient():
  rng = np.random.default_rng(2)
  s, t = rng.normal(size=(5, 6)), rng.normal(size=(5, 4)) * 3
  total, _, _ = rkd.rkd_loss(f32(s), f32(t))
  np.testing.assert_allclose(total, np_rkd(s, t), rtol=1e-4)
  grad = jax.grad(lambda x: rkd.rkd_loss(x, f32(t))[0])(f32(s))
  check_grad(lambda x: np_rkd(x, t), grad, s)
  # the teacher side gets no gradient
  assert np.all(np.asarray(jax.grad(lambda y: rkd.rkd_loss(f32(s), y)[0])(f32(t))) == 0)


def test_cc_module_value_and_gradient_with_its_embeddings():
  rng = np.random.default_rng(3)
  s, t = rng.normal(size=(6, 5)), rng.normal(size=(6, 7))
  y, logits = rng.integers(0, 4, 6), rng.normal(size=(6, 4))
  module = cc.CorrelationCongruence(cc.Config(embed_dim=3))
  args = ([f32(s)], [f32(t)], f32(logits), f32(logits), jnp.asarray(y))
  variables = module.init(jax.random.PRNGKey(0), *args, train=True)
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
  embed = lambda x, name: x @ p[name]["kernel"] + p[name]["bias"]  # noqa: E731
  want = np_cc(embed(s, "embed_s"), embed(t, "embed_t"))
  loss, metrics = module.apply(variables, *args, train=True)
  np.testing.assert_allclose(metrics["cc"], want, rtol=1e-4)
  np.testing.assert_allclose(loss, np_ce(logits, y) + 0.02 * want, rtol=1e-4)
  grad = jax.grad(lambda x: module.apply(variables, [x], *args[1:], train=True)[1]["cc"])(
      f32(s))
  check_grad(lambda x: np_cc(embed(x, "embed_s"), embed(t, "embed_t")), grad, s)


def test_nst_value_and_gradient_with_pooling():
  rng = np.random.default_rng(4)
  s_list = [rng.normal(size=(4, 4, 4, 3)), rng.normal(size=(4, 2, 2, 5))]
  t_list = [rng.normal(size=(4, 4, 4, 2)), rng.normal(size=(4, 4, 4, 3))]  # 4x4 -> 2x2
  got = nst.nst_loss([f32(a) for a in s_list], [f32(a) for a in t_list])
  np.testing.assert_allclose(got, np_nst(s_list, t_list), rtol=1e-4)
  grads = jax.grad(lambda a, b: nst.nst_loss([a, b], [f32(x) for x in t_list]),
                   argnums=(0, 1))(*[f32(a) for a in s_list])
  check_grad(lambda x: np_nst([x, s_list[1]], t_list), grads[0], s_list[0])
  check_grad(lambda x: np_nst([s_list[0], x], t_list), grads[1], s_list[1])


def test_dkd_terms_value_and_gradient():
  rng = np.random.default_rng(5)
  s, t = rng.normal(size=(6, 7)) * 3, rng.normal(size=(6, 7)) * 3
  y = rng.integers(0, 7, 6)
  tckd, nckd = dkd.dkd_terms(f32(s), f32(t), jnp.asarray(y), 4.0)
  want = np_dkd(s, t, y, 4.0)
  np.testing.assert_allclose([tckd, nckd], want, rtol=1e-4)
  f = lambda z: sum(w * v for w, v in zip((1.0, 8.0), dkd.dkd_terms(  # noqa: E731
      z, f32(t), jnp.asarray(y), 4.0)))
  check_grad(lambda z: np.dot((1.0, 8.0), np_dkd(z, t, y, 4.0)), jax.grad(f)(f32(s)), s)


def test_dkd_warmup_counts_train_steps_in_method_state():
  rng = np.random.default_rng(6)
  s, t = rng.normal(size=(4, 5)), rng.normal(size=(4, 5))
  y = rng.integers(0, 5, 4)
  module = dkd.DecoupledKD(dkd.Config(warmup_epochs=4), steps_per_epoch=2)
  args = ([], [], f32(s), f32(t), jnp.asarray(y))
  variables = module.init(jax.random.PRNGKey(0), *args, train=True)
  assert int(variables["method_state"]["step"]) == 0
  tckd, nckd = np_dkd(s, t, y, 4.0)
  apply = jax.jit(functools.partial(module.apply, train=True, mutable=["method_state"]))
  warm = []
  for _ in range(10):
    (loss, metrics), mutated = apply(variables, *args)
    np.testing.assert_allclose(
        loss, np_ce(s, y) + metrics["dkd_warmup"] * (tckd + 8 * nckd), rtol=1e-5)
    warm.append(float(metrics["dkd_warmup"]))
    variables = {**variables, **mutated}
  # epoch = step // 2 + 1 (1-based), weight min(epoch / 4, 1)
  np.testing.assert_allclose(warm, [.25, .25, .5, .5, .75, .75, 1, 1, 1, 1])
  assert int(variables["method_state"]["step"]) == 10
  # evaluation (train=False) and an immutable state leave the counter alone
  _, mutated = module.apply(variables, *args, train=False, mutable=["method_state"])
  assert int(mutated["method_state"]["step"]) == 10
  module.apply(variables, *args, train=True)


def np_torch_kl_div(log_q, p):
  """torch.nn.functional.kl_div(log_q, p) elementwise: xlogy(p, p) − p·log_q."""
  with np.errstate(divide="ignore"):
    return np.where(p == 0, 0.0, p * np.log(np.where(p == 0, 1.0, p))) - p * log_q


def test_dkd_teacher_probability_exactly_zero_adds_zero_as_torch_kl_div():
  # Teacher 0 leads by 600 > 104·τ: its binary "rest" mass is exactly 0 in float32.
  s = np.array([[1.0, -0.5, 0.3, 2.0], [0.2, 0.1, -1.0, 0.5]])
  t = np.array([[600.0, 0.0, 0.0, 0.0], [0.0, 1.0, 2.0, -1.0]])
  y = np.array([0, 2])
  tckd, nckd = dkd.dkd_terms(f32(s), f32(t), jnp.asarray(y), 4.0)
  assert np.isfinite(float(tckd)) and np.isfinite(float(nckd))
  # mdistiller's dkd_loss: kl_div over the (target, rest) pair of float32 softmaxes
  pt = np.asarray(jax.nn.softmax(f32(t) / 4.0), np.float64)
  ps = np.asarray(jax.nn.softmax(f32(s) / 4.0), np.float64)
  gt = np.eye(4)[y]
  bt = np.stack([(pt * gt).sum(1), (pt * (1 - gt)).sum(1)], 1)
  bs = np.stack([(ps * gt).sum(1), (ps * (1 - gt)).sum(1)], 1)
  assert bt[0, 1] == 0.0
  want_tckd = 16.0 * np.mean(np_torch_kl_div(np.log(bs), bt).sum(1))
  np.testing.assert_allclose(float(tckd), want_tckd, rtol=1e-4)
  np.testing.assert_allclose(float(nckd), np_dkd(s, t, y, 4.0)[1], rtol=1e-4)
  grad = jax.grad(lambda z: dkd.dkd_terms(z, f32(t), jnp.asarray(y), 4.0)[0])(f32(s))
  assert np.all(np.isfinite(np.asarray(grad)))


def test_pkt_zeroes_nan_after_normalising_as_the_release():
  # A student row with an inf: the release's x / (||x|| + eps) is inf/inf = NaN there and
  # 0 elsewhere, then `output_net[output_net != output_net] = 0` makes the row all zeros.
  rng = np.random.default_rng(11)
  s, t = rng.normal(size=(5, 4)), rng.normal(size=(5, 6))
  s[2, 1] = np.inf
  got = float(pkt.pkt_loss(f32(s), f32(t)))
  zeroed = s.copy()
  zeroed[2] = 0.0
  np.testing.assert_allclose(got, np_pkt(zeroed, t), rtol=1e-4)
