r"""CIFAR-100 baselines, each with its released defaults: the CRD benchmark's ``kd``
(default), ``fitnet``, ``at``, ``sp``, ``cc``, ``pkt``, ``rkd``, ``nst``, ``vid``, and
``ab``, ``ft``, ``fsp`` (two-stage: an init phase in ``<workdir>/init_phase`` first),
``crd``, ``dkd``, ``reviewkd``, ``semckd`` (any registered method name is accepted); e.g.

    python -m afd_jax.main --config=configs/cifar100/baselines.py:method=at,teacher=resnet56,student=resnet20 \
        --workdir=runs/cifar100/at_resnet56_resnet20

DKD's β is set per pair as mdistiller's ``configs/cifar100/dkd/*.yaml`` do.

Schedule: RepDistiller's (HobbitLong/RepDistiller@b84f547 ``train_student.py`` defaults:
SGD lr 0.05, batch 64, 240 epochs; ``helper/util.py adjust_learning_rate`` multiplies by
0.1 for each of 150/180/210 that the 1-indexed epoch exceeds, i.e. after 150, 180, 210
finished epochs: ``schedule.decay_epochs=(150, 180, 210)``), which mdistiller (DKD,
ReviewKD) and SemCKD keep; each epoch ends with its partial batch of 16, as their
``DataLoader``\ s (``data.last_batch='train'``: 782 steps per epoch).
Published numbers per pair: `configs.pairs.PAIRS['cifar100']` (CRD Tables 1/2, DKD).
"""
from configs import common

# megvii-research/mdistiller configs/cifar100/dkd/*.yaml: BETA where it differs from 8.
DKD_BETA = {("resnet56", "resnet20"): 2.0, ("resnet110", "resnet32"): 2.0,
            ("wrn_40_2", "wrn_16_2"): 6.0, ("wrn_40_2", "wrn_40_1"): 6.0,
            ("vgg13", "vgg8"): 6.0, ("vgg13", "MobileNetV2"): 6.0}


def _method_fields(a):
  beta = DKD_BETA.get((a.teacher, a.student)) if a.method == "dkd" else None
  return {} if beta is None else {"beta": beta}


def get_config(arg=None):
  return common.distill_config("cifar100", "kd", arg, "wrn_40_2", "wrn_16_2",
                               method_fields=_method_fields)
