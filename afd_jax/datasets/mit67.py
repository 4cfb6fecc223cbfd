"""TFDS builder `mit67`: MIT Indoor-67 scene recognition (Quattoni & Torralba, CVPR 2009).

67 indoor scene categories; the official split lists 80 training and 20 test images per
category (5,360 / 1,340), the split of L2T-ww and AFD's transfer experiments. The images
come from the manually downloaded archive; `_split_generators` reads it in place (no
extraction). Labels are the category names in sorted order.
"""
from __future__ import annotations

import os
from typing import Iterator

import tensorflow_datasets as tfds

from afd_jax.datasets import image_label

ARCHIVE, TRAIN_LIST, TEST_LIST = "indoorCVPR_09.tar", "TrainImages.txt", "TestImages.txt"
MANUAL_FILES = (ARCHIVE, TRAIN_LIST, TEST_LIST)
SOURCE = "https://web.mit.edu/torralba/www/indoor.html"

CATEGORIES = (
    "airport_inside", "artstudio", "auditorium", "bakery", "bar", "bathroom", "bedroom",
    "bookstore", "bowling", "buffet", "casino", "children_room", "church_inside",
    "classroom", "cloister", "closet", "clothingstore", "computerroom", "concert_hall",
    "corridor", "deli", "dentaloffice", "dining_room", "elevator", "fastfood_restaurant",
    "florist", "gameroom", "garage", "greenhouse", "grocerystore", "gym", "hairsalon",
    "hospitalroom", "inside_bus", "inside_subway", "jewelleryshop", "kindergarden",
    "kitchen", "laboratorywet", "laundromat", "library", "livingroom", "lobby",
    "locker_room", "mall", "meeting_room", "movietheater", "museum", "nursery", "office",
    "operating_room", "pantry", "poolinside", "prisoncell", "restaurant",
    "restaurant_kitchen", "shoeshop", "stairscase", "studiomusic", "subway", "toystore",
    "trainstation", "tv_studio", "videostore", "waitingroom", "warehouse", "winecellar")


def read_split_list(path: str) -> dict[str, str]:
  """``TrainImages.txt``-style list -> ``{'<category>/<file>': category}``.

  Raises:
    ValueError: a line that is not ``<category>/<file>`` of a known category.
  """
  out = {}
  with open(path, encoding="utf-8") as f:
    for line in filter(None, (l.strip() for l in f)):
      category = line.split("/")[0]
      if line.count("/") != 1 or category not in CATEGORIES:
        raise ValueError(f"{path}: {line!r} is not <category>/<file> of an MIT Indoor-67 "
                         "category")
      out[line] = category
  return out


class Mit67(tfds.core.GeneratorBasedBuilder):
  """MIT Indoor-67, official 80/20 train/test split."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
  Download into <data_dir>/downloads/manual/ these three files from {SOURCE}:
  {ARCHIVE} (the images, 2.4 GB;
  http://groups.csail.mit.edu/vision/LabelMe/NewImages/{ARCHIVE}),
  {TRAIN_LIST} and {TEST_LIST} (the official split lists).
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return image_label.dataset_info(
        self,
        __doc__,
        SOURCE,
        "Quattoni & Torralba, Recognizing Indoor Scenes, CVPR 2009.",
        names=CATEGORIES)

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual = os.fspath(dl_manager.manual_dir)
    missing = [f for f in MANUAL_FILES if not os.path.exists(os.path.join(manual, f))]
    if missing:
      raise FileNotFoundError(f"missing {', '.join(missing)} in {manual}")
    archive = os.path.join(manual, ARCHIVE)
    return {
        split: self._generate_examples(
            dl_manager, archive, read_split_list(os.path.join(manual, listing)))
        for split, listing in (("train", TRAIN_LIST), ("test", TEST_LIST))}

  def _generate_examples(self, dl_manager, archive: str,
                         wanted: dict[str, str]) -> Iterator[tuple[str, dict]]:
    """Yields ('<category>/<file>', example) for the archive's images in `wanted`."""
    found = 0
    for path, fobj in dl_manager.iter_archive(archive):
      key = "/".join(path.replace("\\", "/").split("/")[-2:])  # after 'Images/'
      if key in wanted:
        found += 1
        yield key, {"image": fobj.read(), "label": wanted[key]}
    if found != len(wanted):
      raise ValueError(f"{archive} holds {found} of the {len(wanted)} images the split "
                       "list names")
