"""Specification tests for AFD (`afd_jax.methods.afd`), its link heatmap and its configs.

The reference below (`_np_*`) is an independent plain-NumPy float64 implementation of
``shared/specs/afd.md``: loops instead of einsums, PyTorch's adaptive-pooling bin rule
written out per output cell, no grouping of teacher shapes. Gradients are checked against
central finite differences of that reference.
"""
import math

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from afd_jax.analysis import heatmap as link_heatmap
from afd_jax.methods import FeatureInfo, PairingError, build_method
from afd_jax.methods.afd import AFD, Config, afd_feature_names


BN_EPS = 1e-5


def _cfg(**fields):
  return ml_collections.ConfigDict(dict(name="afd", **fields))


# ---- FeatureInfo of the reference architectures, written out by hand -----------------


def _cifar_resnet_info(name, depth, widths=(16, 32, 64), stem=16, b=2):
  """Post-activation CIFAR ResNet: n = (depth-2)/6 blocks per stage at 32, 16, 8 px."""
  n = (depth - 2) // 6
  shapes = {"stem": (b, 32, 32, stem)}
  for i, (w, hw) in enumerate(zip(widths, (32, 16, 8)), 1):
    for j in range(1, n + 1):
      shapes[f"stage{i}.block{j}"] = (b, hw, hw, w)
    shapes[f"stage{i}.preact"] = shapes[f"stage{i}.out"] = (b, hw, hw, w)
  shapes["pooled"] = (b, widths[-1])
  return FeatureInfo(name, shapes)


def _resnet_4stage_info(name, blocks, hw0=32, b=2):
  """resnet18/34: BasicBlocks of widths 64..512, resolution halving per stage."""
  shapes = {"stem": (b, hw0, hw0, 64)}
  for i, (n, w) in enumerate(zip(blocks, (64, 128, 256, 512)), 1):
    hw = hw0 >> (i - 1)
    for j in range(1, n + 1):
      shapes[f"stage{i}.block{j}"] = (b, hw, hw, w)
    shapes[f"stage{i}.preact"] = shapes[f"stage{i}.out"] = (b, hw, hw, w)
  shapes["pooled"] = (b, 512)
  return FeatureInfo(name, shapes)


def _wrn_info(depth, k, b=2):
  """Pre-activation WRN: block j's act_in is relu(bn1(its input)); the net's first block
  sees the 16-channel stem, a stage's first block its predecessor's output resolution."""
  n, widths = (depth - 4) // 6, (16 * k, 32 * k, 64 * k)
  shapes = {"stem": (b, 32, 32, 16)}
  c_in, hw_in = 16, 32
  for i, w in enumerate(widths, 1):
    hw = 32 >> (i - 1)
    for j in range(1, n + 1):
      shapes[f"stage{i}.block{j}.act_in"] = (b, hw_in, hw_in, c_in)
      shapes[f"stage{i}.block{j}"] = (b, hw, hw, w)
      c_in, hw_in = w, hw
    shapes[f"stage{i}.preact"] = (b, hw, hw, w)
  shapes["final.act"] = (b, 8, 8, widths[-1])
  shapes["pooled"] = (b, widths[-1])
  return FeatureInfo(f"wrn_{depth}_{k}", shapes)


HAND_INFOS = {
    "resnet20": _cifar_resnet_info("resnet20", 20),
    "resnet56": _cifar_resnet_info("resnet56", 56),
    "resnet110": _cifar_resnet_info("resnet110", 110),
    "resnet8x4": _cifar_resnet_info("resnet8x4", 8, (64, 128, 256), 32),
    "resnet32x4": _cifar_resnet_info("resnet32x4", 32, (64, 128, 256), 32),
    "wrn_16_2": _wrn_info(16, 2),
    "wrn_28_2": _wrn_info(28, 2),
    "wrn_40_2": _wrn_info(40, 2),
    "resnet18": _resnet_4stage_info("resnet18", (2, 2, 2, 2)),
    "resnet34": _resnet_4stage_info("resnet34", (3, 4, 6, 3)),
    "resnet18_imagenet": _resnet_4stage_info("resnet18_imagenet", (2, 2, 2, 2), 56),
    "resnet34_imagenet": _resnet_4stage_info("resnet34_imagenet", (3, 4, 6, 3), 56),
}


