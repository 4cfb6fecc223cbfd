"""Conv / BatchNorm / Dense constructors shared by every model, with PyTorch's numerics.

The zoo mirrors PyTorch models, so these helpers reproduce PyTorch's layer semantics:

* convolutions pad symmetrically by ``kernel_size // 2`` (PyTorch ``padding=k//2``; Flax's
  ``'SAME'`` would pad stride-2 convs asymmetrically) and are initialised Kaiming-normal
  in ``fan_out`` mode, as the CIFAR KD zoo and torchvision do;
* BatchNorm uses PyTorch's momentum 0.1 (= Flax ``momentum=0.9``) and eps 1e-5, with no
  ``axis_name``: under ``jit`` with a sharded batch the statistics are global anyway;
* Dense layers use PyTorch's ``nn.Linear`` default, uniform(+-1/sqrt(fan_in)) for both
  weight and bias.

One scheme serves every model, although some zoo files differ slightly (its ShuffleNets
keep PyTorch's default conv init; its VGG/MobileNetV2 classifiers draw N(0, 0.01) with
zero bias, its WRN classifier a zero bias); architectures and parameter counts are
unaffected.

Parameters are always float32; ``dtype`` is the computation dtype.

These constructors are called inside a parent's ``@nn.compact`` method, so the returned
module becomes a child of that parent under ``name``.
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

# PyTorch kaiming_normal_(mode='fan_out', nonlinearity='relu'): std = sqrt(2/(k*k*C_out)).
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# PyTorch nn.Linear default weight init: uniform with bound 1/sqrt(fan_in).
dense_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def conv(features: int, kernel_size: int, stride: int = 1, *, groups: int = 1,
         use_bias: bool = False, dtype: Dtype = jnp.float32,
         name: str | None = None) -> nn.Conv:
  """A square NHWC convolution with PyTorch padding and Kaiming fan-out init.

  Args:
    features: output channels C_out.
    kernel_size: k, for a k x k kernel; padding is k // 2 on every side.
    stride: spatial stride.
    groups: feature groups (``groups == C_in`` gives a depthwise convolution).
    use_bias: whether to add a (zero-initialised) bias.
    dtype: computation dtype.
    name: submodule name in the parent.

  Returns:
    a module mapping (B, H, W, C_in) to (B, ceil(H / stride), ceil(W / stride), C_out)
    for odd k (and for k = 1).
  """
  pad = kernel_size // 2
  return nn.Conv(
      features, (kernel_size, kernel_size), strides=(stride, stride),
      padding=((pad, pad), (pad, pad)), feature_group_count=groups, use_bias=use_bias,
      kernel_init=conv_kernel_init, bias_init=nn.initializers.zeros, dtype=dtype,
      param_dtype=jnp.float32, name=name)


def batch_norm(train: bool, *, dtype: Dtype = jnp.float32,
               name: str | None = None) -> nn.BatchNorm:
  """BatchNorm over the channel axis with PyTorch's momentum and eps.

  Args:
    train: normalise with batch statistics (and update the running averages in the
      ``'batch_stats'`` collection) if True, with the running averages otherwise.
    dtype: computation dtype.
    name: submodule name in the parent.

  Returns:
    a module mapping (..., C) to (..., C); scale starts at 1, bias at 0.
  """
  return nn.BatchNorm(
      use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype,
      param_dtype=jnp.float32, name=name)


def _uniform(bound: float) -> jax.nn.initializers.Initializer:
  """Initializer drawing from uniform(-bound, bound)."""

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def dense(features: int, in_features: int, *, dtype: Dtype = jnp.float32,
          name: str | None = None) -> nn.Dense:
  """A Dense layer initialised like PyTorch's ``nn.Linear``.

  Args:
    features: output width.
    in_features: input width (fan_in); it sets the bias bound, which Flax's bias
      initialisers cannot see.
    dtype: computation dtype.
    name: submodule name in the parent.

  Returns:
    a module mapping (..., in_features) to (..., features).
  """
  return nn.Dense(
      features, kernel_init=dense_kernel_init,
      bias_init=_uniform(1.0 / math.sqrt(in_features)), dtype=dtype,
      param_dtype=jnp.float32, name=name)


def global_avg_pool(x: jax.Array) -> jax.Array:
  """Mean over the spatial axes: (B, H, W, C) -> (B, C)."""
  return jnp.mean(x, axis=(1, 2))

def classifier_head(module: nn.Module, x: jax.Array, num_classes: int, name: str) -> jax.Array:
  """Global average pool, sow it as ``pooled``, then the linear classifier.

  Called from a model's compact ``__call__`` (the Dense is created in `module`'s scope).

  Args:
    x: (B, H, W, C) last feature map.

  Returns:
    (B, num_classes) float32 logits (losses and softmax run in float32 whatever the
    compute dtype).
  """
  pooled = global_avg_pool(x)
  module.sow("intermediates", "pooled", pooled)
  logits = dense(num_classes, pooled.shape[-1], dtype=module.dtype, name=name)(pooled)
  return logits.astype(jnp.float32)

