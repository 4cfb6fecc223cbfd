"""CRD against a plain-NumPy float64 reference of the release (gathered bank rows, the
first-batch Z, the momentum update) fed the module's own parameters, banks and sampled
indices; its negatives; eager == jit == 8 devices with the banks sharded along N;
published defaults; feature selection."""
import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from afd_jax import methods, parallel
from afd_jax.methods import crd
from numpy_reference import fd_check, np_ce


N, C, B, K, D = 48, 4, 8, 16, 8  # examples, classes, batch, negatives, feat_dim
LABELS = np.random.default_rng(0).permutation(np.arange(N) % C)


def rbg_key(seed):
  """XLA:CPU compiles 'rbg' keys' sampling much faster than threefry's."""
  return jax.random.key(seed, impl="rbg")


def f32(x):
  return jnp.asarray(x, jnp.float32)


def _info(model, pooled):
  return methods.FeatureInfo(model, {"stage1.out": (2, 4, 4, 3), "pooled": (2, pooled)})


STUDENT, TEACHER = _info("s", 6), _info("t", 10)


def build(**overrides):
  cfg = ml_collections.ConfigDict({"name": "crd", "feat_dim": D, "nce_k": K, **overrides})
  return methods.build_method(cfg, student=STUDENT, teacher=TEACHER, train_labels=LABELS)


def batch(seed, index=None):
  """(s_feats, t_feats, s_logits, t_logits, labels), index: B distinct examples."""
  rng = np.random.default_rng(seed)
  index = rng.choice(N, B, replace=False) if index is None else np.asarray(index)
  args = ([f32(rng.normal(size=(B, 6)))], [f32(rng.normal(size=(B, 10)))],
          f32(rng.normal(size=(B, 5))), f32(rng.normal(size=(B, 5))),
          jnp.asarray(LABELS[index], jnp.int32))
  return args, jnp.asarray(index, jnp.int32)


def np_state(variables):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), variables)


# ---- independent NumPy reference of the release (float64) ------------------------------


def np_embed(x, p):
  y = x @ p["kernel"] + p["bias"]
  return y / np.sqrt((y ** 2).sum(1, keepdims=True))


def np_nce(x, n, eps=1e-7):
  """crd/criterion.py ContrastLoss; x (B, K + 1), column 0 the positive."""
  c = (x.shape[1] - 1) / n
  return -(np.log(x[:, 0] / (x[:, 0] + c + eps)).sum()
           + np.log(c / (x[:, 1:] + c + eps)).sum()) / x.shape[0]


def np_crd(s, t, params, bank1, bank2, idx, z=None, temp=0.07):
  """crd/memory.py ContrastMemory + CRDLoss: returns (loss, (Z_v1, Z_v2), v1, v2)."""
  v1, v2 = np_embed(s, params["embed_s"]), np_embed(t, params["embed_t"])
  out_v1 = np.exp(np.einsum("bkd,bd->bk", bank2[idx], v1) / temp)  # gathered rows
  out_v2 = np.exp(np.einsum("bkd,bd->bk", bank1[idx], v2) / temp)
  if z is None:
    z = (out_v1.mean() * len(bank1), out_v2.mean() * len(bank1))
  n = len(bank1)
  return np_nce(out_v1 / z[0], n) + np_nce(out_v2 / z[1], n), z, v1, v2


def np_update(bank, index, v, m=0.5):
  rows = m * bank[index] + (1 - m) * v
  out = bank.copy()
  out[index] = rows / np.sqrt((rows ** 2).sum(1, keepdims=True))
  return out


# ---- value, Z, bank update, gradient --------------------------------------------------


def apply(d, variables, args, index, seed):
  """A train call: ((loss, metrics), {'method_state', 'intermediates'})."""
  return d.module.apply(variables, *args, train=True, index=index,
                        rngs={"dropout": rbg_key(seed)},
                        mutable=["method_state", "intermediates"])


step = jax.jit(apply, static_argnums=0)


@pytest.fixture(scope="module")
def initialised():
  """The built method and its initial variables (no 'dropout' rng at init)."""
  d = build()
  args, index = batch(1)
  init = jax.jit(d.module.init, static_argnames="train")
  return d, init(rbg_key(0), *args, train=True, index=index)


