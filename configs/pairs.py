"""The teacher→student pairs of the papers, with their published CIFAR-100 / ImageNet top-1.

One table for configs, README and comparison scripts. Every number names its source;
``None`` means no published number could be verified.

Sources:
  CRD: Tian, Krishnan & Isola, "Contrastive Representation Distillation", ICLR 2020,
    Table 1 (same-family pairs) and Table 2 (cross-family pairs): teachers, students
    trained alone, KD, FitNet and AT, mean over runs, CIFAR-100, 240 epochs.
  CRD-T3: the same paper, Table 3 (ImageNet, ResNet34 → ResNet18; top-1 = 100 − error).
  AFD: Ji, Heo & Park, "Show, Attend and Distill", AAAI 2021 (ImageNet ResNet34 →
    ResNet18: 71.38).
"""
from __future__ import annotations

import dataclasses

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


# CRD Tables 1/2: KD, FitNet and AT students on CIFAR-100; "-": pair not in CRD (AFD
# release pairs).
_CIFAR100 = """
teacher     student      kd     fitnet  at
wrn_40_2    wrn_16_2     74.92  73.58   74.08
wrn_40_2    wrn_40_1     73.54  72.24   72.77
resnet56    resnet20     70.66  69.21   70.55
resnet110   resnet20     70.67  68.99   70.22
resnet110   resnet32     73.08  71.06   72.31
resnet32x4  resnet8x4    73.33  73.50   73.44
vgg13       vgg8         72.98  71.02   71.43
vgg13       MobileNetV2  67.37  64.14   59.40
ResNet50    MobileNetV2  67.35  63.16   58.58
ResNet50    vgg8         73.81  70.69   71.84
resnet32x4  ShuffleV1    74.07  73.59   71.73
resnet32x4  ShuffleV2    74.45  73.54   72.73
wrn_40_2    ShuffleV1    74.83  73.73   73.32
wrn_40_2    wrn_28_2     -      -       -
resnet34    resnet18     -      -       -
"""


def _parse(table: str, source: str) -> list[Pair]:
  header, *rows = [line.split() for line in table.strip().splitlines()]
  return [Pair(t, s, {m: (float(v), source) for m, v in zip(header[2:], values)
                      if v != "-"}) for t, s, *values in rows]


PAIRS: dict[str, list[Pair]] = {
    "cifar100": _parse(_CIFAR100, "CRD"),
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
