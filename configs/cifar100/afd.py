"""CIFAR-100 AFD ("Show, Attend and Distill"): CE + 0.9·KD + 200·L_AFD (the release's).

    python -m afd_jax.main --config=configs/cifar100/afd.py:teacher=wrn_40_2,student=wrn_16_2 \
        --workdir=runs/cifar100/afd_wrn_40_2_wrn_16_2

Every pair of `configs.pairs.PAIRS['cifar100']` is accepted; the teacher must be trained
first (configs/cifar100/teacher.py:model=<teacher>) or imported from PyTorch.

Schedule: the AFD release's (clovaai/attention-feature-distillation@dd990d0, ``main.py``
argparse defaults: SGD lr 0.05, momentum 0.9, wd 5e-4, batch 64, 240 epochs, ×0.1 by
``utils.adjust_learning_rate`` ``if epoch in [150, 180, 210]`` at the start of 1-indexed
epochs). Its decays therefore come after 149, 179 and 209 finished epochs — one epoch
before RepDistiller's ``epoch > 150`` rule that the baselines follow — so
``schedule.decay_epochs = (149, 179, 209)`` (`afd_jax.optim`: a decay epoch counts
finished epochs). Like the release's ``DataLoader``, every epoch ends with its partial
batch (``data.last_batch='train'``: 782 steps per epoch, the last of 16 images). A WRN
student applies each block's ``bn1`` twice per training forward as the release's
``models/wrn.py`` does (``model.bn1_twice``: its running statistics move twice; outputs
and gradients are unchanged).
"""
from configs import common


def _afd_schedule(a, c):
  if a.method == "afd":
    c.schedule.decay_epochs = common.AFD_LR_DECAY
    c.model.bn1_twice = a.student.startswith("wrn_")


def get_config(arg=None):
  return common.distill_config("cifar100", "afd", arg, "wrn_40_2", "wrn_16_2",
                               recipe=_afd_schedule)
