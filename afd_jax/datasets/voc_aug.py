"""TFDS builder `voc_aug`: PASCAL VOC 2012 segmentation + SBD, the "train_aug" split.

21 classes (background + 20 objects), 255 = ignore (VOC's object boundaries). Splits, as
the TaT segmentation release builds them (its `combine_dbs.CombineDBs`):

* ``train`` (10,582): VOC ``ImageSets/Segmentation/train.txt`` ∪ SBD ``train.txt`` ∪ SBD
  ``val.txt``, minus VOC ``val.txt``; an id in both VOC train and SBD keeps VOC's image
  and annotation (the union takes each id from the first list that has it).
* ``validation`` (1,449): VOC ``val.txt``.

VOC labels are the palette indices of ``SegmentationClass/<id>.png``; SBD's are
``GTcls.Segmentation`` of ``dataset/cls/<id>.mat`` (read with scipy.io), images
``dataset/img/<id>.jpg``. The uncompressed VOC tar is read in place; SBD's gzipped tar is
extracted once into ``<data_dir>/downloads/extracted`` (a .tgz cannot be read out of order).
"""
from __future__ import annotations

import io
import os
import tarfile
from typing import Iterator

import tensorflow_datasets as tfds

from afd_jax.datasets import segmentation

VOC_ARCHIVE, SBD_ARCHIVE = "VOCtrainval_11-May-2012.tar", "benchmark.tgz"
MANUAL_FILES = (VOC_ARCHIVE, SBD_ARCHIVE)
SOURCE = ("http://host.robots.ox.ac.uk/pascal/VOC/voc2012/ and "
          "http://home.bharathh.info/pubs/codes/SBD/download.html")
NUM_CLASSES = 21


def read_ids(text: str) -> list[str]:
  """An image-set list (one id a line) -> ids in order."""
  return [line.strip() for line in text.splitlines() if line.strip()]


def union_ids(voc_train: list[str], sbd_lists: list[list[str]],
              excluded: list[str]) -> list[tuple[str, str]]:
  """The release's train_aug rule: ``[(id, 'voc' | 'sbd')]`` of VOC train ∪ SBD lists
  minus `excluded`, in first-seen order, each id from the first source listing it."""
  out, seen, skip = [], set(), set(excluded)
  for source, ids in [("voc", voc_train)] + [("sbd", l) for l in sbd_lists]:
    for i in ids:
      if i not in seen and i not in skip:
        seen.add(i)
        out.append((i, source))
  return out


class _VocTar:
  """Random access to the VOC2012 files of the (uncompressed) trainval tar."""

  def __init__(self, path: str):
    self.path = path
    self._tar = tarfile.open(path)
    # Keyed by the path below 'VOC2012/' (the archive holds VOCdevkit/VOC2012/...).
    self._members = {m.name.replace("\\", "/").split("VOC2012/", 1)[-1]: m
                     for m in self._tar.getmembers() if m.isfile()}

  def read(self, name: str) -> bytes:
    member = self._members.get(name)
    if member is None:
      raise ValueError(f"{self.path} has no VOC2012/{name}")
    return self._tar.extractfile(member).read()

  def ids(self, split: str) -> list[str]:
    return read_ids(self.read(f"ImageSets/Segmentation/{split}.txt").decode("utf-8"))

  def example(self, i: str) -> dict:
    image = self.read(f"JPEGImages/{i}.jpg")
    where = f"{self.path}: VOC2012/SegmentationClass/{i}.png"
    label = segmentation.indexed_png(self.read(f"SegmentationClass/{i}.png"), where)
    return segmentation.example(i, image, label, NUM_CLASSES, where)

  def close(self):
    self._tar.close()


def sbd_dataset_dir(root: str) -> str:
  """The ``dataset`` folder (train.txt, val.txt, img/, cls/) of extracted benchmark.tgz."""
  for candidate in (os.path.join(root, "benchmark_RELEASE", "dataset"),
                    os.path.join(root, "dataset")):
    if os.path.exists(os.path.join(candidate, "train.txt")):
      return candidate
  raise ValueError(f"{SBD_ARCHIVE} (extracted to {root}) has no "
                   "benchmark_RELEASE/dataset/train.txt")


def sbd_example(dataset_dir: str, i: str) -> dict:
  """Image ``img/<id>.jpg`` and label ``cls/<id>.mat`` (GTcls.Segmentation) of SBD."""
  import scipy.io  # pylint: disable=g-import-not-at-top
  mat = os.path.join(dataset_dir, "cls", f"{i}.mat")
  jpg = os.path.join(dataset_dir, "img", f"{i}.jpg")
  for path in (mat, jpg):
    if not os.path.exists(path):
      raise ValueError(f"{SBD_ARCHIVE}: {path} is missing (listed in its split lists)")
  with open(mat, "rb") as f:
    # GTcls is a 1x1 struct; Segmentation its (H, W) uint8 class map.
    label = scipy.io.loadmat(io.BytesIO(f.read()))["GTcls"][0]["Segmentation"][0]
  with open(jpg, "rb") as f:
    image = f.read()
  return segmentation.example(i, image, label, NUM_CLASSES, f"{mat} / {jpg}")


class VocAug(tfds.core.GeneratorBasedBuilder):
  """PASCAL VOC 2012 + SBD segmentation (train_aug 10,582 / val 1,449), 21 classes."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
  Download into <data_dir>/downloads/manual/ these two files:
  {VOC_ARCHIVE} (PASCAL VOC 2012 trainval, 2 GB; http://host.robots.ox.ac.uk/pascal/VOC/
  voc2012/{VOC_ARCHIVE}) and {SBD_ARCHIVE} (the Semantic Boundaries Dataset, 1.4 GB;
  http://home.bharathh.info/pubs/codes/SBD/download.html).
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return segmentation.dataset_info(
        self, __doc__, SOURCE,
        "Everingham et al., The PASCAL Visual Object Classes Challenge, IJCV 2010; "
        "Hariharan et al., Semantic Contours from Inverse Detectors, ICCV 2011.",
        num_classes=NUM_CLASSES)

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual = os.fspath(dl_manager.manual_dir)
    missing = [f for f in MANUAL_FILES if not os.path.exists(os.path.join(manual, f))]
    if missing:
      raise FileNotFoundError(f"missing {', '.join(missing)} in {manual}")
    voc_path = os.path.join(manual, VOC_ARCHIVE)
    sbd_dir = sbd_dataset_dir(os.fspath(dl_manager.extract(os.path.join(manual, SBD_ARCHIVE))))
    return {"train": self._generate_examples(voc_path, sbd_dir, "train"),
            "validation": self._generate_examples(voc_path, sbd_dir, "validation")}

  def _generate_examples(self, voc_path: str, sbd_dir: str,
                         split: str) -> Iterator[tuple[str, dict]]:
    """Yields (image id, example) of `split`."""
    voc = _VocTar(voc_path)
    try:
      val = voc.ids("val")
      if split == "validation":
        chosen = [(i, "voc") for i in val]
      else:
        sbd = []
        for name in ("train", "val"):  # the release's sorted ['train', 'val']
          with open(os.path.join(sbd_dir, f"{name}.txt"), encoding="utf-8") as f:
            sbd.append(read_ids(f.read()))
        chosen = union_ids(voc.ids("train"), sbd, excluded=val)
      for i, source in chosen:
        yield i, voc.example(i) if source == "voc" else sbd_example(sbd_dir, i)
    finally:
      voc.close()