def _meta_param_count(teacher: FeatureInfo, student: FeatureInfo, qk_dim=128) -> int:
  """Parameters of the AFD module built for this pair (shapes only, via eval_shape)."""
  distiller = build_method(_cfg(qk_dim=qk_dim), student=student, teacher=teacher)
  sds = lambda shape: jax.ShapeDtypeStruct(shape, jnp.float32)
  s = [sds(student.shapes[n]) for n in distiller.student_features]
  t = [sds(teacher.shapes[n]) for n in distiller.teacher_features]
  logits, labels = sds((2, 100)), jax.ShapeDtypeStruct((2,), jnp.int32)
  variables = jax.eval_shape(
      lambda *a: distiller.module.init(jax.random.key(0), *a, train=True),
      s, t, logits, logits, labels)
  return sum(math.prod(x.shape) for x in jax.tree.leaves(variables["params"]))


@pytest.mark.parametrize("teacher,student,expected", [
    ("wrn_40_2", "wrn_16_2", 543_488),
    ("wrn_40_2", "wrn_28_2", 603_904),
    ("resnet56", "resnet20", 643_200),
    ("resnet110", "resnet20", 643_200),
    ("resnet34", "resnet18", 1_009_664),
    ("resnet34_imagenet", "resnet18_imagenet", 1_009_664),
])
def test_meta_network_parameter_count_matches_reference(teacher, student, expected):
  assert _meta_param_count(HAND_INFOS[teacher], HAND_INFOS[student]) == expected


@pytest.mark.parametrize("model,count", [
    ("resnet20", 9), ("resnet56", 27), ("resnet110", 27), ("resnet8x4", 3),
    ("resnet32x4", 15), ("wrn_16_2", 6), ("wrn_28_2", 12), ("wrn_40_2", 18),
    ("resnet18", 8), ("resnet34", 16), ("resnet18_imagenet", 8),
    ("resnet34_imagenet", 16),
])
def test_feature_selection_counts(model, count):
  names = afd_feature_names(HAND_INFOS[model])
  assert len(names) == count
  assert not {"stem", "pooled"} & set(names)


def test_feature_selection_details():
  wrn = afd_feature_names(HAND_INFOS["wrn_40_2"])
  assert wrn[0] == "stage1.block2.act_in" and wrn[-1] == "final.act"
  assert "stage1.block1.act_in" not in wrn
  # Equal thirds at 32, 16, 8 px: a stage's first act_in sits at the previous resolution.
  spatial = [HAND_INFOS["wrn_40_2"].shapes[n][1] for n in wrn]
  assert spatial == [32] * 6 + [16] * 6 + [8] * 6
  r110 = afd_feature_names(HAND_INFOS["resnet110"])
  # Blocks 2, 4, ..., 54 of the whole net: stage 2 starts at global block 19.
  assert r110[:2] == ("stage1.block2", "stage1.block4")
  assert r110[9:11] == ("stage2.block2", "stage2.block4")
  assert r110[-1] == "stage3.block18"


def test_pairing_error_names_both_feature_lists():
  bad = FeatureInfo("mystery_net", {"stem": (2, 32, 32, 16),
                                    "stage1.out": (2, 32, 32, 16), "pooled": (2, 16)})
  with pytest.raises(PairingError, match="stage<i>.block<j>") as err:
    build_method(_cfg(), student=bad, teacher=HAND_INFOS["wrn_40_2"])
  assert "mystery_net" in str(err.value) and "wrn_40_2" in str(err.value)
  assert "stage1.block2.act_in" in str(err.value)  # the teacher's list is shown too
  # A WRN whose sown features lack the pre-activations AFD needs.
  shapes = HAND_INFOS["wrn_16_2"].shapes
  no_act_in = FeatureInfo("wrn_16_2",
                          {k: v for k, v in shapes.items() if not k.endswith("act_in")})
  with pytest.raises(PairingError, match="act_in"):
    build_method(_cfg(), student=HAND_INFOS["resnet20"], teacher=no_act_in)


