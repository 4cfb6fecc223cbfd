"""AFT-KD: attention and feature transfer based KD (Yang, Yu, Sheng, Yang; Sci. Rep. 2023).

THIS IS AN INTERPRETATION. Only the paper's abstract is publicly readable and no code is
published; what follows is our reading of it (``/work/shared/specs/aft_kd_hmat.md``), and
every guessed design choice is a config field so that a reader of the full paper can set
it. No result of this module should be reported as a reproduction of the paper.

The abstract: features carry the *result* of reasoning and attention maps its *process*;
(1) "transformation structures" turn intermediate features into attention-and-feature
blocks (AFBs) that the student must match, (2) "block operations" align the two networks,
(3) an adaptive weighting "based on the loss optimization rate" balances the losses.

Interpretation (config fields in brackets):

* Blocks: the ``stage{k}.out`` feature of every stage, teacher stage k ↔ student stage k
  (`paired_stages`; ``student_stages``/``teacher_stages`` select 1-based stages when the
  counts differ). Maps of different size are average-pooled to the smaller one.
* AFB of stage k: attention part ``a = l2norm(flatten(mean_c F²))`` (B, H·W) (the AT map);
  feature part: teacher ``F_t`` as is, student ``φ_k(F_s)`` with φ_k = Conv1x1 + BN to
  the teacher's channels (trained with the student); both l2-normalised per sample over
  (H, W, C). ``L_k = mean (a_s − a_t)² + feature_weight · mean (f_s − f_t)²``
  [``feature_weight`` λ_f = 1].
* Loss terms i: CE, KD (when ``kd_weight`` > 0), and each L_k; a term whose base weight is
  0 is dropped. Total ``Σ_i w_i · base_i · L_i``, base weights ``ce_weight`` (1),
  ``kd_weight`` (1, ``temperature`` τ = 4), ``afb_weight`` (1000; a scalar or one per
  stage).
* Weights w_i [``weighting``]: ``'fixed'`` (all 1) or ``'rate'`` (default), the
  Dynamic-Weight-Average form of a "loss optimization rate": ``r_i = L̄_i(e−1) /
  L̄_i(e−2)``, ``w_i = n · softmax_i(r_i / rate_temperature)`` [T_w = 2, DWA's value],
  ``w_i = 1`` until ``rate_warmup_windows`` (2) windows have completed; the weights are
  constants for the gradient. A window is ``rate_window_steps`` steps (default: the
  builder's ``steps_per_epoch``, i.e. an epoch); L̄ is the window's mean loss
  [``rate_average='mean'``] or an exponential moving average over steps snapshotted at
  the window's end [``'ema'``, decay ``ema_decay`` 0.99].

The loss history is the Flax ``'method_state'`` collection (see `init_rate_state`): it is
updated when the module is applied with ``train=True`` and ``'method_state'`` mutable,
and is checkpointed with the train state, so a resumed run keeps its weights.

Default scales, measured on random-init zoo models (B = 64, train-mode BN) for the five
CIFAR-100 pairs of ``configs/cifar100``: CE ≈ 4.6; KD(τ = 4) against a confident
teacher ≈ 6–7.5; L_k between 1.8e-4 (32×32 stages) and 3e-3 (8×8 stages) — the attention
part is ``||a_s − a_t||²/(H·W)`` and the feature part ``≈ 2/(H·W·C)``, about 1/5 of it.
A base weight of 1000 (AT's β, since the attention part IS attention transfer) therefore
puts each 1000·L_k at 0.2–3 (all stages together 1–5), within an order of magnitude of
CE.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from afd_jax.methods.base import (Distiller, check_choice, cross_entropy, kd_loss,
                                  paired_stages, register)
from afd_jax.methods.pooling import attention_map, l2_normalize, match_spatial
from afd_jax.methods.ranges import (BY_METHOD, NONNEG, NONNEG_INT, POS, POS_INT, UNIT,
                                    optional, ranged)
from afd_jax.models import layers

WEIGHTINGS = ("fixed", "rate")
RATE_AVERAGES = ("mean", "ema")


@dataclasses.dataclass(frozen=True)
class Config:
  """AFT-KD hyperparameters of our interpretation (see the module docstring; no
  published values exist). ``rate_window_steps`` None means one epoch; ``afb_weight``
  is one weight for every stage or a tuple with one per stage pair."""
  ce_weight: float = ranged(1.0, NONNEG)
  kd_weight: float = ranged(1.0, NONNEG)
  temperature: float = ranged(4.0, POS)
  afb_weight: float | tuple[float, ...] = ranged(1000.0, NONNEG)
  feature_weight: float = ranged(1.0, NONNEG)
  weighting: str = ranged("rate", BY_METHOD)
  rate_temperature: float = ranged(2.0, POS)
  rate_warmup_windows: int = ranged(2, NONNEG_INT)
  rate_window_steps: int | None = ranged(None, optional(POS_INT))
  rate_average: str = ranged("mean", BY_METHOD)
  ema_decay: float = ranged(0.99, UNIT)
  student_stages: tuple[int, ...] | None = ranged(None, BY_METHOD)
  teacher_stages: tuple[int, ...] | None = ranged(None, BY_METHOD)

  def __post_init__(self):
    check_choice("aft_kd", "weighting", self.weighting, WEIGHTINGS)
    check_choice("aft_kd", "rate_average", self.rate_average, RATE_AVERAGES)


# ---- pure loss functions ------------------------------------------------------------


def afb_loss(s: jnp.ndarray, s_proj: jnp.ndarray, t: jnp.ndarray,
             feature_weight: float = 1.0) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """AFB distance of one stage.

  Args:
    s: (B, H, W, Cs) student feature (for the attention part).
    s_proj: (B, H, W, Ct) the student feature through φ_k.
    t: (B, H, W, Ct) teacher feature.
    feature_weight: λ_f.

  Returns:
    (L_k, attention part, feature part) scalars, ``L_k = att + λ_f · feat`` where
    ``att = mean (a_s − a_t)²`` over (B, H·W) and ``feat = mean (f_s − f_t)²`` over
    (B, H·W·C) of the per-sample l2-normalised features.
  """
  att = jnp.mean(jnp.square(attention_map(s) - attention_map(t)))
  flat = lambda x: l2_normalize(x.reshape(x.shape[0], -1), axis=-1)  # noqa: E731
  feat = jnp.mean(jnp.square(flat(s_proj) - flat(t)))
  return att + feature_weight * feat, att, feat


def init_rate_state(n: int) -> dict[str, jnp.ndarray]:
  """A fresh loss history for n terms.

  Returns:
    ``step`` () int32 steps seen; ``window_sum`` (n,) summed losses of the current window;
    ``ema`` (n,) moving average over steps; ``history`` (2, n) the averages of the last
    two completed windows, most recent first (L̄(e−1), L̄(e−2)); ``windows`` () int32
    completed windows.
  """
  return dict(step=jnp.zeros((), jnp.int32), window_sum=jnp.zeros((n,), jnp.float32),
              ema=jnp.zeros((n,), jnp.float32), history=jnp.ones((2, n), jnp.float32),
              windows=jnp.zeros((), jnp.int32))


def rate_weights(state: Mapping[str, jnp.ndarray], temperature: float = 2.0,
                 warmup_windows: int = 2) -> jnp.ndarray:
  """DWA weights ``w_i = n · softmax_i((L̄_i(e−1) / L̄_i(e−2)) / T)``, 1 during warm-up.

  Args:
    state: a loss history from `init_rate_state` / `update_rate_state`.
    temperature: T_w.
    warmup_windows: windows that must complete before the weights move off 1 (at least
      2, since the rate needs two averages).

  Returns:
    (n,) weights summing to n.
  """
  hist = state["history"]
  n = hist.shape[-1]
  rate = hist[0] / jnp.maximum(hist[1], 1e-12)
  w = n * jax.nn.softmax(rate / temperature)
  return jnp.where(state["windows"] >= max(warmup_windows, 2), w, jnp.ones_like(w))


def update_rate_state(state: Mapping[str, jnp.ndarray], losses: jnp.ndarray, window: int,
                      average: str = "mean", ema_decay: float = 0.99
                      ) -> dict[str, jnp.ndarray]:
  """Adds one step's losses (n,) to the history; closes the window every `window` steps.

  Args:
    state: the current history.
    losses: (n,) this step's loss values (their gradients are not used).
    window: steps per window (an epoch).
    average: ``'mean'`` (the window's mean) or ``'ema'`` (the step EMA at the window end).
    ema_decay: EMA decay per step; the EMA starts at the first step's losses.

  Returns:
    the new history (same structure).
  """
  losses = jax.lax.stop_gradient(losses).astype(jnp.float32)
  step = state["step"] + 1
  window_sum = state["window_sum"] + losses
  ema = jnp.where(state["step"] == 0, losses,
                  ema_decay * state["ema"] + (1.0 - ema_decay) * losses)
  closes = step % window == 0
  avg = window_sum / window if average == "mean" else ema
  history = jnp.where(closes, jnp.stack([avg, state["history"][0]]), state["history"])
  return dict(step=step, window_sum=jnp.where(closes, 0.0, window_sum), ema=ema,
              history=history, windows=state["windows"] + closes.astype(jnp.int32))


# ---- module -------------------------------------------------------------------------


class AFTKD(nn.Module):
  """``Σ_i w_i · base_i · L_i`` over CE, KD and the per-stage AFB distances.

  Attributes:
    hp: the hyperparameters.
    teacher_channels: Ct of each paired teacher stage (φ_k's widths).
    steps_per_epoch: the default rate window.
  """
  hp: Config
  teacher_channels: Sequence[int]
  steps_per_epoch: int = 1

  @nn.compact
  def __call__(self, s_feats, t_feats, s_logits, t_logits, labels, *, train: bool):
    """s_feats/t_feats: lists of (B, H, W, C) per paired stage; returns (loss, metrics)."""
    hp = self.hp
    names, losses, base = [], [], []
    metrics = {}

    def add(name, value, weight):
      metrics[name] = value
      if weight:  # a term with base weight 0 takes no part in the weighting
        names.append(name)
        losses.append(value)
        base.append(weight)

    add("ce", cross_entropy(s_logits, labels), hp.ce_weight)
    if hp.kd_weight and t_logits is not None:
      add("kd", kd_loss(s_logits, t_logits, hp.temperature), hp.kd_weight)
    afb_w = (tuple(hp.afb_weight) if isinstance(hp.afb_weight, (tuple, list))
             else (hp.afb_weight,) * len(self.teacher_channels))
    lam = hp.feature_weight
    for k, (s, t, ct) in enumerate(zip(s_feats, t_feats, self.teacher_channels), start=1):
      s, t = match_spatial(s.astype(jnp.float32), t.astype(jnp.float32))
      t = jax.lax.stop_gradient(t)
      proj = layers.conv(ct, 1, name=f"phi{k}_conv")(s)
      proj = layers.batch_norm(train, name=f"phi{k}_bn")(proj)
      lk, att, feat = afb_loss(s, proj, t, lam)
      metrics[f"afb{k}_att"], metrics[f"afb{k}_feat"] = att, feat
      add(f"afb{k}", lk, afb_w[k - 1])

    values = jnp.stack(losses)
    weights = jnp.ones_like(values)
    if hp.weighting == "rate":
      state = {key: self.variable("method_state", key, lambda v=v: v)
               for key, v in init_rate_state(len(losses)).items()}
      current = {key: var.value for key, var in state.items()}
      weights = rate_weights(current, hp.rate_temperature, hp.rate_warmup_windows)
      if (train and self.is_mutable_collection("method_state")
          and not self.is_initializing()):
        window = hp.rate_window_steps or self.steps_per_epoch  # None: one epoch
        new = update_rate_state(current, values, window, hp.rate_average, hp.ema_decay)
        for key, var in state.items():
          var.value = new[key]
    weights = jax.lax.stop_gradient(weights)
    metrics.update({f"w_{name}": weights[i] for i, name in enumerate(names)})
    total = jnp.sum(weights * jnp.asarray(base, jnp.float32) * values)
    return total, metrics


@register("aft_kd", Config)
def build_aft_kd(hp, *, student, teacher, steps_per_epoch):
  """Pairs stage k with stage k (see `paired_stages`).

  Raises:
    PairingError: stage counts differ and no explicit stage lists are set.
    ValueError: ``afb_weight`` of wrong length.
  """
  s, t = paired_stages("aft_kd", student, teacher, hp.student_stages, hp.teacher_stages)
  if isinstance(hp.afb_weight, tuple) and len(hp.afb_weight) != len(t):
    raise ValueError(f"aft_kd: afb_weight has {len(hp.afb_weight)} entries for {len(t)} "
                     f"stage pairs {list(zip(s, t))}")
  channels = tuple(teacher.shapes[n][-1] for n in t)
  return Distiller("aft_kd", AFTKD(hp, channels, steps_per_epoch), s, t)
