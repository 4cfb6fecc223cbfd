"""What the segmentation-release methods read: the paired dense feature and its patch grid.

The TaT segmentation release (sihaoevery/TaT-seg) distils ``s_feats[-1]`` / ``t_feats[-1]``
of its DeepLabV3+ nets: the decoder's 256-channel pre-ReLU BN output at 1/4 resolution,
which our DeepLab models sow as ``decoder``. Its patch grid is ``Tensor.unfold`` with
kernel = stride = (⌊H/n⌋, ⌊W/m⌋) (``grid_tensor_seq`` in ``distiller_tat.py`` and
``distiller_comp.py``).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from afd_jax.methods.selection import FeatureInfo, PairingError, stage_features

DENSE_FEATURE = "decoder"


def _one(method: str, role: str, info: FeatureInfo, name: str | None, student: FeatureInfo,
         teacher: FeatureInfo, fallback_to_stage: bool) -> str:
  if name is None and DENSE_FEATURE in student.shapes and DENSE_FEATURE in teacher.shapes:
    name = DENSE_FEATURE
  if name is None and fallback_to_stage:
    stages = stage_features(info)
    name = stages[-1] if stages else None
  if name is None or name not in info.shapes:
    missing = (f"{role} feature {name!r} does not exist" if name else
               f"the {role} sows no {DENSE_FEATURE!r} feature" if not fallback_to_stage
               else f"the {role} sows no stage outputs")
    raise PairingError(
        f"method {method!r}: {missing}; student {student.model!r} has features "
        f"{list(student.shapes)}, teacher {teacher.model!r} has {list(teacher.shapes)}; "
        "set config.method.student_feature / teacher_feature")
  return name


def dense_feature_pair(method: str, student: FeatureInfo, teacher: FeatureInfo,
                       student_feature: str | None = None,
                       teacher_feature: str | None = None, *,
                       fallback_to_stage: bool = False) -> tuple[tuple[str], tuple[str]]:
  """The (student, teacher) feature names a dense method reads, as 1-tuples.

  Explicit names win; else ``'decoder'`` when both nets sow one; else (only with
  `fallback_to_stage`, for methods that also run on classifiers) each net's last
  ``stage{i}.out``.

  Raises:
    PairingError: a feature is missing; the message lists both nets' features.
  """
  s = _one(method, "student", student, student_feature, student, teacher, fallback_to_stage)
  t = _one(method, "teacher", teacher, teacher_feature, student, teacher, fallback_to_stage)
  return (s,), (t,)


def patch_layout(hw: tuple[int, int], grid: tuple[int, int]) -> tuple[int, int, int, int]:
  """The release's ``unfold`` of an H×W map into an n×m grid: (kh, kw, ph, pw).

  Kernel = stride = (kh, kw) = (⌊H/n⌋, ⌊W/m⌋); ``unfold`` yields ⌊(H − kh)/kh⌋ + 1 = ⌊H/kh⌋
  patches along H (ph; likewise pw), which exceeds n when H/n is not whole (36 rows with
  n = 16: kh = 2, 18 patches); the last ``H − ph·kh`` rows (columns) are dropped.

  Raises:
    ValueError: n > H or m > W (an empty kernel), or a grid side below 1.
  """
  (hh, ww), (n, m) = hw, grid
  if not (1 <= n <= hh and 1 <= m <= ww):
    raise ValueError(f"patch grid {tuple(grid)} does not fit a {hh}×{ww} map (needs "
                     "1 <= n <= H and 1 <= m <= W)")
  kh, kw = hh // n, ww // m
  return kh, kw, hh // kh, ww // kw


def batch_reshape(x: jnp.ndarray, shape: tuple[int, ...]) -> jnp.ndarray:
  """``x.reshape(shape)`` keeping the leading (batch) axis, and its sharding, as it is.

  Under a mesh with Explicit axes a reshape of a batch-sharded array that splits or merges
  other axes needs its output sharding spelt out; this gives the batch axis the input's and leaves
  the others unsharded (unsharded inputs reshape plainly).
  """
  sharding = getattr(jax.typeof(x), "sharding", None)
  if sharding is None or all(axis is None for axis in sharding.spec):
    return x.reshape(shape)
  if -1 in shape:  # lax.reshape takes no -1
    known = math.prod(d for d in shape if d != -1)
    shape = tuple(x.size // known if d == -1 else d for d in shape)
  spec = jax.sharding.PartitionSpec(sharding.spec[0], *([None] * (len(shape) - 1)))
  return jax.lax.reshape(x, shape, out_sharding=jax.sharding.NamedSharding(sharding.mesh,
                                                                          spec))


def unfold_patches(x: jnp.ndarray, grid: tuple[int, int]) -> jnp.ndarray:
  """The release's ``grid_tensor_seq``: (B, H, W, C) -> (B, ph·pw, kh, kw, C).

  Patches (`patch_layout`) in raster order p = row·pw + col.
  """
  b, hh, ww, c = x.shape
  kh, kw, ph, pw = patch_layout((hh, ww), grid)
  x = batch_reshape(x[:, :ph * kh, :pw * kw], (b, ph, kh, pw, kw, c))
  return batch_reshape(x.transpose(0, 1, 3, 2, 4, 5), (b, ph * pw, kh, kw, c))
