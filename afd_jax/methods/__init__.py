"""Distillation methods, selected by ``config.method.name`` (see `base` for the interface)."""
from afd_jax.methods import afd, aft_kd, at, fitnet, hmat, kd, tat  # noqa: F401  (registration)
from afd_jax.methods.base import (Distiller, FeatureInfo, PairingError, build_method,
                                  method_names)

__all__ = ["Distiller", "FeatureInfo", "PairingError", "build_method", "method_names"]
