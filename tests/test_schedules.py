"""Learning-rate schedules and optimizers against the releases' own rules (issue 19).

Each release's rule is written here from its code, independently of `afd_jax.optim`, and
the per-step learning rate of every config family is compared with it on both sides of
every decay boundary. Pure functions: nothing is trained.
"""
import math

import numpy as np
import optax
import pytest

import jax
import jax.numpy as jnp
import ml_collections

from afd_jax import input_pipeline, optim
from config_loading import load

CIFAR_TRAIN, IMAGENET_TRAIN = 50_000, 1_281_167


def repdistiller_lr(lr0, step, spe, decay_epochs=(150, 180, 210), rate=0.1):
  """RepDistiller@b84f547 helper/util.py adjust_learning_rate, called at the start of
  1-indexed epoch E (train_student.py / train_teacher.py): lr0·rate^#{d : E > d}."""
  epoch = step // spe + 1
  return lr0 * rate ** int(np.sum(epoch > np.asarray(decay_epochs)))


def afd_release_lr(lr0, step, spe, schedule=(150, 180, 210), rate=0.1):
  """clovaai/attention-feature-distillation@dd990d0 main.py: for 1-indexed epoch in
  1..240, ``adjust_learning_rate`` first (utils.py: ``if epoch in args.schedule: args.lr
  *= args.lr_decay``), then the epoch's training."""
  lr = lr0
  for epoch in range(1, step // spe + 2):
    if epoch in schedule:
      lr *= rate
  return lr


def multistep_lr(lr0, step, spe, milestones=(30, 60, 90), rate=0.1):
  """torch MultiStepLR stepped once after each epoch (torchdistill's ``post_process``,
  torchvision's references; Paddle's PiecewiseDecay on iteration boundaries e·spe is the
  same): 0-indexed epoch e trains at lr0·rate^#{m : e >= m}."""
  epoch = step // spe
  return lr0 * rate ** sum(epoch >= m for m in milestones)


def _spe(config, num_train):
  info = input_pipeline.DatasetInfo(config.data.name, 100, num_train, 10_000,
                                    config.data.image_size or 32)
  return info.steps_per_epoch(config.batch_size, 1, config.data.get("last_batch") == "train")


def _boundary_steps(spe, epochs):
  """Steps on both sides of the first step of each listed 0-indexed epoch."""
  return sorted({s for e in epochs for s in (e * spe - 1, e * spe, e * spe + 1)
                 if s >= 0} | {0})


# (config file, argument, the release's rule, training examples, epochs where the release
# changes the lr (0-indexed: first decayed epoch))
FAMILIES = [
    ("cifar100/afd.py", None, afd_release_lr, CIFAR_TRAIN, (149, 179, 209)),
    ("cifar100/baselines.py", None, repdistiller_lr, CIFAR_TRAIN, (150, 180, 210)),
    ("cifar100/baselines.py", "method=crd", repdistiller_lr, CIFAR_TRAIN, (150, 180, 210)),
    ("cifar100/teacher.py", None, repdistiller_lr, CIFAR_TRAIN, (150, 180, 210)),
    ("cifar100/tat.py", None, repdistiller_lr, CIFAR_TRAIN, (150, 180, 210)),
    ("cifar100/aft_kd.py", None, repdistiller_lr, CIFAR_TRAIN, (150, 180, 210)),
    ("cifar100/hmat.py", None, repdistiller_lr, CIFAR_TRAIN, (150, 180, 210)),
    ("imagenet/teacher.py", None, multistep_lr, IMAGENET_TRAIN, (30, 60, 90)),
    ("imagenet/afd.py", None, multistep_lr, IMAGENET_TRAIN, (30, 60, 90)),
    ("imagenet/tat.py", None, multistep_lr, IMAGENET_TRAIN, (30, 60, 90)),
]


@pytest.mark.parametrize("rel,arg,rule,num_train,epochs", FAMILIES,
                         ids=[f"{f[0]}:{f[1]}" for f in FAMILIES])
def test_per_step_lr_follows_the_release_around_every_boundary(rel, arg, rule, num_train,
                                                               epochs):
  config = load(rel, arg)
  spe = _spe(config, num_train)
  schedule = optim.create_learning_rate_schedule(config.schedule, config.optim.lr, spe)
  steps = _boundary_steps(spe, epochs) + [config.schedule.num_epochs * spe - 1]
  got = np.asarray([schedule(s) for s in steps], np.float64)
  want = np.asarray([rule(config.optim.lr, s, spe) for s in steps])
  np.testing.assert_allclose(got, want, rtol=1e-6, err_msg=f"{rel} steps {steps}")
  # Each boundary really is one: the lr changes exactly there.
  for e in epochs:
    assert got[steps.index(e * spe)] < got[steps.index(e * spe - 1)]


def test_cifar_configs_have_the_releases_782_steps_per_epoch():
  """Both CIFAR releases' DataLoaders keep the last 16 images (drop_last=False)."""
  for rel in ("cifar100/afd.py", "cifar100/baselines.py", "cifar100/teacher.py",
              "cifar100/tat.py"):
    config = load(rel)
    assert config.data.last_batch == "train", rel
    info = input_pipeline.DatasetInfo("cifar100", 100, CIFAR_TRAIN, 10_000, 32)
    assert info.steps_per_epoch(64, 1, True) == 782 and info.last_batch_size(64, 1, True) == 16
    assert _spe(config, CIFAR_TRAIN) == 782
  assert _spe(load("imagenet/teacher.py"), IMAGENET_TRAIN) == 5004  # dropped there


def test_afd_decay_is_one_epoch_before_repdistillers():
  """The whole 240-epoch run, epoch by epoch: the two releases differ only in epochs
  150, 180 and 210 (1-indexed), where AFD has already decayed."""
  afd, base = load("cifar100/afd.py"), load("cifar100/baselines.py")
  spe = 782
  lr_afd = optim.create_learning_rate_schedule(afd.schedule, afd.optim.lr, spe)
  lr_base = optim.create_learning_rate_schedule(base.schedule, base.optim.lr, spe)
  epochs = np.arange(240)
  a = np.asarray(jax.vmap(lr_afd)(jnp.asarray(epochs * spe)))
  b = np.asarray(jax.vmap(lr_base)(jnp.asarray(epochs * spe)))
  np.testing.assert_allclose(a, [afd_release_lr(0.05, e * spe, spe) for e in epochs],
                             rtol=1e-6)
  np.testing.assert_allclose(b, [repdistiller_lr(0.05, e * spe, spe) for e in epochs],
                             rtol=1e-6)
  assert (np.flatnonzero(~np.isclose(a, b)) + 1).tolist() == [150, 180, 210]


# ---- optimizers ---------------------------------------------------------------------


def torch_adamw_reference(params, grads_seq, lr_seq, wd, b1=0.9, b2=0.999, eps=1e-8):
  """torch.optim.AdamW's update (torch/optim/adamw.py, single-tensor path), in float64:
  p ← p·(1 − lr·wd); m, v moments;
  p ← p − lr/(1 − b1^t) · m / (√v/√(1 − b2^t) + eps)."""
  p = {k: np.float64(v) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v = {k: np.zeros_like(x) for k, x in p.items()}
  for t, (grads, lr) in enumerate(zip(grads_seq, lr_seq), start=1):
    for k in p:
      g = np.float64(grads[k])
      p[k] = p[k] * (1 - lr * wd)
      m[k] = b1 * m[k] + (1 - b1) * g
      v[k] = b2 * v[k] + (1 - b2) * g * g
      denom = np.sqrt(v[k]) / math.sqrt(1 - b2 ** t) + eps
      p[k] = p[k] - lr / (1 - b1 ** t) * m[k] / denom
  return p


def _optim_config(**optim_fields):
  c = load("cifar100/teacher.py")
  c.optim.update(optim_fields)
  return c


def test_adamw_is_torch_adamw_with_scheduled_decoupled_decay():
  """Three steps across a decay boundary (spe 2, decay after epoch 1) equal torch's
  AdamW with the lr that MultiStepLR gives each step. A large lr and decay, so that
  decoupled and L2-style decay (Adam on g + wd·p) differ far beyond the tolerance."""
  c = _optim_config(name="adamw", lr=0.05, weight_decay=0.3)
  c.schedule.update(dict(name="step", decay_epochs=(1,), num_epochs=3))
  tx, schedule = optim.create_optimizer(c, steps_per_epoch=2)
  rng = np.random.default_rng(0)
  params = {"w": rng.normal(size=(3, 4)).astype(np.float32),
            "b": rng.normal(size=(4,)).astype(np.float32)}
  grads_seq = [{k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()}
               for _ in range(3)]
  state, p = tx.init(params), dict(params)
  for grads in grads_seq:
    updates, state = tx.update(grads, state, p)
    p = optax.apply_updates(p, updates)
  lrs = [multistep_lr(0.05, s, 2, milestones=(1,)) for s in range(3)]
  assert [float(schedule(s)) for s in range(3)] == pytest.approx(lrs)
  want = torch_adamw_reference(params, grads_seq, lrs, 0.3)
  for k in params:
    np.testing.assert_allclose(np.asarray(p[k]), want[k], rtol=1e-5, atol=5e-6)


def test_sgd_is_still_the_default_and_unknown_optimizers_are_named():
  assert load("cifar100/afd.py").optim.name == "sgd"
  assert optim.optimizer_name(ml_collections.ConfigDict(dict(lr=0.1))) == "sgd"  # old runs
  with pytest.raises(ValueError, match=r"config.optim.name='adam'.*accepted: 'sgd', 'adamw'"):
    optim.create_optimizer(_optim_config(name="adam"), steps_per_epoch=2)
