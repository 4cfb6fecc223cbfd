"""AFT-KD (an interpretation): AFB distances and the adaptive weights against NumPy."""
import chex
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from afd_jax.methods import FeatureInfo, PairingError, build_method
from afd_jax.methods import aft_kd
from numpy_reference import fd_check, np_ce, np_kd, np_softmax
from sharding_checks import assert_eager_jit_and_sharded_agree


# ---- independent NumPy reference ------------------------------------------------------


def np_l2n(x):
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def np_at(f):
  return np_l2n((f ** 2).mean(axis=-1).reshape(f.shape[0], -1))


def np_afb(s, proj, t, lam):
  att = np.mean((np_at(s) - np_at(t)) ** 2)
  flat = lambda x: np_l2n(x.reshape(x.shape[0], -1))  # noqa: E731
  feat = np.mean((flat(proj) - flat(t)) ** 2)
  return att + lam * feat, att, feat


def np_bn(x, scale, bias):
  return (x - x.mean(axis=(0, 1, 2))) / np.sqrt(x.var(axis=(0, 1, 2)) + 1e-5) * scale + bias


def np_dwa_weights(losses, window, temp, average="mean", decay=0.99):
  """(steps, n) losses -> (steps, n) weights in force at each step (before its update)."""
  steps, n = losses.shape
  ema, snapshots = None, []
  for i in range(steps):
    ema = losses[i] if ema is None else decay * ema + (1 - decay) * losses[i]
    if (i + 1) % window == 0:
      done = losses[i + 1 - window:i + 1]
      snapshots.append(done.mean(axis=0) if average == "mean" else ema.copy())
  weights = np.ones((steps, n))
  for i in range(steps):
    e = i // window  # windows completed before step i
    if e >= 2:
      rate = snapshots[e - 1] / snapshots[e - 2]
      weights[i] = n * np_softmax(rate / temp)
  return weights


def rand(rng, *shape, scale=1.0):
  return (rng.randn(*shape) * scale).astype(np.float32)


# ---- pure functions -------------------------------------------------------------------


def test_afb_loss_value_and_gradient():
  rng = np.random.RandomState(0)
  s, proj, t = rand(rng, 3, 4, 5, 6), rand(rng, 3, 4, 5, 7), np.abs(rand(rng, 3, 4, 5, 7))
  got = aft_kd.afb_loss(s, proj, t, 0.7)
  want = np_afb(*map(np.float64, (s, proj, t)), 0.7)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-5)
  s, proj, t = map(np.float64, (s, proj, t))
  with jax.enable_x64(True):  # float64 gradients, checked at every coordinate to 1e-6
    gs, gp = jax.tree.map(np.asarray, jax.grad(
        lambda a, b: aft_kd.afb_loss(a, b, t, 0.7)[0], argnums=(0, 1))(s, proj))
  assert gs.dtype == gp.dtype == np.float64
  fd_check(lambda x: np_afb(x, proj, t, 0.7)[0], gs, s)
  fd_check(lambda x: np_afb(s, x, t, 0.7)[0], gp, proj)


@pytest.mark.parametrize("average", ["mean", "ema"])
def test_rate_weights_follow_dwa_over_a_scripted_history(average):
  rng = np.random.RandomState(3)
  window, n, steps, temp = 3, 4, 14, 0.5
  # Decaying losses at different, noisy rates, so the weights move away from 1.
  decay_rates = np.array([0.95, 0.8, 0.99, 0.7])
  losses = (np.exp(rng.rand(n)) * decay_rates ** np.arange(steps)[:, None]
            * (1 + 0.2 * rng.rand(steps, n))).astype(np.float32)
  want = np_dwa_weights(np.float64(losses), window, temp, average, decay=0.9)
  state = aft_kd.init_rate_state(n)
  update = jax.jit(lambda st, l: aft_kd.update_rate_state(st, l, window, average, 0.9))
  for i in range(steps):
    w = aft_kd.rate_weights(state, temp, warmup_windows=2)
    np.testing.assert_allclose(w, want[i], rtol=1e-5, err_msg=f"step {i}")
    state = update(state, losses[i])
  assert int(state["step"]) == steps and int(state["windows"]) == steps // window
  assert not np.allclose(want[-1], 1.0)  # the script really exercises the softmax
  np.testing.assert_allclose(np.sum(want[-1]), n, rtol=1e-6)


def test_rate_weights_with_a_longer_warmup():
  state = aft_kd.init_rate_state(2)
  state = dict(state, history=np.array([[1.0, 2.0], [2.0, 1.0]], np.float32),
               windows=np.int32(2))
  np.testing.assert_array_equal(aft_kd.rate_weights(state, 1.0, warmup_windows=3), [1.0, 1.0])
  w = aft_kd.rate_weights(state, 1.0, warmup_windows=2)
  np.testing.assert_allclose(w, 2 * np_softmax(np.array([0.5, 2.0])), rtol=1e-6)


