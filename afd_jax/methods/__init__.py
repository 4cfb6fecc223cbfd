"""Distillation methods, selected by ``config.method.name`` (see `base` for the interface)."""
from afd_jax.methods import (afd, aft_kd, at, cc, dkd, fitnet, hmat, kd, nst,  # noqa: F401
                              pkt, reviewkd, rkd, semckd, sp, tat, vid)  # (registration)
from afd_jax.methods import crd  # noqa: F401,E402  (registration)
from afd_jax.methods import ab, fsp, ft  # noqa: F401,E402  (registration)
from afd_jax.methods import seg_comp, seg_reviewkd  # noqa: F401,E402  (registration)
from afd_jax.methods.base import (Distiller, FeatureInfo, InitPhase, PairingError,
                                  build_method, needs_labels,
                                  hparams_class, method_names, needs_teacher,
                                  parse_field, resolve,
                                  resolved_fields)

__all__ = ["Distiller", "FeatureInfo", "InitPhase", "PairingError", "needs_labels", "build_method", "hparams_class",
           "method_names", "needs_teacher", "parse_field", "resolve", "resolved_fields"]
