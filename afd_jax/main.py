"""Entry point: ``python -m afd_jax.main --config=configs/<file>.py[:args] --workdir=runs/<name>``.

Any config field can be overridden, e.g. ``--config.optim.lr=0.1 --config.seed=1``. The
fields of the chosen method are overridden the same way, whether or not the config file
wrote them (``--config.method.beta=100``); switching ``--config.method.name`` gives the new
method its own defaults (the file's fields for its method are dropped, with a warning), and
a field the method does not have is an error listing the ones it has.

Several runs are a plan (`afd_jax.plan`): ``--config.seeds=0,1,2`` (one run per seed),
``--config.sweep.method.beta=50,100,200`` (one run per value; any scalar field, several
sweeps multiply), or a config with a ``runs`` section (a suite such as
``configs/quickstart.py``). Every run is validated before any trains; each trains in its
own workdir under ``--workdir``, and a results table is printed and written there.
``--config.vmap_seeds=True`` trains runs differing only in seed or numeric
hyperparameters as one vmapped program (`afd_jax.group`).

Several processes: ``jax.distributed.initialize()`` is called when the environment shows
several processes (SLURM, Open MPI, TPU pod slices), when ``--coordinator_address``,
``--num_processes`` and ``--process_id`` are given (or ``JAX_COORDINATOR_ADDRESS``,
``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``), or always with ``--distributed=on``.

Every mistake (an unknown config field or file, a value out of range, a missing dataset or
teacher, an unwritable workdir, a full disk) ends with one ``error: ...`` line on stderr,
exit status 1, and leaves nothing that blocks the corrected command; SIGINT / SIGTERM stop
after saving the step reached, with status 130 / 143. A full disk leaves no unfinished
checkpoint behind: the same command resumes once space is freed.
"""
from __future__ import annotations

import errno
import logging as std_logging
import os
import re
import signal
import sys
from typing import NoReturn

from absl import app
from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags

from afd_jax import faults

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and logs.")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", ["auto", "on", "off"],
    "Call jax.distributed.initialize(): when the environment shows several processes "
    "(auto), always (on) or never (off).")
_COORDINATOR_ADDRESS = flags.DEFINE_string(
    "coordinator_address", None,
    "host:port of process 0 in a multi-process run launched by hand (ssh, Kubernetes), "
    "with --num_processes and --process_id; else JAX_COORDINATOR_ADDRESS. Not needed "
    "under SLURM, Open MPI or on a TPU pod.")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Number of processes of that run (else JAX_NUM_PROCESSES).")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "This process's id in 0..num_processes-1 (else JAX_PROCESS_ID).")
_PRINT_CONFIG = flags.DEFINE_bool("print_config", False,
                                  "Print the resolved config and exit without training.")
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False,
    "Continue a workdir's run with a config that differs in fields that change the result "
    "(recorded in the workdir's config_history.jsonl). Without it that is an error.")

# --config.<path.>method.<field>=<value>: handled here, typed by the chosen method.
_METHOD_FLAG = re.compile(r"^--config\.((?:\w+\.)*)method\.(\w+)=(.*)$", re.S)
# --config.sweep.<field path>=<v1>,<v2>,...: one plan axis (`afd_jax.plan`).
_SWEEP_FLAG = re.compile(r"^--config\.sweep\.([\w.]+)=(.*)$", re.S)


