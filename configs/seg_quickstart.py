"""Offline segmentation quickstart on the embedded `digits_seg` dataset: a DeepLabV3+
teacher, a student baseline and a student distilled with TaT's patch-group + anchor-point
loss, then an mIoU table and the prediction pictures.

    python -m afd_jax.main --config=configs/seg_quickstart.py --workdir=runs/seg_quickstart

The argument lists the distillation methods (default ``tat``), e.g.
``configs/seg_quickstart.py:methods=tat+seg_fitnet+ickd``.

Pair: DeepLabV3+ ResNet-18 teacher (all 1,000 training canvases) → DeepLabV3+ MobileNetV2
student (the paper's VOC headline student) on the first 300 canvases; 200 test canvases
of 64×64, 11 classes (background + 10 digits). The release's recipe otherwise (Nesterov
SGD, head ×10, cos per iteration, CE/B, TaT with the teacher in train mode), scaled to
the 16×16 decoder map of a 64×64 crop: TaT's patch grid 4×4 in 4 heads and an 8×8 anchor
grid (VOC MobileNetV2: 32×32, 1024 heads, 64×64 on the 129×129 map), α = 0.1, β = 1,
γ = 0.5; lr 0.1 (the nets start from scratch here: no ImageNet weights offline; with
the release's CE/B a step at lr 0.1 is a plain-mean-CE step at 0.1/16).
Pictures: ``<workdir>/<run>/predictions.png`` (image, ground truth, teacher, student).
"""
import ml_collections

from configs import common

TEACHER, STUDENT = "deeplabv3p_resnet18", "deeplabv3p_mobilenetv2"
TAT_FIELDS = dict(mode="hierarchical", weight=0.1, beta=1.0, gamma=0.5, patch_grid=(4, 4),
                  heads=4, anchor_grid=(8, 8))


def _run(model: str, epochs: int, num_train_examples, runlocal: bool):
  c = common.segmentation("voc")
  c.data.update(dict(name="digits_seg", image_size=64, base_size=64, eval_split="test",
                     shuffle_buffer=1000, num_train_examples=num_train_examples))
  c.model.update(dict(name=model, init=""))
  c.batch_size, c.eval_batch_size = 16, 40
  c.optim.lr = 0.1
  c.schedule.num_epochs = epochs
  c.logging.update(dict(log_every_steps=10, keep_checkpoints=2))
  return common.seg_runlocal(c) if runlocal else c


def get_config(arg=None) -> ml_collections.ConfigDict:
  """Suite config; ``methods`` is a '+'-separated list of method names."""
  a = common.parse_arg(arg, methods="tat")
  return common.teacher_student_suite(
      _run(TEACHER, 10, None, a.runlocal), lambda: _run(STUDENT, 10, 300, a.runlocal),
      TEACHER, a.methods, {"tat": TAT_FIELDS})
