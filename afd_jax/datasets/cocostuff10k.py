"""TFDS builder `cocostuff10k`: COCO-Stuff 10k v1.1 (Caesar et al., CVPR 2018).

10,000 COCO images with pixel-wise thing + stuff labels; splits from the archive's
``imageLists/train.txt`` (9,000) and ``imageLists/test.txt`` (1,000). Labels are ``S`` of
``annotations/<id>.mat``, ids 0..182 with 0 = unlabeled; as in the TaT segmentation release
(its `CocoStuff10k._load_data`: ``label -= 1``, -1 -> 255) id ``k`` becomes class ``k - 1``
and 0 becomes 255 (ignore): 182 classes (ids 0..181; 11 of the 91 thing ids are never used
by COCO, the release keeps their slots). The zip is read in place.
"""
from __future__ import annotations

import io
import os
import zipfile
from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds

from afd_jax.datasets import segmentation

ARCHIVE = "cocostuff-10k-v1.1.zip"
MANUAL_FILES = (ARCHIVE,)
SOURCE = "https://github.com/nightrome/cocostuff10k"
NUM_CLASSES = 182
_UNLABELED = 0


def map_labels(s: np.ndarray, where: str) -> np.ndarray:
  """COCO-Stuff ids (0 = unlabeled, 1..182) -> uint8 class ids (0..181, 255 = ignore).

  Raises:
    ValueError: an id outside 0..182.
  """
  s = np.asarray(s).astype(np.int64)
  bad = (s < 0) | (s > NUM_CLASSES)
  if bad.any():
    raise ValueError(f"{where}: label value {int(s[bad].flat[0])} is outside the "
                     f"COCO-Stuff ids 0..{NUM_CLASSES}")
  return np.where(s == _UNLABELED, segmentation.IGNORE_LABEL, s - 1).astype(np.uint8)


class _Archive:
  """The zip's images/, annotations/ and imageLists/ files, by folder and file name (the
  folders may sit below a top folder)."""

  def __init__(self, path: str):
    self.path = path
    self._zip = zipfile.ZipFile(path)
    self._names = {}
    for name in self._zip.namelist():
      parts = name.replace("\\", "/").split("/")
      if len(parts) >= 2 and parts[-1]:
        self._names[(parts[-2], parts[-1])] = name

  def read(self, folder: str, file: str) -> bytes:
    name = self._names.get((folder, file))
    if name is None:
      raise ValueError(f"{self.path} has no {folder}/{file}")
    return self._zip.read(name)

  def ids(self, split: str) -> list[str]:
    text = self.read("imageLists", f"{split}.txt").decode("utf-8")
    return [l.strip() for l in text.splitlines() if l.strip()]

  def example(self, i: str) -> dict:
    import scipy.io  # pylint: disable=g-import-not-at-top
    where = f"{self.path}: annotations/{i}.mat"
    s = scipy.io.loadmat(io.BytesIO(self.read("annotations", f"{i}.mat")))["S"]
    return segmentation.example(i, self.read("images", f"{i}.jpg"), map_labels(s, where),
                                NUM_CLASSES, where)

  def close(self):
    self._zip.close()


class Cocostuff10k(tfds.core.GeneratorBasedBuilder):
  """COCO-Stuff 10k, 9,000 / 1,000 train / test, 182 classes."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
  Download {ARCHIVE} (2 GB; {SOURCE}, e.g.
  http://calvin.inf.ed.ac.uk/wp-content/uploads/data/cocostuffdataset/{ARCHIVE})
  into <data_dir>/downloads/manual/.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return segmentation.dataset_info(
        self, __doc__, SOURCE,
        "Caesar et al., COCO-Stuff: Thing and Stuff Classes in Context, CVPR 2018.",
        num_classes=NUM_CLASSES)

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual = os.fspath(dl_manager.manual_dir)
    path = os.path.join(manual, ARCHIVE)
    if not os.path.exists(path):
      raise FileNotFoundError(f"missing {ARCHIVE} in {manual}")
    return {split: self._generate_examples(path, split) for split in ("train", "test")}

  def _generate_examples(self, path: str, split: str) -> Iterator[tuple[str, dict]]:
    """Yields (image id, example) of the ids `imageLists/<split>.txt` names."""
    archive = _Archive(path)
    try:
      for i in archive.ids(split):
        yield i, archive.example(i)
    finally:
      archive.close()