def test_loss_z_and_bank_update_match_the_release_over_two_steps(initialised):
  d, variables = initialised
  assert d.needs_index and d.student_features == d.teacher_features == ("pooled",)
  state = variables["method_state"]
  stdv = 1 / np.sqrt(D / 3)
  for name in ("memory_v1", "memory_v2"):
    assert state[name].shape == (N, D)
    assert np.abs(state[name]).max() <= stdv and np.abs(state[name]).max() > 0.9 * stdv
  assert not np.allclose(state["memory_v1"], state["memory_v2"])
  np.testing.assert_array_equal(state["z"], [-1, -1])
  params = np_state(variables["params"])
  assert params["embed_s"]["kernel"].shape == (6, D)

  z, banks = None, state
  for seed in (1, 2):  # the first step sets Z, the second keeps it
    args, index = batch(seed)
    (loss, metrics), mut = step(d, {"params": variables["params"], "method_state": banks},
                                args, index, seed)
    idx = np.asarray(mut["intermediates"]["contrast_idx"][0])
    assert idx.shape == (B, K + 1)
    np.testing.assert_array_equal(idx[:, 0], index)  # the positive: the example itself
    assert np.all(LABELS[idx[:, 1:]] != LABELS[np.asarray(index)][:, None])
    b1, b2 = np.asarray(banks["memory_v1"], np.float64), np.asarray(banks["memory_v2"],
                                                                    np.float64)
    s, t = (np.asarray(a[0], np.float64) for a in args[:2])
    want, want_z, v1, v2 = np_crd(s, t, params, b1, b2, idx, z)
    np.testing.assert_allclose(metrics["crd"], want, rtol=1e-5)
    np.testing.assert_allclose(loss, np_ce(np.asarray(args[2], np.float64),
                                           np.asarray(args[4])) + 0.8 * want, rtol=1e-5)
    np.testing.assert_allclose(mut["method_state"]["z"], want_z, rtol=1e-5)
    index = np.asarray(index)
    for name, bank, v in (("memory_v1", b1, v1), ("memory_v2", b2, v2)):
      np.testing.assert_allclose(mut["method_state"][name], np_update(bank, index, v),
                                 rtol=1e-5, atol=1e-6)
    z, banks = want_z, mut["method_state"]


def test_gradient_matches_finite_differences_with_the_same_negatives(initialised):
  d, variables = initialised
  args, index = batch(3)
  _, mut = step(d, variables, args, index, 7)  # sets Z
  variables = {"params": variables["params"], "method_state": mut["method_state"]}
  params, state = np_state(variables["params"]), np_state(mut["method_state"])

  def crd_term(x, t):
    (_, metrics), m = d.module.apply(variables, [x], [t], *args[2:], train=True,
                                     index=index, rngs={"dropout": rbg_key(8)},
                                     mutable=["intermediates"])
    return metrics["crd"], m["intermediates"]["contrast_idx"][0]

  (grad_s, grad_t), idx = jax.jit(jax.grad(crd_term, argnums=(0, 1), has_aux=True))(
      args[0][0], args[1][0])
  np.testing.assert_array_equal(grad_t, 0)  # the teacher feature is a constant
  t = np.asarray(args[1][0], np.float64)
  fd_check(lambda x: np_crd(x, t, params, state["memory_v1"], state["memory_v2"],
                            np.asarray(idx), tuple(state["z"]))[0],
           grad_s, args[0][0], n=8, rtol=3e-3, atol=1e-6)


def test_eval_and_init_leave_banks_and_z_alone(initialised):
  d, variables = initialised
  args, index = batch(4)
  (loss, _), mut = jax.jit(lambda v: d.module.apply(  # no rng: a fixed key
      v, *args, train=False, index=index, mutable=["method_state"]))(variables)
  assert np.isfinite(loss)
  chex.assert_trees_all_equal(mut["method_state"], variables["method_state"])


# ---- negatives -------------------------------------------------------------------------


def draws(labels, index, k, n_draws, replace=None, **kw):
  """`n_draws` samples (n_draws, B, k + 1); replace None: the module's rule."""
  split = crd.TrainingSplit(LABELS)
  replace = split.replacement(k) if replace is None else replace
  sample = jax.jit(jax.vmap(lambda key: crd.sample_contrast_idx(
      key, jnp.asarray(labels), jnp.asarray(index), jnp.asarray(split.class_order),
      jnp.asarray(split.class_start), k, replace=replace, **kw)))
  return np.asarray(sample(jax.random.split(rbg_key(0), n_draws)))


