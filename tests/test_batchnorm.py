"""BatchNorm follows PyTorch in train mode: batch statistics, running-average updates.

Checked against ``torch.nn.BatchNorm{1,2}d`` and, for whole networks, against the tests'
PyTorch models (`tests/torch_models.py`) after one train-mode forward.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn

import torch_models
from afd_jax import models
from afd_jax.interop import torch as interop
from afd_jax.models import layers


def _torch_bn(c, ndim, seed):
  bn = (nn.BatchNorm2d if ndim == 4 else nn.BatchNorm1d)(c)
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    bn.weight.uniform_(0.5, 1.5, generator=g)
    bn.bias.normal_(0, 0.5, generator=g)
    bn.running_mean.normal_(0, 1, generator=g)
    bn.running_var.uniform_(0.5, 2, generator=g)
  return bn


def _flax_vars(bn):
  return {"params": {"scale": jnp.asarray(bn.weight.detach().numpy()),
                     "bias": jnp.asarray(bn.bias.detach().numpy())},
          "batch_stats": {"mean": jnp.asarray(bn.running_mean.numpy()),
                          "var": jnp.asarray(bn.running_var.numpy())}}


@pytest.mark.parametrize("shape", [(2, 5, 3, 4), (6, 4)])  # NCHW image / (B, C) vector
def test_train_step_and_eval_match_torch(shape):
  bn = _torch_bn(shape[1], len(shape), seed=0)
  variables = _flax_vars(bn)
  x = torch.randn(*shape, generator=torch.Generator().manual_seed(1)) * 3 + 2
  x_nhwc = np.moveaxis(x.numpy(), 1, -1)

  y, updated = layers.BatchNorm(use_running_average=False).apply(
      variables, x_nhwc, mutable=["batch_stats"])
  y_torch = bn.train()(x).detach().numpy()
  np.testing.assert_allclose(y, np.moveaxis(y_torch, 1, -1), atol=1e-5)
  np.testing.assert_allclose(updated["batch_stats"]["mean"], bn.running_mean, rtol=1e-6)
  np.testing.assert_allclose(updated["batch_stats"]["var"], bn.running_var, rtol=1e-6)

  # The running variance moved with the unbiased batch variance (n = B*H*W), not Flax's.
  n = x.numel() // shape[1]
  biased = np.var(x_nhwc.reshape(-1, shape[1]), axis=0)
  flax_style = 0.9 * np.asarray(variables["batch_stats"]["var"]) + 0.1 * biased
  np.testing.assert_allclose(updated["batch_stats"]["var"] - flax_style,
                             0.1 * biased / (n - 1), rtol=1e-3)

  y_eval = layers.BatchNorm(use_running_average=True).apply(
      {"params": variables["params"], "batch_stats": updated["batch_stats"]}, x_nhwc)
  np.testing.assert_allclose(
      y_eval, np.moveaxis(bn.eval()(x).detach().numpy(), 1, -1), atol=1e-5)


def _flax_train_step(name, variables, x_nchw, **kwargs):
  model = models.get_model(name, 10, **kwargs)
  x = np.transpose(x_nchw.numpy(), (0, 2, 3, 1))
  logits, updated = jax.jit(lambda v, x: model.apply(v, x, train=True,
                                                      mutable=["batch_stats"]))(variables, x)
  return np.asarray(logits), {"params": variables["params"],
                              "batch_stats": updated["batch_stats"]}


def _assert_running_stats_equal(name, variables, tmodel):
  ours = interop.variables_to_state_dict(name, variables)
  theirs = tmodel.state_dict()
  keys = [k for k in theirs if k.endswith(("running_mean", "running_var"))]
  assert keys
  for k in keys:
    np.testing.assert_allclose(ours[k], theirs[k].numpy(), rtol=2e-5, atol=1e-6, err_msg=k)


def test_one_train_step_of_a_resnet_moves_bn_statistics_like_pytorch():
  torch.manual_seed(0)
  tmodel = torch_models.build("resnet8", 10)
  variables = interop.state_dict_to_variables(
      "resnet8", {k: v.numpy().copy() for k, v in tmodel.state_dict().items()}, 10)
  x = torch.randn(2, 3, 32, 32)
  logits, updated = _flax_train_step("resnet8", variables, x)
  t_logits = tmodel.train()(x).detach().numpy()
  assert np.max(np.abs(logits - t_logits)) <= 1e-4
  _assert_running_stats_equal("resnet8", updated, tmodel)


@pytest.mark.parametrize("bn1_twice", [False, True])
def test_wrn_bn1_twice_follows_the_afd_release(bn1_twice):
  torch.manual_seed(0)
  tmodel = torch_models.build("wrn_16_2", 10, bn1_twice=bn1_twice)
  # Copies: the torch forward below updates the running statistics in place.
  state = {k: v.numpy().copy() for k, v in tmodel.state_dict().items()}
  variables = interop.state_dict_to_variables("wrn_16_2", state, 10)
  x = torch.randn(2, 3, 32, 32)
  logits, updated = _flax_train_step("wrn_16_2", variables, x, bn1_twice=bn1_twice)
  t_logits = tmodel.train()(x).detach().numpy()
  # Outputs do not depend on the switch (train mode normalises with batch statistics).
  assert np.max(np.abs(logits - t_logits)) <= 1e-4
  _assert_running_stats_equal("wrn_16_2", updated, tmodel)

  # The blocks' bn1 moved with effective momentum 0.19 (twice) or 0.1 (once).
  start = state["block1.layer.0.bn1.running_mean"]
  moved = interop.variables_to_state_dict("wrn_16_2", updated)[
      "block1.layer.0.bn1.running_mean"]
  stem = tmodel.conv1(x).detach().numpy().mean((0, 2, 3))  # block1.0 input mean
  momentum = 0.19 if bn1_twice else 0.1
  np.testing.assert_allclose(moved, (1 - momentum) * start + momentum * stem, atol=1e-6)
