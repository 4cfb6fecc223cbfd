"""AB, FT and FSP (two-stage methods): both phases' objectives (``init_loss`` and
``__call__``) against plain-NumPy float64 references fed the modules' own parameters,
their gradients, published defaults, the built init phases, and eager == jit == 8
devices."""
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from afd_jax import methods
from afd_jax.methods import ab, fsp, ft
from numpy_reference import fd_check, np_ce, np_kd, np_pool
from sharding_checks import assert_eager_jit_and_sharded_agree


def f32(x):
  return jnp.asarray(x, jnp.float32)


def np_params(variables):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])


# ---- independent NumPy building blocks (float64) ---------------------------------------


def np_conv(x, kernel, bias, stride=1, pad=0):
  """PyTorch Conv2d: (B, H, W, Ci) x (kh, kw, Ci, Co), zero padding `pad` on each side."""
  kh, kw = kernel.shape[:2]
  xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  oh = (xp.shape[1] - kh) // stride + 1
  ow = (xp.shape[2] - kw) // stride + 1
  out = sum(xp[:, i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride]
            @ kernel[i, j] for i in range(kh) for j in range(kw))
  return out + bias


def np_conv_transpose(x, kernel, bias, stride=1, pad=0):
  """PyTorch ConvTranspose2d, kernel stored (kh, kw, Co, Ci): input pixel (i, j) adds
  ``x[i, j] @ W[a, c]`` at output (s·i + a − pad, s·j + c − pad)."""
  b, h, w, _ = x.shape
  kh, kw = kernel.shape[:2]
  full = np.zeros((b, (h - 1) * stride + kh, (w - 1) * stride + kw, kernel.shape[2]))
  for i in range(kh):
    for j in range(kw):
      full[:, i:i + stride * (h - 1) + 1:stride, j:j + stride * (w - 1) + 1:stride] += (
          x @ kernel[i, j].T)
  return full[:, pad:full.shape[1] - pad, pad:full.shape[2] - pad] + bias


def np_bn(x, p):
  """Train-mode BatchNorm over all axes but the last (biased variance, eps 1e-5)."""
  axes = tuple(range(x.ndim - 1))
  return (x - x.mean(axes)) / np.sqrt(x.var(axes) + 1e-5) * p["scale"] + p["bias"]


def np_leaky(x):
  return np.where(x > 0, x, 0.1 * x)


def np_to_smaller(a, b):
  h, w = min(a.shape[1], b.shape[1]), min(a.shape[2], b.shape[2])
  return np_pool(a, h, w), np_pool(b, h, w)


def init(module, args, rng):
  """Variables with the names and shapes the module's ``__call__`` creates (what the loop
  initialises), filled with random values: BN affines included, so nothing is trivial."""
  shapes = jax.eval_shape(functools.partial(module.init, train=True),
                          jax.random.PRNGKey(0), *args)
  params = jax.tree.map(lambda a: f32(rng.normal(size=a.shape) * 0.5),
                        shapes.get("params", {}))
  stats = jax.tree.map(lambda a: jnp.ones(a.shape, a.dtype),
                       shapes.get("batch_stats", {}))
  return {"params": params, "batch_stats": stats}


def is_zero(tree):
  return not any(np.any(np.asarray(a)) for a in jax.tree.leaves(tree))


@functools.partial(jax.jit, static_argnums=0)
def both_phases(module, variables, args):
  """Per phase (``'init_loss'``, ``'__call__'``), in train mode: (loss, metrics, gradient of
  the loss w.r.t. (params, student features, teacher features)). One compile."""
  out = {}
  for phase in ("init_loss", "__call__"):
    def loss_fn(params, s_feats, t_feats, phase=phase):
      (loss, metrics), _ = module.apply({**variables, "params": params}, s_feats, t_feats,
                                        *args[2:], train=True, method=phase,
                                        mutable=["batch_stats"])
      return loss, metrics
    (loss, metrics), grads = jax.value_and_grad(loss_fn, argnums=(0, 1, 2), has_aux=True)(
        variables["params"], args[0], args[1])
    out[phase] = (loss, metrics, grads)
  return out