# 36 other-class examples: the release draws 16 without replacement, 40 with
@pytest.mark.parametrize("k", [K, 40])
def test_negatives_are_other_class_examples_and_column_0_the_anchor(k):
  index = np.array([0, 5, 17, 30])
  idx = draws(LABELS[index], index, k, 400)  # (draws, 4, k + 1)
  np.testing.assert_array_equal(idx[..., 0], np.broadcast_to(index, idx.shape[:2]))
  negatives = idx[..., 1:]
  assert np.all(LABELS[negatives] != LABELS[index][None, :, None])
  distinct = np.array([[len(np.unique(row)) for row in d] for d in negatives])
  assert crd.TrainingSplit(LABELS).replacement(k) is (k > N - N // C)
  if k > N - N // C:  # with replacement: repeats
    assert np.all(distinct <= N - N // C) and np.any(distinct < N - N // C)
  else:
    assert np.all(distinct == k)
  for a, anchor in enumerate(index):  # every other-class example is drawn, uniformly
    counts = np.bincount(negatives[:, a].ravel(), minlength=N)
    other = LABELS != LABELS[anchor]
    assert np.all(counts[~other] == 0)
    expected = negatives[:, a].size / other.sum()
    assert counts[other].min() > 0.7 * expected and counts[other].max() < 1.3 * expected


def test_relax_mode_and_forced_replacement():
  index = np.array([0, 5, 17, 30])
  idx = draws(LABELS[index], index, K, 200, replace=True, relax=True)
  assert np.all(LABELS[idx[..., 0]] == LABELS[index])  # a positive of the class
  assert len(np.unique(idx[:, 0, 0])) == N // C  # every example of the class
  assert np.all(LABELS[idx[..., 1:]] != LABELS[index][None, :, None])
  distinct = np.array([[len(np.unique(row)) for row in d] for d in idx[..., 1:]])
  assert np.any(distinct < K)  # with replacement although K ≤ the negatives


# ---- sharding, defaults, building ------------------------------------------------------


def test_eager_jit_and_8_devices_agree_with_the_banks_sharded(initialised):
  assert jax.device_count() == 8, "tests/conftest.py must force 8 host devices"
  d, variables = initialised
  args, index = batch(5, index=np.arange(B) * 5)
  _, mut = step(d, variables, args, index, 1)  # sets Z
  variables = {"params": variables["params"], "method_state": mut["method_state"]}
  data = (args, index)

  def f(v, data):
    args, index = data
    (loss, metrics), mut = d.module.apply(v, *args, train=True, index=index,
                                          rngs={"dropout": rbg_key(2)},
                                          mutable=["method_state"])
    return loss, metrics, mut["method_state"]

  eager = f(variables, data)
  chex.assert_trees_all_close(jax.jit(f)(variables, data), eager, rtol=1e-5, atol=1e-6)
  for mesh in (jax.make_mesh((8,), ("data",)),  # Explicit axes (sharding in types)
               parallel.make_mesh(8)):  # the loop's mesh
    shardings = parallel.state_sharding(mesh, variables)
    assert shardings["method_state"]["memory_v1"].spec == P("data")
    placed = jax.device_put(variables, shardings)
    sharded = jax.jit(f)(placed, jax.device_put(data, NamedSharding(mesh, P("data"))))
    chex.assert_trees_all_close(sharded, eager, rtol=1e-5, atol=1e-6)
    assert sharded[2]["memory_v2"].sharding.spec[0] == "data"  # the banks stay split


def test_published_defaults():
  hp = methods.resolve({"name": "crd"})
  want = dict(ce_weight=1.0, kd_weight=0.0, beta=0.8, feat_dim=128, nce_k=16384,
              nce_t=0.07, nce_m=0.5, mode="exact", replacement=None)
  assert {f: getattr(hp, f) for f in want} == want
  assert methods.needs_labels("crd") and methods.needs_teacher("crd")


def test_builder_errors():
  no_pooled = methods.FeatureInfo("s", {"stage1.out": (2, 4, 4, 3)})
  cfg = ml_collections.ConfigDict(dict(name="crd"))
  with pytest.raises(methods.PairingError, match="pooled"):
    methods.build_method(cfg, student=no_pooled, teacher=TEACHER, train_labels=LABELS)
  with pytest.raises(methods.PairingError, match="pooled"):
    methods.build_method(cfg, student=STUDENT, teacher=no_pooled, train_labels=LABELS)
  with pytest.raises(ValueError, match="train_labels"):
    methods.build_method(cfg, student=STUDENT, teacher=TEACHER)
  with pytest.raises(ValueError, match="two classes"):
    methods.build_method(cfg, student=STUDENT, teacher=TEACHER,
                         train_labels=np.zeros(8, int))
  with pytest.raises(ValueError, match="mode"):
    build(mode="approx")
  with pytest.raises(ValueError, match="without replacement"):
    build(nce_k=40, replacement=False)
