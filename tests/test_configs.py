"""Every experiment config loads, resolves its models and method, and pairs its features."""
import importlib.util
import pathlib

import pytest

from afd_jax import models, train

ROOT = pathlib.Path(__file__).resolve().parents[1] / "configs"
CONFIG_FILES = sorted(str(p.relative_to(ROOT)) for p in ROOT.rglob("*.py"))
NUM_CLASSES = {"cifar100": 100, "imagenet2012": 1000, "digits": 10}


def load(rel: str, arg=None):
  spec = importlib.util.spec_from_file_location("cfg_" + rel.replace("/", "_")[:-3],
                                                ROOT / rel)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config() if arg is None else module.get_config(arg)


def check_buildable(config):
  assert config.model.name in models.MODEL_NAMES
  nets = train.build_networks(config, NUM_CLASSES[config.data.name], steps_per_epoch=10)
  if config.method.name != "none":
    assert config.teacher.name in models.MODEL_NAMES and config.teacher.checkpoint
    assert nets.teacher is not None and nets.distiller.name == config.method.name
  return nets


def test_configs_found():
  assert len(CONFIG_FILES) > 50 and "quickstart.py" in CONFIG_FILES


@pytest.mark.parametrize("rel", CONFIG_FILES)
def test_config_builds(rel):
  config = load(rel)
  if "runs" in config:  # a suite: every run must build
    for name in config.run_order:
      check_buildable(config.runs[name])
    return
  nets = check_buildable(config)
  if config.data.name == "cifar100":
    assert config.optim.lr in (0.05, 0.01) and tuple(config.schedule.decay_epochs) == (
        150, 180, 210) and config.schedule.num_epochs == 240 and config.batch_size == 64
  if config.data.name == "imagenet2012":
    assert config.batch_size == 256 and tuple(config.schedule.decay_epochs) == (30, 60, 90)
  assert nets.student is not None


def test_quickstart_method_variants_and_bad_name():
  config = load("quickstart.py", "kd,afd,tat,aft_kd,hmat")
  assert list(config.run_order) == ["teacher", "student", "student_kd", "student_afd",
                                    "student_tat", "student_aft_kd", "student_hmat"]
  for name in config.run_order[2:]:
    assert config.runs[name].teacher.checkpoint == "{workdir}/teacher"
  with pytest.raises(ValueError, match=r"'nope'.*accepted"):
    load("quickstart.py", "kd,nope")
