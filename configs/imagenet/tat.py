"""ImageNet TaT, ResNet34 → ResNet18: the release's recipe, the run its ``train_local.sh``
launches (sihaoevery/TaT@a6cc329, ``configs/sample/ilsvrc2012/single_stage/tat/
resnet18_from_resnet34_attn.yaml``; paper: 72.41 top-1).

    python -m afd_jax.import_torch --model=resnet34_imagenet --num_classes=1000 \
        --checkpoint=resnet34.pth --workdir=runs/imagenet2012/resnet34_imagenet
    python -m afd_jax.main --config=configs/imagenet/tat.py --workdir=runs/imagenet2012/tat

* loss ``0.1·CE + 0.2·L_TaT``, no KD (the method's global-mode defaults,
  `afd_jax.methods.tat`), on the 7×7 last stage;
* AdamW (``torch.optim.AdamW``) lr 0.0016, weight decay 5e-4, no warm-up; the lr is not
  scaled by the 8 processes (the script passes ``-adjust_lr``, a ``store_false`` flag);
* 100 epochs, ×0.1 after 30/60/90 finished epochs (``MultiStepLR`` stepped once per
  epoch by torchdistill's ``post_process``);
* global batch 2048 (8 GPUs × ``batch_size: 256``);
* both nets start from torchvision's ImageNet weights (``pretrained: True``): the
  teacher is the imported ResNet-34 above (docs/teachers.md), the
  student's ``model.init`` torchvision's ``resnet18-5c106cde.pth`` (download it into
  ``pretrained/``; `afd_jax.pretrained`).

The release's loaders keep each epoch's last partial batch (626 steps of 8 × 256 per
epoch, the last smaller); here it is dropped (625 steps, ``data.last_batch='drop'``: a
partial batch of 1,167 images does not split over 8 devices; docs/methods.md, "Fidelity").
Not comparable to from-scratch methods: the student starts at torchvision's 69.76.
"""
from configs import common

TEACHER, STUDENT = "resnet34_imagenet", "resnet18_imagenet"
# torchvision's ResNet-18 ImageNet weights (download.pytorch.org/models/resnet18-5c106cde.pth).
STUDENT_INIT = "pretrained/resnet18-5c106cde.pth"


def _release_recipe(a, c):
  """resnet18_from_resnet34_attn.yaml's optimizer, batch and student start."""
  if a.method != "tat":
    return
  c.batch_size = 8 * 256
  c.optim.update(dict(name="adamw", lr=0.0016, weight_decay=5e-4))
  c.schedule.update(dict(name="step", num_epochs=100, decay_epochs=(30, 60, 90)))
  if a.student == STUDENT:
    c.model.init = STUDENT_INIT


def get_config(arg=None):
  return common.distill_config("imagenet2012", "tat", arg, TEACHER, STUDENT,
                               recipe=_release_recipe)
