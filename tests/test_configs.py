"""Configs: every file builds for every paper pair and in its `runlocal` form (shapes only:
`jax.eval_shape`), and method fields follow the method (own defaults, unknown fields
rejected, any field overridable).

What only a run shows is run elsewhere, once: every classification method's first step on
real models against its NumPy reference (test_method_steps.py), the quickstart suite
(test_notebook.py), the two-stage methods' init phase and CRD's memory bank through the
loop (test_two_stage_train.py), resume, multi-device and the AFD link hook (test_train.py,
test_reliability.py)."""
import functools
import os
import sys

from absl import flags
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from afd_jax import main, methods, train, train_state, transforms
from config_loading import CONFIG_FILES, load
from configs import pairs
from configs.transfer import transfer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES = {"cifar100": 100, "imagenet2012": 1000, "digits": 10,
               "caltech_birds2011": 200, "stanford_dogs": 120, "mit67": 67,
               "stanford40": 40}
DISTILL_FILES = ["cifar100/afd.py", "cifar100/baselines.py", "cifar100/tat.py",
                 "cifar100/aft_kd.py", "cifar100/hmat.py"]


# Segmentation configs: tests/test_seg_configs.py.
SEG_FILES = ["cocostuff10k/baselines.py", "cocostuff10k/tat.py", "cocostuff10k/teacher.py",
             "voc/baselines.py", "voc/tat.py", "voc/teacher.py", "seg_quickstart.py"]
CLASSIFICATION_FILES = [f for f in CONFIG_FILES if f not in SEG_FILES]


def test_every_config_file_is_known():
  assert CONFIG_FILES == sorted(DISTILL_FILES + SEG_FILES + [
      "cifar100/teacher.py", "imagenet/afd.py", "imagenet/tat.py", "imagenet/teacher.py",
      "quickstart.py", "transfer/transfer.py"])


def _build(config):
  return train_state.build_networks(config, NUM_CLASSES[config.data.name],
                                    steps_per_epoch=781)


def _check_method_builds(config, nets):
  """The method's module initialises and returns a scalar loss on the real features."""
  d = nets.distiller
  size = config.data.image_size
  s_info = train_state.feature_shapes(nets.student, size)
  t_info = train_state.feature_shapes(nets.teacher, size)
  s = [jax.ShapeDtypeStruct(s_info[n], jnp.float32) for n in d.student_features]
  t = [jax.ShapeDtypeStruct(t_info[n], jnp.float32) for n in d.teacher_features]
  k = NUM_CLASSES[config.data.name]
  logits, labels = jax.ShapeDtypeStruct((2, k), jnp.float32), jax.ShapeDtypeStruct(
      (2,), jnp.int32)
  index = {"index": jax.ShapeDtypeStruct((2,), jnp.int32)} if d.needs_index else {}
  # One trace: the train-mode objective as initialisation computes it.
  (loss, _), variables = jax.eval_shape(
      functools.partial(d.module.init_with_output, train=True),
      {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)},
      s, t, logits, logits, labels, **index)
  assert set(variables) <= {"params", "batch_stats", "method_state", "intermediates"}
  assert loss.shape == ()


@pytest.mark.parametrize("rel", DISTILL_FILES)
def test_distill_config_builds_for_every_cifar_pair(rel):
  built = []
  for pair in pairs.PAIRS["cifar100"]:
    config = load(rel, f"teacher={pair.teacher},student={pair.student}")
    assert (config.teacher.name, config.model.name) == (pair.teacher, pair.student)
    assert config.teacher.checkpoint == f"runs/cifar100/{pair.teacher}"
    assert config.data.name == "cifar100" and config.batch_size == 64
    assert config.schedule.num_epochs == 240
    # The AFD release decays at the start of 1-indexed epochs 150/180/210 (after 149,
    # 179, 209 finished), RepDistiller after 150, 180, 210 (tests/test_schedules.py).
    assert tuple(config.schedule.decay_epochs) == (
        (149, 179, 209) if rel == "cifar100/afd.py" else (150, 180, 210))
    assert config.optim.lr == (0.01 if pair.student in ("MobileNetV2", "ShuffleV1",
                                                        "ShuffleV2") else 0.05)
    try:
      nets = _build(config)
    except methods.PairingError as e:
      # Stage-paired methods on nets with different stage counts: the error says how.
      assert rel in ("cifar100/aft_kd.py", "cifar100/hmat.py"), e
      assert "config.method.student_stages" in str(e)
      continue
    assert nets.teacher is not None and nets.distiller.name == config.method.name
    _check_method_builds(config, nets)
    built.append(pair)
  assert len(built) >= len(pairs.PAIRS["cifar100"]) // 2, built