# ---- the module ---------------------------------------------------------------------


S_SHAPES = ((8, 8, 8, 3), (8, 4, 4, 5))
T_SHAPES = ((8, 8, 8, 4), (8, 4, 4, 6))


def make(fields, steps_per_epoch=2, s_shapes=S_SHAPES, t_shapes=T_SHAPES, seed=0):
  cfg = ml_collections.ConfigDict(dict(name="aft_kd", **fields))
  student = FeatureInfo("s", {f"stage{i}.out": sh for i, sh in enumerate(s_shapes, 1)})
  teacher = FeatureInfo("t", {f"stage{i}.out": sh for i, sh in enumerate(t_shapes, 1)})
  d = build_method(cfg, student=student, teacher=teacher,
                   steps_per_epoch=steps_per_epoch)
  batch = inputs(seed, s_shapes, t_shapes)
  variables = jax.jit(lambda *a: d.module.init(*a, train=True))(jax.random.PRNGKey(seed),
                                                                 *batch)
  keys = iter(jax.random.split(jax.random.PRNGKey(seed + 1), 100))
  params = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(next(keys), p.shape),
                        variables["params"])
  return d, {**variables, "params": params}, batch


def inputs(seed, s_shapes=S_SHAPES, t_shapes=T_SHAPES, scale=1.0):
  rng = np.random.RandomState(seed)
  s = [rand(rng, *sh, scale=scale) for sh in s_shapes]
  t = [np.abs(rand(rng, *sh)) for sh in t_shapes]
  b = s_shapes[0][0]
  return s, t, rand(rng, b, 10, scale=2), rand(rng, b, 10, scale=2), rng.randint(0, 10, b)


def step(d, variables, batch, train=True):
  """One training application: (loss, metrics), updated collections."""
  return d.module.apply(variables, *batch, train=train,
                        mutable=["batch_stats", "method_state"])


def np_terms(p, s_feats, t_feats, sl, tl, y, lam=1.0, temp=4.0):
  terms = {"ce": np_ce(sl, y), "kd": np_kd(sl, tl, temp)}
  for k, (s, t) in enumerate(zip(s_feats, t_feats), start=1):
    proj = np_bn(s @ p[f"phi{k}_conv"]["kernel"][0, 0], p[f"phi{k}_bn"]["scale"],
                 p[f"phi{k}_bn"]["bias"])
    terms[f"afb{k}"] = np_afb(s, proj, t, lam)[0]
  return terms


def f64(tree):
  return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


def test_fixed_weighting_value_and_gradient():
  fields = dict(weighting="fixed", ce_weight=0.5, kd_weight=2.0, afb_weight=(100.0, 300.0),
                feature_weight=0.5)
  d, variables, batch = make(fields)
  s_feats, t_feats, sl, tl, y = batch
  (loss, metrics), grad = jax.jit(jax.value_and_grad(
      lambda s: step(d, variables, (s, t_feats, sl, tl, y))[0], has_aux=True))(s_feats)
  p = f64(variables["params"])
  terms = np_terms(p, *f64(batch[:4]), batch[4], lam=0.5)
  for name, value in terms.items():
    np.testing.assert_allclose(metrics[name], value, rtol=1e-4, err_msg=name)
  want = 0.5 * terms["ce"] + 2.0 * terms["kd"] + 100 * terms["afb1"] + 300 * terms["afb2"]
  np.testing.assert_allclose(loss, want, rtol=1e-4)

  def f(x, k):
    s = list(f64(s_feats))
    s[k] = x
    terms = np_terms(p, s, f64(t_feats), np.float64(sl), np.float64(tl), y, lam=0.5)
    return 100 * terms["afb1"] + 300 * terms["afb2"]
  fd_check(lambda x: f(x, 0), grad[0], s_feats[0], seed=4)
  fd_check(lambda x: f(x, 1), grad[1], s_feats[1], seed=5)


def test_module_rate_weights_follow_its_own_loss_history():
  window = 2
  d, variables, _ = make({"rate_temperature": 0.5}, steps_per_epoch=window)
  assert int(variables["method_state"]["step"]) == 0  # init does not count as a step
  run = jax.jit(lambda v, b: step(d, v, b))
  names, history, seen_w = ["ce", "kd", "afb1", "afb2"], [], []
  for i in range(9):
    # Shrinking student features and logits: the terms decay at different rates.
    s, t, sl, tl, y = inputs(10 + i, scale=0.8 ** i)
    (loss, metrics), new = run(variables, (s, t, 0.8 ** i * sl, tl, y))
    history.append([float(metrics[n]) for n in names])
    w = np.array([float(metrics[f"w_{n}"]) for n in names])
    seen_w.append(w)
    base = np.array([1.0, 1.0, 1000.0, 1000.0])
    np.testing.assert_allclose(loss, np.sum(w * base * history[-1]), rtol=1e-5)
    variables = {**variables, **new}
  want = np_dwa_weights(np.array(history), window, 0.5)
  np.testing.assert_allclose(np.array(seen_w), want, rtol=1e-4)
  assert not np.allclose(want[-1], 1.0)
  state = variables["method_state"]
  assert int(state["step"]) == 9 and int(state["windows"]) == 4
  # Evaluation leaves the history alone even when the collection is mutable.
  _, same = step(d, variables, inputs(0), train=False)
  chex.assert_trees_all_equal(same["method_state"], state)


