"""Entry point: ``python -m afd_jax.main --config=configs/<file>.py --workdir=runs/<name>``.

Any config field can be overridden, e.g. ``--config.optim.lr=0.1 --config.seed=1``. A config
with a ``runs`` section (an experiment suite such as ``configs/quickstart.py``) trains its
runs in order under the workdir and prints a results table.
"""
import logging as std_logging

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from afd_jax import suite, train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and logs.")
flags.mark_flags_as_required(["config", "workdir"])


def _quiet_libraries(record) -> bool:
  """Keeps our INFO lines and every library's warnings; drops libraries' INFO chatter."""
  return record.levelno >= std_logging.WARNING or "afd_jax" in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(_quiet_libraries)
  logging.info("JAX devices: %s", jax.devices())
  config = _CONFIG.value
  if "runs" in config:
    suite.run_suite(config, _WORKDIR.value)
  else:
    result = train.train_and_evaluate(config, _WORKDIR.value)
    print(suite.format_result(_WORKDIR.value, result))


if __name__ == "__main__":
  app.run(main)
