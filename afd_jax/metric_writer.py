"""Run logs: TensorBoard scalars and images, and an append-only JSON-lines file.

TensorBoard event files are written with the `tensorboard` package's own writer, so no
TensorFlow is needed (clu's writers import TensorFlow, which accelerator hosts often
lack). ``metrics.jsonl`` holds one row per logged step; a resumed run first drops the
rows of the steps it will replay, so every step appears at most once and in order.
"""
from __future__ import annotations

import io
import json
import os
import time
from typing import Mapping

from absl import logging
import jax
import numpy as np

from afd_jax import faults

METRICS_FILE = "metrics.jsonl"


def read_metrics(workdir: str) -> list[dict]:
  """The rows of a run's ``metrics.jsonl`` (a torn last line, from a kill, is skipped)."""
  path = os.path.join(workdir, METRICS_FILE)
  rows = []
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      for line in f:
        try:
          rows.append(json.loads(line))
        except json.JSONDecodeError:
          continue
  return rows


def _png(image: np.ndarray) -> bytes:
  from PIL import Image  # only when an image is logged
  buf = io.BytesIO()
  Image.fromarray(np.asarray(image, np.uint8)).save(buf, format="PNG")
  return buf.getvalue()


class MetricWriter:
  """Writes ``<workdir>/tensorboard`` and ``<workdir>/metrics.jsonl`` (chief only).

  Args:
    workdir: the run's directory.
    enabled: False on every process but the chief: nothing is written.
    resume_step: the step the run (re)starts from; rows after it are dropped.
  """

  def __init__(self, workdir: str, enabled: bool = True, resume_step: int = 0):
    self.enabled = enabled
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, METRICS_FILE)
    keep = [r for r in read_metrics(workdir) if r.get("step", 0) <= resume_step]
    if os.path.exists(path) and len(keep) != sum(1 for _ in open(path, encoding="utf-8")):
      tmp = path + ".tmp"
      with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in keep)
      os.replace(tmp, path)  # atomic: a crash here leaves the old or the new file
    self._jsonl = open(path, "a", encoding="utf-8")
    self._tb_dir, self._tb = os.path.join(workdir, "tensorboard"), None

  def _tensorboard(self):
    """The event-file writer, opened at the first write (a rerun that logs nothing adds
    no empty event file)."""
    if self._tb is None:
      try:
        from tensorboard.compat.proto import summary_pb2
        from tensorboard.summary.writer.event_file_writer import EventFileWriter
      except ImportError:
        logging.warning("tensorboard is not installed: metrics go to %s only", METRICS_FILE)
        self._tb = False
        return None
      self._summary, self._tb = summary_pb2, EventFileWriter(self._tb_dir)
    return self._tb or None

  def _event(self, step: int, values) -> None:
    from tensorboard.compat.proto import event_pb2
    self._tensorboard().add_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                       summary=self._summary.Summary(value=values)))

  def write_scalars(self, step: int, values: Mapping[str, float]) -> None:
    """Logs ``{name: value}`` at `step` (names like ``'train/loss'``)."""
    if not self.enabled:
      return
    values = {k: float(v) for k, v in values.items()}
    self._jsonl.write(json.dumps({"step": int(step), "time": time.time(), **values}) + "\n")
    self._jsonl.flush()
    if self._tensorboard():
      self._event(step, [self._summary.Summary.Value(tag=k, simple_value=v)
                         for k, v in values.items()])

  def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
    """Logs ``{name: (1, H, W, 3) uint8}`` images to TensorBoard."""
    if not self.enabled or not self._tensorboard():
      return
    values = []
    for name, image in images.items():
      h, w = image.shape[1:3]
      values.append(self._summary.Summary.Value(tag=name, image=self._summary.Summary.Image(
          height=h, width=w, colorspace=3, encoded_image_string=_png(image[0]))))
    self._event(step, values)

  def flush(self) -> None:
    if self.enabled:
      self._jsonl.flush()
      if self._tb:
        self._tb.flush()

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      if self._tb:
        self._tb.close()


def _per_step(metrics: Mapping[str, np.ndarray]) -> list[dict]:
  """One dict per step from one step's scalars or several steps' stacked (n,) arrays."""
  first = next(iter(metrics.values()))
  if np.ndim(first) == 0:
    return [metrics]
  return [{k: v[i] for k, v in metrics.items()} for i in range(len(first))]


class TrainWindow:
  """Train metrics since the last log, kept on the devices until they are written.

  An entry of `metrics` is one step's scalars or several steps' (n,) arrays (one
  dispatch of `multi_step`). Fetching them is also the divergence check: nothing is evaluated or saved before the
  steps since the last check are known to be finite (no host sync in the other steps).
  """

  def __init__(self, writer: MetricWriter, batch_size: int):
    self.writer, self.batch_size = writer, batch_size
    self.metrics, self.start = [], time.time()

  def check(self, step: int) -> list[dict]:
    """The window's per-step metrics (host floats), window ending at `step`.

    Raises:
      faults.Diverged: at the window's first non-finite step (not skipped).
    """
    window = [m for entry in jax.device_get(self.metrics) for m in _per_step(entry)]
    for k, m in enumerate(window):
      bad = sorted(n for n, v in m.items() if not np.isfinite(v))
      if bad and not m.get("skipped"):
        raise faults.Diverged(step - len(window) + k + 1, bad,
                       {n: float(v) for n, v in m.items()})
    return window

  def pending(self) -> list[dict[str, list | float]]:
    """The metrics not yet logged, JSON-ready (a preempted run saves them with its
    checkpoint, so that the resumed run logs the very rows of an uninterrupted one)."""
    return [{k: np.asarray(v).tolist() for k, v in entry.items()}
            for entry in jax.device_get(self.metrics)]

  def restore(self, pending: list[dict[str, list | float]]) -> None:
    """Puts `pending` (from `pending`) back in front of the window."""
    self.metrics[:0] = [{k: np.asarray(v, np.float32) for k, v in entry.items()}
                        for entry in pending]

  def write(self, step: int, bar) -> None:
    """Logs the window's means at `step`; raises `faults.Diverged` at its first non-finite
    step."""
    if not self.metrics:
      return
    window = self.check(step)
    logged = {f"train/{k}": float(np.mean([m[k] for m in window])) for k in window[0]}
    logged["train/images_per_sec"] = (len(window) * self.batch_size
                                      / max(time.time() - self.start, 1e-9))
    self.writer.write_scalars(step, logged)
    bar.set_postfix(loss=f"{logged['train/loss']:.3f}",
                    img_s=f"{logged['train/images_per_sec']:.0f}")
    self.metrics, self.start = [], time.time()