def _real_info(name):
  from afd_jax.models import feature_list, get_model
  model = get_model(name, 100)
  x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  variables = jax.eval_shape(
      lambda x: model.init(jax.random.key(0), x, train=False, mutable=True), x)
  feats = feature_list(variables["intermediates"])
  return FeatureInfo(name, {k: tuple(v.shape) for k, v in feats.items()})


def test_real_models_match_hand_built_shapes_and_counts():
  teacher, student = _real_info("wrn_40_2"), _real_info("wrn_16_2")
  for info in (teacher, student):
    names = afd_feature_names(info)
    hand = HAND_INFOS[info.model]
    assert names == afd_feature_names(hand)
    assert [info.shapes[n] for n in names] == [hand.shapes[n] for n in names]
  assert _meta_param_count(teacher, student) == 543_488
  assert len(afd_feature_names(_real_info("resnet110"))) == 27


# ---- independent NumPy reference -----------------------------------------------------


def _np_adaptive_pool(m, out_h, out_w):
  """PyTorch's adaptive_avg_pool2d of (B, H, W), cell by cell.

  Output cell i spans input rows floor(i·H/h) .. ceil((i+1)·H/h) − 1; same for columns.
  """
  b, h, w = m.shape
  out = np.zeros((b, out_h, out_w))
  for i in range(out_h):
    h0, h1 = (i * h) // out_h, -(-((i + 1) * h) // out_h)
    for j in range(out_w):
      w0, w1 = (j * w) // out_w, -(-((j + 1) * w) // out_w)
      out[:, i, j] = m[:, h0:h1, w0:w1].mean(axis=(1, 2))
  return out


def _np_l2n(x):
  return x / np.maximum(np.sqrt((x ** 2).sum(-1, keepdims=True)), 1e-12)


def _np_linear_bn(x, p, relu):
  """Dense then train-mode BatchNorm (biased batch variance) over axis 0."""
  y = x @ p["dense"]["kernel"] + p["dense"]["bias"]
  y = (y - y.mean(0)) / np.sqrt(y.var(0) + BN_EPS) * p["bn"]["scale"] + p["bn"]["bias"]
  return np.maximum(y, 0.0) if relu else y


def _np_log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _np_afd(meta, s_feats, t_feats):
  """(L_AFD, att (B, nt, ns), D (B, nt, ns)) of the spec, one pair at a time."""
  nt, ns = len(t_feats), len(s_feats)
  q = np.stack([_np_linear_bn(t.mean((1, 2)), meta[f"query_{i}"], False)
                for i, t in enumerate(t_feats)], 1)
  k = np.stack([_np_linear_bn(s.mean((1, 2)), meta[f"key_{i}"], True)
                for i, s in enumerate(s_feats)], 1)
  b, _, d = k.shape
  kb = _np_linear_bn(k.reshape(b * ns, d), meta["bilinear"], False).reshape(b, ns, nt, d)
  logits = np.zeros((b, nt, ns))
  for i in range(b):
    for t in range(nt):
      for s in range(ns):
        pos = meta["p_t"][t] @ meta["p_s"][s]
        logits[i, t, s] = (kb[i, s, t] @ q[i, t] + pos) / np.sqrt(d)
  att = np.exp(_np_log_softmax(logits))
  dist = np.zeros((b, nt, ns))
  for t, tf in enumerate(t_feats):
    v_t = _np_l2n((tf ** 2).mean(-1).reshape(b, -1))
    for s, sf in enumerate(s_feats):
      pooled = _np_adaptive_pool((sf ** 2).mean(-1), tf.shape[1], tf.shape[2])
      dist[:, t, s] = ((_np_l2n(pooled.reshape(b, -1)) - v_t) ** 2).mean(-1)
  loss = sum((att[:, t] * dist[:, t]).sum(-1).mean() for t in range(nt))
  return loss, att, dist


