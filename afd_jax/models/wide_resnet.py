"""Pre-activation Wide ResNets WRN-depth-k for CIFAR (the KD zoo's ``wrn.py``).

Layout: 3x3 conv stem (16 channels, no BN/ReLU), then 3 stages of ``n = (depth - 4) / 6``
pre-activation blocks of width 16k, 32k, 64k (stages 2 and 3 halve the resolution in
their first block), then a final BN + ReLU, global average pool and classifier. Dropout
is omitted (the zoo's drop rate is 0).

A block computes ``act_in = relu(bn1(x))`` once, feeds it to its conv path and, when the
width or resolution changes, to the 1x1 projection shortcut (otherwise the shortcut is
the raw ``x``), and returns the raw residual sum; it returns ``act_in`` too so the parent
can sow it.

Compatibility switch ``bn1_twice`` (off by default): the AFD release's WRN applies each
block's ``bn1`` twice per training forward (once to extract the feature, once in the
block), so its ``bn1`` running statistics move twice per step with the same batch
statistics (effective momentum 1 - 0.9^2 = 0.19). With ``bn1_twice=True`` every block's
``bn1`` does the same, so a WRN trained here has the release's running statistics; the
outputs are unchanged either way (train mode normalises with batch statistics).
Initialisation follows the zoo: Kaiming fan-out convs, classifier bias zero.

Sown features (see `features.py`), stages = the 3 residual stages:

* ``stem``: the stem conv output (the stem has no activation).
* ``stage{i}.block{j}.act_in``: block j's own ``relu(bn1(input))``.
* ``stage{i}.block{j}``: block j's raw residual sum (pre-activation network).
* ``stage{i}.preact``: the stage's last residual sum.
* ``stage{i}.out``: the stage output after activation: the next stage's ``block1.act_in``,
  or ``final.act`` for the last stage.
* ``final.act``: ``relu(bn_final(out))``.
* ``stage{i}.bn_preact``: what the ReLU after the stage receives: the next stage's first
  ``bn1(input)``, or ``bn_final(out)`` for the last stage (RepDistiller's WRN features
  with ``preact=True``, which AB reads).
* ``pooled``: (B, 64k).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from afd_jax.models import layers

Dtype = Any


class WideBasicBlock(nn.Module):
  """Pre-activation block: BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus shortcut.

  Attributes:
    features: output channels.
    stride: stride of the first conv (and of the shortcut projection).
    bn1_twice: move ``bn1``'s running statistics twice per call (AFD-release quirk).
    dtype: computation dtype.
  """
  features: int
  stride: int = 1
  bn1_twice: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool
               ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Maps (B, H, W, C_in) to ``(out, act_in, bn1(x))``.

    Returns:
      out: the raw residual sum, (B, H/s, W/s, features).
      act_in: ``relu(bn1(x))``, (B, H, W, C_in).
      normed: ``bn1(x)``, (B, H, W, C_in): what the block's ReLU receives.
    """
    normed = layers.batch_norm(train, dtype=self.dtype,
                               running_updates=2 if self.bn1_twice else 1, name="bn1")(x)
    act_in = nn.relu(normed)
    y = layers.conv(self.features, 3, self.stride, dtype=self.dtype, name="conv1")(act_in)
    y = nn.relu(layers.batch_norm(train, dtype=self.dtype, name="bn2")(y))
    y = layers.conv(self.features, 3, dtype=self.dtype, name="conv2")(y)
    if self.stride == 1 and x.shape[-1] == self.features:
      shortcut = x
    else:
      shortcut = layers.conv(self.features, 1, self.stride, dtype=self.dtype,
                             name="conv_shortcut")(act_in)
    return y + shortcut, act_in, normed


class WideResNet(nn.Module):
  """WRN-depth-k for CIFAR; see the module docstring for layout and sown features.

  Attributes:
    depth: 6n + 4 (16, 28, 40, ...).
    widen_factor: k.
    num_classes: classifier outputs.
    dtype: computation dtype (parameters are float32).
    bn1_twice: the AFD release's running statistics for every block's ``bn1`` (see the
      module docstring); off by default.
  """
  depth: int
  widen_factor: int
  num_classes: int
  dtype: Dtype = jnp.float32
  bn1_twice: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """Maps images (B, H, W, 3) to float32 logits (B, num_classes); sows features."""
    if (self.depth - 4) % 6:
      raise ValueError(f"WRN depth must be 6n+4, got {self.depth}.")
    n = (self.depth - 4) // 6
    widths = [w * self.widen_factor for w in (16, 32, 64)]

    x = layers.conv(16, 3, dtype=self.dtype, name="conv1")(x)
    self.sow("intermediates", "stem", x)
    for i, width in enumerate(widths, 1):
      for j in range(1, n + 1):
        stride = 2 if (i > 1 and j == 1) else 1
        x, act_in, normed = WideBasicBlock(width, stride, self.bn1_twice, dtype=self.dtype,
                                           name=f"stage{i}_block{j}")(x, train)
        self.sow("intermediates", f"stage{i}.block{j}.act_in", act_in)
        if i > 1 and j == 1:
          # The previous stage's activated output is exactly this block's act_in.
          self.sow("intermediates", f"stage{i - 1}.out", act_in)
          self.sow("intermediates", f"stage{i - 1}.bn_preact", normed)
        self.sow("intermediates", f"stage{i}.block{j}", x)
      self.sow("intermediates", f"stage{i}.preact", x)

    x = layers.batch_norm(train, dtype=self.dtype, name="bn_final")(x)
    self.sow("intermediates", f"stage{len(widths)}.bn_preact", x)
    x = nn.relu(x)
    self.sow("intermediates", "final.act", x)
    self.sow("intermediates", f"stage{len(widths)}.out", x)

    return layers.classifier_head(self, x, self.num_classes, name="fc",
                                  bias_init=nn.initializers.zeros)
