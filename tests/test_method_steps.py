"""The first training step of every classification method on one resnet8 → resnet8 pair.

One compiled `steps.train_step` per method, checked against independent numbers: its loss
against the method's float64 NumPy reference (imported from the method's own test file,
fed the method's initial parameters from the train state), and its update against SGD's
first step ``−lr·(g + wd·w)`` (the momentum buffer starts at 0) for every student and
method parameter, with g the gradient of the same objective composed here from the
method's gradient w.r.t. its inputs and the student's VJP (compiled once for all methods).
"""
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from afd_jax import methods, steps, train_state
from configs import common
from numpy_reference import np_ce, np_kd, np_pool
from test_afd import _np_total as np_afd_total
from test_aft_kd import np_terms as np_aft_kd_terms
from test_basic_methods import np_at, np_fitnet_hint
from test_hmat import np_hmat
from test_learned_baselines import np_reviewkd, np_semckd, np_vid
from test_relational_methods import np_cc, np_dkd, np_pkt, np_rkd, np_sp
from test_tat import np_global_module
from test_two_stage_methods import np_ft

# One train step compiled per method (~5-10 s each on a CPU core).
pytestmark = pytest.mark.slow

BATCH, CLASSES, SIZE = 8, 10, 32
# Fields that differ from the defaults only to fit an 8-image batch of a 32-example split.
FIELDS = {"semckd": dict(gram_size=BATCH),  # the release's Gram rows: batch == gram_size
          "crd": dict(nce_k=4, feat_dim=16)}
NUM_TRAIN = 32  # CRD's memory bank rows


def _logit_part(hp, sl, tl, y):
  """``ce_weight·CE + kd_weight·KD(τ)`` (every method's logit terms)."""
  total = hp.ce_weight * np_ce(sl, y)
  if getattr(hp, "kd_weight", 0.0):
    total += hp.kd_weight * np_kd(sl, tl, hp.temperature)
  return total


def _first_epoch_warmup(hp):
  return min(1.0 / hp.warmup_epochs, 1.0) if hp.warmup_epochs > 0 else 1.0


def _hmat(hp, p, s, t):
  terms = np_hmat(p, s, t, hp.position_pool, hp.position_distance, hp.channel_distance,
                  hp.mid_reduction)
  return (hp.position_weight * terms["position"] + hp.channel_weight * terms["channel"]
          + hp.activation_weight * (terms["act_mid"] + terms["act_high"]))


def _aft_kd(hp, p, s, t, sl, tl, y):
  """The loss-rate weights are 1 until two windows have completed: plain weighted sum."""
  terms = np_aft_kd_terms(p, s, t, sl, tl, y, lam=hp.feature_weight, temp=hp.temperature)
  afb = (hp.afb_weight if isinstance(hp.afb_weight, tuple) else (hp.afb_weight,) * len(s))
  return (hp.ce_weight * terms["ce"] + hp.kd_weight * terms["kd"]
          + sum(w * terms[f"afb{k}"] for k, w in enumerate(afb, 1)))


def _fitnet(hp, p, s, t):
  r, bn = p["regressor"], p["regressor_bn"]
  kernel = r["kernel"].reshape(r["kernel"].shape[-2:])
  return hp.beta * np_fitnet_hint(s[0], t[0], kernel, r["bias"], bn["scale"], bn["bias"])


def _cc(hp, p, s, t):
  embed = lambda x, n: x @ p[n]["kernel"] + p[n]["bias"]  # noqa: E731
  return hp.beta * np_cc(embed(s[0], "embed_s"), embed(t[0], "embed_t"))


def _nst(s_list, t_list):
  """`test_relational_methods.np_nst` with F.normalize's guard (norm ≥ 1e-12): a channel
  of a post-ReLU stage output can be all zero for an image at initialisation, which the
  plain division there turns into NaN."""
  total = 0.0
  for s, t in zip(s_list, t_list):
    h = min(s.shape[1], t.shape[1])
    def maps(f, h=h):  # (B, C, P), each channel's spatial map normalised
      m = np_pool(f, h, h).reshape(f.shape[0], -1, f.shape[-1]).transpose(0, 2, 1)
      return m / np.maximum(np.linalg.norm(m, axis=2, keepdims=True), 1e-12)
    ms, mt = maps(s), maps(t)
    k = lambda a, b: np.mean([(a[n] @ b[n].T) ** 2 for n in range(len(a))])  # noqa: E731
    total += k(mt, mt) + k(ms, ms) - 2 * k(ms, mt)
  return total


def _dkd(hp, sl, tl, y):
  tckd, nckd = np_dkd(sl, tl, y, hp.temperature)
  return hp.ce_weight * np_ce(sl, y) + _first_epoch_warmup(hp) * (
      hp.alpha * tckd + hp.beta * nckd)


