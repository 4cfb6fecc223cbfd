"""Conv / BatchNorm / Dense constructors shared by every model, with PyTorch's numerics.

The zoo mirrors PyTorch models, so these helpers reproduce PyTorch's layer semantics:

* convolutions pad symmetrically by ``kernel_size // 2`` (PyTorch ``padding=k//2``; Flax's
  ``'SAME'`` would pad stride-2 convs asymmetrically) and are initialised Kaiming-normal
  in ``fan_out`` mode, as the CIFAR KD zoo and torchvision do;
* `BatchNorm` is PyTorch's ``BatchNorm2d``/``1d`` in train and eval mode: momentum 0.1,
  eps 1e-5, biased batch variance to normalise, *unbiased* batch variance for the running
  variance; no ``axis_name``: under ``jit`` with a sharded batch the statistics are global;
* Dense layers use PyTorch's ``nn.Linear`` default, uniform(+-1/sqrt(fan_in)) for both
  weight and bias.

Where a zoo file deviates from those defaults its model passes the original's initialiser:
the ShuffleNets keep PyTorch's default conv init (`torch_default_conv_init`), the VGG and
MobileNetV2 classifiers draw N(0, 0.01) with a zero bias (`small_normal_init`), the WRN
classifier has a zero bias.

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

Initializer = jax.nn.initializers.Initializer

# PyTorch kaiming_normal_(mode='fan_out', nonlinearity='relu') and the zoo's
# normal_(0, sqrt(2/n)), n = k*k*C_out: a plain normal (JAX "normal" is untruncated).
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# PyTorch's default nn.Conv2d / nn.Linear weight init (kaiming_uniform_ with a=sqrt(5)):
# uniform with bound 1/sqrt(fan_in), fan_in = k*k*C_in/groups. Also right for a flax
# ConvTranspose with transpose_kernel=True: its (kh, kw, out, in) kernel's "fan_in" is
# out*kh*kw, which is what PyTorch counts for nn.ConvTranspose2d's (in, out, kh, kw).
torch_default_conv_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
dense_kernel_init = torch_default_conv_init
# The VGG / MobileNetV2 classifiers of the zoo: weight.normal_(0, 0.01).
small_normal_init = nn.initializers.normal(0.01)


def conv(features: int, kernel_size: int, stride: int = 1, *, groups: int = 1,
         use_bias: bool = False, dtype: Dtype = jnp.float32,
         kernel_init: Initializer = conv_kernel_init, name: str | None = None) -> nn.Conv:
  """A square NHWC convolution with PyTorch padding and (by default) Kaiming fan-out init.

  Args:
    features: output channels C_out.
    kernel_size: k, for a k x k kernel; padding is k // 2 on every side.
    stride: spatial stride.
    groups: feature groups (``groups == C_in`` gives a depthwise convolution).
    use_bias: whether to add a (zero-initialised) bias.
    dtype: computation dtype.
    kernel_init: initializer of the (k, k, C_in / groups, C_out) kernel.
    name: submodule name in the parent.

  Returns:
    a module mapping (B, H, W, C_in) to (B, ceil(H / stride), ceil(W / stride), C_out)
    for odd k (and for k = 1).
  """
  pad = kernel_size // 2
  return nn.Conv(
      features, (kernel_size, kernel_size), strides=(stride, stride),
      padding=((pad, pad), (pad, pad)), feature_group_count=groups, use_bias=use_bias,
      kernel_init=kernel_init, bias_init=nn.initializers.zeros, dtype=dtype,
      param_dtype=jnp.float32, name=name)


class BatchNorm(nn.Module):
  """PyTorch-exact BatchNorm over the last (channel) axis.

  Train mode normalises with the batch mean and the *biased* batch variance over all axes
  but the last, and moves the running averages as ``torch.nn.BatchNorm{1,2}d`` does:
  ``r <- (1 - momentum) * r + momentum * s`` with s the batch mean, and for ``var`` the
  *unbiased* batch variance (n / (n - 1), n = number of reduced elements, e.g. B*H*W).
  Flax's ``nn.BatchNorm`` uses the biased one there, so a network trained with it
  evaluates differently from the same network trained in PyTorch. Eval mode normalises
  with the running averages. Variable names are Flax's (params ``scale``/``bias``,
  batch_stats ``mean``/``var``), so checkpoints of ``nn.BatchNorm`` stay valid.

  Attributes:
    use_running_average: eval mode if True.
    momentum: PyTorch's momentum (weight of the new batch statistic).
    epsilon: added to the variance.
    running_updates: how many times one call moves the running averages with the same
      batch statistics; 2 reproduces a PyTorch module that applies this BN twice per
      forward (the AFD release's WRN ``bn1``, see `wide_resnet.py`).
    dtype: output dtype; None keeps the input's. Statistics are at least float32.
  """
  use_running_average: bool
  momentum: float = 0.1
  epsilon: float = 1e-5
  running_updates: int = 1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Maps (..., C) to (..., C)."""
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (c,), jnp.float32)
    ra_var = self.variable("batch_stats", "var", jnp.ones, (c,), jnp.float32)
    xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    if self.use_running_average:
      mean, var = ra_mean.value, ra_var.value
    else:
      axes = tuple(range(x.ndim - 1))
      mean = jnp.mean(xf, axes)
      # Two-pass variance: E[x^2] - E[x]^2 loses float32 digits when |mean| >> std.
      var = jnp.mean(jnp.square(xf - mean), axes)
      if not self.is_initializing():
        n = x.size // c
        unbiased = var * (n / max(n - 1, 1))
        new_mean, new_var = ra_mean.value, ra_var.value
        for _ in range(self.running_updates):
          new_mean = (1.0 - self.momentum) * new_mean + self.momentum * mean
          new_var = (1.0 - self.momentum) * new_var + self.momentum * unbiased
        # float32 (float64 when the inputs are: the tests' references)
        ra_mean.value, ra_var.value = new_mean, new_var
    y = (xf - mean) * (scale * jax.lax.rsqrt(var + self.epsilon)) + bias
    return y.astype(self.dtype or x.dtype)


