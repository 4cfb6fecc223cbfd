"""Configs that reproduce their release's run (issue 19): recipes read off the releases,
written here independently of the config files."""
import pytest

from afd_jax import methods
from config_loading import load


def test_imagenet_tat_is_the_run_train_local_sh_launches():
  """sihaoevery/TaT@a6cc329 train_local.sh -> resnet18_from_resnet34_attn.yaml: AdamW lr
  0.0016 (not scaled: ``-adjust_lr`` is store_false) wd 5e-4, MultiStepLR [30, 60, 90]
  over 100 epochs, 8 GPUs × 256, 0.1·CE + 0.2·TaT without KD, both nets pretrained."""
  c = load("imagenet/tat.py")
  assert (c.optim.name, c.optim.lr, c.optim.weight_decay) == ("adamw", 0.0016, 5e-4)
  assert c.batch_size == 2048
  assert (c.schedule.name, c.schedule.num_epochs, tuple(c.schedule.decay_epochs),
          c.schedule.decay_factor, c.schedule.warmup_epochs) == ("step", 100, (30, 60, 90),
                                                                 0.1, 0)
  assert (c.teacher.name, c.model.name) == ("resnet34_imagenet", "resnet18_imagenet")
  assert c.model.init.endswith("resnet18-5c106cde.pth")  # torchvision's ResNet-18
  hp = methods.resolve(c.method)
  assert (hp.mode, hp.ce_weight, hp.kd_weight, hp.weight, hp.learnable_key) == (
      "global", 0.1, 0.0, 0.2, False)
  assert set(c.method) == {"name"}  # the recipe's weights are the method's defaults
  smoke = load("imagenet/tat.py", "runlocal")
  assert smoke.model.init == "" and smoke.data.name == "digits"  # offline, no weights


def test_cifar_tat_keeps_its_stated_from_scratch_weights():
  """No released CIFAR recipe: the _attn_w_kd.yaml weights with the CIFAR SGD setting."""
  c = load("cifar100/tat.py", "teacher=resnet32x4,student=resnet8x4")
  hp = methods.resolve(c.method)
  assert (hp.ce_weight, hp.kd_weight, hp.temperature, hp.weight) == (0.5, 0.5, 1.0, 0.1)
  assert (c.optim.name, c.optim.lr, c.model.init) == ("sgd", 0.05, "")


@pytest.mark.parametrize("rel,last_batch", [
    ("cifar100/afd.py", "train"), ("cifar100/baselines.py", "train"),
    ("cifar100/teacher.py", "train"), ("cifar100/tat.py", "train"),
    ("imagenet/teacher.py", "drop"), ("imagenet/afd.py", "drop"), ("imagenet/tat.py", "drop"),
    ("transfer/transfer.py", "drop")])
def test_last_batch_per_config_family(rel, last_batch):
  """The CIFAR releases' DataLoaders keep the last partial batch; elsewhere it is
  dropped (docs/methods.md, "Fidelity")."""
  assert load(rel).data.last_batch == last_batch


def test_cifar_afd_follows_the_afd_release():
  """clovaai/attention-feature-distillation@dd990d0 main.py defaults and models/wrn.py:
  SGD 0.05 / 0.9 / 5e-4, batch 64, 240 epochs, decays at the start of 1-indexed epochs
  150/180/210, CE + 0.9·KD(τ 4) + 200·AFD, qk_dim 128; a WRN's bn1 applied twice."""
  c = load("cifar100/afd.py")
  assert (c.optim.name, c.optim.lr, c.optim.momentum, c.optim.weight_decay,
          c.batch_size, c.schedule.num_epochs) == ("sgd", 0.05, 0.9, 5e-4, 64, 240)
  assert tuple(c.schedule.decay_epochs) == (149, 179, 209)
  assert c.model.bn1_twice is True and c.data.last_batch == "train"
  hp = methods.resolve(c.method)
  assert (hp.ce_weight, hp.kd_weight, hp.temperature, hp.beta, hp.qk_dim) == (
      1.0, 0.9, 4.0, 200.0, 128)
  assert load("cifar100/afd.py", "teacher=resnet56,student=resnet20").model.bn1_twice is False
