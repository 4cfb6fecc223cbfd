"""Which sown features a method reads: network descriptions and stage pairing."""
from __future__ import annotations

import dataclasses
from typing import Mapping


@dataclasses.dataclass(frozen=True)
class FeatureInfo:
  """One network's identity and sown features.

  Attributes:
    model: registry name of the model, e.g. ``'wrn_40_2'``.
    shapes: ordered ``{feature name: shape}`` (from `models.feature_list`), batch included.
  """
  model: str
  shapes: Mapping[str, tuple[int, ...]]


class PairingError(ValueError):
  """The method cannot pair this teacher's and this student's features."""


def require_features(info: FeatureInfo, names, method: str, role: str) -> tuple[str, ...]:
  """Checks that `names` are all features of `info`, else a PairingError listing them."""
  names = tuple(names)
  missing = [n for n in names if n not in info.shapes]
  if missing or not names:
    raise PairingError(
        f"method {method!r}: {role} {info.model!r} lacks features {missing or names}; "
        f"its features are {list(info.shapes)}")
  return names


def stage_features(info: FeatureInfo) -> tuple[str, ...]:
  """The ``stage{i}.out`` names of a network, in order."""
  return tuple(n for n in info.shapes if n.startswith("stage") and n.endswith(".out"))


def paired_stages(method: str, student: FeatureInfo, teacher: FeatureInfo,
                  student_stages=None, teacher_stages=None
                  ) -> tuple[tuple[str, ...], tuple[str, ...]]:
  """Stage-aligned (student, teacher) feature names: stage k ↔ stage k.

  `student_stages` / `teacher_stages` (1-based stage indices, equal lengths; one given
  means the same for both) override the default of pairing all stages, e.g. for nets
  with different stage counts.

  Raises:
    PairingError: the stage counts differ and no explicit stage lists resolve it; the
      message names both stage lists.
  """
  s_all, t_all = stage_features(student), stage_features(teacher)
  if student_stages is None and teacher_stages is None:
    if len(s_all) != len(t_all):
      raise PairingError(
          f"method {method!r} pairs stages one to one, but student {student.model!r} has "
          f"stages {list(s_all)} and teacher {teacher.model!r} has {list(t_all)}; set "
          "config.method.student_stages and config.method.teacher_stages to the 1-based "
          "stage indices to pair")
    return s_all, t_all
  s_idx = tuple(student_stages if student_stages is not None else teacher_stages)
  t_idx = tuple(teacher_stages if teacher_stages is not None else student_stages)
  if len(s_idx) != len(t_idx):
    raise PairingError(f"method {method!r}: student_stages {list(s_idx)} and "
                       f"teacher_stages {list(t_idx)} differ in length")
  return (require_features(student, [f"stage{i}.out" for i in s_idx], method, "student"),
          require_features(teacher, [f"stage{i}.out" for i in t_idx], method, "teacher"))


def last_stage(method: str, info: FeatureInfo, role: str) -> tuple[str, ...]:
  """``(stage{n}.out,)`` of the last stage: RepDistiller's ``feat[-2]``."""
  stages = stage_features(info)
  if not stages:
    require_features(info, ["stage1.out"], method, role)  # raises, listing the features
  return stages[-1:]