@pytest.mark.parametrize("rel", ["imagenet/afd.py", "imagenet/tat.py"])
def test_imagenet_configs_build(rel):
  config = load(rel)
  assert config.data.name == "imagenet2012"
  assert config.batch_size == (2048 if rel == "imagenet/tat.py" else 256)  # TaT: 8 × 256
  assert tuple(config.schedule.decay_epochs) == (30, 60, 90)
  _check_method_builds(config, _build(config))


@pytest.mark.parametrize("dataset", ["cub200", "dogs", "mit67", "stanford40"])
def test_transfer_configs_build_with_l2t_ww_schedule(dataset):
  for method in ("none", "at", "afd"):
    config = load("transfer/transfer.py", f"dataset={dataset},method={method}")
    assert config.data.name == transfer.DATASETS[dataset] and config.data.image_size == 224
    assert transforms.get_preprocessing(config.data.name).default_image_size == 224
    assert (config.batch_size, config.schedule.name, config.schedule.num_epochs) == (
        64, "cosine", 200)
    assert (config.optim.lr, config.optim.momentum, config.optim.weight_decay) == (
        0.1, 0.9, 1e-4)
    assert config.model.name == "resnet18_imagenet"
    nets = _build(config)
    if method == "none":
      assert nets.teacher is None and not config.teacher.name
      continue
    assert config.teacher.name == "resnet34_imagenet"
    # The ImageNet teacher as trained or imported: its 1000-class head is never used.
    assert config.teacher.checkpoint == "runs/imagenet2012/resnet34_imagenet"
    assert config.teacher.num_classes == 1000
    resolved = methods.resolve(config.method)
    assert resolved.kd_weight == 0.0 and resolved.ce_weight == 1.0  # features only
    assert set(config.method) == {"name", "kd_weight"}
    _check_method_builds(config, nets)
  with pytest.raises(ValueError, match="KD needs teacher logits over the target"):
    load("transfer/transfer.py", f"dataset={dataset},method=kd")


def test_method_defaults_are_the_published_ones():
  assert methods.resolve(load("cifar100/afd.py").method).beta == 200.0
  assert methods.resolve(load("imagenet/afd.py").method).beta == 50.0
  kd = methods.resolve(load("cifar100/baselines.py").method)
  assert (kd.ce_weight, kd.kd_weight, kd.temperature) == (0.1, 0.9, 4.0)
  at = methods.resolve(load("cifar100/baselines.py", "method=at").method)
  assert (at.beta, at.ce_weight, at.kd_weight) == (1000.0, 1.0, 0.0)
  tat = methods.resolve(load("imagenet/tat.py").method)
  # TaT's train_local.sh recipe: 0.1·CE + 0.2·L_TaT, no KD.
  assert (tat.ce_weight, tat.kd_weight, tat.weight) == (0.1, 0.0, 0.2)
  assert methods.resolve(load("cifar100/hmat.py").method).position_weight == 30.0
  assert methods.resolve(load("cifar100/hmat.py", "teacher=resnet56,student=resnet20")
                         .method).position_weight == 1.0
  # A config carries only overrides of the method's defaults.
  assert set(load("cifar100/afd.py").method) == {"name"}


def test_switching_method_on_the_command_line_gives_its_own_defaults():
  config = load("imagenet/afd.py")  # AFD with beta 50
  main.apply_method_overrides(config, [("", "name", "at")])
  assert set(config.method) == {"name"}
  at = methods.resolve(config.method)
  assert at.beta == 1000.0 and (at.ce_weight, at.kd_weight) == (1.0, 0.0)
  config = load("cifar100/tat.py")
  main.apply_method_overrides(config, [("", "beta", "7"), ("", "name", "fitnet")])
  assert methods.resolve(config.method).beta == 7.0  # the name applies first


def test_a_field_the_method_lacks_is_an_error_listing_its_fields():
  config = load("cifar100/baselines.py", "method=at")
  with pytest.raises(ValueError, match=r"'at' has no field.*'qk_dim'.*beta=1000\.0"):
    main.apply_method_overrides(config, [("", "qk_dim", "64")])
  with pytest.raises(ValueError, match=r"Unknown method 'atx'; accepted: .*afd"):
    main.apply_method_overrides(load("cifar100/afd.py"), [("", "name", "atx")])
  config = load("cifar100/afd.py")
  config.method.unlock()
  config.method.qk_dimm = 3  # a misspelt field written by a config file
  with pytest.raises(ValueError, match="qk_dimm"):
    train.validate_config(config, 1)


