"""AFD on ImageNet (ILSVRC2012): teacher resnet34_imagenet -> student resnet18_imagenet.

    python -m afd_jax.main --config=configs/imagenet/resnet34_resnet18_afd.py --workdir=runs/imagenet2012/resnet34_resnet18_afd

Needs the teacher resnet34_imagenet, trained by configs/imagenet/resnet34.py into
runs/imagenet2012/resnet34_imagenet. The official release gives no ImageNet schedule; this
is a public reproduction's: 100 epochs, SGD momentum 0.9, lr 0.1 x0.1 at 30/60/90,
wd 1e-4, global batch 256, CE + 0.9*KD(tau=4) + 50*L_AFD, meta-network width 128.

Expected top-1: 71.38 % in the AFD paper (reference: the paper's result listed at
https://paperswithcode.com/paper/show-attend-and-distill-knowledge). A reproduction with
this schedule reached 71.68 % over a 70.8 % baseline (reference: PaddleClas
docs/zh_CN/advanced_tutorials/knowledge_distillation.md, section 1.2.4 AFD).
"""
from afd_jax import config_defaults


def get_config():
  return config_defaults.distill_config("resnet34_imagenet", "resnet18_imagenet", "afd",
                                        dataset="imagenet2012", beta=50.0, qk_dim=128)