def _np_total(meta, s_feats, t_feats, s_logits, t_logits, labels, beta):
  afd, att, _ = _np_afd(meta, s_feats, t_feats)
  ce = -_np_log_softmax(s_logits)[np.arange(len(labels)), labels].mean()
  lpt, lps = _np_log_softmax(t_logits / 4.0), _np_log_softmax(s_logits / 4.0)
  kd = 16.0 * (np.exp(lpt) * (lpt - lps)).sum(-1).mean()
  return ce + 0.9 * kd + beta * afd, afd, att


# ---- the module against the reference ------------------------------------------------

# Several resolutions: two teachers share 8x8 (one group); students are pooled down
# (6x6 -> 4x4 and 2x2 with overlapping bins) and up (2x2 -> 8x8; 3x5 -> 8x8, 4x4) to them.
T_SHAPES = [(8, 8, 6), (8, 8, 5), (4, 4, 7), (2, 2, 9)]
S_SHAPES = [(6, 6, 3), (3, 5, 4), (2, 2, 8)]
QK_DIM, BETA, CLASSES = 8, 200.0, 10
# Few distinct shapes (cheap to compile, and to run eagerly, where every op compiles on
# first use) for the jit and sharding tests, which the reference test above them backs.
SMALL = dict(t_shapes=[(4, 4, 4), (2, 2, 4), (2, 2, 4)], s_shapes=[(3, 3, 4), (2, 2, 4)])


def _problem(batch, dtype, seed=0, t_shapes=T_SHAPES, s_shapes=S_SHAPES):
  """Random features/logits/labels, the module and its variables (params in `dtype`)."""
  rng = np.random.default_rng(seed)
  s = [jnp.asarray(np.abs(rng.normal(size=(batch, *sh))), dtype) for sh in s_shapes]
  t = [jnp.asarray(np.abs(rng.normal(size=(batch, *sh))), dtype) for sh in t_shapes]
  sl = jnp.asarray(rng.normal(size=(batch, CLASSES)), dtype)
  tl = jnp.asarray(rng.normal(size=(batch, CLASSES)), dtype)
  y = jnp.asarray(rng.integers(0, CLASSES, size=batch), jnp.int32)
  module = AFD(Config(beta=BETA, qk_dim=QK_DIM))
  variables = jax.jit(lambda key, *a: module.init(key, *a, train=True))(
      jax.random.key(seed), s, t, sl, tl, y)
  # Perturbed BN scale/bias (init 1/0) and embeddings, so every parameter is exercised.
  params = jax.tree.map(lambda p: jnp.asarray(p + 0.1 * rng.normal(size=p.shape), dtype),
                        variables["params"])
  return module, params, variables["batch_stats"], (s, t, sl, tl, y)


def _apply(module, params, batch_stats, s, t, sl, tl, y):
  (loss, metrics), state = module.apply(
      {"params": params, "batch_stats": batch_stats}, s, t, sl, tl, y, train=True,
      mutable=["batch_stats", "intermediates"])
  return loss, (metrics, state)


def _value_and_grads(module, params, batch_stats, data):
  """(loss, (metrics, state)), grads w.r.t. (params, student feats, teacher feats)."""
  s, t, sl, tl, y = data
  fn = lambda p, s_, t_: _apply(module, p, batch_stats, s_, t_, sl, tl, y)
  return jax.value_and_grad(fn, argnums=(0, 1, 2), has_aux=True)(params, s, t)


def _central_difference(f, x, idx, eps=1e-6):
  """(f(x + eps·e_idx) − f(x − eps·e_idx)) / 2eps, perturbing NumPy `x` in place, and
  the bound on its rounding error (16 ulps of f per evaluation: ~2e-8 here, where a
  derivative that is exactly 0, e.g. of a bias before BatchNorm, reads as ~1e-9)."""
  old = x[idx]
  x[idx] = old + eps
  up = f()
  x[idx] = old - eps
  down = f()
  x[idx] = old
  return (up - down) / (2 * eps), 16 * np.finfo(np.float64).eps * max(abs(up), abs(down)) / eps


