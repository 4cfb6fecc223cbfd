"""Contrastive representation distillation (Tian, Krishnan & Isola, ICLR 2020), as the
authors' release (HobbitLong/RepDistiller) runs it on CIFAR-100.

Both pooled penultimate vectors (the release's ``feat[-1]``) are embedded by a learnable
``Linear(dim, feat_dim)`` each, then l2-normalised: ``v1`` (student), ``v2`` (teacher;
its embedding trains too). Two memory banks of N rows (N = training examples) hold past
embeddings: ``memory_v1`` the student's, ``memory_v2`` the teacher's. For every anchor
``b`` a row of K + 1 example indices is drawn, index 0 the positive (the example itself),
indices 1..K negatives from other classes, and

    out_v1[b, k] = exp(memory_v2[idx[b, k]] · v1[b] / T) / Z_v1   (student anchor)
    out_v2[b, k] = exp(memory_v1[idx[b, k]] · v2[b] / T) / Z_v2   (teacher anchor)

with the constants ``Z = N · mean(exp(·/T))`` set from the first training batch and then
fixed. With ``c = K / N`` (the noise term) and ``eps = 1e-7``, each view's NCE loss is

    L(x) = −(Σ_b log(x[b,0] / (x[b,0] + c + eps))
             + Σ_{b, k≥1} log(c / (x[b,k] + c + eps))) / B

and ``L_CRD = L(out_v1) + L(out_v2)``. After scoring, the banks' rows of the batch move
to ``normalise(m·row + (1 − m)·v)`` (no gradient).

Negatives (the release's ``CIFAR100InstanceSample``): in mode ``'exact'`` the positive
is the anchor itself, in ``'relax'`` a random example of its class; the K negatives are
uniform over the examples of the other classes, drawn without replacement unless K
exceeds their number (``np.random.choice(..., replace=K > len(negatives))``). On
CIFAR-100 (49 500 negatives per class, K = 16 384) that is without replacement, a
uniform K-subset taken as the top K of (B, N) uniform keys; ``replacement=True`` trades
it for independent draws (same expectation, no top-k).

Where the paper and the release differ we follow the release:
* the paper's critic ``h = e^{s/τ} / (e^{s/τ} + N/M)`` has no normalising constant; the
  release divides the scores by ``Z``, fixed from the first batch (RepDistiller issue
  #5: the authors' choice for NCE's stability);
* the release sums the loss over both anchors (teacher and student banks);
* the paper's negatives are other inputs; the release's 'exact' mode draws them only
  from other classes (it needs the labels);
* the banks' momentum ``nce_m = 0.5`` and the first-batch ``Z`` are the release's.

Computation: the scores are ``v @ bankᵀ`` (B, N) then gathered at ``[b, idx[b, k]]``,
identical to the release's gather of (B, K + 1, feat_dim) bank rows but without
materialising them. The banks are ``'method_state'`` variables named ``memory*``, which
the loop shards over devices along N; the class-sorted example order and the per-class
offsets (for sampling) and ``Z`` are ``'method_state'`` too. Negatives are drawn with
the ``'dropout'`` rng of the step (at initialisation with the ``'params'`` one; in
eval-mode analyses without an rng, from a fixed key). Banks and ``Z`` change only in a
train call with ``'method_state'`` mutable.
"""
from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from afd_jax.methods.base import (Distiller, LogitTerms, check_choice, logit_terms,
                                  register, require_features, unshard_batch)
from afd_jax.methods.ranges import (BOOL, BY_METHOD, NONNEG, POS, POS_INT, UNIT,
                                    optional, ranged)
from afd_jax.models import layers

MODES = ("exact", "relax")
_EPS = 1e-7  # the release's crd/criterion.py


