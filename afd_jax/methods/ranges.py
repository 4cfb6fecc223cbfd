"""The accepted values of a method's hyperparameters, declared beside their defaults.

Every field of a method's `Config` is ``ranged(default, accepted)``, with `accepted` one
of the shared ranges here or the method's own `Range`; `base.register` refuses a `Config`
with a field that declares none, and `validation.check_method` applies them to a run's
``config.method``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable


@dataclasses.dataclass(frozen=True)
class Range:
  """A method field's accepted values: ``ok(value)``, described by `text`."""
  ok: Callable[[Any], bool]
  text: str


def ranged(default: Any, accepted: Range) -> Any:
  """A dataclass field with `default` whose accepted values are `accepted`."""
  return dataclasses.field(default=default, metadata={"range": accepted})


def field_range(cls: type, field: str) -> Range | None:
  """The `Range` declared for `field` of the dataclass `cls`, or None if it has none."""
  return {f.name: f.metadata.get("range") for f in dataclasses.fields(cls)}.get(field)


def unranged_fields(cls: type) -> tuple[str, ...]:
  """The fields of the dataclass `cls` declared without a `Range`."""
  return tuple(f.name for f in dataclasses.fields(cls) if "range" not in f.metadata)


def is_number(v: Any) -> bool:
  """A finite int or float (not a bool)."""
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int(v: Any) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _each(ok: Callable[[Any], bool]) -> Callable[[Any], bool]:
  """A number, or a tuple of them, each `ok`."""
  return lambda v: all(ok(x) for x in (v if isinstance(v, tuple) else (v,)))


def optional(accepted: Range) -> Range:
  """`accepted`, or None (which takes a default chosen elsewhere)."""
  return Range(lambda v: v is None or accepted.ok(v), f"{accepted.text}, or None")


NONNEG = Range(_each(lambda v: is_number(v) and v >= 0), ">= 0")
POS = Range(lambda v: is_number(v) and v > 0, "> 0")
POS_INT = Range(lambda v: _int(v) and v >= 1, "an integer >= 1")
NONNEG_INT = Range(lambda v: _int(v) and v >= 0, "an integer >= 0")
UNIT = Range(lambda v: is_number(v) and 0 <= v < 1, "in [0, 1)")
GRID = Range(lambda v: isinstance(v, tuple) and len(v) == 2 and all(
    _int(x) and x >= 1 for x in v), "two integers >= 1, (rows, cols)")
BOOL = Range(lambda v: isinstance(v, bool), "True or False")
# Checked where they are meaningful: the choices by the method's own dataclass, feature
# and stage selections against the models' features when the method is built.
BY_METHOD = Range(lambda v: True, "checked by the method")