def test_matches_numpy_reference_float64():
  with jax.enable_x64(True):
    module, params, bs, data = _problem(batch=4, dtype=jnp.float64)
    step = jax.jit(lambda p, b, d: _value_and_grads(module, p, b, d))
    out = jax.tree.map(np.asarray, step(params, bs, data))  # to NumPy while x64 is on
  (loss, (metrics, state)), (g_params, g_s, g_t) = out
  meta = jax.tree.map(np.array, params)["meta"]
  s, t, sl, tl, y = [jax.tree.map(np.array, x) for x in data]
  ref_total, ref_afd, ref_att = _np_total(meta, s, t, sl, tl, y, BETA)

  att = state["intermediates"]["attention"][0]
  chex.assert_shape(att, (4, len(T_SHAPES), len(S_SHAPES)))
  np.testing.assert_allclose(att, ref_att, rtol=1e-9, atol=1e-12)
  np.testing.assert_allclose(att.sum(-1), 1.0, rtol=1e-12)
  np.testing.assert_allclose(metrics["afd"], ref_afd, rtol=1e-9)
  assert set(metrics) >= {"ce", "kd", "afd"}
  # CE/KD run in float32 (base.cross_entropy casts), hence the looser total.
  np.testing.assert_allclose(loss, ref_total, rtol=1e-6)

  # Running statistics: momentum 0.9 from (0, 1), with the batch mean of Dense(g_t).
  dense = meta["query_0"]["dense"]
  g0 = t[0].mean((1, 2)) @ dense["kernel"] + dense["bias"]
  new_mean = state["batch_stats"]["meta"]["query_0"]["bn"]["mean"]
  np.testing.assert_allclose(new_mean, 0.1 * g0.mean(0), rtol=1e-9, atol=1e-12)

  # The frozen teacher gets no gradient.
  assert all(float(np.abs(g).max()) == 0.0 for g in g_t)

  # Gradients: central differences of the NumPy reference, at float64 tolerances. Every
  # pooling bin: every spatial position of every student feature (one example, one
  # channel each), which pools into every teacher resolution; every link's positional
  # logit: every row of p_t (teacher t) and p_s (student s); one coordinate of every other
  # meta-network parameter.
  rng = np.random.default_rng(7)
  f = lambda: _np_total(meta, s, t, sl, tl, y, BETA)[0]  # noqa: E731
  for i, feat in enumerate(s):
    b, h, w, c = feat.shape
    for hh in range(h):
      for ww in range(w):
        idx = (int(rng.integers(b)), hh, ww, int(rng.integers(c)))
        want, rounding = _central_difference(f, feat, idx)
        np.testing.assert_allclose(g_s[i][idx], want, rtol=1e-5, atol=1e-9 + rounding,
                                   err_msg=f"student feature {i} {idx}")
  g_meta = dict(jax.tree_util.tree_leaves_with_path(g_params["meta"]))
  for path, leaf in jax.tree_util.tree_leaves_with_path(meta):
    rows = range(leaf.shape[0]) if jax.tree_util.keystr(path) in ("['p_s']", "['p_t']") else [
        int(rng.integers(leaf.shape[0]))]
    for row in rows:
      idx = (row,) + tuple(int(rng.integers(n)) for n in leaf.shape[1:])
      want, rounding = _central_difference(f, leaf, idx)
      np.testing.assert_allclose(g_meta[path][idx], want, rtol=1e-5, atol=1e-9 + rounding,
                                 err_msg=f"{jax.tree_util.keystr(path)} {idx}")


def test_jit_matches_eager():
  module, params, bs, data = _problem(batch=4, dtype=jnp.float32, seed=1, **SMALL)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(params, batch_stats, data):
    return _value_and_grads(module, params, batch_stats, data)

  jitted, _ = step(params, bs, data)
  step(params, bs, data)  # a second call must not retrace
  # Forward only: eager gradients would compile every backward op one by one (slow);
  # the jitted gradients are checked against finite differences above.
  eager = _apply(module, params, bs, *data)
  chex.assert_trees_all_close(jitted, eager, rtol=1e-5, atol=1e-6)


