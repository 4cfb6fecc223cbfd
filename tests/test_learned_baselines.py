"""VID, ReviewKD and SemCKD (learnable parts) against plain-NumPy float64 references fed
the modules' own parameters; every issue-9 method eager == jit == 8 devices; published
defaults; feature selection."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from afd_jax import methods
from afd_jax.methods import reviewkd, semckd, vid
from numpy_reference import fd_check, np_ce, np_kd, np_pool, np_softmax
from sharding_checks import assert_eager_jit_and_sharded_agree


def f32(x):
  return jnp.asarray(x, jnp.float32)


def np_params(variables):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])


# ---- independent NumPy building blocks (float64) ---------------------------------------


def np_conv(x, kernel, bias=None):
  """Square 'same' convolution, (B, H, W, Ci) x (k, k, Ci, Co), padding k // 2."""
  k = kernel.shape[0]
  p = k // 2
  xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  h, w = x.shape[1:3]
  out = sum(xp[:, i:i + h, j:j + w] @ kernel[i, j] for i in range(k) for j in range(k))
  return out if bias is None else out + bias


def np_bn(x, p):
  """Train-mode BatchNorm over all axes but the last (biased variance, eps 1e-5)."""
  axes = tuple(range(x.ndim - 1))
  return (x - x.mean(axes)) / np.sqrt(x.var(axes) + 1e-5) * p["scale"] + p["bias"]


def np_relu(x):
  return np.maximum(x, 0)