@dataclasses.dataclass(frozen=True)
class Config(LogitTerms):
  """CRD as the benchmark runs it on CIFAR-100 (HobbitLong/RepDistiller,
  ``scripts/run_cifar_distill.sh``: ``--distill crd -a 0 -b 0.8`` (``-r`` 1);
  ``train_student.py``: ``feat_dim 128``, ``nce_k 16384``, ``nce_t 0.07``, ``nce_m 0.5``,
  ``mode exact``): CE + 0.8·L_CRD.

  ``mode``: ``'exact'`` (the positive is the example itself) or ``'relax'`` (a random
  example of its class).
  ``replacement``: None draws the negatives as the release does (with replacement only
  when K exceeds the other classes' examples; on CIFAR-100 without); True draws them
  with replacement (the same expected loss and gradient, a little more variance, and no
  (B, N) top-k: cheaper), False without (K must not exceed the negatives).
  """
  beta: float = ranged(0.8, NONNEG)
  feat_dim: int = ranged(128, POS_INT)
  nce_k: int = ranged(16384, POS_INT)
  nce_t: float = ranged(0.07, POS)
  nce_m: float = ranged(0.5, UNIT)
  mode: str = ranged("exact", BY_METHOD)
  replacement: bool | None = ranged(None, optional(BOOL))


@dataclasses.dataclass(frozen=True, eq=False)
class TrainingSplit:
  """The labels of the training split, in index order: (N,) int.

  Compared and hashed by identity (a Flax module attribute), the arrays stay out of
  ``repr``.
  """
  labels: np.ndarray

  @property
  def num_examples(self) -> int:
    return len(self.labels)

  @property
  def class_order(self) -> np.ndarray:
    """(N,) int32 example indices sorted by class (stable)."""
    return np.argsort(self.labels, kind="stable").astype(np.int32)

  @property
  def class_start(self) -> np.ndarray:
    """(C + 1,) int32: class c's examples are ``class_order[start[c]:start[c + 1]]``."""
    counts = np.bincount(self.labels, minlength=int(self.labels.max()) + 1)
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)

  def replacement(self, k: int) -> bool | None:
    """Whether K negatives are drawn with replacement (the release: ``K > negatives``),
    True/False for every class alike, None if it depends on the class."""
    counts = np.bincount(self.labels)
    replace = k > self.num_examples - counts[counts > 0]
    return bool(replace[0]) if np.all(replace == replace[0]) else None

  def __repr__(self) -> str:
    return f"TrainingSplit(N={self.num_examples})"


def sample_contrast_idx(key: jax.Array, labels: jnp.ndarray, index: jnp.ndarray,
                        class_order: jnp.ndarray, class_start: jnp.ndarray,
                        num_negatives: int, *, replace: bool | None,
                        relax: bool = False) -> jnp.ndarray:
  """Example indices to contrast each anchor with: (B, K + 1) int32.

  Args:
    key: PRNG key.
    labels: (B,) the anchors' classes.
    index: (B,) the anchors' positions in the training split.
    class_order: (N,) example indices sorted by class; class_start: (C + 1,) offsets.
    num_negatives: K.
    replace: draw the negatives with replacement (True), without (False), or per anchor
      as the release does, with replacement iff K exceeds its class's negatives (None).
    relax: the positive is a uniform example of the anchor's class instead of itself.

  Returns:
    column 0 the positive, columns 1..K uniform over the examples of the other classes.
  """
  n, k = class_order.shape[0], num_negatives
  b = labels.shape[0]
  k_neg, k_pos = jax.random.split(key)
  start, end = class_start[labels][:, None], class_start[labels + 1][:, None]  # (B, 1)
  n_other = n - (end - start)

  def with_replacement():
    # a uniform slot among the other classes' ones, skipping the anchor's class block
    slot = jax.random.randint(k_neg, (b, k), 0, n_other)
    return slot + jnp.where(slot >= start, end - start, 0)

  def without_replacement():
    # the K largest of i.i.d. uniform keys over the other classes' slots: a uniform
    # K-subset (an own-class slot, keyed −1, is never picked as K ≤ its negatives)
    slots = jnp.arange(n)
    own = (slots >= start) & (slots < end)
    keys = jnp.where(own, -1.0, jax.random.uniform(k_neg, (b, n)))
    return jax.lax.top_k(keys, k)[1]

  if replace is None:
    slot = jnp.where(k > n_other, with_replacement(), without_replacement())
  else:
    slot = with_replacement() if replace else without_replacement()
  if relax:
    positive = class_order[start[:, 0] + jax.random.randint(k_pos, (b,), 0,
                                                            n - n_other[:, 0])]
  else:
    positive = index
  return jnp.concatenate([positive[:, None].astype(jnp.int32),
                          class_order[slot].astype(jnp.int32)], axis=1)


