"""Adaptive average pooling with PyTorch's bin rule, and the attention-transfer map."""
from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np


def adaptive_pool_matrix(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) averaging matrix of PyTorch's `adaptive_avg_pool` along one axis.

  Output cell i averages inputs ``floor(i*n_in/n_out) .. ceil((i+1)*n_in/n_out) - 1``; when
  ``n_in < n_out`` cells repeat inputs (nearest-neighbour-like upsampling), as in PyTorch.
  """
  if n_in < 1 or n_out < 1:
    raise ValueError(f"adaptive pooling sizes must be >= 1, got n_in={n_in}, n_out={n_out}")
  m = np.zeros((n_out, n_in), np.float32)
  for i in range(n_out):
    start = (i * n_in) // n_out
    end = math.ceil((i + 1) * n_in / n_out)
    m[i, start:end] = 1.0 / (end - start)
  return m


def adaptive_avg_pool(x: jnp.ndarray, out_hw: tuple[int, int]) -> jnp.ndarray:
  """Adaptive average pooling of spatial axes 1, 2 (PyTorch bin rule).

  Args:
    x: (B, H, W, ...) array; trailing axes (channels, or none) are kept.
    out_hw: target (H', W').

  Returns:
    (B, H', W', ...) array; identity when the size already matches.
  """
  h, w = x.shape[1], x.shape[2]
  if (h, w) == tuple(out_hw):
    return x
  ph = jnp.asarray(adaptive_pool_matrix(h, out_hw[0]), x.dtype)
  pw = jnp.asarray(adaptive_pool_matrix(w, out_hw[1]), x.dtype)
  return jnp.einsum("oh,bhw...,pw->bop...", ph, x, pw)


def l2_normalize(x: jnp.ndarray, axis=-1, eps: float = 1e-12) -> jnp.ndarray:
  """``x / max(||x||_2, eps)`` along `axis` (PyTorch's `F.normalize`)."""
  # max under the sqrt: same value, but an all-zero map gets a zero, not NaN, gradient
  sq = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
  return x / jnp.sqrt(jnp.maximum(sq, eps * eps))


def attention_map(f: jnp.ndarray, p: float = 2.0) -> jnp.ndarray:
  """Attention-transfer map ``l2norm(flatten(mean_c(F^p)))``.

  ``F^p`` is the releases' ``f.pow(p)`` (RepDistiller ``distiller_zoo/AT.py``, ``at``;
  szagoruyko/attention-transfer), not the paper's ``|F|^p``: the same for even p (every
  release setting uses p = 2), signed for odd p, and NaN at negative entries for a
  non-integer p (on post-ReLU features it is the same for every p).

  Args:
    f: (B, H, W, C) feature.
    p: power (Zagoruyko & Komodakis use 2).

  Returns:
    (B, H*W) l2-normalised spatial attention.
  """
  a = jnp.mean(jnp.square(f) if p == 2 else f ** p, axis=-1)
  return l2_normalize(a.reshape(a.shape[0], -1), axis=-1)


def match_spatial(a: jnp.ndarray, b: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Average-pools whichever of two (B, H, W, C) maps is larger to the other's size."""
  ha, wa = a.shape[1:3]
  hb, wb = b.shape[1:3]
  target = (min(ha, hb), min(wa, wb))
  return adaptive_avg_pool(a, target), adaptive_avg_pool(b, target)
