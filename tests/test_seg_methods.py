"""Dense (segmentation) distillation against float64 NumPy references of the TaT-seg release.

The references below re-state the release (sihaoevery/TaT-seg ``distiller_tat.py``,
``distiller_comp.py``, ``distiller_reviewkd.py``, ``utils/loss.py`` and the trainers) in
NCHW, one sample at a time where the release loops over samples, with ``Tensor.unfold``
written out as slicing; nothing is shared with the code under test. Gradients are checked
against central differences of the references on EVERY coordinate of small tensors.
"""
import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from afd_jax.methods import FeatureInfo, PairingError, build_method
from afd_jax.methods import base, kd as kd_lib, seg_comp, tat
from numpy_reference import np_pool, np_softmax
from sharding_checks import assert_eager_jit_and_sharded_agree


MUTABLE = ["batch_stats", "method_state", "intermediates"]


# ---- generic helpers ----------------------------------------------------------------


def fd_all(f, x, eps=1e-5):
  """Central differences of the float64 `f` at every coordinate of `x`."""
  x = np.asarray(x, np.float64)
  g = np.zeros_like(x)
  for idx in np.ndindex(x.shape):
    xp, xm = x.copy(), x.copy()
    xp[idx] += eps
    xm[idx] -= eps
    g[idx] = (f(xp) - f(xm)) / (2 * eps)
  return g


def assert_grad(got, want, rtol=3e-3):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * np.abs(want).max() + 1e-7)


def nchw(x):
  return np.asarray(x, np.float64).transpose(0, 3, 1, 2)


def rand(rng, *shape, scale=1.0):
  return (rng.standard_normal(shape) * scale).astype(np.float32)


def labels_with_void(rng, b, h, w, k, void_frac=0.3):
  y = rng.integers(0, k, (b, h, w))
  y[rng.random((b, h, w)) < void_frac] = 255
  return y.astype(np.int32)


def apply(d, variables, s_feats, t_feats, sl, tl, y):
  """The loop's call of the method module (train step)."""
  return d.module.apply(variables, s_feats, t_feats, sl, tl, y, train=True, mutable=MUTABLE)


def seg_info(model, b, hw, channels, decoder_c, extra=None):
  """Synthetic DeepLab-like FeatureInfo: stage outputs at `hw` sizes, aspp, decoder."""
  shapes = {f"stage{i}.out": (b, *s, c) for i, (s, c) in enumerate(zip(hw, channels), 1)}
  shapes.update(extra or {})
  shapes["decoder"] = (b, *hw[0], decoder_c)
  return FeatureInfo(model, shapes)


# ---- references: CE and KD (utils/loss.py, Hinton) ------------------------------------


def np_ce_valid_mean(logits, labels):
  """nn.CrossEntropyLoss(ignore_index=255) of (B, H, W, K) logits, pixel by pixel."""
  tot, cnt = 0.0, 0
  for idx in np.ndindex(labels.shape):
    if labels[idx] != 255:
      tot -= np.log(np_softmax(np.float64(logits[idx]))[labels[idx]])
      cnt += 1
  return tot / cnt if cnt else 0.0


def np_seg_ce(logits, labels):
  """SegmentationLosses.CrossEntropyLoss: valid-pixel mean, then ``loss /= n``."""
  return np_ce_valid_mean(logits, labels) / logits.shape[0]


def np_pixel_kd(s, t, tau, labels):
  """τ²·KL per valid pixel, averaged over valid pixels."""
  tot, cnt = 0.0, 0
  for idx in np.ndindex(labels.shape):
    if labels[idx] != 255:
      ps, pt = np_softmax(np.float64(s[idx]) / tau), np_softmax(np.float64(t[idx]) / tau)
      tot += np.sum(pt * (np.log(pt) - np.log(ps)))
      cnt += 1
  return tau ** 2 * tot / cnt if cnt else 0.0


