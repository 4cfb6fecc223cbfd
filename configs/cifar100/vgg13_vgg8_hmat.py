"""CIFAR-100: vgg8 distilled from vgg13 with HMAT — an INTERPRETATION.

    python -m afd_jax.main --config=configs/cifar100/vgg13_vgg8_hmat.py --workdir=runs/cifar100/vgg13_vgg8_hmat

Needs the teacher trained by configs/cifar100/vgg13.py in runs/cifar100/vgg13
(its best checkpoint).
Only the HMAT paper's abstract is public and no code is; afd_jax/methods/hmat.py
implements our reading of it, every guessed choice being a field below.
Levels, all 5 stages paired one to one (teacher ↔ student):
  stage1.out 32×32×64 ↔ 32×32×64
  stage2.out 16×16×128 ↔ 16×16×128
  stage3.out 8×8×256 ↔ 8×8×256
  stage4.out 4×4×512 ↔ 4×4×512
  stage5.out 4×4×512 ↔ 4×4×512
low = stage1 (position attention, pooled to ≤ 16×16), mid = stage2, stage3, stage4
(activation attention), high = stage5 (activation + channel attention).
Weights: CE 1, KD 1 (τ = 4), β_act 1000, β_ch 1, β_pos 30 — the position KL starts at
≈ 0.029 for this pair (random-init estimate), so β_pos·L_pos starts within an order of
magnitude of CE (≈ 4.6); see the table in afd_jax/methods/hmat.py.
Expected CIFAR-100 top-1: interpretation; none published.
"""
from afd_jax import config_defaults


def get_config():
  return config_defaults.distill_config(
      "vgg13", "vgg8", "hmat", ce_weight=1.0, kd_weight=1.0, temperature=4.0,
      position_weight=30.0, activation_weight=1000.0, channel_weight=1.0,
      position_pool=16, position_distance="kl", channel_distance="kl",
      mid_reduction="mean")
