"""Whether a TFDS dataset is ready, preparing it when allowed, and errors saying how to
obtain it when it is not (manual downloads, offline machines)."""
from __future__ import annotations

import os
import socket

import tensorflow_datasets as tfds

from afd_jax import transforms
from afd_jax import datasets  # noqa: F401  (registers this project's builders)

# Built from data shipped with a package: always prepared.
LOCAL_DATASETS = ("digits", "digits_canvas", "digits_seg")
# TFDS looks here first for prepared datasets; if it is unreachable, so is the internet.
_PROBE_HOST, _PROBE_PORT, _PROBE_TIMEOUT_S = "storage.googleapis.com", 443, 5.0


class DatasetNotAvailableError(RuntimeError):
  """A dataset is neither prepared in its data_dir nor could be downloaded and prepared."""


def _obtain_hint(name: str, data_dir: str) -> str:
  """How a person gets dataset `name` into `data_dir`."""
  if transforms.base_name(name) == "imagenet2012":
    return (f"download ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar (registration "
            f"at https://image-net.org) into {data_dir}/downloads/manual/, then run "
            f"`tfds build imagenet2012 --data_dir={data_dir}`")
  if transforms.base_name(name) in datasets.MANUAL_DOWNLOADS:
    files, source = datasets.MANUAL_DOWNLOADS[transforms.base_name(name)]
    return (f"download {', '.join(files)} ({source}) into {data_dir}/downloads/manual/, "
            f"then rerun with config.data.download=True (it prepares offline from them)")
  return (f"run `tfds build {name} --data_dir=<dir>` on a machine with internet access "
          f"and copy <dir>/{transforms.base_name(name)} into {data_dir} (or set "
          f"config.data.download=True on a machine with internet access)")


def _network_reachable() -> bool:
  """Whether TFDS's host answers; without it TFDS retries each URL for ~200 s offline."""
  if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
    return True  # through a proxy a direct connection proves nothing: let TFDS try
  try:
    socket.create_connection((_PROBE_HOST, _PROBE_PORT), timeout=_PROBE_TIMEOUT_S).close()
    return True
  except OSError:
    return False


def ensure_prepared(builder: tfds.core.DatasetBuilder, name: str, download: bool) -> None:
  """Prepares `builder` if needed and allowed; else raises DatasetNotAvailableError."""
  if builder.is_prepared():
    return
  data_dir = os.fspath(builder.data_dir_root)
  if transforms.base_name(name) in LOCAL_DATASETS:
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return
  online = download and _network_reachable()
  # Datasets whose archives a person downloads by hand (ImageNet) prepare offline.
  manual = bool(builder.MANUAL_DOWNLOAD_INSTRUCTIONS)
  if not download:
    cause = "it is not prepared there and config.data.download is False"
  elif not (online or manual):
    cause = f"it is not prepared there and there is no network ({_PROBE_HOST} unreachable)"
  else:
    try:
      builder.download_and_prepare(
          download_config=tfds.download.DownloadConfig(try_download_gcs=online))
      return
    except Exception as e:  # any failure of TFDS's download/prepare means the same to us
      raise DatasetNotAvailableError(
          f"Dataset {name!r} is not available in data_dir {data_dir!r}: download and "
          f"prepare failed with {type(e).__name__}: {str(e).rstrip('.')}. To obtain it, "
          f"{_obtain_hint(name, data_dir)}.") from e
  raise DatasetNotAvailableError(
      f"Dataset {name!r} is not available in data_dir {data_dir!r}: {cause}. To obtain "
      f"it, {_obtain_hint(name, data_dir)}.")
