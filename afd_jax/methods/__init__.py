"""Distillation methods, selected by ``config.method.name`` (see `base` for the interface)."""
from afd_jax.methods import afd, aft_kd, at, fitnet, hmat, kd, tat  # noqa: F401  (registration)
from afd_jax.methods.base import (Distiller, FeatureInfo, PairingError, build_method,
                                  hparams_class, method_names, needs_teacher,
                                  parse_field, resolve,
                                  resolved_fields)

__all__ = ["Distiller", "FeatureInfo", "PairingError", "build_method", "hparams_class",
           "method_names", "needs_teacher", "parse_field", "resolve", "resolved_fields"]