def _typed_sharding(x: jnp.ndarray):
  """`x`'s sharding under a mesh with Explicit axes (sharding in types), else None."""
  sharding = getattr(jax.typeof(x), "sharding", None)
  mesh = getattr(sharding, "mesh", None)
  if mesh is None or mesh.empty or jax.sharding.AxisType.Explicit not in mesh.axis_types:
    return None
  return sharding


def _replicated(x: jnp.ndarray):
  sharding = _typed_sharding(x)
  return None if sharding is None else jax.sharding.NamedSharding(
      sharding.mesh, jax.sharding.PartitionSpec())


def contrast_logits(v: jnp.ndarray, bank: jnp.ndarray, idx: jnp.ndarray) -> jnp.ndarray:
  """``bank[idx[b, k]] · v[b]``: (B, K + 1), from the (B, N) scores ``v @ bankᵀ``.

  v: (B, d) anchors; bank: (N, d) (may be sharded along N); idx: (B, K + 1) indices.
  """
  scores = unshard_batch(v) @ bank.T
  rows = jnp.arange(idx.shape[0])[:, None]
  return scores.at[rows, idx].get(out_sharding=_replicated(scores))


def nce_loss(log_p: jnp.ndarray, num_examples: int) -> jnp.ndarray:
  """The release's ``ContrastLoss`` of ``x = exp(log_p)``: column 0 the positive.

  log_p: (B, K + 1) log of the normalised scores; `num_examples`: N (noise 1/N).
  """
  noise = (log_p.shape[1] - 1) / num_examples
  log_denominator = jnp.logaddexp(log_p, math.log(noise + _EPS))
  positive = log_p[:, 0] - log_denominator[:, 0]
  negative = math.log(noise) - log_denominator[:, 1:]
  return -(jnp.sum(positive) + jnp.sum(negative)) / log_p.shape[0]


def momentum_update(bank: jnp.ndarray, index: jnp.ndarray, v: jnp.ndarray,
                    momentum: float) -> jnp.ndarray:
  """Rows ``index`` of the (N, d) `bank` to ``normalise(m·row + (1 − m)·v)``; v (B, d)."""
  rows = bank.at[index].get(out_sharding=_replicated(bank))
  rows = momentum * rows + (1.0 - momentum) * unshard_batch(v)
  rows = rows / jnp.sqrt(jnp.sum(jnp.square(rows), axis=1, keepdims=True))
  return bank.at[index].set(rows, out_sharding=_typed_sharding(bank))


def _l2_normalise(x: jnp.ndarray) -> jnp.ndarray:
  return x / jnp.sqrt(jnp.sum(jnp.square(x), axis=1, keepdims=True))


