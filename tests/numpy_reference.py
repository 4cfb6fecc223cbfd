"""Plain-NumPy (float64) building blocks shared by the method tests' references.

Nothing here imports afd_jax: the references stay independent of the code under test.
"""
import numpy as np


def np_softmax(x, axis=-1):
  e = np.exp(x - x.max(axis=axis, keepdims=True))
  return e / e.sum(axis=axis, keepdims=True)


def np_ce(logits, labels):
  """Mean cross-entropy; logits (B, K), labels (B,)."""
  return -np.mean(np.log(np_softmax(logits))[np.arange(len(labels)), labels])


def np_kd(s, t, temp):
  """τ²·KL(softmax(t/τ) ‖ softmax(s/τ)), batch mean; s, t (B, K)."""
  ps, pt = np_softmax(s / temp), np_softmax(t / temp)
  return temp ** 2 * np.mean(np.sum(pt * (np.log(pt) - np.log(ps)), axis=-1))


# Tensors up to this size have every coordinate checked (two reference calls each).
ALL_COORDINATES = 1024


def fd_coordinates(shape, n=6, seed=0):
  """The flat indices `fd_check` checks in a tensor of `shape`.

  Every coordinate when there are at most ALL_COORDINATES; otherwise every index of every
  axis and, for an NHWC feature, every spatial position (every pooling bin, every
  attention position), each with random other indices, plus n random coordinates.
  """
  size = int(np.prod(shape))
  if size <= ALL_COORDINATES:
    return np.arange(size)
  rng = np.random.RandomState(seed)
  dims = np.array(shape)
  picks = []
  for axis, dim in enumerate(shape):
    idx = rng.randint(0, dims, size=(dim, len(shape)))
    idx[:, axis] = np.arange(dim)
    picks.append(idx)
  if len(shape) == 4:
    h, w = shape[1], shape[2]
    idx = rng.randint(0, dims, size=(h * w, 4))
    idx[:, 1], idx[:, 2] = np.repeat(np.arange(h), w), np.tile(np.arange(w), h)
    picks.append(idx)
  flat = np.ravel_multi_index(tuple(np.concatenate(picks).T), shape)
  return np.unique(np.concatenate([flat, rng.choice(size, min(n, size), replace=False)]))


# What a gradient of each dtype resolves against float64 central differences, as (rtol,
# atol as a fraction of the largest |derivative| checked). float32: ~1000 ulps of the
# gradient's scale (rounding in the backward pass's sums); float64: the differences'
# truncation error (eps² times the third derivative). Their rounding error, up to
# ULPS_OF_F ulps of f per evaluation (ULPS_OF_F·2.2e-16·|f| / eps, ~4e-10·|f| at eps
# 1e-5), is allowed on top.
RESOLUTION = {np.dtype(np.float64): (1e-6, 1e-9), np.dtype(np.float32): (1e-3, 1e-4)}
ULPS_OF_F = 16


def fd_check(f_np, grad_jax, x, n=6, eps=1e-5, seed=0, rtol=5e-3, atol=1e-7):
  """Central differences of the float64 NumPy `f_np` at the coordinates of x that
  `fd_coordinates` picks (every coordinate of a small tensor; n: random extra ones of a
  large tensor, None: every coordinate), compared with the implementation's gradient
  `grad_jax` there.

  The tolerances are the caller's, tightened to what the gradient's dtype resolves
  (`RESOLUTION`): a float64 gradient (computed under ``jax.enable_x64``) is held to
  float64 tolerances whatever the caller passed.
  """
  x = np.asarray(x, np.float64)
  grad = np.asarray(grad_jax)
  assert grad.shape == x.shape, (grad.shape, x.shape)
  coords = np.arange(x.size) if n is None else fd_coordinates(x.shape, n, seed)
  f_up, f_down = np.empty(len(coords)), np.empty(len(coords))
  for k, i in enumerate(coords):
    xp, xm = x.copy(), x.copy()
    xp.flat[i] += eps
    xm.flat[i] -= eps
    f_up[k], f_down[k] = f_np(xp), f_np(xm)
  want = (f_up - f_down) / (2 * eps)
  got = grad.reshape(-1)[coords].astype(np.float64)
  rtol_dtype, atol_fraction = RESOLUTION.get(grad.dtype, RESOLUTION[np.dtype(np.float32)])
  scale = float(np.max(np.abs(want)))
  assert scale > 0, "every checked derivative is zero: the check tests nothing"
  rtol, atol = min(rtol, rtol_dtype), min(atol, atol_fraction * scale)
  rounding = ULPS_OF_F * np.finfo(np.float64).eps * np.maximum(abs(f_up), abs(f_down)) / eps
  excess = np.abs(got - want) - (rtol * np.abs(want) + atol + rounding)
  bad = np.flatnonzero(excess > 0)
  worst = bad[np.argsort(-excess[bad])][:5]
  assert not len(bad), (
      f"{grad.dtype} gradient vs central differences: {len(bad)} of {len(coords)} checked "
      f"coordinates (of {x.size}, shape {x.shape}) off by more than rtol={rtol:.1e}, "
      f"atol={atol:.1e} (+ rounding); worst: " + "; ".join(
          f"{tuple(map(int, np.unravel_index(coords[k], x.shape)))}: {got[k]:.10g} vs "
          f"{want[k]:.10g}"
          for k in worst))


def np_pool(x, oh, ow):
  """Adaptive average pooling of axes 1, 2 by PyTorch's bin rule, with explicit loops."""
  b, h, w, c = x.shape
  out = np.zeros((b, oh, ow, c))
  for i in range(oh):
    h0, h1 = (i * h) // oh, -((-(i + 1) * h) // oh)
    for j in range(ow):
      w0, w1 = (j * w) // ow, -((-(j + 1) * w) // ow)
      out[:, i, j] = x[:, h0:h1, w0:w1].mean(axis=(1, 2))
  return out