def test_sharded_over_8_devices_matches_single_device():
  assert jax.device_count() == 8, "tests/conftest.py must force 8 host devices"
  module, params, bs, data = _problem(batch=16, dtype=jnp.float32, seed=3, **SMALL)
  step = jax.jit(lambda p, b, d: _value_and_grads(module, p, b, d))
  single = step(params, bs, data)

  mesh = jax.make_mesh((8,), ("data",))
  batch_sharded, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
  data8 = jax.device_put(data, batch_sharded)
  params8, bs8 = jax.device_put((params, bs), replicated)
  sharded = step(params8, bs8, data8)
  assert sharded[1][1][0].sharding.spec[0] == "data"  # student-feature grads stay sharded
  # BatchNorm statistics are global: the updated running means match the single device's.
  # (atol: gradients that vanish analytically, e.g. of a Dense bias before BN, are noise.)
  chex.assert_trees_all_close(sharded, single, rtol=1e-5, atol=1e-5)


# ---- link heatmap --------------------------------------------------------------------


def _cell_colours(fig, nt, ns):
  """RGB at the centre of every heatmap cell (t, s) of the drawn `fig`, (nt, ns, 3)."""
  ax = fig.axes[0]
  rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3]
  height = rgb.shape[0]
  out = np.zeros((nt, ns, 3), np.uint8)
  for t in range(nt):
    for s in range(ns):
      x, y = ax.transData.transform((s, t))  # imshow: column s, row t; display y is up
      out[t, s] = rgb[int(round(height - y)), int(round(x))]
  return out


def test_link_heatmap_rows_are_teacher_features_in_order(tmp_path):
  """A known attention matrix, drawn and read back: row t (top to bottom) is teacher
  feature t and carries att[t], column s student feature s; labels sit on their rows."""
  t_names = afd_feature_names(HAND_INFOS["wrn_40_2"])[:5]
  s_names = afd_feature_names(HAND_INFOS["wrn_16_2"])[:3]
  # Each row one-hot, at a column no other pattern shares: a transposed, flipped or
  # re-ordered drawing reads back differently.
  att = np.zeros((5, 3))
  att[np.arange(5), [2, 0, 1, 0, 2]] = 1.0
  att[4] = [0.25, 0.25, 0.5]
  img = link_heatmap.render_links(att, t_names, s_names, "wrn_40_2 -> wrn_16_2")
  fig = link_heatmap._links_figure(att, t_names, s_names, "wrn_40_2 -> wrn_16_2")
  fig.canvas.draw()
  np.testing.assert_array_equal(img, np.asarray(fig.canvas.buffer_rgba())[..., :3])
  ax = fig.axes[0]
  assert (ax.get_ylabel(), ax.get_xlabel()) == ("teacher feature", "student feature")
  assert [label.get_text() for label in ax.get_yticklabels()] == list(t_names)
  assert [label.get_text() for label in ax.get_xticklabels()] == list(s_names)
  # Each label at its row's (column's) centre on screen.
  for t, label in enumerate(ax.get_yticklabels()):
    box = label.get_window_extent()
    assert abs((box.y0 + box.y1) / 2 - ax.transData.transform((0, t))[1]) < 2, t_names[t]
  for s, label in enumerate(ax.get_xticklabels()):
    box = label.get_window_extent()
    assert abs((box.x0 + box.x1) / 2 - ax.transData.transform((s, 0))[0]) < 2, s_names[s]
  # The colours read back: viridis of att / max(att) (vmin 0) in every cell.
  cmap = ax.images[0].get_cmap()
  want = (np.asarray(cmap(att / att.max()))[..., :3] * 255).round()
  np.testing.assert_allclose(_cell_colours(fig, 5, 3), want, atol=2)
  assert img.shape[0] >= 200 and img.shape[1] >= 200
  path = link_heatmap.save_links_png(str(tmp_path / "links" / "att.png"), att, t_names,
                                     s_names, "wrn_40_2 -> wrn_16_2")
  from PIL import Image
  png = np.asarray(Image.open(path).convert("RGB"))
  np.testing.assert_array_equal(png, img)  # the file holds the drawing read back above
  with pytest.raises(ValueError, match="shape"):
    link_heatmap.render_links(att.T, t_names, s_names)
