"""CIFAR-100 TaT (target-aware transformer), global one-to-all on the last stage.

    python -m afd_jax.main --config=configs/cifar100/tat.py:teacher=resnet32x4,student=resnet8x4 \
        --workdir=runs/cifar100/tat_resnet32x4_resnet8x4

The TaT paper reports CIFAR-100 results (its Table 1, seven teacher→student pairs) but
its release (sihaoevery/TaT) has no CIFAR recipe: no script, config or per-pair weight.
This file is therefore our choice, not a reproduction: the students train from scratch
with the CIFAR-100 setting every other method here uses (`configs.common.base`: SGD lr
0.05, 240 epochs, ×0.1 after 150/180/210 finished epochs, RepDistiller's rule; each
epoch's last partial batch trained, ``data.last_batch='train'``), and the loss is
``0.5·CE + 0.5·KD(τ = 1) + 0.1·L_TaT``, the weights of the release's other ImageNet file
(``resnet18_from_resnet34_attn_w_kd.yaml``). The ImageNet recipe the release runs
(``0.1·CE + 0.2·L_TaT``, the method's defaults) fine-tunes a pretrained student with
AdamW; a CE weight of 0.1 would slow a from-scratch student tenfold.
"""
from configs import common

# The _attn_w_kd.yaml weights (see above); the method's defaults are the ImageNet run's.
CIFAR_FIELDS = {"ce_weight": 0.5, "kd_weight": 0.5, "temperature": 1.0, "weight": 0.1}


def _fields(a):
  return dict(CIFAR_FIELDS) if a.method == "tat" else {}


def get_config(arg=None):
  return common.distill_config("cifar100", "tat", arg, "wrn_40_2", "wrn_16_2", _fields)