def np_nearest(x, oh, ow):
  b, h, w, c = x.shape
  out = np.zeros((b, oh, ow, c))
  for i in range(oh):
    for j in range(ow):
      out[:, i, j] = x[:, (i * h) // oh, (j * w) // ow]
  return out


def np_mse(a, b):
  return np.mean((a - b) ** 2)


# ---- VID -------------------------------------------------------------------------------


def np_vid(s_list, t_list, p, init_eps=1e-5):
  total = 0.0
  for k, (s, t) in enumerate(zip(s_list, t_list)):
    h = min(s.shape[1], t.shape[1])
    s, t = np_pool(s, h, h), np_pool(t, h, h)
    r = p[f"regressor_{k}"]
    mean = np_relu(np_relu(s @ r["conv1"]["kernel"][0, 0]) @ r["conv2"]["kernel"][0, 0])
    mean = mean @ r["conv3"]["kernel"][0, 0]
    var = np.log1p(np.exp(r["log_scale"])) + init_eps
    total += np.mean(0.5 * ((mean - t) ** 2 / var + np.log(var)))
  return total


def test_vid_value_and_gradient_with_its_regressors():
  rng = np.random.default_rng(0)
  s_list = [rng.normal(size=(4, 4, 4, 3)), rng.normal(size=(4, 2, 2, 2))]
  t_list = [rng.normal(size=(4, 2, 2, 5)), rng.normal(size=(4, 2, 2, 3))]
  y, logits = rng.integers(0, 5, 4), rng.normal(size=(4, 5))
  module = vid.VID(vid.Config())
  args = ([f32(a) for a in s_list], [f32(a) for a in t_list], f32(logits), f32(logits),
          jnp.asarray(y))
  variables = module.init(jax.random.PRNGKey(0), *args, train=True)
  p = np_params(variables)
  np.testing.assert_allclose(np.log1p(np.exp(p["regressor_0"]["log_scale"])) + 1e-5, 5.0,
                             rtol=1e-6)  # σ² starts at init_var
  # move the variances off their common start to check the per-channel σ²
  p["regressor_1"]["log_scale"] = rng.normal(size=3)
  variables = {"params": jax.tree.map(f32, p)}
  loss, metrics = module.apply(variables, *args, train=True)
  want = np_vid(s_list, t_list, p)
  np.testing.assert_allclose(metrics["vid"], want, rtol=1e-5)
  np.testing.assert_allclose(loss, np_ce(logits, y) + want, rtol=1e-5)
  grad = jax.grad(lambda x: module.apply(variables, [x, args[0][1]], *args[1:],
                                         train=True)[1]["vid"])(args[0][0])
  fd_check(lambda x: np_vid([x, s_list[1]], t_list, p), grad, s_list[0], rtol=3e-3,
           atol=1e-6)


# ---- ReviewKD --------------------------------------------------------------------------


def np_hcl(o, t):
  loss, weight, total = np_mse(o, t), 1.0, 1.0
  for size in (4, 2, 1):
    if size < o.shape[1]:
      weight /= 2
      loss += weight * np_mse(np_pool(o, size, size), np_pool(t, size, size))
      total += weight
  return loss / total


def np_reviewkd(s_list, t_list, p):
  """s_list / t_list: stage maps then the pooled vector; fuse from the deepest level."""
  s_list = s_list[:-1] + [s_list[-1][:, None, None, :]]
  t_list = t_list[:-1] + [t_list[-1][:, None, None, :]]
  n, residual, loss = len(s_list), None, 0.0
  for k in reversed(range(n)):
    a = p[f"abf_{k}"]
    x = np_bn(np_conv(s_list[k], a["conv1"]["kernel"]), a["bn1"])
    if k < n - 1:
      r = np_nearest(residual, *x.shape[1:3])
      z = 1 / (1 + np.exp(-np_conv(np.concatenate([x, r], -1), a["att_conv"]["kernel"],
                                   a["att_conv"]["bias"])))
      x = x * z[..., :1] + r * z[..., 1:]
    x = np_nearest(x, *t_list[k].shape[1:3])
    residual = x
    out = np_bn(np_conv(x, a["conv2"]["kernel"]), a["bn2"])
    loss += np_hcl(out, t_list[k])
  return loss


def test_reviewkd_value_with_its_abf_modules_and_warmup():
  rng = np.random.default_rng(1)
  s_list = [rng.normal(size=(4, 8, 8, 3)), rng.normal(size=(4, 4, 4, 5)),
            rng.normal(size=(4, 6))]
  t_list = [rng.normal(size=(4, 8, 8, 4)), rng.normal(size=(4, 2, 2, 6)),
            rng.normal(size=(4, 7))]
  y, logits = rng.integers(0, 5, 4), rng.normal(size=(4, 5))
  module = reviewkd.ReviewKD(reviewkd.Config(), steps_per_epoch=3)
  args = ([f32(a) for a in s_list], [f32(a) for a in t_list], f32(logits), None,
          jnp.asarray(y))
  variables = jax.jit(module.init, static_argnames="train")(jax.random.PRNGKey(0), *args,
                                                            train=True)
  p = np_params(variables)
  assert p["abf_0"]["conv1"]["kernel"].shape == (1, 1, 3, 6)  # mid = pooled width 6
  assert "att_conv" not in p["abf_2"]  # the deepest level has nothing to fuse
  for a in p.values():  # non-trivial BN affine
    for bn in ("bn1", "bn2"):
      a[bn]["scale"] = rng.uniform(0.5, 1.5, a[bn]["scale"].shape)
      a[bn]["bias"] = rng.normal(size=a[bn]["bias"].shape) * 0.1
  variables = {**variables, "params": jax.tree.map(f32, p)}
  want = np_reviewkd(s_list, t_list, p)
  (loss, metrics), mutated = jax.jit(module.apply, static_argnames=("train", "mutable"))(
      variables, *args, train=True, mutable=("batch_stats", "method_state"))
  np.testing.assert_allclose(metrics["hcl"], want, rtol=1e-4)
  # first epoch: weight min(1 / 20, 1)
  np.testing.assert_allclose(loss, np_ce(logits, y) + 5.0 / 20 * want, rtol=1e-4)
  assert int(mutated["method_state"]["step"]) == 1


def test_nearest_resize_matches_pytorch_rule():
  x = np.random.default_rng(2).normal(size=(2, 3, 5, 2))
  for hw in ((6, 10), (2, 2), (7, 4), (1, 1)):
    np.testing.assert_allclose(reviewkd.nearest_resize(f32(x), hw), np_nearest(x, *hw),
                               rtol=1e-6)


# ---- SemCKD ----------------------------------------------------------------------------


def np_semckd(s_list, t_list, p):
  """Returns (loss, attention (B, ns, nt)); Gram rows over the whole batch."""
  b = s_list[0].shape[0]
  def embed(f, e):
    f = f.reshape(b, -1)
    h = np_relu(f @ f.T @ e["linear1"]["kernel"] + e["linear1"]["bias"])
    o = h @ e["linear2"]["kernel"] + e["linear2"]["bias"]
    return o / np.linalg.norm(o, axis=1, keepdims=True)
  q = np.stack([embed(s, p[f"query_{i}"]) for i, s in enumerate(s_list)], 1)
  k = np.stack([embed(t, p[f"key_{j}"]) for j, t in enumerate(t_list)], 1)
  att = np.stack([np_softmax(q[n] @ k[n].T) for n in range(b)])
  dist = np.zeros(att.shape)
  for i, s in enumerate(s_list):
    for j, t in enumerate(t_list):
      if s.shape[1] > t.shape[1]:
        s_ij, t_ij = np_pool(s, *t.shape[1:3]), t
      else:
        s_ij, t_ij = s, np_pool(t, *s.shape[1:3])
      r = p[f"regressor_{i}_{j}"]
      v = np_relu(np_bn(np_conv(s_ij, r["conv1"]["kernel"]), r["bn1"]))
      v = np_relu(np_bn(np_conv(v, r["conv2"]["kernel"]), r["bn2"]))
      v = np_conv(v, r["conv3"]["kernel"])
      dist[:, i, j] = ((v - t_ij) ** 2).reshape(b, -1).mean(1)
  return np.sum(att * dist) / (b * len(s_list)), att


def test_semckd_value_and_sown_attention_with_its_parameters():
  rng = np.random.default_rng(3)
  b = 4
  s_list = [rng.normal(size=(b, 4, 4, 3))]
  # one teacher map smaller (the student is pooled), one larger (the teacher is pooled)
  t_list = [rng.normal(size=(b, 2, 2, 2)), rng.normal(size=(b, 8, 8, 3))]
  y, s_logits, t_logits = rng.integers(0, 5, b), rng.normal(size=(b, 5)), rng.normal(
      size=(b, 5))
  module = semckd.SemCKD(semckd.Config(gram_size=b, factor=2))  # the release: B == size
  args = ([f32(a) for a in s_list], [f32(a) for a in t_list], f32(s_logits),
          f32(t_logits), jnp.asarray(y))
  variables = jax.jit(module.init, static_argnames="train")(jax.random.PRNGKey(0), *args,
                                                            train=True)
  p = np_params(variables)
  assert p["query_0"]["linear1"]["kernel"].shape == (b, 2 * b // 2)
  want, att = np_semckd(s_list, t_list, p)
  (loss, metrics), mutated = jax.jit(module.apply, static_argnames=("train", "mutable"))(
      variables, *args, train=True, mutable=("batch_stats", "intermediates"))
  np.testing.assert_allclose(metrics["semckd"], want, rtol=1e-4)
  np.testing.assert_allclose(
      loss, np_ce(s_logits, y) + np_kd(s_logits, t_logits, 4.0) + 400 * want, rtol=1e-4)
  sown = np.asarray(mutated["intermediates"]["attention"][0])
  assert sown.shape == (b, 2, 1)  # (B, n_teacher, n_student), as AFD
  np.testing.assert_allclose(sown, att.transpose(0, 2, 1), rtol=1e-4, atol=1e-6)


def test_semckd_gram_rows_group_and_pad():
  f = np.random.default_rng(4).normal(size=(6, 2, 3))
  flat = f.reshape(6, -1)
  want = np.zeros((6, 4))
  want[:4] = flat[:4] @ flat[:4].T
  want[4:, :2] = flat[4:] @ flat[4:].T
  np.testing.assert_allclose(semckd.gram_rows(f32(f), 4), want, rtol=1e-5, atol=1e-5)


# ---- all issue-9 methods: sharding, defaults, feature selection -------------------------

METHODS = ("sp", "cc", "pkt", "rkd", "nst", "vid", "dkd", "reviewkd", "semckd")


def _info(model, stages, pooled):
  shapes = {}
  for i, (hw, c) in enumerate(stages, 1):
    shapes[f"stage{i}.preact"] = (2, hw, hw, c)
    shapes[f"stage{i}.out"] = (2, hw, hw, c)
  shapes["pooled"] = (2, pooled)
  return methods.FeatureInfo(model, shapes)


STUDENT = _info("s", [(4, 3), (2, 4)], 5)
TEACHER = _info("t", [(4, 4), (2, 6)], 6)


def _inputs(distiller, rng, b=8):
  feats = lambda info, names: [f32(np.abs(rng.normal(size=(b,) + info.shapes[n][1:])))  # noqa
                               for n in names]
  return (feats(STUDENT, distiller.student_features),
          feats(TEACHER, distiller.teacher_features), f32(rng.normal(size=(b, 10))),
          f32(rng.normal(size=(b, 10))), jnp.asarray(rng.integers(0, 10, b)))


@pytest.mark.parametrize("name", METHODS)
def test_eager_jit_and_8_devices_agree(name):
  d = methods.build_method(ml_collections.ConfigDict(dict(name=name)), student=STUDENT,
                           teacher=TEACHER, steps_per_epoch=2)
  data = _inputs(d, np.random.default_rng(5))
  variables = d.module.init(jax.random.PRNGKey(0), *data, train=True)

  def f(v, a):
    return d.module.apply(v, *a, train=True, mutable=["batch_stats", "method_state"])[0]
  assert_eager_jit_and_sharded_agree(f, variables, data, rtol=1e-4)


PUBLISHED = {
    "sp": dict(ce_weight=1.0, kd_weight=0.0, beta=3000.0),
    "cc": dict(ce_weight=1.0, kd_weight=0.0, beta=0.02, embed_dim=128),
    "pkt": dict(ce_weight=1.0, kd_weight=0.0, beta=30000.0),
    "rkd": dict(ce_weight=1.0, kd_weight=0.0, beta=1.0, distance_weight=25.0,
                angle_weight=50.0),
    "nst": dict(ce_weight=1.0, kd_weight=0.0, beta=50.0),
    "vid": dict(ce_weight=1.0, kd_weight=0.0, beta=1.0, init_var=5.0, eps=1e-5),
    "dkd": dict(ce_weight=1.0, alpha=1.0, beta=8.0, temperature=4.0, warmup_epochs=20.0),
    "reviewkd": dict(ce_weight=1.0, beta=5.0, warmup_epochs=20.0, max_mid_channels=512),
    "semckd": dict(ce_weight=1.0, kd_weight=1.0, temperature=4.0, beta=400.0,
                   gram_size=64, factor=4),
}


@pytest.mark.parametrize("name", METHODS)
def test_published_defaults(name):
  hp = methods.resolve({"name": name})
  for field, value in PUBLISHED[name].items():
    assert getattr(hp, field) == value, (name, field)


def test_feature_selection_follows_the_release():
  build = lambda name, s=STUDENT, t=TEACHER: methods.build_method(  # noqa: E731
      ml_collections.ConfigDict(dict(name=name)), student=s, teacher=t)
  assert build("sp").student_features == ("stage2.out",)  # feat[-2]
  for name in ("pkt", "rkd", "cc"):  # feat[-1]
    assert build(name).teacher_features == ("pooled",)
  for name in ("nst", "vid", "semckd"):  # feat[1:-1]
    assert build(name).student_features == ("stage1.out", "stage2.out")
  d = build("reviewkd")
  assert d.student_features == ("stage1.out", "stage2.out", "pooled")
  assert d.teacher_features == ("stage1.preact", "stage2.preact", "pooled")
  assert build("dkd").student_features == ()
  assert build("semckd").eval_hooks  # the link heatmap

  short = _info("short", [(4, 3)], 4)
  for name in ("nst", "vid", "reviewkd"):
    with pytest.raises(methods.PairingError, match="student_stages"):
      build(name, s=short)
  assert build("semckd", s=short).student_features == ("stage1.out",)


def test_baselines_config_sets_dkd_beta_per_pair_and_pairs_list_the_numbers():
  from config_loading import load
  from configs import pairs
  beta = lambda arg: methods.resolve(load("cifar100/baselines.py", arg).method).beta  # noqa
  assert beta("method=dkd,teacher=resnet56,student=resnet20") == 2.0
  assert beta("method=dkd,teacher=wrn_40_2,student=wrn_16_2") == 6.0
  assert beta("method=dkd,teacher=resnet32x4,student=resnet8x4") == 8.0
  assert beta("method=sp,teacher=resnet56,student=resnet20") == 3000.0
  assert pairs.expected_top1("cifar100", "nst", "resnet8x4", "resnet32x4") == (73.30, "CRD")
  assert pairs.expected_top1("cifar100", "dkd", "ShuffleV2", "resnet32x4") == (77.07, "DKD")