# method -> total loss of the first step from (hp, method params, student features,
# teacher features, student logits, teacher logits, labels), all float64 NumPy.
REFERENCES = {
    "none": lambda hp, p, s, t, sl, tl, y: np_ce(sl, y),
    "kd": lambda hp, p, s, t, sl, tl, y: _logit_part(hp, sl, tl, y),
    "at": lambda hp, p, s, t, sl, tl, y: _logit_part(hp, sl, tl, y) + hp.beta * np_at(s, t),
    "fitnet": lambda hp, p, s, t, sl, tl, y: _logit_part(hp, sl, tl, y) + _fitnet(hp, p, s, t),
    "sp": lambda hp, p, s, t, sl, tl, y: (_logit_part(hp, sl, tl, y)
                                          + hp.beta * sum(map(np_sp, s, t))),
    "pkt": lambda hp, p, s, t, sl, tl, y: (_logit_part(hp, sl, tl, y)
                                           + hp.beta * np_pkt(s[0], t[0])),
    "rkd": lambda hp, p, s, t, sl, tl, y: _logit_part(hp, sl, tl, y) + hp.beta * np_rkd(
        s[0], t[0], hp.distance_weight, hp.angle_weight),
    "cc": lambda hp, p, s, t, sl, tl, y: _logit_part(hp, sl, tl, y) + _cc(hp, p, s, t),
    "nst": lambda hp, p, s, t, sl, tl, y: _logit_part(hp, sl, tl, y) + hp.beta * _nst(s, t),
    "dkd": lambda hp, p, s, t, sl, tl, y: _dkd(hp, sl, tl, y),
    "vid": lambda hp, p, s, t, sl, tl, y: (_logit_part(hp, sl, tl, y)
                                           + hp.beta * np_vid(s, t, p, hp.eps)),
    "reviewkd": lambda hp, p, s, t, sl, tl, y: (
        hp.ce_weight * np_ce(sl, y) + hp.beta * _first_epoch_warmup(hp) * np_reviewkd(
            list(s), list(t), p)),
    "semckd": lambda hp, p, s, t, sl, tl, y: (_logit_part(hp, sl, tl, y)
                                              + hp.beta * np_semckd(s, t, p)[0]),
    "afd": lambda hp, p, s, t, sl, tl, y: np_afd_total(p["meta"], s, t, sl, tl, y, hp.beta)[0],
    "tat": lambda hp, p, s, t, sl, tl, y: (_logit_part(hp, sl, tl, y) + hp.weight
                                           * np_global_module(p, s[0], t[0], hp.learnable_key)),
    "aft_kd": _aft_kd,
    "hmat": lambda hp, p, s, t, sl, tl, y: _logit_part(hp, sl, tl, y) + _hmat(hp, p, s, t),
    # Two-stage methods in their distillation phase: AB and FSP distil in the init phase
    # only (tests/test_two_stage_train.py runs that phase); FT's translator term stays.
    "ab": lambda hp, p, s, t, sl, tl, y: _logit_part(hp, sl, tl, y),
    "fsp": lambda hp, p, s, t, sl, tl, y: _logit_part(hp, sl, tl, y),
    "ft": lambda hp, p, s, t, sl, tl, y: (_logit_part(hp, sl, tl, y)
                                          + hp.beta * np_ft(s[0], t[0], p)),
    # CRD's negatives are drawn inside the step: its value (same negatives) is checked in
    # tests/test_crd.py; here only its update.
    "crd": None,
}
# Segmentation methods (`methods/seg_*.py`): tests/test_seg_methods.py.
CLASSIFICATION_METHODS = sorted(n for n in methods.method_names() if not methods.hparams_class(
    n).__module__.startswith("afd_jax.methods.seg_"))


def test_every_classification_method_is_covered():
  assert sorted(REFERENCES) == CLASSIFICATION_METHODS


def _config(method):
  c = common.digits()
  c.model.name = c.teacher.name = "resnet8"
  c.teacher.checkpoint = "unused"
  c.method = ml_collections.ConfigDict(dict(name=method, **FIELDS.get(method, {})))
  return c


@pytest.fixture(scope="module")
def pair():
  """What every method shares: the batch, the teacher's outputs, the student's initial
  variables, forward and VJP (compiled once)."""
  c = _config("kd")
  nets = train_state.build_networks(c, CLASSES, steps_per_epoch=4)
  rng = np.random.default_rng(0)
  labels = rng.integers(0, CLASSES, NUM_TRAIN).astype(np.int32)
  batch = {"image": jnp.asarray(rng.normal(size=(BATCH, SIZE, SIZE, 3)), jnp.float32),
           "label": jnp.asarray(labels[:BATCH]), "index": jnp.arange(BATCH, dtype=jnp.int32)}
  dummy = jnp.zeros((2, SIZE, SIZE, 3))
  teacher_vars = jax.jit(functools.partial(nets.teacher.init, train=False))(
      jax.random.key(1, impl="rbg"), dummy)
  s_vars = jax.jit(functools.partial(nets.student.init, train=False))(
      jax.random.key(2, impl="rbg"), dummy)
  t_logits, t_feats, _ = jax.jit(functools.partial(steps.forward, nets.teacher, train=False))(
      teacher_vars, batch["image"])
  s_logits, s_feats, _ = jax.jit(functools.partial(steps.forward, nets.student, train=True))(
      s_vars, batch["image"])

  @jax.jit
  def student_vjp(params, cot_logits, cot_feats):
    def f(p):
      logits, feats, _ = steps.forward(nets.student, {**s_vars, "params": p},
                                       batch["image"], train=True)
      return logits, feats
    return jax.vjp(f, params)[1]((cot_logits, cot_feats))[0]

  return dict(config=c, labels=labels, batch=batch, teacher_vars=teacher_vars, s_vars=s_vars,
              t_logits=t_logits, t_feats=t_feats, s_logits=s_logits, s_feats=s_feats,
              student_vjp=student_vjp)


