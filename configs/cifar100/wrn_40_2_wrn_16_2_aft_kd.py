"""CIFAR-100: wrn_16_2 distilled from wrn_40_2 with AFT-KD — an INTERPRETATION.

    python -m afd_jax.main --config=configs/cifar100/wrn_40_2_wrn_16_2_aft_kd.py --workdir=runs/cifar100/wrn_40_2_wrn_16_2_aft_kd

Needs the teacher trained by configs/cifar100/wrn_40_2.py in runs/cifar100/wrn_40_2
(its best checkpoint).
Only the AFT-KD paper's abstract is public and no code is; afd_jax/methods/aft_kd.py
implements our reading of it, every guessed choice being a field below.
Blocks: all 3 stages paired one to one (teacher ↔ student):
  stage1.out 32×32×32 ↔ 32×32×32
  stage2.out 16×16×64 ↔ 16×16×64
  stage3.out 8×8×128 ↔ 8×8×128
Weights: CE 1, KD 1 (τ = 4), each AFB 1000 (λ_f = 1), rescaled by the DWA-style
loss-rate weighting over epoch means (T_w = 2, weights 1 for the first two epochs).
Expected CIFAR-100 top-1: interpretation; none published.
"""
import ml_collections

from afd_jax import config_defaults


def get_config():
  return config_defaults.distill_config(
      "wrn_40_2", "wrn_16_2", "aft_kd", ce_weight=1.0, kd_weight=1.0, temperature=4.0,
      afb_weight=1000.0, feature_weight=1.0, weighting="rate", rate_average="mean",
      rate_temperature=2.0, rate_warmup_windows=2, ema_decay=0.99,
      rate_window_steps=ml_collections.config_dict.placeholder(int))