def test_ema_average_and_window_override():
  d, variables, _ = make({"rate_average": "ema", "ema_decay": 0.5, "rate_window_steps": 1},
                         steps_per_epoch=100)
  run = jax.jit(lambda v, b: step(d, v, b))
  names, history, seen_w = ["ce", "kd", "afb1", "afb2"], [], []
  for i in range(5):
    (_, metrics), new = run(variables, inputs(20 + i, scale=0.7 ** i))
    history.append([float(metrics[n]) for n in names])
    seen_w.append([float(metrics[f"w_{n}"]) for n in names])
    variables = {**variables, **new}
  want = np_dwa_weights(np.array(history), 1, 2.0, "ema", decay=0.5)
  np.testing.assert_allclose(np.array(seen_w), want, rtol=1e-4)
  assert not np.allclose(want[-1], 1.0)


def test_zero_weight_terms_leave_the_weighting():
  d, variables, batch = make({"kd_weight": 0.0})
  assert variables["method_state"]["history"].shape == (2, 3)  # CE, afb1, afb2
  (_, metrics), _ = jax.jit(lambda v, b: step(d, v, b))(variables, batch)
  assert "w_kd" not in metrics and "kd" not in metrics


def test_history_survives_an_orbax_round_trip(tmp_path):
  d, variables, _ = make({}, steps_per_epoch=2)
  run = jax.jit(lambda v, b: step(d, v, b))
  for i in range(5):
    _, new = run(variables, inputs(40 + i, scale=0.8 ** i))
    variables = {**variables, **new}
  state = variables["method_state"]
  ckpt = ocp.StandardCheckpointer()
  ckpt.save(tmp_path / "method_state", state)
  ckpt.wait_until_finished()
  restored = ckpt.restore(tmp_path / "method_state", jax.tree.map(np.zeros_like, state))
  chex.assert_trees_all_equal(restored, state)
  chex.assert_trees_all_equal_dtypes(restored, state)
  batch = inputs(50)
  (loss_a, m_a), new_a = run(variables, batch)
  (loss_b, m_b), new_b = run({**variables, "method_state": restored}, batch)
  np.testing.assert_array_equal(loss_a, loss_b)
  chex.assert_trees_all_equal(new_a["method_state"], new_b["method_state"])


def test_jit_nojit_and_eight_devices_agree():
  shapes_s = ((16, 8, 8, 3), (16, 4, 4, 5))
  shapes_t = ((16, 8, 8, 4), (16, 4, 4, 6))
  d, variables, batch = make({}, s_shapes=shapes_s, t_shapes=shapes_t)
  # Two windows of history so that the weights are not all 1.
  variables["method_state"] = dict(variables["method_state"], windows=np.int32(2),
                                   history=np.array([[1, 2, 3, 4], [2, 2, 2, 2]], np.float32))
  assert_eager_jit_and_sharded_agree(lambda v, b: step(d, v, b), variables, batch)


# ---- building -----------------------------------------------------------------------


def test_stage_count_mismatch_names_both_lists():
  student = FeatureInfo("resnet20", {f"stage{i}.out": (2, 8, 8, 4) for i in (1, 2, 3)})
  teacher = FeatureInfo("resnet18", {f"stage{i}.out": (2, 8, 8, 4) for i in (1, 2, 3, 4)})
  cfg = ml_collections.ConfigDict(dict(name="aft_kd"))
  with pytest.raises(PairingError, match=r"resnet20.*stage3\.out.*resnet18.*stage4\.out"):
    build_method(cfg, student=student, teacher=teacher)
  cfg = ml_collections.ConfigDict(dict(name="aft_kd", student_stages=(1, 2, 3),
                                       teacher_stages=(2, 3, 4)))
  d = build_method(cfg, student=student, teacher=teacher)
  assert d.teacher_features == ("stage2.out", "stage3.out", "stage4.out")
  cfg = ml_collections.ConfigDict(dict(name="aft_kd", afb_weight=(1.0, 2.0)))
  with pytest.raises(ValueError, match="afb_weight"):
    build_method(cfg, student=student, teacher=student)
  with pytest.raises(ValueError, match="weighting"):
    build_method(ml_collections.ConfigDict(dict(name="aft_kd", weighting="auto")),
                 student=student, teacher=student)