# ---- AB --------------------------------------------------------------------------------

# Five pairs, one per connector of the release (models/util.py: Connector / ConvReg):
# identity (equal shapes), 1x1 (equal size, more channels), 3x3 stride 2 (student twice
# the teacher), 4x4 stride-2 transposed (student half the teacher), valid 2x2 (3 -> 2).
AB_S = [(4, 4, 3), (4, 4, 3), (4, 4, 2), (2, 2, 3), (3, 3, 2)]
AB_T = [(4, 4, 3), (4, 4, 5), (2, 2, 3), (4, 4, 2), (2, 2, 2)]
AB_CONNECTORS = [None, ("conv", 1, 0, (1, 1)), ("conv", 2, 1, (3, 3)),
                 ("transpose", 2, 1, (4, 4)), ("conv", 1, 0, (2, 2))]


def np_connect(x, p, spec):
  if spec is None:
    return x
  kind, stride, pad, _ = spec
  conv = np_conv if kind == "conv" else np_conv_transpose
  return np_bn(conv(x, p["conv"]["kernel"], p["conv"]["bias"], stride, pad), p["bn"])


def np_alternative_l2(s, t, margin=1.0):
  return np.sum((s + margin) ** 2 * ((s > -margin) & (t <= 0)) +
                (s - margin) ** 2 * ((s <= margin) & (t > 0)))


def np_ab(s_list, t_list, p, specs=AB_CONNECTORS):
  n, b = len(s_list), s_list[0].shape[0]
  total = 0.0
  for k, (s, t, spec) in enumerate(zip(s_list, t_list, specs)):
    total += 2.0 ** (k - n + 1) * np_alternative_l2(np_connect(s, p.get(f"connector_{k}"),
                                                               spec), t)
  return total / b / 1000 * 3


def test_ab_both_phases_and_gradient_with_its_connectors():
  rng = np.random.default_rng(0)
  b = 4
  s_list = [rng.normal(size=(b,) + s) for s in AB_S]
  t_list = [rng.normal(size=(b,) + t) for t in AB_T]
  y, s_logits, t_logits = rng.integers(0, 5, b), rng.normal(size=(b, 5)), rng.normal(
      size=(b, 5))
  module = ab.AB(ab.Config())
  args = ([f32(a) for a in s_list], [f32(a) for a in t_list], f32(s_logits), f32(t_logits),
          jnp.asarray(y))
  variables = init(module, args, rng)
  p = np_params(variables)
  assert sorted(p) == ["connector_1", "connector_2", "connector_3", "connector_4"]
  for k, spec in enumerate(AB_CONNECTORS[1:], 1):
    cin, cout = AB_S[k][-1], AB_T[k][-1]
    # transposed kernels are stored (kh, kw, out, in), as PyTorch's (in, out, kh, kw)
    io = (cout, cin) if spec[0] == "transpose" else (cin, cout)
    assert p[f"connector_{k}"]["conv"]["kernel"].shape == spec[3] + io

  out = both_phases(module, variables, args)
  ab_value, metrics, (_, g_s, g_t) = out["init_loss"]
  want = np_ab(s_list, t_list, p)
  assert want > 1e-3  # every pair contributes: a real check
  np.testing.assert_allclose(metrics["ab"], want, rtol=1e-5)
  np.testing.assert_allclose(ab_value, want, rtol=1e-5)
  for k in (0, 3, 4):  # identity, transposed and valid connectors
    fd_check(lambda x, k=k: np_ab(s_list[:k] + [x] + s_list[k + 1:], t_list, p),
             g_s[k], s_list[k], rtol=2e-3, atol=1e-8)
  assert is_zero(g_t)  # the teacher is a constant
  # the distillation phase: the release's loss_kd = 0, so CE only (kd_weight 0)
  loss, metrics, (g_p, g_s, _) = out["__call__"]
  np.testing.assert_allclose(loss, np_ce(s_logits, y), rtol=1e-5)
  assert set(metrics) == {"ce"}
  assert is_zero(g_p) and is_zero(g_s)


