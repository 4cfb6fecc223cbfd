"""The tests' one way to load experiment configs and to make tiny training configs."""
import importlib
import pathlib

import ml_collections

from configs import common

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
CONFIG_FILES = sorted(str(p.relative_to(CONFIGS)) for p in CONFIGS.rglob("*.py")
                      if p.name != "__init__.py" and p.parent != CONFIGS or
                      p.name.endswith("quickstart.py"))


def load(rel: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """``get_config(arg)`` of ``configs/<rel>`` (e.g. ``'cifar100/afd.py'``)."""
  module = importlib.import_module("configs." + rel[:-3].replace("/", "."))
  return module.get_config(arg)


def tiny_config(data_dir, model="resnet8", **overrides) -> ml_collections.ConfigDict:
  """digits, 64 training images, batch 16 -> 4 steps per epoch, 2 epochs, 1 device."""
  c = common.digits()
  c.data.data_dir = data_dir
  c.data.num_train_examples = 64
  c.model.name = model
  c.batch_size = 16
  c.eval_batch_size = 120
  c.num_devices = 1
  c.schedule.num_epochs = 2
  c.logging.update(dict(log_every_steps=2, progress_bar=False, keep_checkpoints=3))
  for k, v in overrides.items():
    c[k] = v
  return c


def distill(c, teacher_dir, method="kd", teacher="resnet8", **fields):
  """`c` distilled with `method` from the teacher run in `teacher_dir`."""
  c.teacher.name = teacher
  c.teacher.checkpoint = teacher_dir
  c.method = ml_collections.ConfigDict(dict(name=method, **fields))
  return c


def tiny_device_setup():
  """(networks, sampler, data) of `tiny_config` on the device path: 40 random uint8 images."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from afd_jax import device_data, train_state  # pylint: disable=g-import-not-at-top

  nets = train_state.build_networks(tiny_config(None), 10, steps_per_epoch=2)
  sampler = device_data.Sampler(num_examples=40, batch_size=16, mean=(0.5,) * 3,
                                std=(0.25,) * 3)
  rng = np.random.default_rng(0)
  data = {"image": jnp.asarray(rng.integers(0, 256, (40, 32, 32, 3)), jnp.uint8),
          "label": jnp.asarray(rng.integers(0, 10, 40), jnp.int32)}
  return nets, sampler, data


def run_main(config, wd, capfd):
  """`afd_jax.main.main` in this process on `config` (flags set, not parsed again): the
  command's exit code and stderr without a subprocess's seconds of imports.

  Returns:
    (exit code, stderr).
  """
  from absl import flags  # pylint: disable=g-import-not-at-top

  from afd_jax import main  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS(["afd_jax.main"])
  flags.FLAGS["config"].value = config
  flags.FLAGS["workdir"].value = str(wd)
  main._METHOD_OVERRIDES[:] = []  # pylint: disable=protected-access
  main._SWEEPS.clear()  # pylint: disable=protected-access
  capfd.readouterr()
  try:
    main.main(["afd_jax.main"])
    code = 0
  except SystemExit as e:
    code = e.code
  finally:
    flags.FLAGS.unparse_flags()  # the next parse starts from the defaults again
  return code, capfd.readouterr().err