class CRD(nn.Module):
  """``ce_weight·CE + kd_weight·KD + beta·L_CRD`` with the embeddings ``embed_s``,
  ``embed_t`` and the memory banks of `split`'s N examples."""
  hp: Config
  split: TrainingSplit

  @nn.compact
  def __call__(self, s_feats, t_feats, s_logits, t_logits, labels, *, train: bool,
               index=None):
    """s_feats, t_feats: one (B, D) pooled vector each; labels, index: (B,) int.

    Returns (loss, metrics); sows ``contrast_idx`` (B, K + 1), the indices scored.
    """
    hp, n = self.hp, self.split.num_examples
    if index is None:
      raise ValueError("crd needs index=, the batch's positions in the training split")
    s, t = s_feats[0], jax.lax.stop_gradient(t_feats[0])
    s, t = s.reshape(s.shape[0], -1), t.reshape(t.shape[0], -1)
    v1 = _l2_normalise(layers.dense(hp.feat_dim, s.shape[-1], name="embed_s")(s))
    v2 = _l2_normalise(layers.dense(hp.feat_dim, t.shape[-1], name="embed_t")(t))

    stdv = 1.0 / math.sqrt(hp.feat_dim / 3)
    bank_init = lambda: jax.random.uniform(  # noqa: E731
        self.make_rng("params"), (n, hp.feat_dim), jnp.float32, -stdv, stdv)
    memory_v1 = self.variable("method_state", "memory_v1", bank_init)
    memory_v2 = self.variable("method_state", "memory_v2", bank_init)
    z = self.variable("method_state", "z", lambda: jnp.full((2,), -1.0, jnp.float32))
    order = self.variable("method_state", "class_order",
                          lambda: jnp.asarray(self.split.class_order))
    start = self.variable("method_state", "class_start",
                          lambda: jnp.asarray(self.split.class_start))

    # (B,) ints, replicated: the sampling and the bank rows are over all of N
    anchor_labels, index = unshard_batch(labels), unshard_batch(index)
    if self.has_rng("dropout"):
      key = self.make_rng("dropout")
    elif self.is_initializing():
      key = self.make_rng("params")
    else:  # eval-mode analyses: fixed negatives
      key = jax.random.key(0)
    replace = (self.split.replacement(hp.nce_k) if hp.replacement is None
               else hp.replacement)
    idx = sample_contrast_idx(key, anchor_labels, index, order.value, start.value,
                              hp.nce_k, replace=replace, relax=hp.mode == "relax")
    self.sow("intermediates", "contrast_idx", idx)
    bank1 = jax.lax.stop_gradient(memory_v1.value)
    bank2 = jax.lax.stop_gradient(memory_v2.value)
    logits = jnp.stack([contrast_logits(v1, bank2, idx),   # student anchor
                        contrast_logits(v2, bank1, idx)])  # teacher anchor
    logits = logits / hp.nce_t
    # Z: set from the first training batch, then fixed (a constant: no gradient)
    estimate = jax.lax.stop_gradient(n * jnp.mean(jnp.exp(logits), axis=(1, 2)))
    z_now = jnp.where(z.value < 0, estimate, z.value)
    log_p = logits - jnp.log(z_now)[:, None, None]
    crd = nce_loss(log_p[0], n) + nce_loss(log_p[1], n)

    if (train and self.is_mutable_collection("method_state")
        and not self.is_initializing()):
      z.value = z_now
      memory_v1.value = momentum_update(memory_v1.value, index,
                                        jax.lax.stop_gradient(v1), hp.nce_m)
      memory_v2.value = momentum_update(memory_v2.value, index,
                                        jax.lax.stop_gradient(v2), hp.nce_m)
    total, metrics = logit_terms(hp, s_logits, t_logits, labels)
    metrics["crd"] = crd
    return total + hp.beta * crd, metrics


@register("crd", Config, needs_labels=True)
def build_crd(hp, *, student, teacher, steps_per_epoch, train_labels):
  """The pooled penultimate vectors; `train_labels` (N,) the training split's labels.

  Raises:
    PairingError: a net has no ``pooled`` feature.
    ValueError: unknown mode; labels not a 1-D array of non-negative ints; a single
      class; ``replacement=False`` with more negatives than a class has.
  """
  del steps_per_epoch
  check_choice("crd", "mode", hp.mode, MODES)
  labels = np.asarray(train_labels)
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or (
      labels.size and labels.min() < 0):
    raise ValueError(f"crd: train_labels must be a (N,) array of non-negative int "
                     f"labels, got {labels.dtype} of shape {labels.shape}")
  if len(np.unique(labels)) < 2:
    raise ValueError("crd draws negatives from other classes: train_labels need at least "
                     "two classes")
  negatives = len(labels) - np.bincount(labels).max()
  if hp.replacement is False and hp.nce_k > negatives:
    raise ValueError(f"crd: nce_k={hp.nce_k} negatives cannot be drawn without "
                     f"replacement from {negatives} examples of other classes; set "
                     "replacement=None (the release's rule) or True")
  return Distiller("crd", CRD(hp, TrainingSplit(labels.astype(np.int32))),
                   require_features(student, ["pooled"], "crd", "student"),
                   require_features(teacher, ["pooled"], "crd", "teacher"),
                   needs_index=True)