def test_ab_alternative_loss_branches():
  s = np.array([-2.0, -0.5, 0.5, 2.0, -0.5, 0.5, 2.0, -2.0])
  t = np.array([-1.0, -1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 1.0])
  # t <= 0: (s + 1)² unless s <= -1; t > 0: (s − 1)² unless s > 1
  want = 0 + 0.25 + 2.25 + 9 + 2.25 + 0.25 + 0 + 9
  np.testing.assert_allclose(ab.alternative_l2(f32(s), f32(t), 1.0), want, rtol=1e-6)
  np.testing.assert_allclose(np_alternative_l2(s, t), want)


# ---- FT --------------------------------------------------------------------------------


def np_paraphraser(t, p):
  """Returns (factor, reconstruction)."""
  x = t
  for i in range(3):
    x = np_leaky(np_conv(x, p[f"encoder_{i}"]["kernel"], p[f"encoder_{i}"]["bias"], 1, 1))
  factor = x
  for i in range(3):
    d = p[f"decoder_{i}"]
    x = np_leaky(np_conv_transpose(x, d["kernel"], d["bias"], 1, 1))
  return factor, x


def np_translator(s, p):
  for i in range(3):
    c = p[f"conv_{i}"]
    s = np_leaky(np_bn(np_conv(s, c["kernel"], c["bias"], 1, 1), p[f"bn_{i}"]))
  return s


def np_factor(f):
  a = (f ** 2).mean(-1).reshape(f.shape[0], -1)
  return a / np.linalg.norm(a, axis=1, keepdims=True)


def np_ft(s, t, p):
  fs, ft_ = np_to_smaller(np_translator(s, p["translator"]),
                          np_paraphraser(t, p["paraphraser"])[0])
  return np.mean(np.abs(np_factor(fs) - np_factor(ft_)))


def np_ft_init(t, p):
  return np.mean((np_paraphraser(t, p["paraphraser"])[1] - t) ** 2)


def test_ft_both_phases_and_gradients_with_its_paraphraser_and_translator():
  rng = np.random.default_rng(1)
  b = 4
  s, t = rng.normal(size=(b, 4, 4, 3)), rng.normal(size=(b, 2, 2, 4))
  y, s_logits = rng.integers(0, 5, b), rng.normal(size=(b, 5))
  module = ft.FT(ft.Config())
  args = ([f32(s)], [f32(t)], f32(s_logits), None, jnp.asarray(y))
  variables = init(module, args, rng)
  p = np_params(variables)
  assert sorted(p) == ["paraphraser", "translator"]
  assert "bn_0" not in p["paraphraser"]  # no BN in the paraphraser
  assert p["paraphraser"]["encoder_1"]["kernel"].shape == (3, 3, 4, 2)  # rate 0.5 of 4
  assert p["translator"]["conv_2"]["kernel"].shape == (3, 3, 2, 2)

  out = both_phases(module, variables, args)
  mse, metrics, (g_p, g_s, g_t) = out["init_loss"]
  np.testing.assert_allclose(mse, np_ft_init(t, p), rtol=1e-5)
  np.testing.assert_allclose(metrics["reconstruction"], np_ft_init(t, p), rtol=1e-5)
  # the init phase trains the paraphraser (encoder and decoder), nothing else
  for name in ("encoder_0", "decoder_2"):
    def np_init_k(k, name=name):
      q = jax.tree.map(lambda a: a, p)
      q["paraphraser"][name]["kernel"] = k
      return np_ft_init(t, q)
    fd_check(np_init_k, g_p["paraphraser"][name]["kernel"],
             p["paraphraser"][name]["kernel"], rtol=3e-3, atol=1e-8)
  assert is_zero(g_p["translator"]) and is_zero(g_s) and is_zero(g_t)

  loss, metrics, (g_p, g_s, g_t) = out["__call__"]
  want = np_ft(s, t, p)
  np.testing.assert_allclose(metrics["ft"], want, rtol=1e-5)
  np.testing.assert_allclose(loss, np_ce(s_logits, y) + 200.0 * want, rtol=1e-5)
  fd_check(lambda x: 200.0 * np_ft(x, t, p), g_s[0], s, rtol=3e-3, atol=1e-8)
  # the paraphraser is frozen in the distillation phase: its factor is a constant
  assert is_zero(g_p["paraphraser"]) and is_zero(g_t)
  assert not is_zero(g_p["translator"]["conv_0"]["kernel"])


