"""Transfer learning, AFD's transfer table: ImageNet ResNet34 teacher -> ResNet18 student
trained on a small target dataset (the student starts from scratch; only the teacher has
seen ImageNet). The argument picks the dataset and the method:

    python -m afd_jax.main --config=configs/transfer/transfer.py:dataset=cub200,method=afd \
        --workdir=runs/transfer/cub200_afd

``dataset``: ``cub200`` (TFDS ``caltech_birds2011``, 200 classes), ``dogs``
(``stanford_dogs``, 120), ``mit67`` (67; manual download, `afd_jax/datasets/mit67.py`),
``stanford40`` (40; manual download, `afd_jax/datasets/stanford40.py`).
``method``: ``none`` (the student alone: the papers' "Scratch" row), ``at``, ``afd``
(default). ``teacher=``/``student=`` choose another pair (default: the paper's).
Expected top-1: docs/transfer.md (L2T-ww paper, Table 1).

Schedule: L2T-ww's (Jang et al., ICML 2019), which AFD follows for this table; from the
defaults of ``train_l2t_ww.py`` in github.com/alinlab/L2T-ww: the target network trains
with SGD lr 0.1, momentum 0.9 (no Nesterov), weight decay 1e-4, batch 64, 200 epochs,
cosine annealing to 0 (``CosineAnnealingLR(T_max=epochs)``; here per step, not per
epoch), on 224×224 random-resized crops + flips, eval resize 256 + centre crop 224
(``check_dataset.py``). (L2T-ww's Adam, lr 1e-4, trains only its meta-networks; L2T-ww
picks the reported epoch on a validation split held out of train, here the last/best
test top-1 are reported.)

Teacher: the ImageNet ResNet34 in ``runs/imagenet2012/resnet34_imagenet``
(``configs/imagenet/teacher.py:model=resnet34_imagenet`` or a torchvision import), frozen,
with its 1000 classes (``teacher.num_classes``); its classifier is not used (``kd_weight=0``
for AT and AFD) and it is not evaluated on the target. KD is not offered: the ImageNet logits
are over other classes, and neither L2T-ww nor AFD distil logits in this table (L2T-ww's
LwF keeps a second, source-task head on the student, which these models do not have).
AFD and AT keep their published defaults otherwise (AFD beta 200, AT beta 1000).
"""
import ml_collections

from configs import common

TEACHER, STUDENT = "resnet34_imagenet", "resnet18_imagenet"
DATASETS = {"cub200": "caltech_birds2011", "dogs": "stanford_dogs", "mit67": "mit67",
            "stanford40": "stanford40"}
METHODS = ("none", "at", "afd")


def get_config(arg=None) -> ml_collections.ConfigDict:
  a = common.parse_arg(arg, dataset="cub200", method="afd", teacher=TEACHER,
                       student=STUDENT)
  if a.dataset not in DATASETS:
    raise ValueError(f"dataset {a.dataset!r} unknown; accepted: {', '.join(DATASETS)}")
  if a.method not in METHODS:
    raise ValueError(f"method {a.method!r} is not run in transfer; accepted: "
                     f"{', '.join(METHODS)} (KD needs teacher logits over the target's "
                     "classes; the ImageNet teacher's are over ImageNet's)")
  c = common.base()
  c.data.update(dict(name=DATASETS[a.dataset], image_size=224, shuffle_buffer=16_384,
                     prefetch=4))
  c.model.name = a.student
  c.optim.update(dict(lr=0.1, momentum=0.9, nesterov=False, weight_decay=1e-4))
  c.schedule.update(dict(name="cosine", num_epochs=200, decay_epochs=()))
  if a.method != "none":
    c.teacher.update(dict(name=a.teacher, checkpoint="runs/imagenet2012/" + a.teacher,
                          num_classes=1000))
    c.method = ml_collections.ConfigDict(dict(name=a.method, kd_weight=0.0))
  return common.runlocal(c) if a.runlocal else c