def split_sweep_flags(argv: list[str]) -> tuple[list[str], dict[str, str]]:
  """Separates ``--config.sweep.<path>=<values>`` from the other arguments.

  Returns:
    (other arguments, {config path: comma-separated values}).
  """
  rest, sweeps = [], {}
  for arg in argv:
    match = _SWEEP_FLAG.match(arg)
    if match:
      sweeps[match.group(1)] = match.group(2)
    else:
      rest.append(arg)
  return rest, sweeps


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
_SWEEPS: dict[str, str] = {}


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with method fields split off first (`split_method_flags`)."""
  # Config files import `configs.common`: make the repository root importable.
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  rest, sweeps = split_sweep_flags(argv)
  _SWEEPS.clear()
  _SWEEPS.update(sweeps)
  rest, _METHOD_OVERRIDES[:] = split_method_flags(rest)
  sys.argv[:] = rest  # config_flags reads its overrides from sys.argv itself
  try:
    _check_config_file(rest)
    return flags.FLAGS(rest)
  except KeyboardInterrupt:
    fail("interrupted (SIGINT) while starting; nothing was written", 128 + signal.SIGINT)
  except (flags.Error, KeyError, AttributeError, TypeError, ValueError, OSError) as e:
    fail(_flag_error(e, rest))


def fail(message: str, code: int = 1) -> NoReturn:
  """Prints ``error: <message>`` as the last line (no traceback) and exits with `code`."""
  sys.stdout.flush()
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(code)


def _check_config_file(argv: list[str]) -> None:
  """A ``--config`` file that does not exist: an error naming it (absl's says it in 30
  lines of traceback)."""
  for i, arg in enumerate(argv):
    value = (arg.split("=", 1)[1] if arg.startswith("--config=") else
             argv[i + 1] if arg == "--config" and i + 1 < len(argv) else None)
    if value is not None:
      path = value.split(":", 1)[0]
      if not os.path.isfile(path):
        raise OSError(errno.ENOENT, f"config file {path!r} does not exist (relative paths "
                      f"are read from {os.getcwd()}); accepted: a file such as "
                      "configs/quickstart.py, configs/cifar100/teacher.py[:args]")


_DID_YOU_MEAN = re.compile(r'Did you mean "([^"]+)"')


def _flag_error(e: BaseException, argv: list[str]) -> str:
  """One line for a flag that failed to parse: an unknown config field named by its full
  path (with ml_collections' suggestion), else the flag library's message."""
  if isinstance(e, OSError) and e.filename is None and e.strerror:
    return e.strerror
  text = str(e.args[0]) if isinstance(e, (KeyError, AttributeError)) and e.args else str(e)
  key = (re.search(r'instead of "(\w+)"', text)
         or re.match(r"""^[\\'"]*(\w+)""", text))
  if isinstance(e, (KeyError, AttributeError)) and key:
    for arg in argv:
      match = re.match(r"^--config\.([\w.]+)", arg)
      parts = match.group(1).split(".") if match else []
      if key.group(1) in parts:
        field = ".".join(parts[:parts.index(key.group(1)) + 1])
        hint = _DID_YOU_MEAN.search(text)
        return (f"unknown field {field}" + (f"; did you mean {hint.group(1)}" if hint
                                           else "") + f" (in {arg.split('=', 1)[0]})")
  return " ".join(text.split())


def main(argv):
  """`_main` with every failure reported as one ``error:`` line (see `fail`)."""
  try:
    _main(argv)
  except KeyboardInterrupt:  # before the loop's handler is installed, or a second Ctrl-C
    fail("interrupted (SIGINT); what was saved is kept: rerun the same command to resume",
         128 + signal.SIGINT)
  except OSError as e:  # a full disk, an unwritable workdir: no traceback either
    logging.debug("", exc_info=True)
    what = (f"{e.strerror}" + (f": {e.filename}" if e.filename else "")
            if e.strerror else f"{type(e).__name__}: {e}")
    if e.errno == errno.ENOSPC and "rerun" not in what:
      what += " (free some space and rerun the same command to resume; the checkpoints " \
              "saved before are kept)"
    fail(what)


def _main(argv):
  if len(argv) > 1:
    fail(f"unexpected arguments: {argv[1:]}")
  faults.inject("startup", 0)  # test hook (AFD_JAX_INJECT): before jax is imported
  logging.get_absl_handler().addFilter(_quiet_libraries)
  config = _CONFIG.value
  try:
    apply_method_overrides(config, _METHOD_OVERRIDES)
  except ValueError as e:
    fail(str(e))
  # Imports jax / TF: after parsing.
  from afd_jax import checkpointing, methods, parallel, plan, plan_results
  from afd_jax.datasets.availability import DatasetNotAvailableError
  if _PRINT_CONFIG.value:
    print(config)
    if "method" in config:
      print("RESOLVED_METHOD", methods.resolved_fields(config.method))
    return
  if not _WORKDIR.value:
    fail("--workdir is required: the directory of the run's checkpoints and logs")
  try:
    parallel.maybe_initialize_distributed(_DISTRIBUTED.value, _COORDINATOR_ADDRESS.value,
                                          _NUM_PROCESSES.value, _PROCESS_ID.value)
    the_plan = plan.from_config(config, _SWEEPS)
    result = plan.run_plan(the_plan, _WORKDIR.value, _ALLOW_CONFIG_CHANGE.value)
    if the_plan.single and parallel.is_chief():
      print(plan_results.format_result(_WORKDIR.value, result))
  except faults.Preempted as e:
    print(f"Preempted: {e}; rerun the same command to resume.", file=sys.stderr)
    sys.exit(128 + e.signum)
  except (ValueError, checkpointing.CheckpointError, DatasetNotAvailableError,
          faults.Diverged) as e:
    # The error is the last thing printed: no traceback through jax / orbax / TFDS.
    logging.debug("", exc_info=True)
    fail(str(e))


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