def test_every_method_field_is_overridable_though_the_file_did_not_write_it():
  config = load("cifar100/afd.py")
  main.apply_method_overrides(config, [
      ("", "temperature", "2"), ("", "qk_dim", "64"),
      ("", "student_features", "('stage1.block1', 'stage3.block2')")])
  afd = methods.resolve(config.method)
  assert (afd.temperature, afd.qk_dim) == (2.0, 64)
  assert afd.student_features == ("stage1.block1", "stage3.block2")
  config = load("cifar100/tat.py")
  main.apply_method_overrides(config, [("", "learnable_key", "true"),
                                       ("", "patch_grid", "(4,4)")])
  tat = methods.resolve(config.method)
  assert tat.learnable_key is True and tat.patch_grid == (4, 4)
  with pytest.raises(ValueError, match="qk_dim"):
    main.apply_method_overrides(load("cifar100/afd.py"), [("", "qk_dim", "wide")])
  # Suites: the method of one named run.
  suite = load("quickstart.py")
  main.apply_method_overrides(suite, [("runs.student_afd", "beta", "5")])
  assert methods.resolve(suite.runs.student_afd.method).beta == 5.0


def test_command_line_end_to_end(capsys, monkeypatch):
  """`--config.method.*` flags through the entry point's own flag parsing and `main.main`
  (`--print_config`), in this process: what `python -m afd_jax.main` runs."""
  monkeypatch.chdir(ROOT)
  # parse_flags rewrites sys.argv and prepends the repository to sys.path.
  monkeypatch.setattr(sys, "argv", list(sys.argv))
  monkeypatch.setattr(sys, "path", list(sys.path))
  monkeypatch.setattr(main, "_METHOD_OVERRIDES", [])
  argv = main.parse_flags([
      "afd_jax/main.py", "--config=configs/imagenet/afd.py", "--config.method.name=at",
      "--config.method.p=3", "--config.optim.lr=0.2", "--print_config"])
  try:
    main.main(argv)
  finally:
    flags.FLAGS.unparse_flags()  # the next parse starts from the defaults again
  out = capsys.readouterr().out
  method = ml_collections.ConfigDict(eval(out.split("RESOLVED_METHOD ")[1].strip()))
  assert methods.resolve(method).p == 3.0 and methods.resolve(method).beta == 1000.0
  assert "lr: 0.2" in out


# The CRD-benchmark baselines of cifar100/baselines.py (issue 9), in their runlocal form too.
BASELINES = ("sp", "cc", "pkt", "rkd", "nst", "vid", "dkd", "reviewkd", "semckd", "crd",
             "ab", "ft", "fsp")
RUNLOCAL = [(rel, None) for rel in CLASSIFICATION_FILES] + [
    ("cifar100/baselines.py", m) for m in BASELINES]


@pytest.mark.parametrize("rel,method", RUNLOCAL,
                         ids=[rel + (f"-{m}" if m else "") for rel, m in RUNLOCAL])
def test_runlocal_builds(rel, method):
  """Every config's seconds-long offline smoke form: valid, tiny, digits, and its models
  and method build on the real feature shapes (eval_shape: no compile, no run)."""
  # The file's own code path on small models (its default pair is built above):
  # distillation files on resnet14→resnet8, teachers as resnet8.
  if rel == "quickstart.py":
    arg = "runlocal"
  elif rel.endswith("teacher.py"):
    arg = "model=resnet8,runlocal"
  else:
    arg = "teacher=resnet14,student=resnet8,runlocal" + (f",method={method}" if method
                                                          else "")
  config = load(rel, arg)
  runs = [config.runs[n] for n in config.run_order] if "runs" in config else [config]
  for run in runs:
    assert run.data.name == "digits" and run.max_steps <= 2 * 4  # 4 steps per epoch
    assert run.data.num_train_examples <= 64 and not run.data.download
    train.validate_config(run, 1)
    if run.teacher.name:  # a random teacher, or the suite's own teacher run
      assert run.teacher.random_init or "runs" in config, run.teacher
    labels = np.arange(run.data.num_train_examples) % 10
    nets = train_state.build_networks(run, 10, steps_per_epoch=4, train_labels=labels)
    assert nets.distiller.name == run.method.name
    if nets.teacher is not None:
      _check_method_builds(run, nets)
