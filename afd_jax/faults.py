"""What stops a run before its end: divergence, preemption, and the test hook injecting
the latter at a chosen instant.

No jax here: `afd_jax.main` fires the ``startup`` injection before jax is imported.
"""
from __future__ import annotations

import functools
import os
import signal
from typing import Mapping

# ``AFD_JAX_INJECT='<where>@<step>[:<SIGNAL>],...'``: the test hook of `inject`.
INJECT_ENV = "AFD_JAX_INJECT"
# The signal an injection without one sends: SIGINT at startup (a Ctrl-C), else SIGTERM
# (a preemption).
_DEFAULT_SIGNALS = {"startup": signal.SIGINT}


class Diverged(RuntimeError):
  """The loss or the gradient became non-finite; nothing non-finite was saved.

  Attributes:
    step: the first non-finite step.
    bad: the names of its non-finite metrics.
    metrics: that step's metrics, ``{name: float}``.
    advice: what to change, as a sentence; `train.run_steps` replaces the generic one by
      the likely cause found in the run's config (`validation.divergence_advice`).
  """

  def __init__(self, step: int, bad: list[str], metrics: Mapping[str, float],
               advice: str = ""):
    super().__init__(step, bad)
    self.step, self.bad, self.metrics = step, list(bad), dict(metrics)
    self.advice = advice or (
        f"Lower --config.optim.lr (now {self.metrics.get('lr', float('nan')):.4g}), or "
        "set --config.optim.skip_nonfinite=True to skip such steps.")

  def __str__(self) -> str:
    return (f"training diverged at step {self.step}: non-finite {', '.join(self.bad)} "
            f"(lr {self.metrics.get('lr', float('nan')):.4g}). Nothing from this step on "
            f"was saved; the last good checkpoints are kept. {self.advice}")


class Preempted(Exception):
  """SIGTERM/SIGINT arrived; the run saved its last step and stopped."""

  def __init__(self, signum: int, step: int):
    super().__init__(f"stopped by signal {signum} after saving step {step}")
    self.signum, self.step = signum, step


@functools.lru_cache(maxsize=8)
def injections(text: str) -> dict[str, signal.Signals | None]:
  """``'step@3,save@8:SIGINT'`` -> ``{'step@3': None, 'save@8': SIGINT}`` (None: the
  default signal); parsed once per value of the variable.

  Raises:
    ValueError: an item that is not ``<where>@<step>[:<SIGNAL>]``.
  """
  out = {}
  for spec in filter(None, text.split(",")):
    point, _, name = spec.partition(":")
    where, at, step = point.partition("@")
    sig = getattr(signal, name, None) if name else None
    if not (where and at and step.isdigit()) or (name and not isinstance(
        sig, signal.Signals)):
      raise ValueError(f"{INJECT_ENV}: {spec!r} is not <where>@<step>[:<SIGNAL>], e.g. "
                       "step@3 or startup@0:SIGINT")
    out[point] = sig
  return out


def inject(where: str, step: int) -> None:
  """Test hook: sends this process the signal ``AFD_JAX_INJECT`` names for this instant:
  ``startup@0`` (right after the flags are parsed), ``step@<k>`` (step k's result not yet
  fetched), ``eval@<k>`` (between evaluating and saving the best), ``save@<k>`` (before a
  checkpoint is written). Deterministic, unlike a timed kill."""
  points = injections(os.environ.get(INJECT_ENV, ""))
  point = f"{where}@{step}"
  if point in points:
    os.kill(os.getpid(), points[point] or _DEFAULT_SIGNALS.get(where, signal.SIGTERM))