def batch_norm(train: bool, *, dtype: Dtype = jnp.float32, running_updates: int = 1,
               name: str | None = None) -> BatchNorm:
  """PyTorch-exact `BatchNorm` (momentum 0.1, eps 1e-5) over the channel axis.

  Args:
    train: normalise with batch statistics (and update the running averages in the
      ``'batch_stats'`` collection) if True, with the running averages otherwise.
    dtype: computation dtype.
    running_updates: see `BatchNorm` (1 except for the AFD-release WRN quirk).
    name: submodule name in the parent.

  Returns:
    a module mapping (..., C) to (..., C); scale starts at 1, bias at 0.
  """
  return BatchNorm(use_running_average=not train, running_updates=running_updates,
                   dtype=dtype, name=name)


def _uniform(bound: float) -> jax.nn.initializers.Initializer:
  """Initializer drawing from uniform(-bound, bound)."""

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def torch_default_bias_init(fan_in: int) -> Initializer:
  """PyTorch's default ``nn.Conv2d`` / ``nn.ConvTranspose2d`` / ``nn.Linear`` bias init:
  uniform(+-1/sqrt(fan_in)), fan_in of the weight as PyTorch counts it (``in·kh·kw`` for
  a conv, ``out·kh·kw`` for a transposed conv, ``in`` for a linear layer)."""
  return _uniform(1.0 / math.sqrt(fan_in))


def dense(features: int, in_features: int, *, dtype: Dtype = jnp.float32,
          kernel_init: Initializer | None = None, bias_init: Initializer | None = None,
          name: str | None = None) -> nn.Dense:
  """A Dense layer initialised, by default, like PyTorch's ``nn.Linear``.

  Args:
    features: output width.
    in_features: input width (fan_in); it sets the default bias bound, which Flax's bias
      initialisers cannot see.
    dtype: computation dtype.
    kernel_init: initializer of the (in_features, features) kernel; None: PyTorch's.
    bias_init: initializer of the bias; None: PyTorch's.
    name: submodule name in the parent.

  Returns:
    a module mapping (..., in_features) to (..., features).
  """
  return nn.Dense(
      features, kernel_init=kernel_init or dense_kernel_init,
      bias_init=bias_init or _uniform(1.0 / math.sqrt(in_features)), dtype=dtype,
      param_dtype=jnp.float32, name=name)


def global_avg_pool(x: jax.Array) -> jax.Array:
  """Mean over the spatial axes: (B, H, W, C) -> (B, C)."""
  return jnp.mean(x, axis=(1, 2))


def classifier_head(module: nn.Module, x: jax.Array, num_classes: int, name: str, *,
                    kernel_init: Initializer | None = None,
                    bias_init: Initializer | None = None) -> jax.Array:
  """Global average pool, sow it as ``pooled``, then the linear classifier.

  Called from a model's compact ``__call__`` (the Dense is created in `module`'s scope).

  Args:
    x: (B, H, W, C) last feature map.
    kernel_init, bias_init: the classifier's initializers (None: PyTorch ``nn.Linear``).

  Returns:
    (B, num_classes) float32 logits (losses and softmax run in float32 whatever the
    compute dtype).
  """
  pooled = global_avg_pool(x)
  module.sow("intermediates", "pooled", pooled)
  logits = dense(num_classes, pooled.shape[-1], dtype=module.dtype, kernel_init=kernel_init,
                 bias_init=bias_init, name=name)(pooled)
  return logits.astype(jnp.float32)

