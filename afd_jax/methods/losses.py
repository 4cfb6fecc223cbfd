"""Loss terms shared by several methods: CE, Hinton KD, warm-ups, batch gathering."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
  """Mean softmax cross-entropy. logits (B, K) float, labels (B,) int."""
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), labels))


def kd_loss(s_logits: jnp.ndarray, t_logits: jnp.ndarray, temperature: float) -> jnp.ndarray:
  """Hinton KD: ``τ² · KL(softmax(t/τ) ‖ softmax(s/τ))``, summed over classes, batch mean.

  Args:
    s_logits, t_logits: (B, K) student and teacher logits.
    temperature: τ.
  """
  log_ps = jax.nn.log_softmax(s_logits.astype(jnp.float32) / temperature, axis=-1)
  log_pt = jax.nn.log_softmax(t_logits.astype(jnp.float32) / temperature, axis=-1)
  kl = jnp.sum(jnp.exp(log_pt) * (log_pt - log_ps), axis=-1)
  return temperature ** 2 * jnp.mean(kl)


def logit_terms(hp, s_logits, t_logits, labels):
  """``hp.ce_weight·CE + hp.kd_weight·KD(hp.temperature)`` and its metrics."""
  ce = cross_entropy(s_logits, labels)
  total, metrics = hp.ce_weight * ce, {"ce": ce}
  if hp.kd_weight and t_logits is not None:
    kd = kd_loss(s_logits, t_logits, hp.temperature)
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
