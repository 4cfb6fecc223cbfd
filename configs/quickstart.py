"""Offline quickstart on the embedded `digits` dataset: a teacher, a student baseline and
students distilled with KD and AFD, then a results table and AFD's link heatmap.

    python -m afd_jax.main --config=configs/quickstart.py --workdir=runs/quickstart

The argument lists the methods (default ``kd,afd``), e.g. every method with 3 seeds:

    python -m afd_jax.main --config=configs/quickstart.py:methods=kd+afd+tat+aft_kd+hmat \
        --workdir=runs/digits_all --config.seeds='(0,1,2)'

Pair: resnet20 teacher (all 1,437 training images) -> resnet8 student (CIFAR ResNets).
Students see only the first 500 training images, so the teacher knows more than the
student's data shows and distillation has something to transfer; the test split has 360
images. Schedule: cosine from lr 0.2 (the CIFAR 0.05 is too slow for 15-epoch runs),
batch 64. Each method runs with its published defaults (TaT with its CIFAR weights,
`configs/cifar100/tat.py`: its defaults are the ImageNet recipe for pretrained networks). AFD's heatmap is written to
``<workdir>/student_afd/links.png``.
"""
import ml_collections

from configs import common
from configs.cifar100 import tat as cifar100_tat

TEACHER, STUDENT = "resnet20", "resnet8"


def _run(model: str, epochs: int, num_train_examples, runlocal: bool):
  c = common.digits()
  c.model.name = model
  c.data.num_train_examples = num_train_examples
  c.schedule.num_epochs = epochs
  c.optim.lr = 0.2
  return common.runlocal(c) if runlocal else c


def get_config(arg=None) -> ml_collections.ConfigDict:
  """Suite config; ``methods`` is a '+'-separated list of method names."""
  a = common.parse_arg(arg, methods="kd+afd")
  # TaT: the CIFAR weights (the defaults are its ImageNet recipe, for pretrained nets).
  return common.teacher_student_suite(
      _run(TEACHER, 8, None, a.runlocal), lambda: _run(STUDENT, 15, 500, a.runlocal),
      TEACHER, a.methods, method_fields={"tat": dict(cifar100_tat.CIFAR_FIELDS)})
