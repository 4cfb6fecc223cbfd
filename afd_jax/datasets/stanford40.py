"""TFDS builder `stanford40`: Stanford 40 Actions (Yao et al., ICCV 2011).

9,532 images of people doing 40 actions; the official split has 100 training images per
action (4,000) and the remaining 5,532 for test, the split of L2T-ww and AFD's transfer
experiments. The images come from the manually downloaded archives, read in place.
Labels are the action names in sorted order.
"""
from __future__ import annotations

import os
import re
from typing import Iterator

import tensorflow_datasets as tfds

from afd_jax.datasets import image_label

IMAGES_ZIP, SPLITS_ZIP = "Stanford40_JPEGImages.zip", "Stanford40_ImageSplits.zip"
MANUAL_FILES = (IMAGES_ZIP, SPLITS_ZIP)
SOURCE = "http://vision.stanford.edu/Datasets/40actions.html"

ACTIONS = tuple(sorted((
    "applauding", "blowing_bubbles", "brushing_teeth", "cleaning_the_floor", "climbing",
    "cooking", "cutting_trees", "cutting_vegetables", "drinking", "feeding_a_horse",
    "fishing", "fixing_a_bike", "fixing_a_car", "gardening", "holding_an_umbrella",
    "jumping", "looking_through_a_microscope", "looking_through_a_telescope",
    "playing_guitar", "playing_violin", "pouring_liquid", "pushing_a_cart", "reading",
    "phoning", "riding_a_bike", "riding_a_horse", "rowing_a_boat", "running",
    "shooting_an_arrow", "smoking", "taking_photos", "texting_message", "throwing_frisby",
    "using_a_computer", "walking_the_dog", "washing_dishes", "watching_TV",
    "waving_hands", "writing_on_a_board", "writing_on_a_book")))
# ImageSplits/<action>_<split>.txt; the archive's train.txt / test.txt / actions.txt are
# the same lists merged.
_LIST = re.compile(r"^(?:.*/)?(\w+)_(train|test)\.txt$")


def read_split_lists(dl_manager, splits_zip: str) -> dict[str, dict[str, str]]:
  """``{'train' | 'test': {image file name: action}}`` from the split archive.

  Raises:
    ValueError: a list of an unknown action, or an action without both lists.
  """
  out: dict[str, dict[str, str]] = {"train": {}, "test": {}}
  actions: dict[str, set[str]] = {}
  for path, fobj in dl_manager.iter_archive(splits_zip):
    match = _LIST.match(path.replace("\\", "/"))
    if not match:
      continue
    action, split = match.groups()
    if action not in ACTIONS:
      raise ValueError(f"{splits_zip}: {path} lists images of unknown action {action!r}")
    actions.setdefault(action, set()).add(split)
    for name in filter(None, fobj.read().decode("utf-8").split()):
      out[split][name] = action
  incomplete = sorted(a for a, s in actions.items() if s != {"train", "test"})
  if not actions or incomplete:
    raise ValueError(f"{splits_zip} has no <action>_train.txt / <action>_test.txt pair "
                     f"for {incomplete or 'any action'}")
  return out


class Stanford40(tfds.core.GeneratorBasedBuilder):
  """Stanford 40 Actions, official 100-per-action train split."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
  Download into <data_dir>/downloads/manual/ these two files from {SOURCE}:
  {IMAGES_ZIP} (the images) and {SPLITS_ZIP} (the official split lists), e.g.
  http://vision.stanford.edu/Datasets/{IMAGES_ZIP}.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return image_label.dataset_info(
        self,
        __doc__,
        SOURCE,
        "Yao et al., Human Action Recognition by Learning Bases of Action Attributes and "
        "Parts, ICCV 2011.",
        names=ACTIONS)

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual = os.fspath(dl_manager.manual_dir)
    missing = [f for f in MANUAL_FILES if not os.path.exists(os.path.join(manual, f))]
    if missing:
      raise FileNotFoundError(f"missing {', '.join(missing)} in {manual}")
    lists = read_split_lists(dl_manager, os.path.join(manual, SPLITS_ZIP))
    images = os.path.join(manual, IMAGES_ZIP)
    return {split: self._generate_examples(dl_manager, images, wanted)
            for split, wanted in lists.items()}

  def _generate_examples(self, dl_manager, images_zip: str,
                         wanted: dict[str, str]) -> Iterator[tuple[str, dict]]:
    """Yields (file name, example) for the archive's images in `wanted`."""
    found = 0
    for path, fobj in dl_manager.iter_archive(images_zip):
      name = path.replace("\\", "/").split("/")[-1]  # after 'JPEGImages/'
      if name in wanted:
        found += 1
        yield name, {"image": fobj.read(), "label": wanted[name]}
    if found != len(wanted):
      raise ValueError(f"{images_zip} holds {found} of the {len(wanted)} images the split "
                       "lists name")
