"""Conversions between afd_jax checkpoints and other frameworks' formats.

``afd_jax.interop.torch``: PyTorch ``state_dict`` import/export (needs torch, which is
imported only when a ``.pth`` file is read or written). Nothing else in afd_jax imports
this package, so training never needs torch.
"""