def test_segmentation_cross_entropy_ignores_void_and_averages_the_batch():
  rng = np.random.default_rng(0)
  logits, y = rand(rng, 2, 3, 2, 4, scale=2), labels_with_void(rng, 2, 3, 2, 4)
  np.testing.assert_allclose(base.cross_entropy(logits, y), np_ce_valid_mean(logits, y),
                             rtol=1e-5)
  np.testing.assert_allclose(base.segmentation_cross_entropy(logits, y),
                             np_seg_ce(logits, y), rtol=1e-5)
  np.testing.assert_allclose(
      base.segmentation_cross_entropy(logits, y, batch_average=False),
      np_ce_valid_mean(logits, y), rtol=1e-5)
  grad = jax.grad(base.segmentation_cross_entropy)(logits, y)
  assert_grad(grad, fd_all(lambda x: np_seg_ce(x, y), logits))
  # Void pixels get no gradient.
  np.testing.assert_array_equal(np.asarray(grad)[y == 255], 0.0)
  # Changing the void label to 7 (another ignore value) is honoured.
  y7 = np.where(y == 255, 7, y)
  np.testing.assert_allclose(base.cross_entropy(logits, y7, ignore_label=7),
                             np_ce_valid_mean(logits, y), rtol=1e-5)


def test_all_void_batch_gives_zero_not_nan():
  logits = jnp.ones((2, 3, 3, 5))
  y = jnp.full((2, 3, 3), 255, jnp.int32)
  for f in (base.cross_entropy, base.segmentation_cross_entropy,
            lambda lg, yy: base.kd_loss(lg, 2 * lg, 4.0, yy)):
    value, grad = jax.value_and_grad(f)(logits, y)
    assert float(value) == 0.0
    assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad) == 0.0)


def test_classification_losses_are_unchanged():
  rng = np.random.default_rng(1)
  s, t, y = rand(rng, 6, 10, scale=3), rand(rng, 6, 10, scale=3), rng.integers(0, 10, 6)
  ce = jnp.mean(jax.nn.logsumexp(s, -1) - s[np.arange(6), y])
  np.testing.assert_allclose(base.cross_entropy(s, y), ce, rtol=1e-6)
  # (B, K) logits: labels passed to kd_loss change nothing (bit for bit).
  assert float(base.kd_loss(s, t, 4.0)) == float(base.kd_loss(s, t, 4.0, y))


def test_pixel_kd_with_void_mask_value_and_gradient():
  rng = np.random.default_rng(2)
  s, t = rand(rng, 2, 2, 3, 4, scale=2), rand(rng, 2, 2, 3, 4, scale=2)
  y = labels_with_void(rng, 2, 2, 3, 4)
  np.testing.assert_allclose(base.kd_loss(s, t, 2.0, y), np_pixel_kd(s, t, 2.0, y),
                             rtol=1e-5)
  grad = jax.grad(base.kd_loss)(s, t, 2.0, y)
  assert_grad(grad, fd_all(lambda x: np_pixel_kd(x, t, 2.0, y), s))


def test_kd_method_on_per_pixel_logits():
  """The classic ``kd`` on (B, H, W, K) logits: CE and KD both means over valid pixels."""
  rng = np.random.default_rng(3)
  s, t = rand(rng, 2, 3, 3, 5, scale=2), rand(rng, 2, 3, 3, 5, scale=2)
  y = labels_with_void(rng, 2, 3, 3, 5)
  d = build_method(ml_collections.ConfigDict(dict(name="kd")),
                   student=FeatureInfo("s", {}), teacher=FeatureInfo("t", {}))
  (loss, metrics), _ = apply(d, {}, [], [], s, t, y)
  want = 0.1 * np_ce_valid_mean(s, y) + 0.9 * np_pixel_kd(s, t, 4.0, y)
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  np.testing.assert_allclose(metrics["kd"], np_pixel_kd(s, t, 4.0, y), rtol=1e-5)
  assert isinstance(d.module, kd_lib.LogitObjective)


# ---- references: TaT hierarchical (distiller_tat.py, stack_attn) ----------------------


def np_unfold(x, kh, kw):
  """``x.unfold(1, kh, kh).unfold(2, kw, kw)`` of one (C, H, W) sample: (C, nH, nW, kh, kw)."""
  c, h, w = x.shape
  nh, nw = (h - kh) // kh + 1, (w - kw) // kw + 1
  out = np.zeros((c, nh, nw, kh, kw))
  for i in range(nh):
    for j in range(nw):
      out[:, i, j] = x[:, i * kh:i * kh + kh, j * kw:j * kw + kw]
  return out


