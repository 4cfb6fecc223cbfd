"""Offline segmentation quickstart on the embedded `digits_seg` dataset: DeepLabV3+
backbones pretrained by classification on `digits_canvas`, a DeepLabV3+ teacher, a student
alone and students distilled with TaT's patch-group + anchor-point loss, `seg_kd` and
`seg_fitnet`, three seeds each, then an mIoU table with Welch's t-test marks and the
prediction pictures.

    python -m afd_jax.main --config=configs/seg_quickstart.py --workdir=runs/seg_quickstart

Arguments: ``methods`` (default ``tat+seg_kd+seg_fitnet``), ``tat_weight`` (TaT's α,
default `TAT_WEIGHT`; the release's is 0.1), e.g.
``configs/seg_quickstart.py:methods=tat,tat_weight=0.1``. Other seeds:
``--config.seeds='(3,4,5)'``.

Runs, in order (one after another: segmentation runs are not vmapped):

* ``pretrain_teacher``, ``pretrain_student``: the two DeepLab backbones as classifiers
  (``tiny_resnet18_classifier``, ``tiny_resnet10_classifier``: the backbone, a global
  pool and a linear layer) trained on `digits_canvas` (one digit drawn as on the
  canvases, labelled by it); the offline stand-in for the release's ImageNet backbones
  (``_load_pretrained_model``). Each DeepLab then starts from its classifier's ``backbone``
  (``model.init='{workdir}/pretrain_*'``, `afd_jax.pretrained`); ASPP and decoder start
  fresh, as in the release.
* ``teacher``: DeepLabV3+ on ``tiny_resnet18`` (1.63 M parameters) on all 1,000 training
  canvases.
* ``student`` (alone), ``student_<method>``: DeepLabV3+ on ``tiny_resnet10`` (0.38 M) on
  only the first `STUDENT_CANVASES` canvases, so the teacher knows much more than the
  student's data shows.

What was scaled from the release (TaT-seg's DeepLabV3+ VOC recipe) and why: 48×48
canvases of 11 classes (200 test canvases; predicting background everywhere scores
`ALL_BACKGROUND_MIOU` mIoU) instead of VOC at 513; CPU-sized networks
(`afd_jax.models.deeplab`: a narrow ResNet at output stride 8, so that a digit spans
several cells of the deepest map as a VOC object does at 16; 64-channel ASPP at rates
1/2/3 and decoder) instead of ResNet-101 → MobileNetV2/ResNet-18; backbones pretrained on
`digits_canvas` instead of ImageNet; minutes of training (`TEACHER_EPOCHS`,
`STUDENT_EPOCHS`) instead of 100 epochs, at lr `LR` (the release: 0.007; with its CE ÷ B a
step at lr 0.2 is a plain-mean-CE step at 0.0125); the random scale drawn from
`SCALE_RANGE` of the base size instead of 0.5–2 (on a 48-pixel canvas the release's range
crops most digits in half or shrinks them to 12 px: the teacher reached 47.5 mIoU with it,
58.1 with 0.75–1.5, same schedule); TaT's α = `TAT_WEIGHT` instead of 0.1 (measured with
the release's α, three seeds: TaT 28.51 ± 2.71 against 48.11 ± 0.55 alone; its two terms
are 1.5× the CE at the start and triple the gradient norm, and a sweep of one seed gave
28.5 / 45.6 / 49.1 at α = 0.1 / 0.02 / 0.005, 47.5 alone). Unchanged: Nesterov SGD
(momentum 0.9, wd 5e-4), the head at 10× lr, cosine per iteration, CE ÷ B ignoring 255,
the release's scale-crop and blur (no flip: digits are not mirror-symmetric), TaT's loss
(mode 'hierarchical', β = 1, γ = 0.5) with the teacher in train mode, its patch grid
scaled to the 12×12 decoder map (4×4 patches in 4 heads, 6×6 anchors; VOC MobileNetV2:
32×32, 1024 heads, 64×64 on the 129×129 map). seg_kd and seg_fitnet run with their
defaults.

Pictures: ``<workdir>/<run>[/seed_<k>]/predictions.png`` (image, ground truth, teacher,
student). ``runlocal``: one seed, two steps per run (pretraining included).
"""
import ml_collections

