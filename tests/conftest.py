"""Shared test setup: 8 fake CPU devices (set before jax is imported anywhere)."""
import os
import tempfile

import pytest

import xla_test_flags

os.environ["XLA_FLAGS"] = " ".join((os.environ.get("XLA_FLAGS", ""),
                                   "--xla_force_host_platform_device_count=8",
                                   xla_test_flags.COMPILE_FLAGS)).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# One persistent compilation cache for the session: the many short runs of the same tiny
# model compile the same programs, which XLA then compiles once (CPU time, not results).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    tempfile.gettempdir(), f"afd_jax_test_xla_cache_{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


def _prepared(name: str, tmp_path_factory) -> str:
  """A fresh TFDS data_dir with this project's offline dataset `name` prepared."""
  # Imported lazily: test files that never use the data do not pay for TensorFlow.
  import tensorflow_datasets as tfds
  import afd_jax.datasets  # noqa: F401  (registers `digits`, `digits_seg`)

  data_dir = str(tmp_path_factory.mktemp(f"tfds_{name}"))
  tfds.builder(name, data_dir=data_dir).download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return data_dir


@pytest.fixture(scope="session")
def digits_data_dir(tmp_path_factory) -> str:
  """A TFDS data_dir with the offline `digits` dataset prepared (once per session)."""
  return _prepared("digits", tmp_path_factory)


@pytest.fixture(scope="session")
def digits_canvas_data_dir(tmp_path_factory) -> str:
  """A TFDS data_dir with the offline `digits_canvas` dataset prepared (once per session)."""
  return _prepared("digits_canvas", tmp_path_factory)


@pytest.fixture(scope="session")
def digits_seg_data_dir(tmp_path_factory) -> str:
  """A TFDS data_dir with the offline `digits_seg` dataset prepared (once per session)."""
  return _prepared("digits_seg", tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_run(digits_data_dir, tmp_path_factory) -> str:
  """The workdir of one finished `config_loading.tiny_config` run (8 steps, checkpoints 4
  and 8, best/), trained once per worker and shared by the files that need a finished run
  or a teacher. Never modified: a test that writes copies it first."""
  from afd_jax import train  # pylint: disable=g-import-not-at-top
  from config_loading import tiny_config  # pylint: disable=g-import-not-at-top
  wd = str(tmp_path_factory.mktemp("tiny_run"))
  assert train.train_and_evaluate(tiny_config(digits_data_dir), wd)["step"] == 8
  return wd
