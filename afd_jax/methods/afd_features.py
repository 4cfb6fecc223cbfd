"""Which features ("links") AFD chooses among, per architecture.

All are post-activation block outputs; the stem and the pooled vector are never used:

* CIFAR ResNets (resnet8 ... resnet56, resnet8x4, resnet32x4): every block output
  ``stage{i}.block{j}`` (resnet20: 9, resnet56: 27).
* resnet110: every other block, blocks 2, 4, ..., 54 counted over the whole net (27),
  as in the reference release.
* Wide ResNets (``wrn_*``, pre-activation): ``stage{i}.block{j}.act_in`` of every block
  but the first block of the net, plus ``final.act`` (wrn_16_2: 6, wrn_28_2: 12,
  wrn_40_2: 18).
* resnet18 / resnet34 (CIFAR and ``_imagenet``): every BasicBlock output (8 / 16).
* Our choice for architectures the reference release does not cover, following the
  paper's "every block" recipe: every ``stage{i}.block{j}`` the model sows, i.e. every
  conv-BN-ReLU output of VGG (vgg8: 5, vgg13: 10), every inverted-residual block output
  of MobileNetV2 (17), every unit output of ShuffleNetV1/V2 (16) and every Bottleneck
  output of ResNet50 (16).

``student_features`` / ``teacher_features`` (lists of names) override the choice.
"""
from __future__ import annotations

from afd_jax.methods.base import FeatureInfo, PairingError, require_features
from afd_jax.models.features import block_outputs, feature_order_key

_METHOD = "afd"
# Nets whose links are every other block output (the reference's resnet110 choice).
_EVERY_OTHER_BLOCK = frozenset({"resnet110"})


def afd_feature_names(info: FeatureInfo, role: str = "network") -> tuple[str, ...]:
  """The features AFD links for this network, in depth order (see the module docstring).

  Args:
    info: the network's model name and sown feature shapes.
    role: 'student' or 'teacher', for error messages.

  Raises:
    PairingError: the network does not sow the features its architecture needs; the
      message lists the features it does sow.
  """
  names = sorted(info.shapes, key=feature_order_key)
  blocks = block_outputs(names)
  if not blocks:
    raise PairingError(
        f"method {_METHOD!r}: {role} {info.model!r} sows no block features "
        f"'stage<i>.block<j>'; its features are {names}")
  if info.model.startswith("wrn_"):
    # Block k's own relu(bn1(x_k)) for k >= 2 is block k-1's activated output.
    wanted = [f"{b}.act_in" for b in blocks[1:]] + ["final.act"]
  elif info.model in _EVERY_OTHER_BLOCK:
    wanted = blocks[1::2]
  else:
    wanted = blocks
  return require_features(info, wanted, _METHOD, role)


def resolve_features(explicit, info: FeatureInfo, role: str) -> tuple[str, ...]:
  """`explicit` feature names if given, else `afd_feature_names`."""
  if explicit:
    return require_features(info, explicit, _METHOD, role)
  return afd_feature_names(info, role)