from configs import common

TEACHER, STUDENT = "deeplabv3p_tiny_resnet18", "deeplabv3p_tiny_resnet10"
PRETRAIN = {TEACHER: "tiny_resnet18_classifier", STUDENT: "tiny_resnet10_classifier"}
SEEDS = (0, 1, 2)
PRETRAIN_EPOCHS = 5
TEACHER_EPOCHS = 16
STUDENT_EPOCHS = 20
STUDENT_CANVASES = 128
CANVAS = 48
# With the release's CE ÷ B (B = 16), a step at lr 0.2 is a plain-mean-CE step at 0.0125.
LR = 0.2
# The random scale's range (the release's: 0.5 to 2.0 times the base size).
SCALE_RANGE = (0.75, 1.25)
# mIoU of predicting background everywhere on the 200 test canvases (printed beside the
# teacher in the README).
ALL_BACKGROUND_MIOU = 7.57
# TaT's α: the release's 0.1 (VOC, MobileNetV2) makes TaT's terms outweigh the CE here
# (see the docstring); `tat_weight=0.1` runs it.
TAT_WEIGHT = 0.005
TAT_FIELDS = dict(mode="hierarchical", beta=1.0, gamma=0.5, patch_grid=(4, 4), heads=4,
                  anchor_grid=(6, 6))


def _pretrain(model: str, runlocal: bool) -> ml_collections.ConfigDict:
  """`model`'s backbone as a classifier on all of `digits_canvas`."""
  c = common.digits()
  c.data.name = "digits_canvas"
  c.model.name = PRETRAIN[model]
  c.batch_size = 64
  c.optim.lr = 0.1
  c.schedule.num_epochs = PRETRAIN_EPOCHS
  c.logging.eval_every_epochs = PRETRAIN_EPOCHS
  return common.runlocal(c) if runlocal else c


def _run(model: str, epochs: int, num_train_examples, runlocal: bool):
  c = common.segmentation("voc")
  c.data.update(dict(name="digits_seg", image_size=CANVAS, base_size=CANVAS,
                     eval_split="test", shuffle_buffer=1000, scale_range=SCALE_RANGE,
                     num_train_examples=num_train_examples))
  c.batch_size, c.eval_batch_size = 16, 40
  c.optim.lr = LR
  c.schedule.num_epochs = epochs
  c.logging.update(dict(log_every_steps=10, keep_checkpoints=2,
                        eval_every_epochs=epochs))
  c = common.seg_runlocal(c) if runlocal else c
  c.model.update(dict(name=model, init="{workdir}/pretrain_" +
                      ("teacher" if model == TEACHER else "student")))
  return c


def get_config(arg=None) -> ml_collections.ConfigDict:
  """Suite config; ``methods`` is a '+'-separated list of method names."""
  a = common.parse_arg(arg, methods="tat+seg_kd+seg_fitnet", tat_weight=str(TAT_WEIGHT))
  try:
    tat_weight = float(a.tat_weight)
  except ValueError:
    raise ValueError(f"config argument tat_weight={a.tat_weight!r}; accepted: a number "
                     f">= 0 (the release's 0.1, the default {TAT_WEIGHT})") from None
  c = common.teacher_student_suite(
      _run(TEACHER, TEACHER_EPOCHS, None, a.runlocal),
      lambda: _run(STUDENT, STUDENT_EPOCHS, STUDENT_CANVASES, a.runlocal),
      TEACHER, a.methods, {"tat": dict(TAT_FIELDS, weight=tat_weight)})
  c.runs.pretrain_teacher = _pretrain(TEACHER, a.runlocal)
  c.runs.pretrain_student = _pretrain(STUDENT, a.runlocal)
  c.run_order = ("pretrain_teacher", "pretrain_student") + tuple(c.run_order)
  c.single_seed_runs = ("pretrain_teacher", "pretrain_student", "teacher")
  if not a.runlocal:
    c.seeds = SEEDS
  return c