# ---- FSP -------------------------------------------------------------------------------


def np_fsp_matrices(feats):
  out = []
  for bottom, top in zip(feats[:-1], feats[1:]):
    bottom, top = np_to_smaller(bottom, top)
    b, h, w, _ = bottom.shape
    out.append(np.einsum("bpi,bpj->bij", bottom.reshape(b, h * w, -1),
                         top.reshape(b, h * w, -1)) / (h * w))
  return out


def np_fsp(s_list, t_list):
  return sum(np.mean((gs - gt) ** 2)
             for gs, gt in zip(np_fsp_matrices(s_list), np_fsp_matrices(t_list)))


def test_fsp_both_phases_and_gradient():
  rng = np.random.default_rng(2)
  b = 4
  # pairs pool the bottom (3x3 -> 2x2: overlapping bins; 4x4 -> 2x2) or the top (4 -> 2)
  s_list = [rng.normal(size=(b, 3, 3, 2)), rng.normal(size=(b, 2, 2, 3)),
            rng.normal(size=(b, 4, 4, 3))]
  t_list = [rng.normal(size=(b, 4, 4, 2)), rng.normal(size=(b, 4, 4, 3)),
            rng.normal(size=(b, 2, 2, 3))]
  y, s_logits, t_logits = rng.integers(0, 5, b), rng.normal(size=(b, 5)), rng.normal(
      size=(b, 5))
  module = fsp.FSP(fsp.Config(kd_weight=0.5))
  args = ([f32(a) for a in s_list], [f32(a) for a in t_list], f32(s_logits), f32(t_logits),
          jnp.asarray(y))
  variables = init(module, args, rng)
  assert not jax.tree.leaves(variables)  # no learnable parts
  out = both_phases(module, variables, args)
  value, metrics, (_, g_s, g_t) = out["init_loss"]
  np.testing.assert_allclose(value, np_fsp(s_list, t_list), rtol=1e-5)
  np.testing.assert_allclose(metrics["fsp"], np_fsp(s_list, t_list), rtol=1e-5)
  for k in (0, 2):
    fd_check(lambda x, k=k: np_fsp(s_list[:k] + [x] + s_list[k + 1:], t_list),
             g_s[k], s_list[k], rtol=2e-3, atol=1e-8)
  assert is_zero(g_t)  # the teacher is a constant
  loss, _, (_, g_s, _) = out["__call__"]
  np.testing.assert_allclose(loss, np_ce(s_logits, y) + 0.5 * np_kd(s_logits, t_logits, 4.0),
                             rtol=1e-5)
  assert is_zero(g_s)


# ---- initialisation --------------------------------------------------------------------


