"""Run logs: TensorBoard scalars and images plus an append-only JSON-lines file.

Both append, so a resumed or rerun workdir keeps everything written before.
"""
from __future__ import annotations

import json
import os
import time
from typing import Mapping

import numpy as np
import tensorflow as tf

tf.config.set_visible_devices([], "GPU")  # TF only writes logs; the GPU belongs to JAX


class MetricWriter:
  """Writes scalars to ``<workdir>/tensorboard`` and ``<workdir>/metrics.jsonl``."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self._tb = tf.summary.create_file_writer(os.path.join(workdir, "tensorboard"))
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")

  def scalars(self, step: int, values: Mapping[str, float]) -> None:
    """Logs ``{name: value}`` at `step` (names like ``'train/loss'``)."""
    if not self.enabled:
      return
    values = {k: float(v) for k, v in values.items()}
    with self._tb.as_default(step=step):
      for k, v in values.items():
        tf.summary.scalar(k, v)
    self._jsonl.write(json.dumps({"step": int(step), "time": time.time(), **values}) + "\n")
    self._jsonl.flush()

  def image(self, step: int, name: str, image: np.ndarray) -> None:
    """Logs one (H, W, 3) uint8 image."""
    if not self.enabled:
      return
    with self._tb.as_default(step=step):
      tf.summary.image(name, image[None])

  def flush(self) -> None:
    if self.enabled:
      self._tb.flush()
      self._jsonl.flush()

  def close(self) -> None:
    if self.enabled:
      self._tb.close()
      self._jsonl.close()
