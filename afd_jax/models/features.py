"""Naming convention for sown features and the ordered feature list built from them.

Every model `sow`s its features into the ``'intermediates'`` collection *at the top-level
module* (so the collection is flat), under these names (stages and blocks are 1-indexed):

* ``stem``                    -- output of the stem (after its activation, if any).
* ``stage{i}.block{j}``       -- output of block j of stage i, after its activation
                                 (for pre-activation WRNs: the raw residual sum).
* ``stage{i}.block{j}.act_in``-- pre-activation networks only (WRN): the block's own
                                 ``relu(bn1(input))``.
* ``stage{i}.preact``         -- output of stage i before its final activation.
* ``stage{i}.out``            -- output of stage i after activation: the feature that
                                 stage-level methods use (for WRN: the next block's
                                 ``act_in``, or ``final.act`` for the last stage;
                                 for DeepLabV3+: the release's taps, see `deeplab.py`).
* ``final.act``               -- pre-activation networks only: ``relu(bn(out))``.
* ``pooled``                  -- the pooled embedding fed to the classifier, (B, C).
* ``aspp``, ``decoder``       -- segmentation models only (`deeplab.py`): the ASPP's and
                                 the decoder's fused feature maps, after every backbone
                                 stage; ``decoder`` is the last feature of all.

``feature_list`` turns the sown collection into an ordered dict (network depth order),
which survives `jit` (jit sorts dict keys alphabetically, so order is re-derived from the
names here rather than from insertion order).
"""
from __future__ import annotations

import re
from typing import Any, Mapping

_BLOCK = re.compile(r"^stage(\d+)\.block(\d+)(\.act_in)?$")
_STAGE = re.compile(r"^stage(\d+)\.(preact|bn_preact|out)$")
_STAGE_ORDER = {"preact": 0, "bn_preact": 1, "out": 2}
_BIG = 1 << 20


def feature_order_key(name: str) -> tuple[int, int, int]:
  """Sort key putting feature names in the order the network computes them."""
  if name == "stem":
    return (0, 0, 0)
  if name == "final.act":
    return (_BIG, 0, 0)
  if name == "pooled":
    return (_BIG, 1, 0)
  if name == "aspp":
    return (_BIG, 2, 0)
  if name == "decoder":
    return (_BIG, 3, 0)
  m = _BLOCK.match(name)
  if m:
    stage, block, act_in = int(m.group(1)), int(m.group(2)), m.group(3)
    return (stage, block, 0 if act_in else 1)
  m = _STAGE.match(name)
  if m:
    return (int(m.group(1)), _BIG, _STAGE_ORDER[m.group(2)])
  raise ValueError(
      f"Unknown feature name {name!r}; expected 'stem', 'stage<i>.block<j>', "
      "'stage<i>.block<j>.act_in', 'stage<i>.preact', 'stage<i>.bn_preact', "
      "'stage<i>.out', 'final.act', 'pooled', 'aspp' or 'decoder'.")


def feature_list(intermediates: Mapping[str, Any]) -> dict[str, Any]:
  """Ordered ``{name: array}`` from a flat sown ``'intermediates'`` collection.

  Args:
    intermediates: the ``'intermediates'`` collection returned by ``model.apply(...,
      mutable=['intermediates'])``; each value is the tuple `sow` appends to.

  Returns:
    dict from feature name to its (last sown) array, in network depth order.
  """
  out = {}
  for name in sorted(intermediates, key=feature_order_key):
    value = intermediates[name]
    out[name] = value[-1] if isinstance(value, tuple) else value
  return out


def block_outputs(features: Mapping[str, Any]) -> list[str]:
  """Names of the post-activation block outputs ``stage{i}.block{j}``, in order."""
  return [n for n in features if (m := _BLOCK.match(n)) and not m.group(3)]