def test_learned_parts_start_as_pytorch_defaults():
  """Conv kernels and biases uniform(±1/sqrt(fan_in)) (ConvTranspose2d: fan_in from its
  output channels), BN scale 1 and bias 0, as the release's modules start."""
  rng = np.random.default_rng(4)
  b = 4
  s = [f32(rng.normal(size=(b, 2, 2, 3)))]
  t = [f32(rng.normal(size=(b, 2, 2, 4)))]
  module = ft.FT(ft.Config())  # convs, transposed convs and BN
  key = jax.random.key(0, impl="unsafe_rbg")  # compiles much faster than threefry
  p = np_params(jax.jit(module.init, static_argnames="train")(
      key, s, t, f32(np.zeros((b, 5))), None, jnp.zeros((b,), jnp.int32), train=True))
  leaves = jax.tree_util.tree_flatten_with_path(p)[0]
  assert sum(path[-1].key == "kernel" for path, _ in leaves) == 9
  for path, leaf in leaves:
    parent = jax.tree_util.keystr(path[:-1])
    if path[-1].key == "kernel":
      bound = 1 / np.sqrt(np.prod(leaf.shape[:3]))
      bias = p[path[0].key][path[1].key]["bias"]
      for arr in (leaf, bias):
        assert np.all(np.abs(arr) <= bound) and np.max(np.abs(arr)) > 0.3 * bound, parent
    elif "bn" in parent:
      np.testing.assert_array_equal(leaf, 1.0 if path[-1].key == "scale" else 0.0)


# ---- building: features, init phases, pairing errors -----------------------------------


def _info(model, stages, pooled, stem=None):
  shapes = {}
  if stem is not None:
    shapes["stem"] = (2,) + stem
  for i, (hw, c) in enumerate(stages, 1):
    shapes[f"stage{i}.preact"] = (2, hw, hw, c)
    shapes[f"stage{i}.out"] = (2, hw, hw, c)
  shapes["pooled"] = (2, pooled)
  return methods.FeatureInfo(model, shapes)


STUDENT = _info("resnet8x4", [(4, 3), (2, 4)], 4, stem=(4, 4, 2))
TEACHER = _info("resnet32x4", [(4, 3), (2, 6)], 6, stem=(4, 4, 2))
FSP_TEACHER = _info("resnet32x4", [(4, 3), (2, 4)], 4, stem=(8, 8, 2))


def build(name, student=STUDENT, teacher=TEACHER, **fields):
  return methods.build_method(ml_collections.ConfigDict(dict(name=name, **fields)),
                              student=student, teacher=teacher)


