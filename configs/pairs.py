"""The teacher→student pairs of the papers, with their published CIFAR-100 / ImageNet top-1.

One table for configs, docs and comparison scripts. Every number names its source;
``None`` means no published number could be verified.

Sources:
  CRD: Tian, Krishnan & Isola, "Contrastive Representation Distillation", ICLR 2020,
    Table 1 (same-family pairs) and Table 2 (cross-family pairs): teachers, students
    trained alone, KD, FitNet, AT, SP, CC, VID, RKD, PKT, AB, FT, FSP, NST and CRD, mean
    over runs, CIFAR-100, 240 epochs.
  DKD: Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022, Tables 1/2 (CIFAR-100).
  CRD-T3: the same paper, Table 3 (ImageNet, ResNet34 → ResNet18; top-1 = 100 − error).
  AFD: Ji, Heo & Park, "Show, Attend and Distill", AAAI 2021 (ImageNet ResNet34 →
    ResNet18: 71.38).
"""
from __future__ import annotations

import dataclasses
import os

# Models trained alone (teachers and student baselines), CRD Table 1/2; ImageNet: the
# ResNet34 / ResNet18 rows of CRD Table 3 (torchvision's reference models).
TOP1 = {
    "cifar100": {
        "wrn_40_2": 75.61, "wrn_16_2": 73.26, "wrn_40_1": 71.98, "resnet56": 72.34,
        "resnet110": 74.31, "resnet20": 69.06, "resnet32": 71.14, "resnet32x4": 79.42,
        "resnet8x4": 72.50, "vgg13": 74.64, "vgg8": 70.36, "ResNet50": 79.34,
        "MobileNetV2": 64.60, "ShuffleV1": 70.50, "ShuffleV2": 71.82,
    },
    "imagenet2012": {"resnet34_imagenet": 73.31, "resnet18_imagenet": 69.75},
}


@dataclasses.dataclass(frozen=True)
class Pair:
  """A teacher→student pair and the published top-1 of methods distilling it.

  Attributes:
    teacher, student: zoo model names.
    published: ``{method: (top-1, source)}``.
  """
  teacher: str
  student: str
  published: dict[str, tuple[float, str]] = dataclasses.field(default_factory=dict)


# CIFAR-100 students by method, in the data file pairs_cifar100.txt. kd ... nst and ab, ft,
# fsp, crd: CRD Tables 1/2 (also in the HobbitLong/RepDistiller README; FSP needs equal
# channels, so it has no cross-family entries); dkd: the DKD paper's Tables 1/2 (also in
# megvii-research/mdistiller README, whose second table labels resnet32x4 → ShuffleV2
# "MobileNet-V2"; its KD entry 74.45 is ShuffleV2's). "-": not published for the pair (the
# last two rows are AFD release pairs). ReviewKD and SemCKD: no column, their papers'
# tables could not be checked here (neither release's README lists them).
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "pairs_cifar100.txt"),
          encoding="utf-8") as _f:
  _CIFAR100 = _f.read()
# The paper each column's numbers come from (default: CRD).
_CIFAR100_SOURCES = {"dkd": "DKD"}


def _parse(table: str, source: str, sources: dict[str, str] | None = None) -> list[Pair]:
  """Rows ``teacher student value...`` -> Pairs; column m's source is ``sources[m]``,
  else `source`."""
  header, *rows = [line.split() for line in table.strip().splitlines()]
  src = lambda m: (sources or {}).get(m, source)  # noqa: E731
  return [Pair(t, s, {m: (float(v), src(m)) for m, v in zip(header[2:], values)
                      if v != "-"}) for t, s, *values in rows]


PAIRS: dict[str, list[Pair]] = {
    "cifar100": _parse(_CIFAR100, "CRD", _CIFAR100_SOURCES),
    "imagenet2012": [
        Pair("resnet34_imagenet", "resnet18_imagenet",
             {"kd": (70.66, "CRD-T3"), "at": (70.70, "CRD-T3"), "afd": (71.38, "AFD")}),
    ],
}


def find(dataset: str, teacher: str, student: str) -> Pair | None:
  """The pair's entry, or None if the papers do not run it."""
  return next((p for p in PAIRS.get(dataset, ()) if (p.teacher, p.student) ==
               (teacher, student)), None)


def expected_top1(dataset: str, method: str, model: str,
                  teacher: str | None = None) -> tuple[float, str] | None:
  """(published top-1, source) of `model` trained with `method` (``'none'``: alone)."""
  if method == "none":
    value = TOP1.get(dataset, {}).get(model)
    return None if value is None else (value, "CRD")
  pair = find(dataset, teacher, model)
  return None if pair is None else pair.published.get(method)
