"""Segmentation configs: the TaT-seg release's per-script recipes as facts, every config
and argument building its networks and method (its objective traced on the real feature
shapes), each method's whole train step traced once (``eval_shape``: no compile), and the
optimizer's 1×/10× groups against torch's SGD rule.
"""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from afd_jax import methods, optim, steps, train, train_state
from config_loading import load

SEG_CLASSES = {"voc_aug": 21, "cocostuff10k": 182, "digits_seg": 11}
STUDENTS = ("resnet18", "mobilenetv2")
COMP_METHODS = ("seg_kd", "seg_fitnet", "seg_at", "ickd", "seg_reviewkd", "kd")

# The release's train_*.sh (sihaoevery/TaT-seg), read cell by cell:
# (dataset, student) -> lr, batch, alpha, beta, gamma, n=m, heads, anchor.
TAT_SCRIPTS = {
    ("voc", "resnet18"): (0.007, 16, 0.1, 1.0, 0.4, 16, 64, 32),
    ("voc", "mobilenetv2"): (0.004, 12, 0.1, 1.0, 0.5, 32, 1024, 64),
    ("cocostuff10k", "resnet18"): (0.01, 16, 0.6, 1.0, 1.0, 32, 512, 32),
    ("cocostuff10k", "mobilenetv2"): (0.007, 12, 0.4, 1.0, 1.0, 16, 64, 32),
}


def _arguments():
  out = []
  for dataset in ("voc", "cocostuff10k"):
    out += [(f"{dataset}/teacher.py", f"model={m}") for m in ("resnet101",) + STUDENTS]
    out += [(f"{dataset}/tat.py", f"student={s}") for s in STUDENTS]
    out += [(f"{dataset}/baselines.py", f"method={m},student={s}")
            for m in COMP_METHODS for s in STUDENTS]
  return out


@pytest.mark.parametrize("dataset,student", sorted(TAT_SCRIPTS))
def test_tat_configs_are_the_release_scripts(dataset, student):
  c = load(f"{dataset}/tat.py", f"student={student}")
  lr, batch, alpha, beta, gamma, n, heads, anchor = TAT_SCRIPTS[dataset, student]
  hp = methods.resolve(c.method)
  assert (hp.mode, hp.weight, hp.beta, hp.gamma) == ("hierarchical", alpha, beta, gamma)
  assert (tuple(hp.patch_grid), hp.heads, tuple(hp.anchor_grid)) == ((n, n), heads,
                                                                     (anchor, anchor))
  assert (c.optim.lr, c.batch_size, c.schedule.name, c.schedule.num_epochs) == (
      lr, batch, "cosine", 100)
  assert (c.optim.momentum, c.optim.nesterov, c.optim.weight_decay,
          c.optim.head_lr_multiplier) == (0.9, True, 5e-4, 10.0)
  assert (c.data.image_size, c.data.base_size) == (513, 513)
  assert c.data.name == {"voc": "voc_aug", "cocostuff10k": "cocostuff10k"}[dataset]
  assert c.teacher.name == "deeplabv3p_resnet101"
  assert c.teacher.checkpoint == f"runs/{dataset}/deeplabv3p_resnet101"
  assert c.model.init.startswith("pretrained/")  # ImageNet backbone, as the release


def test_teacher_and_comparison_recipes():
  coco = load("cocostuff10k/teacher.py")  # train_cocostuff10k_baseline.sh
  assert (coco.optim.lr, coco.batch_size, coco.schedule.name, coco.schedule.num_epochs,
          coco.optim.nesterov) == (0.004, 16, "poly", 200, True)
  voc = load("voc/teacher.py")  # jfzhang95 train_voc.sh + train.py defaults
  assert (voc.optim.lr, voc.batch_size, voc.schedule.name, voc.schedule.num_epochs,
          voc.optim.nesterov) == (0.007, 16, "poly", 50, False)
  for dataset in ("voc", "cocostuff10k"):  # train_comp.sh / train_reviewkd.sh
    comp = load(f"{dataset}/baselines.py", "method=ickd,student=mobilenetv2")
    assert (comp.optim.lr, comp.schedule.name, comp.batch_size) == (0.007, "poly", 12)
    assert methods.resolve(comp.method).patch_grid == (8, 8)  # N=M=8
  assert methods.resolve(load("voc/teacher.py").method).batch_average  # CE / B


