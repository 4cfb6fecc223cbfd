"""Initial values of every method's learnable parts against its release's PyTorch rule.

Each method module is initialised once at small widths; every tensor it creates must have
a rule here (an unaudited tensor fails), and each is checked for the rule's bounds, mean
and variance (uniform(±b): |x| ≤ b, reaching near b, variance b²/3; untruncated normal:
variance σ², tails past 2.5σ for large tensors; constants exactly). Every BatchNorm must
be PyTorch's (momentum 0.1, *unbiased* running variance), checked on one train-mode call
from the BatchNorm's own input. The releases' rules (PyTorch defaults unless the release
re-initialises): kaiming_uniform(a=√5) → uniform(±1/√fan_in) for conv/linear weights and
biases; kaiming_uniform(a=1) → uniform(±√(3/fan_in)); xavier_normal_ → N(0, 2/(fi+fo)).
"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from afd_jax.methods import (ab, afd, aft_kd, cc, crd, fitnet, ft, hmat, reviewkd, semckd,
                             seg_reviewkd, vid)


def torch_default(fan_in):
  """PyTorch's nn.Conv2d / ConvTranspose2d / Linear default weight and bias init."""
  return ("uniform", 1.0 / math.sqrt(fan_in))


def kaiming_uniform_a1(fan_in):
  return ("uniform", math.sqrt(3.0 / fan_in))


def xavier_normal(fan_in, fan_out):
  return ("normal", math.sqrt(2.0 / (fan_in + fan_out)))


def kaiming_normal_fan_out(fan_out):
  """The zoo's conv init (no release: AFT-KD, HMAT)."""
  return ("normal", math.sqrt(2.0 / fan_out))


ONES, ZEROS = ("const", 1.0), ("const", 0.0)


def bn(prefix):
  return {f"{prefix}/scale": ONES, f"{prefix}/bias": ZEROS}


def check_tensor(path, x, rule):
  kind, v = rule
  x = np.asarray(x, np.float64).ravel()
  n = x.size
  if kind == "const":
    np.testing.assert_array_equal(x, v, err_msg=path)
    return
  top = np.max(np.abs(x))
  if kind == "uniform":
    var, msg = v * v / 3.0, f"{path}: uniform(±{v:.4g}), max |x| {top:.4g}"
    assert top <= v * (1 + 1e-6), msg
    assert top >= v * (1 - 8.0 / n), msg  # P(fail) ≈ e^-8
    rel = 6 * math.sqrt(0.8 / n)  # 6 std of a uniform sample variance
  else:
    var, msg = v * v, f"{path}: N(0, {v:.4g}²), max |x| {top:.4g}"
    if n >= 1000:  # untruncated: some |x| > 2.5σ (P(fail) ≈ 4e-6); jax's truncated ≤ 2.28σ
      assert top > 2.5 * v, msg
    rel = 6 * math.sqrt(2.0 / n)
  assert abs(np.mean(x)) <= 6 * math.sqrt(var / n), f"{msg}, mean {np.mean(x):.4g}"
  if n >= 32:
    assert abs(np.var(x) / var - 1) <= rel, f"{msg}, variance {np.var(x):.4g} vs {var:.4g}"


def check_inits(tree, rules):
  flat = {k: v for k, v in traverse_util.flatten_dict(tree, sep="/").items()}
  assert sorted(flat) == sorted(rules), "every tensor needs a rule (and only those exist)"
  for path, rule in rules.items():
    check_tensor(path, flat[path], rule)


