"""Entry point: ``python -m afd_jax.main --config=configs/<file>.py[:args] --workdir=runs/<name>``.

Any config field can be overridden, e.g. ``--config.optim.lr=0.1 --config.seed=1``. The
fields of the chosen method are overridden the same way, whether or not the config file
wrote them (``--config.method.beta=100``); switching ``--config.method.name`` gives the new
method its own defaults (the file's fields for its method are dropped, with a warning), and
a field the method does not have is an error listing the ones it has. A config with a
``runs`` section (an experiment suite such as ``configs/quickstart.py``) trains its runs
in order under the workdir and prints a results table.

Several processes (TPU pod slices, SLURM): ``jax.distributed.initialize()`` is called when
the environment shows several processes, or always with ``--distributed=on``.
"""
from __future__ import annotations

import logging as std_logging
import os
import re
import sys

from absl import app
from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and logs.")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", ["auto", "on", "off"],
    "Call jax.distributed.initialize(): when the environment shows several processes "
    "(auto), always (on) or never (off).")
_PRINT_CONFIG = flags.DEFINE_bool("print_config", False,
                                  "Print the resolved config and exit without training.")
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False,
    "Continue a workdir's run with a config that differs in fields that change the result "
    "(recorded in the workdir's config_history.jsonl). Without it that is an error.")

# --config.<path.>method.<field>=<value>: handled here, typed by the chosen method.
_METHOD_FLAG = re.compile(r"^--config\.((?:\w+\.)*)method\.(\w+)=(.*)$", re.S)


def split_method_flags(argv: list[str]) -> tuple[list[str], list[tuple[str, str, str]]]:
  """Separates the method-field overrides from the other arguments.

  Returns:
    (other arguments, [(path of the section holding ``method``, field, text)]).
  """
  rest, overrides = [], []
  for arg in argv:
    match = _METHOD_FLAG.match(arg)
    if match:
      overrides.append((match.group(1).rstrip("."), match.group(2), match.group(3)))
    else:
      rest.append(arg)
  return rest, overrides


def apply_method_overrides(config: ml_collections.ConfigDict,
                           overrides: list[tuple[str, str, str]]) -> None:
  """Applies `split_method_flags` overrides to `config` in place.

  A ``name`` override replaces the method section by ``{'name': new}`` (the file's fields
  belonged to the other method); each other field is parsed to the method's type.

  Raises:
    ValueError: an unknown method or field (listing the accepted ones), or a value that
      does not parse.
  """
  from afd_jax import methods  # after flag parsing: keeps `--help` fast
  for path, field, text in sorted(overrides, key=lambda o: o[1] != "name"):
    parent = config
    for key in filter(None, path.split(".")):
      parent = parent[key]
    with parent.unlocked():
      section = parent.method
      if field == "name":
        dropped = sorted(k for k in section if k != "name")
        if text != section.name and dropped:
          logging.warning("method %s -> %s: dropping %s's fields %s", section.name, text,
                          section.name, dropped)
        parent.method = ml_collections.ConfigDict({"name": text})
        methods.resolve(parent.method)  # unknown name: lists the accepted ones
      else:
        with section.unlocked():
          section[field] = methods.parse_field(section.name, field, text)


def _quiet_libraries(record) -> bool:
  """Keeps our INFO lines and every library's warnings; drops libraries' INFO chatter."""
  return record.levelno >= std_logging.WARNING or "afd_jax" in record.pathname


_METHOD_OVERRIDES: list[tuple[str, str, str]] = []


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with method fields split off first (`split_method_flags`)."""
  # Config files import `configs.common`: make the repository root importable.
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  rest, _METHOD_OVERRIDES[:] = split_method_flags(argv)
  sys.argv[:] = rest  # config_flags reads its overrides from sys.argv itself
  return flags.FLAGS(rest)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(_quiet_libraries)
  config = _CONFIG.value
  try:
    apply_method_overrides(config, _METHOD_OVERRIDES)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  # Imports jax / TF: after parsing.
  from afd_jax import checkpointing, methods, parallel, suite, train
  from afd_jax.datasets.availability import DatasetNotAvailableError
  if _PRINT_CONFIG.value:
    print(config)
    if "method" in config:
      print("RESOLVED_METHOD", methods.resolved_fields(config.method))
    return
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required")
  parallel.maybe_initialize_distributed(_DISTRIBUTED.value)
  try:
    if "runs" in config:
      suite.run_suite(config, _WORKDIR.value, _ALLOW_CONFIG_CHANGE.value)
    else:
      result = train.train_and_evaluate(config, _WORKDIR.value, _ALLOW_CONFIG_CHANGE.value)
      if parallel.is_chief():
        print(suite.format_result(_WORKDIR.value, result))
  except train.Preempted as e:
    print(f"Preempted: {e}; rerun the same command to resume.", file=sys.stderr)
    sys.exit(128 + e.signum)
  except (ValueError, checkpointing.CheckpointError, DatasetNotAvailableError,
          train.Diverged) as e:
    # The error is the last thing printed: no traceback through jax / orbax / TFDS.
    logging.debug("", exc_info=True)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
