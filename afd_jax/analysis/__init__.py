"""Analyses that methods register as evaluation hooks (e.g. AFD's link heatmap).

A hook is ``hook(ctx: AnalysisContext) -> None``, run after every evaluation of the
student by the training loop, on every process (collectives need all of them); only the
chief (process 0) writes files or logs.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable


@dataclasses.dataclass
class AnalysisContext:
  """What an evaluation hook may look at.

  Attributes:
    step: the global step just evaluated.
    epoch: completed epochs.
    workdir: the run's directory.
    config: the run's config.
    distiller: the built method (its feature names among others).
    writer: the run's `afd_jax.metric_writer.MetricWriter` (TensorBoard, metrics.jsonl);
      in a vmapped group the group's, every name under ``<member>/`` (hooks call its
      ``write_scalars`` and ``write_images``).
    method_intermediates: returns the method module's sown ``intermediates`` on the
      first eval batch (eval mode), e.g. AFD's ``{'attention': ((B, nt, ns),)}``.
    is_chief: whether this process writes files and logs.
    predictions: segmentation runs: returns the first eval batch's ``{'image', 'label',
      'mask', 'student', 'teacher'}`` (class-id maps (B, H, W) of both nets in eval
      mode; ``teacher`` None without one); None for classification.
  """
  step: int
  epoch: int
  workdir: str
  config: Any
  distiller: Any
  writer: Any
  method_intermediates: Callable[[], dict]
  is_chief: bool
  predictions: Callable[[], dict] | None = None