def check_batchnorms_are_pytorch(module, variables, *args, method=None, **kwargs):
  """One train call: every BatchNorm's running stats move as torch.nn.BatchNorm2d's."""

  def run(variables, args):
    inputs = {}

    def record(next_fun, a, kw, context):
      if (type(context.module).__name__.endswith("BatchNorm")
          and context.method_name == "__call__"):
        inputs["/".join(context.module.scope.path)] = a[0]
      return next_fun(*a, **kw)

    with nn.intercept_methods(record):
      _, mut = module.apply(variables, *args, method=method,
                            mutable=["batch_stats", "method_state", "intermediates"],
                            **kwargs)
    return mut["batch_stats"], inputs

  batch_stats, inputs = jax.jit(run)(variables, args)
  stats = traverse_util.flatten_dict(batch_stats, sep="/")
  assert sorted(inputs) == sorted({k.rsplit("/", 1)[0] for k in stats})
  for path, x in inputs.items():
    x = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
    np.testing.assert_allclose(stats[f"{path}/mean"], 0.1 * x.mean(0), rtol=1e-5,
                               atol=1e-7, err_msg=path)
    np.testing.assert_allclose(stats[f"{path}/var"], 0.9 + 0.1 * x.var(0, ddof=1),
                               rtol=1e-5, err_msg=f"{path}: not the unbiased variance")