PUBLISHED = {
    "ab": dict(ce_weight=1.0, kd_weight=0.0, margin=1.0, init_epochs=30),
    "ft": dict(ce_weight=1.0, kd_weight=0.0, beta=200.0, rate=0.5, p1=2, p2=1,
               init_epochs=30, init_lr=None),
    "fsp": dict(ce_weight=1.0, kd_weight=0.0, init_epochs=30),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_defaults(name):
  hp = methods.resolve({"name": name})
  for field, value in PUBLISHED[name].items():
    assert getattr(hp, field) == value, (name, field)
  assert methods.needs_teacher(name)


def test_features_and_init_phases_follow_the_release():
  d = build("ab")  # feat[1:-1] with preact=True; the init phase trains the connectors
  assert d.student_features == ("stage1.preact", "stage2.preact")
  assert d.teacher_features == ("stage1.preact", "stage2.preact")
  assert d.init_phase == methods.InitPhase(30, None, train_student=True,
                                           method_modules=("connector_1",),
                                           frozen_after=("connector_1",))
  assert build("ab", teacher=STUDENT).init_phase.method_modules == ()  # all identities

  d = build("ft")  # feat[-2]; the paraphraser alone, at 0.01 for resnet students
  assert d.student_features == d.teacher_features == ("stage2.out",)
  assert d.init_phase == methods.InitPhase(30, 0.01, train_student=False,
                                           method_modules=("paraphraser",),
                                           frozen_after=("paraphraser",))
  for model in ("ShuffleV2", "MobileNetV2", "vgg8"):  # the run's lr
    assert build("ft", student=_info(model, [(4, 3), (2, 4)], 4)).init_phase.lr is None
  assert build("ft", init_lr=0.05).init_phase.lr == 0.05
  assert build("ft", init_epochs=2).init_phase.epochs == 2

  d = build("fsp", teacher=FSP_TEACHER)  # feat[:-1]; the student's feature layers
  assert d.student_features == d.teacher_features == ("stem", "stage1.out", "stage2.out")
  assert d.init_phase == methods.InitPhase(30, None, train_student=True)
  no_stem = _info("vgg8", [(4, 2), (4, 3), (2, 4)], 4)
  assert build("fsp", student=no_stem, teacher=no_stem).student_features == (
      "stage1.out", "stage2.out", "stage3.out")


def test_pairing_errors():
  with pytest.raises(methods.PairingError, match=r"'stage2.out': 4.*'stage2.out': 6"):
    build("fsp")  # unequal channels at stage 2
  with pytest.raises(methods.PairingError, match="stem"):
    build("fsp", student=_info("vgg8", [(4, 2), (4, 3), (2, 4), (2, 4)], 4),
          teacher=FSP_TEACHER)  # feat[:-1] of unequal lengths
  with pytest.raises(methods.PairingError, match="no connector"):
    build("ab", teacher=_info("t", [(4, 3), (8, 6)], 6))  # 2 -> 8: no ConvReg
  with pytest.raises(methods.PairingError, match="student_stages"):
    build("ab", teacher=_info("t", [(4, 3)], 3))
  with pytest.raises(methods.PairingError, match="lacks"):
    build("ft", student=methods.FeatureInfo("s", {"pooled": (2, 4)}))


# ---- eager == jit == 8 devices, both phases --------------------------------------------


@pytest.mark.parametrize("name", ["ab", "ft", "fsp"])
def test_eager_jit_and_8_devices_agree(name):
  teacher = FSP_TEACHER if name == "fsp" else TEACHER
  d = build(name, teacher=teacher)
  rng = np.random.default_rng(3)
  b = 8

  def feats(info, names):
    return [f32(rng.normal(size=(b,) + info.shapes[n][1:])) for n in names]
  data = (feats(STUDENT, d.student_features), feats(teacher, d.teacher_features),
          f32(rng.normal(size=(b, 10))), f32(rng.normal(size=(b, 10))),
          jnp.asarray(rng.integers(0, 10, b)))
  variables = init(d.module, data, rng)

  def f(v, a):  # both phases, with their BatchNorm updates
    return [d.module.apply(v, *a, train=True, method=phase, mutable=["batch_stats"])
            for phase in ("__call__", "init_loss")]
  assert_eager_jit_and_sharded_agree(f, variables, data, rtol=1e-4)


def test_ab_reads_what_the_relu_receives_also_in_pre_activation_wrns():
  """WRN: the stage output is relu(next bn1(raw sum)); AB reads that bn1 output, as the
  release's WRN does with preact=True; the sown map is exactly the ReLU's input."""
  from afd_jax import models, steps, train_state
  model = models.get_model("wrn_16_2", 10)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)), jnp.float32)
  variables = model.init(jax.random.PRNGKey(0), x, train=False)
  _, feats, _ = steps.forward(model, variables, x, train=True)
  for i in (1, 2, 3):
    np.testing.assert_allclose(np.maximum(feats[f"stage{i}.bn_preact"], 0),
                               feats[f"stage{i}.out"], rtol=1e-6, atol=1e-6)
  info = lambda name: methods.FeatureInfo(  # noqa: E731
      name, train_state.feature_shapes(models.get_model(name, 10), 32))
  d = methods.build_method(ml_collections.ConfigDict(dict(name="ab")),
                           student=info("wrn_16_2"), teacher=info("wrn_40_2"))
  assert d.student_features == d.teacher_features == tuple(
      f"stage{i}.bn_preact" for i in (1, 2, 3))