def np_stack(x, n, m):
  """grid_tensor_seq + ``permute(0, 2, 1, 3, 4).reshape``: (C, H, W) -> (P·C, kh, kw)."""
  c, h, w = x.shape
  kh, kw = h // n, w // m
  u = np_unfold(x, kh, kw).reshape(c, -1, kh, kw)
  return u.transpose(1, 0, 2, 3).reshape(-1, kh, kw)


def np_sub_loss(q, k, v, ft, heads):
  """``sub_loss`` of one sample: heads cut the channels, attention over positions."""
  c, h, w = v.shape
  d = c // heads
  out = np.zeros_like(v)
  for g in range(heads):
    sl = slice(g * d, (g + 1) * d)
    qg, kg, vg = (x[sl].reshape(d, h * w).T for x in (q, k, v))
    out[sl] = (np_softmax(qg @ kg.T) @ vg).T.reshape(d, h, w)
  return np.mean((out - ft) ** 2)


def np_avg_pool(x, kh, kw):
  """AvgPool2d(kernel = stride = (kh, kw)) of one (C, H, W) sample."""
  c, h, w = x.shape
  out = np.zeros((c, h // kh, w // kw))
  for i in range(h // kh):
    for j in range(w // kw):
      out[:, i, j] = x[:, i * kh:(i + 1) * kh, j * kw:(j + 1) * kw].mean(axis=(1, 2))
  return out


def np_patch_loss(q, k, v, ft, n, m, heads):
  return np_sub_loss(*(np_stack(x, n, m) for x in (q, k, v, ft)), heads)


def np_anchor_loss(q, k, v, ft, ah, aw):
  kh, kw = q.shape[1] // ah, q.shape[2] // aw
  return np_sub_loss(*(np_avg_pool(x, kh, kw) for x in (q, k, v, ft)), 1)


def np_embed(x, kernel, scale, bias):
  """``Embed`` on one (C, H, W) sample alone: Conv1x1 then BN over that sample's H·W."""
  y = np.einsum("chw,co->ohw", x, kernel[0, 0])
  mean, var = y.mean(axis=(1, 2)), y.var(axis=(1, 2))
  return ((y - mean[:, None, None]) / np.sqrt(var[:, None, None] + 1e-5)
          * scale[:, None, None] + bias[:, None, None])


def np_tat_distill(p, s, t, n, m, heads, ah, aw, beta, gamma):
  """The Distiller's forward: Σ over samples of β·L_P + γ·L_A (s, t NCHW)."""
  total = 0.0
  for fs, ft in zip(s, t):  # the release's zip over the batch
    emb = lambda x, e: np_embed(x, p[f"{e}_conv"]["kernel"], p[f"{e}_bn"]["scale"],  # noqa
                                p[f"{e}_bn"]["bias"])
    q, k, v = emb(fs, "query"), emb(ft, "key"), emb(fs, "value")
    total += (beta * np_patch_loss(q, k, v, ft, n, m, heads)
              + gamma * np_anchor_loss(q, k, v, ft, ah, aw))
  return total


@pytest.mark.parametrize("hw, n, want", [((36, 36), 16, (2, 18)), ((129, 129), 16, (8, 16)),
                                         ((18, 17), 16, (1, 18)), ((10, 9), 4, (2, 5))])
def test_release_patch_counts_and_stacking(hw, n, want):
  kh, _, ph, _ = tat.patch_layout(hw, (n, n))
  assert (kh, ph) == want                                  # patches per side: ⌊H/⌊H/n⌋⌋
  x = np.arange(hw[0] * hw[1] * 2, dtype=np.float32).reshape(1, *hw, 2)
  got = tat.stack_patches(x, (n, n))                       # (1, kh·kw, P·C)
  ref = np_stack(nchw(x)[0], n, n)                         # (P·C, kh, kw)
  np.testing.assert_array_equal(np.asarray(got)[0], ref.reshape(ref.shape[0], -1).T)


def tat_args(rng, b=2, hw=(10, 9), cs=4, ct=3):
  s = rand(rng, b, *hw, cs, scale=0.7)
  t = np.abs(rand(rng, b, *hw, ct, scale=0.7))
  return s, t


@pytest.mark.parametrize("heads", [9, 5])  # 15 patches × 3 channels: 9 cuts across patches
def test_patch_group_loss_value_and_gradient(heads):
  rng = np.random.default_rng(4)
  q, k, v, t = (rand(rng, 2, 10, 9, 3) for _ in range(4))
  got = tat.patch_group_loss(q, k, v, t, (4, 3), heads)   # kh, kw = 2, 3: 5×3 patches
  chex.assert_shape(got, (2,))
  ref = lambda qq: [np_patch_loss(a, b, c, d, 4, 3, heads)  # noqa: E731
                    for a, b, c, d in zip(qq, nchw(k), nchw(v), nchw(t))]
  np.testing.assert_allclose(got, ref(nchw(q)), rtol=1e-5)
  grad = jax.grad(lambda x: jnp.sum(tat.patch_group_loss(x, k, v, t, (4, 3), heads)))(q)
  assert_grad(nchw(grad), fd_all(lambda x: sum(ref(x)), nchw(q)))


def test_anchor_loss_value_and_gradient():
  rng = np.random.default_rng(5)
  q, k, v, t = (rand(rng, 2, 10, 9, 3) for _ in range(4))
  got = tat.anchor_point_loss(q, k, v, t, (3, 2))          # kernel (3, 4): 3×2 anchors
  ref = lambda kk: [np_anchor_loss(a, b, c, d, 3, 2)        # noqa: E731
                    for a, b, c, d in zip(nchw(q), kk, nchw(v), nchw(t))]
  np.testing.assert_allclose(got, ref(nchw(k)), rtol=1e-5)
  grad = jax.grad(lambda x: jnp.sum(tat.anchor_point_loss(q, x, v, t, (3, 2))))(k)
  assert_grad(nchw(grad), fd_all(lambda x: sum(ref(x)), nchw(k)))


TAT_FIELDS = dict(mode="hierarchical", patch_grid=(4, 3), heads=9, anchor_grid=(3, 2),
                  weight=0.3, beta=1.0, gamma=0.4)


def make_tat(b=2, hw=(10, 9), cs=4, ct=3, seed=0, **fields):
  student = seg_info("s", b, [hw, (5, 5)], [2, 6], cs)
  teacher = seg_info("t", b, [hw, (5, 5)], [2, 8], ct)
  d = build_method(ml_collections.ConfigDict(dict(name="tat", **{**TAT_FIELDS, **fields})),
                   student=student, teacher=teacher)
  rng = np.random.default_rng(seed)
  s, t = tat_args(rng, b, hw, cs, ct)
  sl, tl = rand(rng, b, *hw, 5, scale=2), rand(rng, b, *hw, 5, scale=2)
  y = labels_with_void(rng, b, *hw, 5)
  variables = d.module.init(jax.random.PRNGKey(seed), [s], [t], sl, tl, y, train=False)
  keys = iter(jax.random.split(jax.random.PRNGKey(seed + 1), 100))
  params = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(next(keys), p.shape),
                        variables["params"])
  return d, {**variables, "params": params}, (s, t, sl, tl, y)


def test_tat_hierarchical_module_value_gradients_and_running_stats():
  d, variables, (s, t, sl, tl, y) = make_tat()
  assert d.student_features == ("decoder",) and d.teacher_features == ("decoder",)
  assert d.teacher_train_mode

  def loss_fn(params, x):
    (loss, metrics), mut = apply(d, {**variables, "params": params}, [x], [t], sl, tl, y)
    return loss, (metrics, mut)
  (loss, (metrics, mut)), (g_params, g_s) = jax.jit(jax.value_and_grad(
      loss_fn, argnums=(0, 1), has_aux=True))(variables["params"], s)
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
  distill = lambda pp, x: np_tat_distill(pp, x, nchw(t), 4, 3, 9, 3, 2, 1.0, 0.4)  # noqa
  b = s.shape[0]
  # loss = CE_seg + alpha·Σ_b loss_b / B, CE_seg = valid-pixel mean / B.
  want = np_seg_ce(sl, y) + 0.3 * distill(p, nchw(s)) / b
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  np.testing.assert_allclose(metrics["tat"], distill(p, nchw(s)) / b, rtol=1e-5)
  np.testing.assert_allclose(metrics["ce"], np_seg_ce(sl, y), rtol=1e-5)
  assert_grad(nchw(g_s), fd_all(lambda x: 0.3 * distill(p, x) / b, nchw(s)))
  for emb in ("query_conv", "key_conv", "value_conv", "query_bn", "key_bn", "value_bn"):
    for leaf in p[emb]:
      def f(w, emb=emb, leaf=leaf):
        q = jax.tree.map(lambda a: a, p)
        q[emb] = {**q[emb], leaf: w}
        return 0.3 * distill(q, nchw(s)) / b
      assert_grad(g_params[emb][leaf], fd_all(f, p[emb][leaf]))
  # Running statistics: the release's B sequential per-sample updates, momentum 0.1.
  kern, x = p["query_conv"]["kernel"][0, 0], np.float64(s)
  r_mean, r_var = np.zeros(kern.shape[1]), np.ones(kern.shape[1])
  for sample in x:
    e = (sample @ kern).reshape(-1, kern.shape[1])
    r_mean = 0.9 * r_mean + 0.1 * e.mean(0)
    r_var = 0.9 * r_var + 0.1 * e.var(0, ddof=1)
  np.testing.assert_allclose(mut["batch_stats"]["query_bn"]["mean"], r_mean, rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(mut["batch_stats"]["query_bn"]["var"], r_var, rtol=1e-5)


def test_tat_hierarchical_per_sample_bn_differs_from_batch_bn():
  """Samples do not share BN statistics: a sample's loss does not depend on the others."""
  d, variables, (s, t, sl, tl, y) = make_tat(b=2)
  one = lambda x, tt: apply(d, variables, [x], [tt], sl[:1], tl[:1], y[:1])[0][1]["tat"]  # noqa
  both = apply(d, variables, [s], [t], sl, tl, y)[0][1]["tat"]
  np.testing.assert_allclose(both, (one(s[:1], t[:1]) + one(s[1:], t[1:])) / 2, rtol=1e-5)


def test_tat_hierarchical_jit_nojit_and_eight_devices_agree():
  d, variables, args = make_tat(b=8, hw=(6, 6), cs=3, ct=2, patch_grid=(3, 3), heads=3,
                                anchor_grid=(2, 2))
  assert_eager_jit_and_sharded_agree(lambda v, a: apply(d, v, [a[0]], [a[1]], *a[2:])[0],
                                     variables, args)


def test_tat_hierarchical_build_checks():
  student = seg_info("s", 2, [(36, 36)], [8], 8)
  teacher = seg_info("t", 2, [(36, 36)], [8], 16)
  build = lambda **f: build_method(ml_collections.ConfigDict(  # noqa: E731
      dict(name="tat", mode="hierarchical", **f)), student=student, teacher=teacher)
  # The VOC defaults on a 36×36 map: 18×18 patches × 16 channels, 64 heads divide; anchors fit.
  d = build()
  assert d.module.hp.heads == 64 and d.module.hp.patch_grid == (16, 16)
  with pytest.raises(ValueError, match=r"heads=7 .*18×18 patches × 16 channels.*36×36"):
    build(heads=7)
  with pytest.raises(ValueError, match=r"patch grid \(40, 4\).*36×36"):
    build(patch_grid=(40, 4))
  with pytest.raises(ValueError, match=r"anchor grid \(64, 64\).*36×36"):
    build(anchor_grid=(64, 64))
  # Global mode keeps the eval-mode teacher of the classification releases.
  assert not build_method(ml_collections.ConfigDict(dict(name="tat")), student=student,
                          teacher=teacher).teacher_train_mode


# ---- references: distiller_comp.py ----------------------------------------------------


def np_comp_kd(s, t, temp=7.0):
  """``0.01·kd_loss``: softmax over the last NCHW axis (W), KL summed, ·T²/B."""
  tot = 0.0
  for b, c, h in np.ndindex(s.shape[:3]):
    ps, pt = np_softmax(s[b, c, h] / temp), np_softmax(t[b, c, h] / temp)
    tot += np.sum(pt * (np.log(pt) - np.log(ps)))
  return 0.01 * tot * temp ** 2 / s.shape[0]


def np_comp_fitnet(s, t):
  return np.mean((s - t) ** 2)


def np_adaptive_nchw(x, oh, ow):
  return np_pool(x.transpose(0, 2, 3, 1), oh, ow).transpose(0, 3, 1, 2)


def np_comp_at(s, t):
  """``at_loss`` (pooling the taller map to (h, h)), summed by the trainer."""
  sh, th = s.shape[2], t.shape[2]
  if sh > th:
    s = np_adaptive_nchw(s, th, th)
  elif sh < th:
    t = np_adaptive_nchw(t, sh, sh)

  def at(f):
    a = (f ** 2).mean(1).reshape(f.shape[0], -1)
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
  return np.sum((at(s) - at(t)) ** 2)


def np_comp_ch(s, t, n, m):
  """``0.5·ch_loss``: per unfold patch, row-normalised C×C Gram, Σ diff² / (C·B²)."""
  bsz, ch = s.shape[:2]
  tot = 0.0
  for fs, ft in zip(s, t):
    kh, kw = fs.shape[1] // n, fs.shape[2] // m
    us, ut = np_unfold(fs, kh, kw), np_unfold(ft, kh, kw)
    for i, j in np.ndindex(us.shape[1:3]):
      gs = [u[:, i, j].reshape(ch, -1) for u in (us, ut)]
      g = [x @ x.T for x in gs]
      g = [x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12) for x in g]
      tot += np.sum((g[0] - g[1]) ** 2)
  return 0.5 * tot / (ch * bsz * bsz)


COMP = {
    "seg_kd": lambda s, t: np_comp_kd(s, t),
    "seg_fitnet": np_comp_fitnet,
    "seg_at": np_comp_at,
    "ickd": lambda s, t: np_comp_ch(s, t, 2, 3),
}


@pytest.mark.parametrize("name, s_hw, t_hw", [
    ("seg_kd", (5, 6), (5, 6)), ("seg_fitnet", (5, 6), (5, 6)),
    ("seg_at", (6, 6), (3, 3)),        # the release pools the taller map to (h, h)
    ("ickd", (5, 7), (5, 7)),          # n, m = 2, 3: kh, kw = 2, 2 -> 2×3 patches
])
def test_comparison_method_value_and_gradient(name, s_hw, t_hw):
  b, c = 2, 3
  student = seg_info("s", b, [s_hw], [4], c)
  teacher = seg_info("t", b, [t_hw], [4], c)
  fields = dict(patch_grid=(2, 3)) if name == "ickd" else {}
  d = build_method(ml_collections.ConfigDict(dict(name=name, **fields)), student=student,
                   teacher=teacher)
  assert d.student_features == ("decoder",) and d.teacher_train_mode
  rng = np.random.default_rng(6)
  s, t = rand(rng, b, *s_hw, c, scale=2), rand(rng, b, *t_hw, c, scale=2)
  sl, y = rand(rng, b, 4, 4, 5), labels_with_void(rng, b, 4, 4, 5)

  def loss_fn(x):
    (loss, metrics), _ = apply(d, {}, [x], [t], sl, None, y)
    return loss, metrics
  (loss, metrics), grad = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(s)
  ref = COMP[name](nchw(s), nchw(t))
  np.testing.assert_allclose(metrics[name], ref, rtol=1e-5)  # D, the distiller's output
  # loss = CE_seg + alpha·D / B with alpha = 0.1.
  np.testing.assert_allclose(loss, np_seg_ce(sl, y) + 0.1 * ref / b, rtol=1e-5)
  np.testing.assert_allclose(metrics["distill"], 0.1 * ref / b, rtol=1e-5)
  assert_grad(nchw(grad), fd_all(lambda x: 0.1 * COMP[name](x, nchw(t)) / b, nchw(s)))


def test_comparison_methods_jit_nojit_and_eight_devices_agree():
  student = seg_info("s", 8, [(4, 6)], [4], 3)
  teacher = seg_info("t", 8, [(4, 6)], [4], 3)
  rng = np.random.default_rng(9)
  data = (rand(rng, 8, 4, 6, 3), rand(rng, 8, 4, 6, 3), rand(rng, 8, 4, 4, 5),
          labels_with_void(rng, 8, 4, 4, 5))
  ds = [build_method(ml_collections.ConfigDict(dict(name=n, **f)), student=student,
                     teacher=teacher)
        for n, f in (("seg_kd", {}), ("seg_at", {}), ("ickd", {"patch_grid": (2, 3)}))]
  assert_eager_jit_and_sharded_agree(
      lambda v, a: [apply(d, v, [a[0]], [a[1]], a[2], None, a[3])[0] for d in ds], {}, data)


def test_seg_kd_softmax_runs_over_the_width_axis():
  rng = np.random.default_rng(7)
  s, t = rand(rng, 2, 3, 4, 5), rand(rng, 2, 3, 4, 5)
  got = 0.01 * seg_comp.feature_kd_loss(s, t, 7.0)
  np.testing.assert_allclose(got, np_comp_kd(nchw(s), nchw(t)), rtol=1e-5)
  # A shift constant along W within one (b, row, channel) cancels in that softmax only.
  shift = np.zeros_like(s)
  shift[0, 1, :, 2] = 3.0
  np.testing.assert_allclose(seg_comp.feature_kd_loss(s + shift, t, 7.0),
                             seg_comp.feature_kd_loss(s, t, 7.0), rtol=1e-5)
  shift_c = np.zeros_like(s)
  shift_c[0, 1, 2, :] = 3.0                # constant over channels: not an invariance
  assert abs(float(seg_comp.feature_kd_loss(s + shift_c, t, 7.0))
             - float(seg_comp.feature_kd_loss(s, t, 7.0))) > 1e-3


def test_comparison_methods_reject_unpairable_features():
  student = seg_info("s", 2, [(8, 8)], [4], 3)
  teacher = seg_info("t", 2, [(8, 8)], [4], 5)
  with pytest.raises(ValueError, match=r"seg_fitnet.*\(8, 8, 3\).*\(8, 8, 5\)"):
    build_method(ml_collections.ConfigDict(dict(name="seg_fitnet")), student=student,
                 teacher=teacher)
  with pytest.raises(ValueError, match=r"ickd: patch grid \(9, 9\)"):
    build_method(ml_collections.ConfigDict(dict(name="ickd", patch_grid=(9, 9))),
                 student=student, teacher=seg_info("t", 2, [(8, 8)], [4], 3))
  no_decoder = FeatureInfo("resnet18", {"stage4.out": (2, 4, 4, 8)})
  with pytest.raises(PairingError, match=r"'decoder'.*resnet18"):
    build_method(ml_collections.ConfigDict(dict(name="seg_kd")), student=no_decoder,
                 teacher=teacher)


# ---- references: distiller_reviewkd.py ------------------------------------------------


def np_bn_batch(y, scale, bias):
  mean, var = y.mean(axis=(0, 2, 3)), y.var(axis=(0, 2, 3))
  r = lambda a: a[None, :, None, None]  # noqa: E731
  return (y - r(mean)) / np.sqrt(r(var) + 1e-5) * r(scale) + r(bias)


def np_nearest(x, oh, ow):
  """F.interpolate(mode='nearest'): out[i] = in[floor(i·H/H')]."""
  h, w = x.shape[2:]
  out = np.zeros(x.shape[:2] + (oh, ow))
  for i in range(oh):
    for j in range(ow):
      out[:, :, i, j] = x[:, :, (i * h) // oh, (j * w) // ow]
  return out


def np_conv3x3(x, w):
  """Conv2d(3, padding=1, no bias); x NCHW, w HWIO."""
  xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
  h, ww = x.shape[2:]
  return sum(np.einsum("bchw,co->bohw", xp[:, :, i:i + h, j:j + ww], w[i, j])
             for i in range(3) for j in range(3))


def np_abf(p, x, res, fuse):
  y = np_bn_batch(np.einsum("bchw,co->bohw", x, p["conv1"][0, 0]), p["bn1"]["scale"],
                  p["bn1"]["bias"])
  if fuse:
    r = np_nearest(res, *y.shape[2:])
    z = np.einsum("bchw,co->bohw", np.concatenate([y, r], 1), p["att_conv"][0, 0])
    z = 1 / (1 + np.exp(-(z + p["att_bias"][None, :, None, None])))
    y = y * z[:, :1] + r * z[:, 1:]
  out = np_bn_batch(np_conv3x3(y, p["conv2"]), p["bn2"]["scale"], p["bn2"]["bias"])
  return out, y


def np_hcl(fs, ft):
  loss = 0.0
  for s, t in zip(fs, ft):
    h = s.shape[2]
    lv, cnt, tot = np.mean((s - t) ** 2), 1.0, 1.0
    for lvl in (4, 2, 1):
      if lvl >= h:
        continue
      cnt /= 2.0
      lv += np.mean((np_adaptive_nchw(s, lvl, lvl) - np_adaptive_nchw(t, lvl, lvl)) ** 2) * cnt
      tot += cnt
    loss += lv / tot
  return loss


def np_reviewkd(w, s_feats, t_feats):
  """The Distiller's forward: ABFs from the last level to the first, then hcl · 1.0."""
  n = len(s_feats)
  results, res = [None] * n, None
  for k in reversed(range(n)):
    results[k], res = np_abf(w[f"abf_{k}"], s_feats[k], res, k < n - 1)
  return np_hcl(results, t_feats)


@pytest.mark.parametrize("train_abf", [False, True])
def test_seg_reviewkd_value_and_gradient(train_abf):
  b = 2
  hw = [(6, 6), (3, 3), (3, 3)]
  student = seg_info("s", b, hw[:2], [2, 3], 3, extra={"aspp": (b, 3, 3, 4)})
  teacher = seg_info("t", b, hw[:2], [3, 2], 4, extra={"aspp": (b, 3, 3, 3)})
  d = build_method(ml_collections.ConfigDict(dict(name="seg_reviewkd", mid_channels=4,
                                                  train_abf=train_abf)),
                   student=student, teacher=teacher)
  assert d.student_features == ("stage1.out", "stage2.out", "aspp", "decoder")
  assert d.teacher_train_mode
  rng = np.random.default_rng(8)
  s_feats = [rand(rng, *student.shapes[n]) for n in d.student_features]
  t_feats = [rand(rng, *teacher.shapes[n]) for n in d.teacher_features]
  sl, y = rand(rng, b, 4, 4, 5), labels_with_void(rng, b, 4, 4, 5)
  variables = d.module.init(jax.random.PRNGKey(0), s_feats, t_feats, sl, None, y,
                            train=False)
  weights = variables["params" if train_abf else "method_state"]
  assert set(weights) == {"abf_0", "abf_1", "abf_2", "abf_3"}
  if not train_abf:  # the release never trains the ABFs: nothing for the optimizer
    assert not variables.get("params")
  w = jax.tree.map(lambda a: np.asarray(a, np.float64), weights)

  def loss_fn(feats):
    (loss, metrics), mut = apply(d, variables, feats, t_feats, sl, None, y)
    return loss, (metrics, mut)
  (loss, (metrics, mut)), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(s_feats)
  ref = lambda fs: np_reviewkd(w, fs, [nchw(t) for t in t_feats])  # noqa: E731
  s64 = [nchw(f) for f in s_feats]
  np.testing.assert_allclose(metrics["hcl"], ref(s64), rtol=1e-5)
  np.testing.assert_allclose(loss, np_seg_ce(sl, y) + 0.1 * ref(s64) / b, rtol=1e-5)
  if not train_abf:
    chex.assert_trees_all_equal(mut["method_state"], variables["method_state"])
  for k in (0, 3):  # the first (fused with every deeper level) and the last level
    def f(x, k=k):
      fs = list(s64)
      fs[k] = x
      return 0.1 * ref(fs) / b
    assert_grad(nchw(grads[k]), fd_all(f, s64[k]))


def test_seg_reviewkd_rejects_levels_of_different_size():
  student = seg_info("s", 2, [(6, 6)], [2], 3, extra={"aspp": (2, 3, 3, 4)})
  teacher = seg_info("t", 2, [(6, 6)], [3], 4, extra={"aspp": (2, 2, 2, 3)})
  with pytest.raises(ValueError, match=r"'aspp' is \(3, 3\) but teacher 'aspp' is \(2, 2\)"):
    build_method(ml_collections.ConfigDict(dict(name="seg_reviewkd")), student=student,
                 teacher=teacher)
