"""afd_jax: attention-based knowledge distillation (AFD, TaT, AFT-KD, HMAT) in JAX/Flax."""

__version__ = "0.1.0"