def rand(*shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


B = 2
LOGITS, LABELS = rand(B, 10), jnp.arange(B)


def init(module, *args, **kwargs):
  return jax.jit(lambda a: module.init(jax.random.key(0), *a, **kwargs))(args)


def test_fitnet_regressor_is_convreg_at_pytorch_defaults():
  s, t = [rand(B, 2, 2, 32)], [rand(B, 2, 2, 64)]
  module = fitnet.FitNet(fitnet.Config(), 64)
  args = (s, t, LOGITS, LOGITS, LABELS)
  variables = init(module, *args, train=True)
  check_inits(variables["params"], {"regressor/kernel": torch_default(32),
                                    "regressor/bias": torch_default(32),
                                    **bn("regressor_bn")})
  check_batchnorms_are_pytorch(module, variables, *args, train=True)


def test_ab_connectors_are_convreg_at_pytorch_defaults():
  # a 3×3 stride-2 conv, a 4×4 stride-2 transposed conv (PyTorch's fan_in: out·16), the
  # identity (no tensors)
  s = [rand(B, 8, 8, 16), rand(B, 2, 2, 16), rand(B, 2, 2, 8)]
  t = [rand(B, 4, 4, 32), rand(B, 4, 4, 32), rand(B, 2, 2, 8)]
  module = ab.AB(ab.Config())
  args = (s, t, LOGITS, LOGITS, LABELS)
  variables = init(module, *args, train=True)
  check_inits(variables["params"], {
      "connector_0/conv/kernel": torch_default(16 * 9),
      "connector_0/conv/bias": torch_default(16 * 9),
      "connector_1/conv/kernel": torch_default(32 * 16),
      "connector_1/conv/bias": torch_default(32 * 16),
      **bn("connector_0/bn"), **bn("connector_1/bn")})
  check_batchnorms_are_pytorch(module, variables, *args, method=module.init_loss,
                               train=True)


def test_ft_paraphraser_and_translator_at_pytorch_defaults():
  s, t = [rand(B, 2, 2, 24)], [rand(B, 2, 2, 64)]  # m = int(0.5·64) = 32
  module = ft.FT(ft.Config())
  args = (s, t, LOGITS, LOGITS, LABELS)
  variables = init(module, *args, train=True)
  rules = {}
  # Conv2d: fan_in = C_in·9; ConvTranspose2d(C_in, C_out): PyTorch's fan_in is C_out·9
  for name, fan_in in (("encoder_0", 64 * 9), ("encoder_1", 64 * 9), ("encoder_2", 32 * 9),
                       ("decoder_0", 32 * 9), ("decoder_1", 64 * 9),
                       ("decoder_2", 64 * 9)):
    rules[f"paraphraser/{name}/kernel"] = rules[f"paraphraser/{name}/bias"] = (
        torch_default(fan_in))
  for i, fan_in in enumerate((24 * 9, 24 * 9, 32 * 9)):
    rules[f"translator/conv_{i}/kernel"] = rules[f"translator/conv_{i}/bias"] = (
        torch_default(fan_in))
    rules.update(bn(f"translator/bn_{i}"))
  check_inits(variables["params"], rules)
  check_batchnorms_are_pytorch(module, variables, *args, train=True)


def test_cc_embeddings_are_linear_at_pytorch_defaults():
  module = cc.CorrelationCongruence(cc.Config())
  variables = init(module, [rand(B, 40)], [rand(B, 72)], LOGITS, LOGITS, LABELS,
                   train=True)
  check_inits(variables["params"], {
      "embed_s/kernel": torch_default(40), "embed_s/bias": torch_default(40),
      "embed_t/kernel": torch_default(72), "embed_t/bias": torch_default(72)})


def test_crd_embeddings_and_memory_banks_as_the_release():
  labels = np.arange(64) % 4
  module = crd.CRD(crd.Config(nce_k=8), crd.TrainingSplit(labels))
  variables = init(module, [rand(B, 40)], [rand(B, 72)], LOGITS, LOGITS, LABELS,
                   train=True, index=jnp.arange(B))
  check_inits(variables["params"], {
      "embed_s/kernel": torch_default(40), "embed_s/bias": torch_default(40),
      "embed_t/kernel": torch_default(72), "embed_t/bias": torch_default(72)})
  # crd/memory.py: rand(N, d)·2·stdv − stdv, stdv = 1/√(d/3)
  bound = 1.0 / math.sqrt(128 / 3)
  for name in ("memory_v1", "memory_v2"):
    check_tensor(name, variables["method_state"][name], ("uniform", bound))


def test_vid_regressors_and_variance_as_the_release():
  module = vid.VID(vid.Config())
  variables = init(module, [rand(B, 2, 2, 16)], [rand(B, 2, 2, 48)], LOGITS, LOGITS,
                   LABELS, train=True)
  check_inits(variables["params"], {
      "regressor_0/conv1/kernel": torch_default(16),
      "regressor_0/conv2/kernel": torch_default(48),
      "regressor_0/conv3/kernel": torch_default(48),
      # VID.py: log(exp(init_pred_var − eps) − 1)
      "regressor_0/log_scale": ("const", np.float32(np.log(np.exp(5.0 - 1e-5) - 1.0)))})


def test_semckd_embeddings_and_regressors_at_pytorch_defaults():
  module = semckd.SemCKD(semckd.Config())  # gram rows of 64, d = 16
  s, t = [rand(B, 2, 2, 8)], [rand(B, 2, 2, 32)]
  args = (s, t, LOGITS, LOGITS, LABELS)
  variables = init(module, *args, train=True)
  rules = {}
  for name in ("query_0", "key_0"):
    for layer, fan_in in (("linear1", 64), ("linear2", 32)):
      rules[f"{name}/{layer}/kernel"] = rules[f"{name}/{layer}/bias"] = torch_default(fan_in)
  rules.update({"regressor_0_0/conv1/kernel": torch_default(8),
                "regressor_0_0/conv2/kernel": torch_default(64 * 9),
                "regressor_0_0/conv3/kernel": torch_default(64),
                **bn("regressor_0_0/bn1"), **bn("regressor_0_0/bn2")})
  check_inits(variables["params"], rules)
  check_batchnorms_are_pytorch(module, variables, *args, train=True)


def test_reviewkd_abfs_as_the_release():
  module = reviewkd.ReviewKD(reviewkd.Config())
  s, t = [rand(B, 4, 4, 8), rand(B, 32)], [rand(B, 4, 4, 16), rand(B, 24)]
  args = (s, t, LOGITS, LOGITS, LABELS)
  variables = init(module, *args, train=True)
  mid = 32  # min(512, width of the student's pooled vector)
  check_inits(variables["params"], {
      "abf_1/conv1/kernel": kaiming_uniform_a1(32), "abf_0/conv1/kernel": kaiming_uniform_a1(8),
      "abf_1/conv2/kernel": kaiming_uniform_a1(mid * 9),
      "abf_0/conv2/kernel": kaiming_uniform_a1(mid * 9),
      "abf_0/att_conv/kernel": torch_default(2 * mid),
      "abf_0/att_conv/bias": torch_default(2 * mid),
      **bn("abf_0/bn1"), **bn("abf_0/bn2"), **bn("abf_1/bn1"), **bn("abf_1/bn2")})
  check_batchnorms_are_pytorch(module, variables, *args, train=True)


def test_seg_reviewkd_abfs_as_the_release():
  module = seg_reviewkd.SegReviewKD(seg_reviewkd.Config(mid_channels=32))
  s, t = [rand(B, 4, 4, 8), rand(B, 4, 4, 24)], [rand(B, 4, 4, 16), rand(B, 4, 4, 16)]
  args = (s, t, rand(B, 4, 4, 5), None, jnp.zeros((B, 4, 4), jnp.int32))
  variables = init(module, *args, train=True)
  check_inits(variables["method_state"], {  # untrained: the release's optimizer skips them
      "abf_0/conv1": kaiming_uniform_a1(8), "abf_1/conv1": kaiming_uniform_a1(24),
      "abf_0/conv2": kaiming_uniform_a1(32 * 9), "abf_1/conv2": kaiming_uniform_a1(32 * 9),
      "abf_0/att_conv": torch_default(64), "abf_0/att_bias": torch_default(64),
      **bn("abf_0/bn1"), **bn("abf_0/bn2"), **bn("abf_1/bn1"), **bn("abf_1/bn2")})
  check_batchnorms_are_pytorch(module, variables, *args, train=True)


def test_afd_meta_network_as_the_release():
  d, nt, ns = 256, 4, 2
  module = afd.AFDMetaNetwork(d)
  s, t = [rand(B, 2, 2, 8)] * ns, [rand(B, 2, 2, 16, seed=1)] * nt
  variables = init(module, s, t, train=True)
  rules = {"bilinear/dense/kernel": torch_default(d), "bilinear/dense/bias": torch_default(d),
           **bn("bilinear/bn"),
           # distill/AFD.py: xavier_normal_ of (n, d): fan_in d, fan_out n, untruncated
           "p_t": xavier_normal(d, nt), "p_s": xavier_normal(d, ns)}
  for name, c in [(f"query_{i}", 16) for i in range(nt)] + [(f"key_{i}", 8)
                                                           for i in range(ns)]:
    rules.update({f"{name}/dense/kernel": torch_default(c),
                  f"{name}/dense/bias": torch_default(c), **bn(f"{name}/bn")})
  check_inits(variables["params"], rules)
  check_batchnorms_are_pytorch(module, variables, s, t, train=True)


@pytest.mark.parametrize("method", ["aft_kd", "hmat"])
def test_interpretations_use_the_zoo_conv_and_pytorch_batchnorm(method):
  # No release exists: the projections follow the zoo's convention (Kaiming-normal
  # fan-out conv, no bias; PyTorch BatchNorm).
  s = [rand(B, 4, 4, 8), rand(B, 2, 2, 16), rand(B, 2, 2, 32)]
  t = [rand(B, 4, 4, 16), rand(B, 2, 2, 32), rand(B, 2, 2, 64)]
  args = (s, t, LOGITS, LOGITS, LABELS)
  if method == "aft_kd":
    module = aft_kd.AFTKD(aft_kd.Config(), (16, 32, 64))
    rules = {}
    for k, (cs, ct) in enumerate(((8, 16), (16, 32), (32, 64)), 1):
      rules.update({f"phi{k}_conv/kernel": kaiming_normal_fan_out(ct), **bn(f"phi{k}_bn")})
  else:
    module = hmat.HMAT(hmat.Config(), 64)
    rules = {"channel_proj_conv/kernel": kaiming_normal_fan_out(64),
             **bn("channel_proj_bn")}
  variables = init(module, *args, train=True)
  check_inits(variables["params"], rules)
  check_batchnorms_are_pytorch(module, variables, *args, train=True)
