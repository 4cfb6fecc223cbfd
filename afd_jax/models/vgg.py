"""VGG with BatchNorm for CIFAR (the KD zoo's ``vgg.py``; no hidden FC layers).

Five conv groups of 3x3 conv (with bias) + BN + ReLU; a 2x2 max-pool precedes groups
2, 3 and 4, and group 5 as well when the input is at least 64 pixels tall (the zoo pools
there only for 64x64 inputs, so at 32x32 groups 4 and 5 both run at 4x4). Then a global
average pool and one Dense(512 -> num_classes).

Group widths (vgg8 = 'S', vgg11 = 'A', vgg13 = 'B', vgg16 = 'D', vgg19 = 'E'):
see `VGG_CONFIGS`.

Sown features (see `features.py`), stages = the 5 conv groups, blocks = their
conv-BN-ReLU layers: ``stage{i}.block{j}`` (after ReLU), ``stage{i}.preact`` (the group's
last BN output before ReLU), ``stage{i}.out`` (after ReLU, = the last block) and
``pooled`` (B, 512). VGG has no separate stem, so ``stem`` is not sown.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from afd_jax.models import layers

Dtype = Any

VGG_CONFIGS = {
    8: ((64,), (128,), (256,), (512,), (512,)),
    11: ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    13: ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    16: ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    19: ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}


class VGG(nn.Module):
  """CIFAR VGG-BN; see the module docstring for layout and sown features.

  Attributes:
    groups: output widths of the conv layers, one tuple per group (5 groups).
    num_classes: classifier outputs.
    dtype: computation dtype (parameters are float32).
  """
  groups: Sequence[Sequence[int]]
  num_classes: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """Maps images (B, H, W, 3) to float32 logits (B, num_classes); sows features."""
    pool_before_last = x.shape[1] >= 64
    last = len(self.groups)
    for i, widths in enumerate(self.groups, 1):
      if 1 < i < last or (i == last and pool_before_last):
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
      for j, width in enumerate(widths, 1):
        x = layers.conv(width, 3, use_bias=True, dtype=self.dtype,
                        name=f"stage{i}_conv{j}")(x)
        preact = layers.batch_norm(train, dtype=self.dtype, name=f"stage{i}_bn{j}")(x)
        x = nn.relu(preact)
        self.sow("intermediates", f"stage{i}.block{j}", x)
      self.sow("intermediates", f"stage{i}.preact", preact)
      self.sow("intermediates", f"stage{i}.out", x)

    # The zoo's classifier init: N(0, 0.01) weights, zero bias.
    return layers.classifier_head(self, x, self.num_classes, name="classifier",
                                  kernel_init=layers.small_normal_init,
                                  bias_init=nn.initializers.zeros)


def vgg(depth: int, num_classes: int, *, dtype: Dtype = jnp.float32) -> VGG:
  """VGG-BN of the given depth (8, 11, 13, 16 or 19)."""
  if depth not in VGG_CONFIGS:
    raise ValueError(f"VGG depth must be one of {sorted(VGG_CONFIGS)}, got {depth}.")
  return VGG(VGG_CONFIGS[depth], num_classes, dtype=dtype)
