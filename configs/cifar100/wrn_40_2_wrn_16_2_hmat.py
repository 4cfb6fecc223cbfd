"""CIFAR-100: wrn_16_2 distilled from wrn_40_2 with HMAT — an INTERPRETATION.

    python -m afd_jax.main --config=configs/cifar100/wrn_40_2_wrn_16_2_hmat.py --workdir=runs/cifar100/wrn_40_2_wrn_16_2_hmat

Needs the teacher trained by configs/cifar100/wrn_40_2.py in runs/cifar100/wrn_40_2
(its best checkpoint).
Only the HMAT paper's abstract is public and no code is; afd_jax/methods/hmat.py
implements our reading of it, every guessed choice being a field below.
Levels, all 3 stages paired one to one (teacher ↔ student):
  stage1.out 32×32×32 ↔ 32×32×32
  stage2.out 16×16×64 ↔ 16×16×64
  stage3.out 8×8×128 ↔ 8×8×128
low = stage1 (position attention, pooled to ≤ 16×16), mid = stage2
(activation attention), high = stage3 (activation + channel attention).
Weights: CE 1, KD 1 (τ = 4), β_act 1000, β_ch 1, β_pos 30 — the position KL starts at
≈ 0.034 for this pair (random-init estimate), so β_pos·L_pos starts within an order of
magnitude of CE (≈ 4.6); see the table in afd_jax/methods/hmat.py.
Expected CIFAR-100 top-1: interpretation; none published.
"""
from afd_jax import config_defaults


def get_config():
  return config_defaults.distill_config(
      "wrn_40_2", "wrn_16_2", "hmat", ce_weight=1.0, kd_weight=1.0, temperature=4.0,
      position_weight=30.0, activation_weight=1000.0, channel_weight=1.0,
      position_pool=16, position_distance="kl", channel_distance="kl",
      mid_reduction="mean")