def _method_traces(c, nets):
  """The method's objective on the nets' real feature shapes (eval_shape: no compute)."""
  d, size = nets.distiller, c.data.image_size
  s_info = train_state.feature_shapes(nets.student, size)
  t_info = train_state.feature_shapes(nets.teacher, size) if nets.teacher else {}
  s = [jax.ShapeDtypeStruct(s_info[n], jnp.float32) for n in d.student_features]
  t = [jax.ShapeDtypeStruct(t_info[n], jnp.float32) for n in d.teacher_features]
  k = SEG_CLASSES[c.data.name]
  logits = jax.ShapeDtypeStruct((2, size, size, k), jnp.float32)
  labels = jax.ShapeDtypeStruct((2, size, size), jnp.int32)
  variables = jax.eval_shape(functools.partial(d.module.init, train=True),
                             jax.random.PRNGKey(0), s, t, logits, logits, labels)
  (loss, _), _ = jax.eval_shape(
      functools.partial(d.module.apply, train=True, mutable=["batch_stats", "method_state"]),
      variables, s, t, logits, logits, labels)
  assert loss.shape == ()


@pytest.mark.parametrize("rel,arg", _arguments())
def test_every_segmentation_config_builds(rel, arg):
  """Networks and method pairing at the real crop, the method's objective traced."""
  c = load(rel, arg)
  nets = train_state.build_networks(c, SEG_CLASSES[c.data.name], steps_per_epoch=662)
  _method_traces(c, nets)
  assert nets.distiller.teacher_train_mode == (nets.teacher is not None
                                               and c.method.name != "kd")


# The whole train step (both nets, the method, the gradient) for each method once, and for
# each student and recipe of TaT.
TRACED = ([("voc/teacher.py", "model=resnet101")]
          + [("voc/tat.py", f"student={s}") for s in STUDENTS]
          + [("cocostuff10k/tat.py", "student=resnet18")]
          + [("voc/baselines.py", f"method={m},student=resnet18") for m in COMP_METHODS])


@pytest.mark.parametrize("rel,arg", TRACED)
def test_train_step_traces_at_the_real_crop(rel, arg):
  c = load(rel, arg)
  k = SEG_CLASSES[c.data.name]
  nets = train_state.build_networks(c, k, steps_per_epoch=662)
  size = c.data.image_size
  state = jax.eval_shape(functools.partial(train_state.create, nets, image_size=size),
                         jax.random.PRNGKey(0))
  teacher = (None if nets.teacher is None else
             train_state.abstract_teacher_variables(nets, size))
  batch = {"image": jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32),
           "label": jax.ShapeDtypeStruct((2, size, size), jnp.int32)}
  _, metrics = jax.eval_shape(functools.partial(steps.train_step, nets), state, batch,
                              teacher)
  assert metrics["loss"].shape == () and metrics["top1"].shape == ()


@pytest.mark.parametrize("rel", ["voc/tat.py", "voc/baselines.py", "voc/teacher.py",
                                 "cocostuff10k/tat.py"])
def test_runlocal_variants_resolve_offline(rel):
  c = load(rel, "runlocal")
  assert c.data.name == "digits_seg" and not c.model.init
  train.validate_config(c, 1)
  train_state.build_networks(c, 11, steps_per_epoch=4)


def _torch_sgd_groups(params, grads_seq, lrs, group_of, momentum, wd):
  """torch.optim.SGD(nesterov=True) over parameter groups, restated in NumPy: per
  parameter, d = g + wd·p; buf = d (first step) else momentum·buf + d; d += momentum·buf;
  p -= lr_group·d."""
  params = {k: v.astype(np.float64).copy() for k, v in params.items()}
  bufs = {}
  for step, grads in enumerate(grads_seq):
    for k in params:
      d = grads[k] + wd * params[k]
      bufs[k] = d.copy() if step == 0 else momentum * bufs[k] + d
      d = d + momentum * bufs[k]
      params[k] = params[k] - lrs[step] * (10.0 if group_of[k] == "head" else 1.0) * d
  return params


