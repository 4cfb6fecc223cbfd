"""Pure step functions: forward passes, the train step, the eval step, method probes.

Everything here is a pure function of arrays and the static `Networks`; the caller jits.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from afd_jax import models


def forward(model: nn.Module, variables, images: jax.Array, *, train: bool, rngs=None,
            features: bool = True):
  """One forward pass that also returns the sown features.

  Args:
    model: a zoo model.
    variables: its ``{'params', 'batch_stats'}``.
    images: (B, H, W, 3).
    train: batch statistics (and their update) if True, running averages otherwise.
    rngs: ``{'dropout': key}`` for models with dropout in train mode.
    features: whether the features are wanted; False runs the model's plain forward
      (a DeepLabV3+ then follows the release's ``forward``, with ASPP dropout, instead of
      its ``extract_feature``; the zoo's classifiers compute the same either way).

  Returns:
    ``(logits (B, K) or (B, H, W, K), features {name: (B, h, w, c)} in depth order ({}
    without `features`), new batch_stats or None when not training)``.
  """
  mutable = (["intermediates"] if features else []) + (["batch_stats"] if train else [])
  if mutable:
    logits, mut = model.apply(variables, images, train=train, mutable=mutable, rngs=rngs)
  else:
    logits, mut = model.apply(variables, images, train=train, rngs=rngs), {}
  return (logits, models.feature_list(mut.get("intermediates", {})),
          mut.get("batch_stats"))


def select(features: dict[str, jax.Array], names) -> list[jax.Array]:
  return [features[n] for n in names]


def teacher_outputs(nets, teacher_vars, images, rng=None):
  """Frozen teacher, no gradient. Returns (logits, selected features).

  Eval mode (running BN statistics, no dropout), unless the method asks for the
  teacher in train mode (``distiller.teacher_train_mode``: the TaT segmentation release's
  ``t_net.train()``) and `rng` is given (a train step): then batch-statistics BatchNorm
  and dropout drawn from `rng`; the updated running statistics are discarded (the frozen
  teacher's variables never change, as the release never evaluates or saves its teacher).
  """
  if nets.teacher is None:
    return None, []
  train = rng is not None and getattr(nets.distiller, "teacher_train_mode", False)
  logits, feats, _ = forward(nets.teacher, teacher_vars, images, train=train,
                             rngs={"dropout": rng} if train else None)
  return jax.lax.stop_gradient((logits, select(feats, nets.distiller.teacher_features)))


def pixel_or_top1_accuracy(logits: jax.Array, labels: jax.Array,
                           ignore_label: int = 255) -> jax.Array:
  """Top-1 accuracy (fraction): per example for (B, K) logits, per valid pixel (label !=
  `ignore_label`) for (B, H, W, K) segmentation logits (0 when no pixel is valid)."""
  correct = jnp.argmax(logits, -1) == labels
  if labels.ndim == 1:
    return jnp.mean(correct)
  valid = labels != ignore_label
  return jnp.sum(correct & valid) / jnp.maximum(jnp.sum(valid), 1)


def method_objective(nets, state, params, s_feats, t_feats, s_logits, t_logits, labels, *,
                     train: bool, mutable, rngs=None, index=None):
  """The one call of the method's module: ``((loss, metrics), updated collections)``.

  In the init phase of a two-stage method (``nets.phase == 'init'``) the objective is the
  module's ``init_loss``. `index` (B,): the examples' positions in the training split,
  passed to methods that read it (``distiller.needs_index``: CRD's memory bank).
  """
  variables = {"params": params["method"], "batch_stats": state.batch_stats["method"],
               "method_state": state.method_state}
  kwargs = {}
  if nets.distiller.needs_index:
    if index is None:
      raise ValueError(f"method {nets.distiller.name!r} needs the batch's 'index' (the "
                       "examples' positions in the training split)")
    kwargs["index"] = index
  if nets.phase == "init":
    kwargs["method"] = "init_loss"
  return nets.distiller.module.apply(variables, s_feats, t_feats, s_logits, t_logits,
                                     labels, train=train, mutable=mutable, rngs=rngs,
                                     **kwargs)


def train_step(nets, state, batch: dict[str, jax.Array], teacher_vars, teacher_out=None
               ) -> tuple[Any, dict[str, jax.Array]]:
  """One SGD step on the method's whole objective.

  Args:
    nets: the run's static `train_state.Networks`.
    state: the `train_state.TrainState` (replicated).
    batch: ``{'image': (B, H, W, 3), 'label': (B,)[, 'index': (B,)]}``, sharded along B.
    teacher_vars: the frozen teacher's ``{'params', 'batch_stats'}`` (or None).
    teacher_out: the teacher's ``(logits, selected features)`` on this batch, already
      computed (`teacher_outputs` in eval mode; a vmapped group's members that share a
      batch share it), or None: computed here.

  Returns:
    the new state and float32 scalar metrics (loss, its terms, lr, top1).
  """
  images, labels = batch["image"], batch["label"]
  step_rng = jax.random.fold_in(state.rng, state.step)
  rngs = {"dropout": step_rng}
  t_logits, t_feats = teacher_out if teacher_out is not None else teacher_outputs(
      nets, teacher_vars, images, rng=jax.random.fold_in(step_rng, 1))
  # The init phase of FT trains only the method: the student runs in eval mode there.
  student_train = nets.phase != "init" or nets.distiller.init_phase.train_student

  def loss_fn(params):
    s_logits, s_feats, s_stats = forward(
        nets.student, {"params": params["student"],
                       "batch_stats": state.batch_stats["student"]},
        images, train=student_train, rngs=rngs,
        features=bool(nets.distiller.student_features))
    (loss, metrics), m_mut = method_objective(
        nets, state, params, select(s_feats, nets.distiller.student_features), t_feats,
        s_logits, t_logits, labels, train=True, mutable=["batch_stats", "method_state"],
        rngs=rngs, index=batch.get("index"))
    return loss, (metrics, s_logits, s_stats, m_mut)

  (loss, (metrics, logits, s_stats, m_mut)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  # `nets.tx`, not the state's own: a vmapped group's member brings its traced lr / wd.
  updates, opt_state = nets.tx.update(grads, state.opt_state, state.params)
  new_state = state.replace(
      step=state.step + 1, params=optax.apply_updates(state.params, updates),
      opt_state=opt_state, batch_stats={
          "student": state.batch_stats["student"] if s_stats is None else s_stats,
          "method": m_mut.get("batch_stats", {})},
      method_state=m_mut.get("method_state", {}))
  metrics = dict(metrics, loss=loss, lr=nets.schedule(state.step),
                 grad_norm=optax.tree.norm(grads),
                 top1=pixel_or_top1_accuracy(logits, labels))
  if nets.skip_nonfinite:
    # Keep the old state (but count the step) when anything is non-finite.
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(m)) for m in jax.tree.leaves(metrics)]))
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                             new_state.replace(step=state.step), state)
    new_state = new_state.replace(step=state.step + 1)
    metrics["skipped"] = 1.0 - finite
  return new_state, jax.tree.map(lambda m: jnp.asarray(m, jnp.float32), metrics)


def eval_step(model: nn.Module, variables, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Masked sums of correct top-1/top-5 predictions and CE over an eval batch."""
  logits = model.apply(variables, batch["image"], train=False).astype(jnp.float32)
  labels, mask = batch["label"], batch["mask"]
  top5 = jax.lax.top_k(logits, 5)[1] if logits.shape[-1] >= 5 else jnp.argsort(-logits)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return {"correct1": jnp.sum((jnp.argmax(logits, -1) == labels) * mask),
          "correct5": jnp.sum(jnp.any(top5 == labels[:, None], -1) * mask),
          "loss": jnp.sum(ce * mask), "count": jnp.sum(mask)}


def segmentation_eval_step(model: nn.Module, variables, batch: dict[str, jax.Array],
                           num_classes: int, ignore_label: int = 255
                           ) -> dict[str, jax.Array]:
  """Confusion matrix and CE sums of a segmentation eval batch.

  Args:
    model: a segmentation model (logits (B, H, W, K) at the input size).
    variables: its ``{'params', 'batch_stats'}``.
    batch: ``{'image': (B, H, W, 3), 'label': (B, H, W) int (ignore_label = not
      counted), 'mask': (B,) (0: padding)}``.
    num_classes: K.

  Returns:
    ``confusion`` (K, K) float32 counts ``[ground truth, prediction]`` over the valid
    pixels of the real examples (the release's ``Evaluator._generate_matrix``: pixels with
    a label outside [0, K) are not counted), ``loss`` the summed per-pixel CE and
    ``pixels`` their number, ``count`` the real examples.
  """
  logits = model.apply(variables, batch["image"], train=False).astype(jnp.float32)
  labels = batch["label"]
  valid = ((labels >= 0) & (labels < num_classes)
           & (batch["mask"][:, None, None] > 0)).astype(jnp.float32)
  truth = jnp.where(valid > 0, labels, 0)
  pred = jnp.argmax(logits, -1)
  confusion = jnp.zeros((num_classes * num_classes,), jnp.float32).at[
      (truth * num_classes + pred).reshape(-1)].add(valid.reshape(-1))
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, truth)
  return {"confusion": confusion.reshape(num_classes, num_classes),
          "loss": jnp.sum(ce * valid), "pixels": jnp.sum(valid),
          "count": jnp.sum(batch["mask"])}


def method_intermediates(nets, state, batch, teacher_vars) -> dict:
  """What the method sows in eval mode on `batch` (e.g. AFD's ``attention``)."""
  s_logits, s_feats, _ = forward(nets.student, {
      "params": state.params["student"], "batch_stats": state.batch_stats["student"]},
                                 batch["image"], train=False)
  t_logits, t_feats = teacher_outputs(nets, teacher_vars, batch["image"])
  index = batch.get("index", jnp.zeros_like(batch["label"]))
  _, mut = method_objective(nets, state, state.params,
                            select(s_feats, nets.distiller.student_features), t_feats,
                            s_logits, t_logits, batch["label"], train=False,
                            mutable=["intermediates"], index=index)
  return mut.get("intermediates", {})


def segmentation_predictions(nets, state, batch, teacher_vars) -> dict:
  """Eval-mode class maps of student and teacher on `batch` (the segmentation pictures).

  Returns:
    ``{'image', 'label', 'mask'}`` of the batch, ``'student'`` (B, H, W) int32 and
    ``'teacher'`` (B, H, W) int32 or None.
  """
  student = nets.student.apply({"params": state.params["student"],
                                "batch_stats": state.batch_stats["student"]},
                               batch["image"], train=False)
  teacher = (None if nets.teacher is None else
             jnp.argmax(nets.teacher.apply(teacher_vars, batch["image"], train=False), -1))
  return {"image": batch["image"], "label": batch["label"], "mask": batch["mask"],
          "student": jnp.argmax(student, -1), "teacher": teacher}
