"""TaT: knowledge distillation via the Target-aware Transformer (Lin et al., CVPR 2022).

One-to-all spatial matching: every teacher position is regressed by a mix of ALL student
positions, with mixing weights from an attention between the student (queries) and the
teacher (keys). Semantics follow the authors' public releases (see
``/work/shared/specs/tat.md``); the code is our own.

Modes (``mode``):

* ``'global'`` (default; the ImageNet classification release). On the last stage of
  each net: ``q = BN(Conv3x3_q(s))``, ``v = BN(Conv3x3_v(s))`` to the teacher's Ct
  channels (no bias, padding 1); ``k = t`` (or a learnable Conv+BN of ``t`` with
  ``learnable_key``); ``A = softmax_j(q kᵀ / temperature)`` (no 1/sqrt(d));
  ``out = A v``; ``L = mean (out − t)²`` against the raw teacher feature.
* ``'hierarchical'`` (the segmentation release sihaoevery/TaT-seg, ``distiller_tat.py``
  with ``attn_type='stack_attn'``; see `patch_group_loss`, `anchor_point_loss`). On the
  DeepLab ``decoder`` feature of both nets (the release's ``s_feats[-1]``/``t_feats[-1]``):
  ``q = E_q(s)``, ``v = E_v(s)``, ``k = E_k(t)``, each the release's ``Embed``, Conv1x1 (no
  bias, PyTorch's default init) + BN to Ct. The release runs every sample through
  ``distillation_loss_all`` alone (its ``zip`` iterates over the batch), so each embedding's
  train-mode BN normalises over ONE sample's positions (`PerSampleBatchNorm`, which also
  moves the running averages once per sample, in batch order) and the sample's loss is
  ``L_b = beta·L_P,b + gamma·L_A,b``: patches from ``unfold`` (⌊H/⌊H/n⌋⌋ per side, which can
  exceed n), stacked along channels patch-major, ``heads`` heads cutting the stacked
  channels into equal chunks; anchors from an average pool. Total (the trainer's
  ``loss_seg + alpha·Σ_b loss_b / B``): ``ce_weight·CE_seg + weight·Σ_b L_b / B`` with
  CE_seg the release's ``SegmentationLosses.CrossEntropyLoss``, the mean over non-void
  pixels divided again by B (`segmentation_cross_entropy`; ``weight`` is the release's
  ``--alpha``). The teacher runs in train mode (``Distiller.teacher_train_mode``: the
  trainer's ``t_net.train()``).

Total: ``ce_weight·CE + kd_weight·KD(τ) + weight·L``.
Defaults, global mode: the ImageNet release's recipe, the one its ``train_local.sh`` runs
(sihaoevery/TaT@a6cc329 ``configs/sample/ilsvrc2012/single_stage/tat/
resnet18_from_resnet34_attn.yaml``): ``0.1·CE + 0.2·L_TaT`` and no KD — torchdistill's
``KDLoss`` with alpha 0.1, beta 0.0 (``losses/single.py``: ``alpha·CE + beta·τ²·KL``) as
the org term, ``MaskedFM`` (heads 1, ``nn.MSELoss``) at factor 0.2, the teacher's key the
identity (``models/special.py AttnEmbed``: ``nn.Identity()`` for the teacher). The rest of
that recipe is the run's, not the method's (`configs/imagenet/tat.py`): AdamW lr 0.0016
wd 5e-4, 100 epochs ×0.1 after 30/60/90, 8 GPUs × 256 images, both nets starting from
torchvision's ImageNet weights. The release's other file, ``..._attn_w_kd.yaml``
(0.5·CE + 0.5·KD(τ = 1) + 0.1·L_TaT), is not what the script runs (nor valid YAML).
The paper has CIFAR-100 results (its Table 1, seven pairs) but no released CIFAR recipe;
`configs/cifar100/tat.py` states what it uses instead. The paper reports the TaT weight
stable over 0.05–0.25. At initialisation on CIFAR-100 (random-init zoo models,
train-mode BN) CE ≈ 4.6, KD(τ = 1) ≈ 4.5 and L_TaT ≈ 1 + E[t²] (``out`` is nearly one
unit-variance BN row, the teacher post-ReLU): measured 1.3 (wrn_40_2→wrn_16_2), 1.4
(vgg13→vgg8), 3.5 (resnet32x4→ShuffleV2), 5.1 (resnet32x4→resnet8x4), 8.4
(resnet56→resnet20). The hierarchical
mode defaults to the Pascal VOC ResNet18 recipe, ``train_voc_resnet18.sh``: ALPHA=0.1
BETA=1.0 GAMMA=0.4 N=M=16 HEAD=64 Anchor_H=Anchor_W=32 (on the 129×129 decoder map at crop
513: 8×8-position patches, 16×16 of them, 4 patches' channels per head, 32×32 anchors).
Other release recipes: ``train_voc_mobilenet.sh`` α 0.1 β 1.0 γ 0.5 n=m=32 heads 1024
anchors 64; ``train_cocostuff10k_resnet18.sh`` α 0.6 β 1 γ 1 n=m=32 heads 512 anchors 32.

Paper vs release: the paper describes patch groups of whole patches; the release's heads
cut the stacked channels into equal chunks, which need not align with patch boundaries
(they do in the VOC ResNet18 recipe), and its patch count per side is ⌊H/⌊H/n⌋⌋, not n.
We follow the release.

The hyperparameters and their defaults are `Config`'s.
Spatial mismatch (cross-architecture pairs): the larger of the two maps is adaptively
average-pooled to the smaller one before anything else. Our choice: both releases pair
equal-sized maps only (ResNet34/ResNet18 at 7×7; the DeepLab decoders), so they define
nothing here.

Memory: the global operator materialises a (B, N, N) attention with N = H·W of the
matched map — 8·8 = 64 tokens on CIFAR and 7·7 = 49 on ImageNet are cheap, but a 56×56
map at B = 256 would need 256·3136²·4 B ≈ 10 GB, which is what the hierarchical mode
(attention within (B·heads, kh·kw, kh·kw) heads and over the pooled anchors) is for.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from afd_jax.methods.base import Distiller, check_choice, logit_terms, register
from afd_jax.methods.pooling import match_spatial
from afd_jax.methods.ranges import (BOOL, BY_METHOD, GRID, NONNEG, POS, POS_INT,
                                    optional, ranged)
from afd_jax.methods.seg_features import (batch_reshape, dense_feature_pair, patch_layout,
                                          unfold_patches)
from afd_jax.models import layers

MODES = ("global", "hierarchical")
# Per-mode defaults of the fields left None: the global mode's are the ImageNet
# release's (train_local.sh -> resnet18_from_resnet34_attn.yaml), the hierarchical
# mode's the Pascal VOC (ResNet18 student) release's (train_voc_resnet18.sh).
_MODE_DEFAULTS = {
    "global": dict(ce_weight=0.1, kd_weight=0.0, temperature=1.0, learnable_key=False,
                   weight=0.2),
    "hierarchical": dict(ce_weight=1.0, kd_weight=0.0, temperature=1.0,
                         learnable_key=True, weight=0.1),
}


@dataclasses.dataclass(frozen=True)
class Config:
  """TaT hyperparameters (sources in the module docstring).

  Attributes:
    mode: ``'global'`` or ``'hierarchical'``.
    ce_weight, kd_weight, temperature, learnable_key, weight: None takes the mode's
      default (global, the ImageNet release: 0.1, 0, τ = 1, False, 0.2; hierarchical, the
      VOC release: 1, 0, τ = 1, True, 0.1). ``weight`` is the TaT term's: ``MaskedFM``'s
      factor 0.2 in the ImageNet yaml; the segmentation release's ``--alpha``
      (train_voc_resnet18.sh ALPHA=0.1).
    student_feature, teacher_feature: feature names (default: ``decoder`` when both nets
      sow one, else each net's last ``stage{i}.out``).
    embed_kernel: global-mode embedding conv size (3).
    attention_temperature: divides the attention logits (1: no 1/sqrt(d), both releases).
    patch_grid: hierarchical (n, m), the release's ``-n``/``-m`` (N=M=16).
    heads: hierarchical attention heads over the stacked patch channels (HEAD=64); must
      divide (patches)·Ct. Replaces the former ``patch_groups``.
    anchor_grid: hierarchical (ah, aw), ``--anchor_h``/``--anchor_w`` (32).
    beta, gamma: hierarchical ``beta·L_P + gamma·L_A`` (BETA=1.0, GAMMA=0.4).
  """
  mode: str = ranged("global", BY_METHOD)
  ce_weight: float | None = ranged(None, optional(NONNEG))
  kd_weight: float | None = ranged(None, optional(NONNEG))
  temperature: float | None = ranged(None, optional(POS))
  learnable_key: bool | None = ranged(None, optional(BOOL))
  weight: float | None = ranged(None, NONNEG)
  student_feature: str | None = ranged(None, BY_METHOD)
  teacher_feature: str | None = ranged(None, BY_METHOD)
  embed_kernel: int = ranged(3, POS_INT)
  attention_temperature: float = ranged(1.0, POS)
  patch_grid: tuple[int, ...] = ranged((16, 16), GRID)
  heads: int = ranged(64, POS_INT)
  anchor_grid: tuple[int, ...] = ranged((32, 32), GRID)
  beta: float = ranged(1.0, NONNEG)
  gamma: float = ranged(0.4, NONNEG)

  def __post_init__(self):
    check_choice("tat", "mode", self.mode, MODES)
    for key, value in _MODE_DEFAULTS[self.mode].items():
      if getattr(self, key) is None:
        object.__setattr__(self, key, value)


# ---- pure loss functions ------------------------------------------------------------


def one_to_all(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray,
               temperature: float = 1.0) -> jnp.ndarray:
  """The target-aware one-to-all operator ``softmax_j(q kᵀ / temperature) v``.

  Args:
    q: (..., N, C) queries (leading axes: batch, heads).
    k: (..., M, C) keys.
    v: (..., M, Cv) values.
    temperature: divides the logits; 1 (the release: no 1/sqrt(C) scaling).

  Returns:
    (..., N, Cv): each query's attention-weighted mix of all M values.
  """
  logits = jnp.einsum("...nc,...mc->...nm", q, k) / temperature
  logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))  # bf16: f32 softmax
  return jnp.einsum("...nm,...mc->...nc", jax.nn.softmax(logits, axis=-1), v)


def _tokens(x: jnp.ndarray) -> jnp.ndarray:
  """(B, H, W, C) -> (B, H·W, C), raster order."""
  return batch_reshape(x, (x.shape[0], -1, x.shape[-1]))


def global_tat_loss(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, t: jnp.ndarray,
                    temperature: float = 1.0) -> jnp.ndarray:
  """``mean (one_to_all(q, k, v) − t)²`` over all B·H·W·C elements.

  Args:
    q, v: (B, H, W, C) student query and value embeddings.
    k: (B, H, W, C) keys (the teacher feature, or its embedding).
    t: (B, H, W, C) regression target (the raw teacher feature).
    temperature: softmax temperature of `one_to_all`.
  """
  out = one_to_all(_tokens(q), _tokens(k), _tokens(v), temperature)
  return jnp.mean(jnp.square(out - _tokens(t)))


def check_hierarchical(hw: tuple[int, int], channels: int, grid: tuple[int, int],
                       heads: int, anchors: tuple[int, int]) -> None:
  """Raises ValueError unless the patch grid, heads and anchor grid fit an H×W×C map.

  Needs 1 <= n <= H and 1 <= m <= W (a patch of at least one position), `heads` dividing
  the ph·pw·C stacked channels (``einops.rearrange`` would fail otherwise) and
  1 <= ah <= H, 1 <= aw <= W (an average-pool kernel of at least 1).
  """
  (hh, ww), (ah, aw) = hw, anchors
  where = (f"the matched {hh}×{ww} map with {channels} channels; set "
           "config.method.patch_grid / heads / anchor_grid")
  try:
    _, _, ph, pw = patch_layout(hw, grid)
  except ValueError as e:
    raise ValueError(f"tat: {e}: {where}") from None
  if heads < 1 or (ph * pw * channels) % heads:
    raise ValueError(f"tat: heads={heads} does not divide the {ph}×{pw} patches × "
                     f"{channels} channels = {ph * pw * channels} stacked channels of patch "
                     f"grid {tuple(grid)} on {where}")
  if not (1 <= ah <= hh and 1 <= aw <= ww):
    raise ValueError(f"tat: anchor grid {tuple(anchors)} does not fit {where} (needs "
                     "1 <= ah <= H and 1 <= aw <= W)")


def stack_patches(x: jnp.ndarray, grid: tuple[int, int]) -> jnp.ndarray:
  """The release's patch stacking: (B, H, W, C) -> (B, kh·kw, ph·pw·C).

  Patches (`patch_layout`) in raster order p = row·pw + col are stacked along channels
  patch-major (stacked channel p·C + c, the release's ``permute(0, 2, 1, 3, 4).reshape``);
  tokens are the kh·kw in-patch positions in raster order.
  """
  p = unfold_patches(x, grid)                    # (B, P, kh, kw, C)
  b, n_patch, kh, kw, c = p.shape
  return batch_reshape(p.transpose(0, 2, 3, 1, 4), (b, kh * kw, n_patch * c))


def _split_heads(x: jnp.ndarray, heads: int) -> jnp.ndarray:
  """(B, N, D·heads) -> (B, heads, N, D): ``'b (h d) x y -> b h (x y) d'``."""
  b, n, d = x.shape
  return batch_reshape(x, (b, n, heads, d // heads)).transpose(0, 2, 1, 3)


def _per_sample_mse(out: jnp.ndarray, target: jnp.ndarray) -> jnp.ndarray:
  """(B, …) pairs -> (B,) mean squared error of each sample's elements."""
  return jnp.mean(jnp.square(out - target), axis=tuple(range(1, out.ndim)))


def patch_group_loss(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, t: jnp.ndarray,
                     grid: tuple[int, int], heads: int,
                     temperature: float = 1.0) -> jnp.ndarray:
  """Patch-group distillation L_P of each sample (the release's ``stack_attn``).

  Every map is `stack_patches`-ed; `heads` heads cut the stacked channels into equal
  chunks (a chunk need not align with patch boundaries); within each head the operator
  attends over the kh·kw in-patch positions, and ``MSELoss`` (mean) compares its output
  with the stacked raw teacher feature.

  Args:
    q, k, v: (B, H, W, C) embeddings; t: (B, H, W, C) target.
    grid: (n, m), the release's ``-n``/``-m``.
    heads: the release's ``--heads``, dividing ph·pw·C.
    temperature: divides the attention logits (1: the release).

  Returns:
    (B,): each sample's mean squared error.
  """
  qh, kh, vh, th = (_split_heads(stack_patches(x, grid), heads) for x in (q, k, v, t))
  return _per_sample_mse(one_to_all(qh, kh, vh, temperature), th)


def anchor_pool(x: jnp.ndarray, anchors: tuple[int, int]) -> jnp.ndarray:
  """``AvgPool2d(kernel = stride = (⌊H/ah⌋, ⌊W/aw⌋))``, no padding (floor mode).

  Args:
    x: (B, H, W, C), with ah <= H and aw <= W (`check_hierarchical`).
    anchors: (ah, aw) anchor grid.

  Returns:
    (B, ⌊H/kh⌋, ⌊W/kw⌋, C) with (kh, kw) the kernel (ah×aw when H/ah, W/aw are whole).
  """
  b, hh, ww, c = x.shape
  kh, kw = hh // anchors[0], ww // anchors[1]
  if kh < 1 or kw < 1:
    raise ValueError(f"tat: anchor grid {tuple(anchors)} is finer than the {hh}×{ww} map")
  oh, ow = hh // kh, ww // kw
  x = batch_reshape(x[:, :oh * kh, :ow * kw], (b, oh, kh, ow, kw, c))
  return jnp.mean(x, axis=(2, 4))


def anchor_point_loss(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, t: jnp.ndarray,
                      anchors: tuple[int, int], temperature: float = 1.0) -> jnp.ndarray:
  """Anchor-point distillation L_A of each sample: one head over all pooled anchors.

  Args:
    q, k, v: (B, H, W, C) embeddings; t: (B, H, W, C) target, all pooled by `anchor_pool`.
    anchors: (ah, aw), the release's ``--anchor_h``/``--anchor_w``.
    temperature: softmax temperature.

  Returns:
    (B,): each sample's mean squared error.
  """
  qa, ka, va, ta = (_tokens(anchor_pool(x, anchors)) for x in (q, k, v, t))
  return _per_sample_mse(one_to_all(qa, ka, va, temperature), ta)


class PerSampleBatchNorm(nn.Module):
  """``BatchNorm2d`` applied to one sample at a time, as the release's per-sample loop.

  Train mode normalises each sample with the mean and biased variance of its own H·W
  positions (what ``vmap`` of a train-mode BN over the batch computes) and moves the
  running averages as the release's B sequential calls do, sample 0 first:
  ``r <- (1 − m)·r + m·s_b`` (m = 0.1; the variance's s_b unbiased over H·W). Those
  averages are only read in eval mode, which the release never uses for its embeddings
  (they exist only while training); we keep them exact so that an eval-mode call (the
  loop's analyses) sees what the release's module would hold. Parameter names are
  `layers.BatchNorm`'s (``scale``/``bias``, batch_stats ``mean``/``var``).
  """
  momentum: float = 0.1
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    """(B, H, W, C) -> (B, H, W, C) float32."""
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (c,), jnp.float32)
    ra_var = self.variable("batch_stats", "var", jnp.ones, (c,), jnp.float32)
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    if not train:
      mean, var = ra_mean.value, ra_var.value
    else:
      mean = jnp.mean(x, axis=(1, 2), keepdims=True)          # (B, 1, 1, C)
      var = jnp.mean(jnp.square(x - mean), axis=(1, 2), keepdims=True)
      if not self.is_initializing():
        b, n, m = x.shape[0], x.shape[1] * x.shape[2], self.momentum
        # r_B = (1 − m)^B r_0 + Σ_b m (1 − m)^(B−1−b) s_b: the B sequential updates.
        w = m * (1.0 - m) ** jnp.arange(b - 1, -1, -1, dtype=jnp.float32)
        decay = (1.0 - m) ** b
        ra_mean.value = decay * ra_mean.value + jnp.einsum("b,bc->c", w, mean[:, 0, 0])
        unbiased = var[:, 0, 0] * (n / max(n - 1, 1))
        ra_var.value = decay * ra_var.value + jnp.einsum("b,bc->c", w, unbiased)
    return (x - mean) * (scale * jax.lax.rsqrt(var + self.epsilon)) + bias


# ---- module -------------------------------------------------------------------------


# PyTorch's default Conv2d init, kaiming_uniform(a=√5): uniform(±1/sqrt(fan_in)); the
# segmentation release's embeddings keep it.
_TORCH_CONV_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


class TargetAwareTransformer(nn.Module):
  """``ce_weight·CE + kd_weight·KD + weight·L_TaT`` with the TaT embeddings as params.

  Attributes:
    hp: the hyperparameters.
    teacher_channels: Ct, the embeddings' output width.
  """
  hp: Config
  teacher_channels: int

  def _embed(self, x: jnp.ndarray, name: str, train: bool) -> jnp.ndarray:
    """Global: Conv(embed_kernel, no bias) + BN over the batch; hierarchical: the release's
    ``Embed``, Conv1x1 (no bias) + BN over each sample's positions."""
    if self.hp.mode == "global":
      y = layers.conv(self.teacher_channels, self.hp.embed_kernel, name=f"{name}_conv")(x)
      return layers.batch_norm(train, name=f"{name}_bn")(y)
    y = nn.Conv(self.teacher_channels, (1, 1), use_bias=False, kernel_init=_TORCH_CONV_INIT,
                name=f"{name}_conv")(x)
    return PerSampleBatchNorm(name=f"{name}_bn")(y, train=train)

  @nn.compact
  def __call__(self, s_feats, t_feats, s_logits, t_logits, labels, *, train: bool):
    """s_feats = [(B, Hs, Ws, Cs)], t_feats = [(B, Ht, Wt, Ct)]; logits (B, K) with labels
    (B,), or (B, H, W, K) with (B, H, W) labels (255 = void); returns (loss, metrics)."""
    hp = self.hp
    s, t = match_spatial(s_feats[0].astype(jnp.float32), t_feats[0].astype(jnp.float32))
    t = jax.lax.stop_gradient(t)
    temp = hp.attention_temperature
    metrics = {}
    q = self._embed(s, "query", train)
    v = self._embed(s, "value", train)
    k = self._embed(t, "key", train) if hp.learnable_key else t
    if hp.mode == "global":
      tat = global_tat_loss(q, k, v, t, temp)
    else:
      lp = patch_group_loss(q, k, v, t, tuple(hp.patch_grid), hp.heads, temp)
      la = anchor_point_loss(q, k, v, t, tuple(hp.anchor_grid), temp)
      metrics.update(tat_patch=jnp.mean(lp), tat_anchor=jnp.mean(la))
      tat = jnp.mean(hp.beta * lp + hp.gamma * la)  # the trainer's Σ_b loss_b / B
    total, logit_metrics = logit_terms(hp, s_logits, t_logits, labels,
                                       batch_average=hp.mode == "hierarchical")
    metrics.update(logit_metrics, tat=tat)
    return total + hp.weight * tat, metrics


def _matched_hw(student, s_name, teacher, t_name) -> tuple[int, int]:
  """Spatial size after `match_spatial` of the two features."""
  s_shape, t_shape = student.shapes[s_name], teacher.shapes[t_name]
  return min(s_shape[1], t_shape[1]), min(s_shape[2], t_shape[2])


@register("tat", Config)
def build_tat(hp, *, student, teacher, steps_per_epoch):
  """Pairs ``hp.student_feature`` with ``hp.teacher_feature`` (default: ``decoder`` when
  both nets sow one, else each net's last ``stage{i}.out``).

  Raises:
    PairingError: a named feature is missing, or a net sows no stage outputs.
    ValueError: a hierarchical patch grid, head count or anchor grid that does not fit.
  """
  del steps_per_epoch
  s, t = dense_feature_pair("tat", student, teacher, hp.student_feature,
                            hp.teacher_feature, fallback_to_stage=True)
  channels = teacher.shapes[t[0]][-1]
  hierarchical = hp.mode == "hierarchical"
  if hierarchical:
    # Fail at build time, not inside the first compiled step.
    check_hierarchical(_matched_hw(student, s[0], teacher, t[0]), channels,
                       tuple(hp.patch_grid), hp.heads, tuple(hp.anchor_grid))
  # The segmentation release trains with t_net.train() (train_with_distillation_tat.py).
  return Distiller("tat", TargetAwareTransformer(hp, channels), s, t,
                   teacher_train_mode=hierarchical)
