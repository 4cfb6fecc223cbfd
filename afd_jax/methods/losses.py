"""Loss terms shared by several methods: CE, Hinton KD, warm-ups, batch gathering.

CE and KD take class logits (B, K) or per-pixel logits (B, H, W, K) with (B, H, W) labels
in which 255 marks void pixels (segmentation).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

IGNORE_LABEL = 255  # the VOC / COCO-Stuff "void" label, as the segmentation release


def _masked_mean(per_pixel: jnp.ndarray, valid: jnp.ndarray) -> jnp.ndarray:
  """Mean of `per_pixel` over the `valid` pixels; 0 (not NaN) when none is valid."""
  total = jnp.sum(jnp.where(valid, per_pixel, 0.0))
  return total / jnp.maximum(jnp.sum(valid), 1).astype(total.dtype)


def cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray,
                  ignore_label: int = IGNORE_LABEL) -> jnp.ndarray:
  """Mean softmax cross-entropy.

  Args:
    logits: (B, K) class logits, or (B, H, W, K) per-pixel logits.
    labels: (B,) int, or (B, H, W) int where `ignore_label` marks pixels to skip.
    ignore_label: the label of pixels that contribute nothing (dense labels only).

  Returns:
    scalar: the batch mean for (B, K); for per-pixel logits the mean over the pixels whose
    label is not `ignore_label` (PyTorch's ``CrossEntropyLoss(ignore_index=255)``), and 0
    when every pixel is ignored.
  """
  if logits.ndim == 2:
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), labels))
  valid = labels != ignore_label
  ce = optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), jnp.where(valid, labels, 0))
  return _masked_mean(ce, valid)


def segmentation_cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray,
                               ignore_label: int = IGNORE_LABEL,
                               batch_average: bool = True) -> jnp.ndarray:
  """The TaT segmentation release's ``SegmentationLosses.CrossEntropyLoss``
  (``utils/loss.py``; ``size_average=True, batch_average=True, ignore_index=255``).

  Args:
    logits: (B, H, W, K) per-pixel logits.
    labels: (B, H, W) int; `ignore_label` pixels contribute nothing.
    ignore_label: the void label.
    batch_average: divide the valid-pixel mean once more by the batch size B, as the
      release does (``loss /= n``); False gives the plain valid-pixel mean.

  Returns:
    scalar: ``mean_{valid pixels} CE / B`` (0 when every pixel is ignored).
  """
  ce = cross_entropy(logits, labels, ignore_label)
  return ce / logits.shape[0] if batch_average else ce


def kd_loss(s_logits: jnp.ndarray, t_logits: jnp.ndarray, temperature: float,
            labels: jnp.ndarray | None = None,
            ignore_label: int = IGNORE_LABEL) -> jnp.ndarray:
  """Hinton KD: ``τ² · KL(softmax(t/τ) ‖ softmax(s/τ))``, summed over classes.

  Args:
    s_logits, t_logits: (B, K) student and teacher logits, or (B, H, W, K) per pixel.
    temperature: τ.
    labels: per-pixel logits only: (B, H, W) int labels; pixels labelled `ignore_label`
      contribute nothing (None: every pixel counts). Ignored for (B, K) logits.
    ignore_label: the void label.

  Returns:
    scalar: the batch mean for (B, K); for per-pixel logits the mean over valid pixels
    (0 when none is valid).
  """
  log_ps = jax.nn.log_softmax(s_logits.astype(jnp.float32) / temperature, axis=-1)
  log_pt = jax.nn.log_softmax(t_logits.astype(jnp.float32) / temperature, axis=-1)
  kl = jnp.sum(jnp.exp(log_pt) * (log_pt - log_ps), axis=-1)
  if s_logits.ndim == 2 or labels is None:
    return temperature ** 2 * jnp.mean(kl)
  return temperature ** 2 * _masked_mean(kl, labels != ignore_label)


def logit_terms(hp, s_logits, t_logits, labels, *, batch_average: bool = False):
  """``hp.ce_weight·CE + hp.kd_weight·KD(hp.temperature)`` and its metrics.

  Logits (B, K) with labels (B,), or per-pixel (B, H, W, K) with (B, H, W) labels (255 =
  ignore; CE and KD are means over valid pixels). `batch_average`: per-pixel CE divided
  once more by B, the segmentation release's ``batch_average`` (`segmentation_cross_entropy`).
  """
  if s_logits.ndim == 2:
    ce = cross_entropy(s_logits, labels)
  else:
    ce = segmentation_cross_entropy(s_logits, labels, batch_average=batch_average)
  total, metrics = hp.ce_weight * ce, {"ce": ce}
  if hp.kd_weight and t_logits is not None:
    kd = kd_loss(s_logits, t_logits, hp.temperature, labels)
    total, metrics["kd"] = total + hp.kd_weight * kd, kd
  return total, metrics


def train_step_count(module: nn.Module, train: bool) -> jnp.ndarray:
  """Training steps taken before this call, kept as ``method_state/step`` (int32 scalar).

  Call inside `module`'s compact ``__call__``. The counter advances only when the
  module is applied with ``train=True`` and ``'method_state'`` mutable (a train step),
  never at initialisation or evaluation; it is checkpointed with the train state.
  """
  step = module.variable("method_state", "step", lambda: jnp.zeros((), jnp.int32))
  current = step.value
  if train and module.is_mutable_collection("method_state") and not module.is_initializing():
    step.value = current + 1
  return current


def epoch_warmup(step: jnp.ndarray, steps_per_epoch: int, warmup_epochs: float
                 ) -> jnp.ndarray:
  """``min(epoch / warmup_epochs, 1)`` with the 1-based ``epoch = step // steps_per_epoch
  + 1``: mdistiller's per-epoch linear warm-up (1/warmup in the first epoch)."""
  if warmup_epochs <= 0:
    return jnp.ones((), jnp.float32)
  epoch = (step // steps_per_epoch + 1).astype(jnp.float32)
  return jnp.minimum(epoch / warmup_epochs, 1.0)


def unshard_batch(x: jnp.ndarray) -> jnp.ndarray:
  """`x` with no axis sharded, for batch-relational terms (B × B Gram matrices, shifted
  batch slices).

  Under a mesh with Explicit axes, a product of two batch-sharded operands over the
  feature axis has no legal output sharding; this reshards such an `x` to replicated (an
  all-gather) and leaves unsharded arrays (eager, Auto meshes) as they are.
  """
  sharding = getattr(jax.typeof(x), "sharding", None)
  if sharding is None or all(axis is None for axis in sharding.spec):
    return x
  return jax.sharding.reshard(x, jax.sharding.NamedSharding(sharding.mesh,
                                                            jax.sharding.PartitionSpec()))