def _f64(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


@pytest.mark.parametrize("method", CLASSIFICATION_METHODS)
def test_first_step_loss_and_sgd_update(method, pair):
  c = _config(method)
  nets = train_state.build_networks(c, CLASSES, steps_per_epoch=4,
                                    train_labels=pair["labels"])
  d = nets.distiller
  assert nets.phase == "main"
  batch, s_feats = pair["batch"], pair["s_feats"]
  s_sel = steps.select(s_feats, d.student_features)
  t_sel = steps.select(pair["t_feats"], d.teacher_features)
  t_logits = pair["t_logits"] if nets.teacher is not None else None
  s_logits, labels = pair["s_logits"], batch["label"]
  index = {"index": batch["index"]} if d.needs_index else {}
  m_vars = jax.jit(functools.partial(d.module.init, train=True))(
      jax.random.key(3, impl="rbg"), s_sel, t_sel, s_logits, t_logits, labels, **index)
  s_vars = pair["s_vars"]
  state = train_state.TrainState.create(
      apply_fn=nets.student.apply, tx=nets.tx,
      params={"student": s_vars["params"], "method": m_vars.get("params", {})},
      batch_stats={"student": s_vars["batch_stats"],
                   "method": m_vars.get("batch_stats", {})},
      method_state=m_vars.get("method_state", {}), rng=jax.random.PRNGKey(4))

  new_state, metrics = jax.jit(functools.partial(steps.train_step, nets))(
      state, batch, pair["teacher_vars"] if nets.teacher is not None else None)
  assert int(new_state.step) == 1 and set(new_state.params) == {"student", "method"}

  # The loss against the float64 reference at the same features and parameters.
  reference = REFERENCES[method]
  if reference is not None:
    hp = getattr(d.module, "hp", None) or methods.resolve(c.method)
    want = reference(hp, _f64(state.params["method"]), _f64(s_sel), _f64(t_sel),
                     _f64(s_logits), None if t_logits is None else _f64(t_logits),
                     np.asarray(labels))
    np.testing.assert_allclose(metrics["loss"], want, rtol=2e-4, err_msg=method)

  # g: the method's gradient w.r.t. its parameters and inputs, then the student's VJP.
  rngs = {"dropout": jax.random.fold_in(state.rng, 0)}

  def objective(m_params, s_in, sl):
    (loss, _), _ = d.module.apply(
        {"params": m_params, "batch_stats": state.batch_stats["method"],
         "method_state": state.method_state}, s_in, t_sel, sl, t_logits, labels,
        train=True, mutable=["batch_stats", "method_state"], rngs=rngs, **index)
    return loss

  g_method, g_sel, g_logits = jax.jit(jax.grad(objective, argnums=(0, 1, 2)))(
      state.params["method"], s_sel, s_logits)
  cot = {k: jnp.zeros_like(v) for k, v in s_feats.items()}
  for name, g in zip(d.student_features, g_sel):
    cot[name] = cot[name] + g
  g_student = pair["student_vjp"](s_vars["params"], g_logits, cot)
  grads = {"student": g_student, "method": g_method}

  # SGD's first step: the momentum buffer is the gradient itself (PyTorch-style weight
  # decay added to it), no Nesterov, lr = the base lr (no warm-up).
  lr, wd = c.optim.lr, c.optim.weight_decay
  assert not c.optim.nesterov and c.schedule.warmup_epochs == 0
  np.testing.assert_allclose(metrics["lr"], lr, rtol=1e-7)
  frozen = d.init_phase.frozen_after if d.init_phase is not None else ()
  old, new, grads = _f64(state.params), _f64(new_state.params), _f64(grads)
  # Gradients that vanish analytically (a bias before BatchNorm) are float32 noise.
  noise = 1e-6 * lr * max(float(np.abs(g).max()) for g in jax.tree.leaves(grads))
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    keys = tuple(k.key for k in path)
    w = functools.reduce(lambda t, k: t[k], keys, old)
    got = functools.reduce(lambda t, k: t[k], keys, new)
    want = w if keys[0] == "method" and keys[1] in frozen else w - lr * (g + wd * w)
    # float32 storage: a few ulps of w, plus 1 % of the step (gradients in float32)
    tol = 1e-2 * np.abs(want - w) + 4 * np.finfo(np.float32).eps * np.abs(w) + noise
    err = np.abs(got - want)
    assert np.all(err <= tol), (jax.tree_util.keystr(path), float(np.max(err - tol)))
  moved = max(float(np.max(np.abs(n - o))) for n, o in zip(
      jax.tree.leaves(new["student"]), jax.tree.leaves(old["student"])))
  assert moved > 0
