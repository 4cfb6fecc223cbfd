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


def fd_check(f_np, grad_jax, x, n=6, eps=1e-5, seed=0, rtol=5e-3, atol=1e-7):
  """Central differences of the float64 NumPy `f_np` at coordinates of x, compared with
  the implementation's gradient `grad_jax` there.

  n: how many coordinates, sampled without replacement; None: every coordinate (for small
  tensors; with a float64 `grad_jax` the tolerances can then be float64's, rtol ~1e-6).
  """
  rng = np.random.RandomState(seed)
  x = np.asarray(x, np.float64)
  grad = np.asarray(grad_jax)
  coords = range(x.size) if n is None else rng.choice(x.size, n, replace=False)
  for flat in coords:
    idx = np.unravel_index(flat, x.shape)
    xp, xm = x.copy(), x.copy()
    xp[idx] += eps
    xm[idx] -= eps
    np.testing.assert_allclose(grad[idx], (f_np(xp) - f_np(xm)) / (2 * eps), rtol=rtol,
                               atol=atol, err_msg=f"coordinate {idx}")


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