def test_head_at_ten_times_the_lr_equals_torch_sgd_parameter_groups():
  c = load("voc/tat.py", "student=resnet18")
  c.schedule.num_epochs = 1
  rng = np.random.default_rng(0)
  tree = {"student": {"backbone": {"conv": rng.normal(size=(3, 4))},
                      "aspp_head": {"conv": rng.normal(size=(2, 5))},
                      "decoder_head": {"bias": rng.normal(size=(3,))}},
          "method": {"query_conv": {"kernel": rng.normal(size=(4, 2))}}}
  flat = {"b": ("student", "backbone", "conv"), "a": ("student", "aspp_head", "conv"),
          "d": ("student", "decoder_head", "bias"), "m": ("method", "query_conv", "kernel")}
  get = lambda t, p: t[p[0]][p[1]][p[2]]  # noqa: E731
  tx, schedule = optim.create_optimizer(c, steps_per_epoch=5)
  params = jax.tree.map(jnp.asarray, tree)
  opt_state = tx.init(params)
  grads_seq = [jax.tree.map(lambda x: rng.normal(size=x.shape), tree) for _ in range(3)]
  for g in grads_seq:
    updates, opt_state = tx.update(jax.tree.map(jnp.asarray, g), opt_state, params)
    params = jax.tree.map(lambda p, u: p + u, params, updates)
  want = _torch_sgd_groups(
      {k: get(tree, p) for k, p in flat.items()},
      [{k: get(g, p) for k, p in flat.items()} for g in grads_seq],
      [float(schedule(i)) for i in range(3)],
      {"b": "backbone", "a": "head", "d": "head", "m": "embed"}, 0.9, 5e-4)
  for k, p in flat.items():
    np.testing.assert_allclose(np.asarray(get(params, p)), want[k], rtol=1e-5, atol=1e-6,
                               err_msg=k)


def test_head_multiplier_on_a_model_without_head_is_a_clear_error():
  c = load("voc/tat.py", "student=resnet18")
  c.model.name = "resnet8"
  with pytest.raises(ValueError, match="head_lr_multiplier=10.0.*'resnet8'.*accepted: 1.0"):
    optim.create_optimizer(c, 5)
  c.optim.head_lr_multiplier = 0.0
  c.model.init = ""
  with pytest.raises(ValueError, match="head_lr_multiplier=0.0"):
    train.validate_config(c, 1)
  c = load("voc/tat.py", "student=resnet18")
  c.model.init = "pretrained/no-such-file.pth"
  with pytest.raises(ValueError, match="no-such-file.pth"):
    train.validate_config(c, 1)


def test_task_mismatch_and_seeds_are_clear_errors(digits_data_dir, tmp_path):
  c = load("voc/teacher.py", "model=resnet18,runlocal")
  c.data.update(dict(name="digits", data_dir=digits_data_dir, image_size=32))
  c.num_devices = 1
  with pytest.raises(ValueError, match=r"model.name='deeplabv3p_resnet18' is a "
                     r"segmentation model but dataset 'digits' is a classification"):
    train.train_and_evaluate(c, str(tmp_path / "a"))
  assert not os.path.exists(tmp_path / "a")  # refused before the workdir was claimed
  c = load("voc/teacher.py", "model=resnet18,runlocal")
  c.seeds = (0, 1)
  with pytest.raises(ValueError, match=r"config.seeds=\(0, 1\) is not supported"):
    train.validate_config(c, 1)


def test_missing_voc_archives_are_one_clear_error_and_nothing_is_written(tmp_path):
  from afd_jax.datasets.availability import DatasetNotAvailableError
  c = load("voc/tat.py", "student=resnet18")
  c.update(dict(num_devices=8, batch_size=16))
  c.model.init = ""
  c.data.data_dir = str(tmp_path / "tfds")
  with pytest.raises(DatasetNotAvailableError,
                     match=r"'voc_aug'.*VOCtrainval_11-May-2012.tar.*downloads/manual"):
    train.train_and_evaluate(c, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")
