"""Transfer-learning datasets: the `mit67` and `stanford40` builders on fabricated
archives in their real layouts, read through `input_pipeline.Dataset` like any TFDS
dataset; clear errors when the archives are missing; ImageNet-style preprocessing for
every transfer target."""
import io
import os
import tarfile
import zipfile

import ml_collections
import numpy as np
from PIL import Image
import pytest

from afd_jax import input_pipeline, transforms
from afd_jax.datasets import availability, mit67, stanford40

SIZE = 48  # pipeline output side (224 in the real configs; same code path)


def _jpeg(seed: int) -> bytes:
  """A tiny, non-square JPEG whose colour encodes `seed`."""
  rng = np.random.default_rng(seed)
  pixels = np.full((30 + seed % 7, 40, 3), seed * 37 % 256, np.uint8)
  pixels[::3] = rng.integers(0, 255, pixels[::3].shape, np.uint8)
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, format="JPEG")
  return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def _fabricate_mit67(manual) -> dict[str, list[str]]:
  """indoorCVPR_09.tar (Images/<category>/<file>) + TrainImages.txt / TestImages.txt:
  3 categories, 3 train + 1 test listed each, one unlisted image (the real archive
  holds more images than the two lists)."""
  lists = {"train": [], "test": []}
  with tarfile.open(manual / mit67.ARCHIVE, "w") as tar:
    for c, category in enumerate(("bakery", "kitchen", "winecellar")):
      for i in range(5):
        name = f"{category}/{category}_{i:04d}.jpg"
        _add(tar, f"Images/{name}", _jpeg(10 * c + i))
        if i < 4:
          lists["train" if i < 3 else "test"].append(name)
  (manual / mit67.TRAIN_LIST).write_text("\n".join(lists["train"]) + "\n")
  (manual / mit67.TEST_LIST).write_text("\r\n".join(lists["test"]))  # Windows endings
  return lists


def _fabricate_stanford40(manual) -> dict[str, list[str]]:
  """Stanford40_JPEGImages.zip (JPEGImages/<action>_<nnn>.jpg) + Stanford40_ImageSplits.zip
  (ImageSplits/<action>_{train,test}.txt, plus the merged lists): 2 actions, 2 train +
  2 test images each."""
  lists = {"train": [], "test": []}
  with zipfile.ZipFile(manual / stanford40.IMAGES_ZIP, "w") as images, \
      zipfile.ZipFile(manual / stanford40.SPLITS_ZIP, "w") as splits:
    for a, action in enumerate(("applauding", "watching_TV")):
      names = [f"{action}_{i:03d}.jpg" for i in range(1, 5)]
      for i, name in enumerate(names):
        images.writestr(f"JPEGImages/{name}", _jpeg(20 * a + i))
      for split, chosen in (("train", names[:2]), ("test", names[2:])):
        splits.writestr(f"ImageSplits/{action}_{split}.txt", "\n".join(chosen) + "\n")
        lists[split] += chosen
    splits.writestr("ImageSplits/actions.txt", "action_name\tnumber_of_images\n")
    for split in ("train", "test"):
      splits.writestr(f"ImageSplits/{split}.txt", "\n".join(lists[split]))
  return lists


def _data_config(name, data_dir, **overrides):
  c = ml_collections.ConfigDict(dict(
      name=name, data_dir=str(data_dir), image_size=SIZE, download=True,
      train_split="train", eval_split="test", shuffle_buffer=64))
  c.update(overrides)
  return c


@pytest.fixture
def offline(monkeypatch):
  """No network: manual datasets must prepare from downloads/manual/ alone."""
  monkeypatch.setattr(availability, "_network_reachable", lambda: False)


@pytest.mark.parametrize("name, fabricate, classes, sizes", [
    ("mit67", _fabricate_mit67, mit67.CATEGORIES, (9, 3)),
    ("stanford40", _fabricate_stanford40, stanford40.ACTIONS, (4, 4)),
])
def test_builder_on_fabricated_archive_through_the_input_pipeline(
    name, fabricate, classes, sizes, tmp_path, offline):
  manual = tmp_path / "downloads" / "manual"
  manual.mkdir(parents=True)
  lists = fabricate(manual)
  dataset = input_pipeline.Dataset(_data_config(name, tmp_path))
  assert dataset.info.num_classes == len(classes) == {"mit67": 67, "stanford40": 40}[name]
  assert (dataset.info.num_train_examples, dataset.info.num_eval_examples) == sizes
  assert dataset.preprocessing is transforms.IMAGENET_PREPROCESSING
  # Labels follow the split lists: <category>/... (MIT) or <action>_nnn.jpg (Stanford).
  want = sorted(classes.index(n.split("/")[0] if name == "mit67" else n.rsplit("_", 1)[0])
                for n in lists["test"])
  batches = list(dataset.eval_iterator(4))
  got = np.concatenate([b["label"][b["mask"] > 0] for b in batches])
  assert sorted(got.tolist()) == want
  assert batches[0]["image"].shape == (4, SIZE, SIZE, 3)
  train = next(dataset.train_iterator(2, seed=0))
  assert train["image"].shape == (2, SIZE, SIZE, 3) and train["image"].dtype == np.float32
  assert np.isfinite(train["image"]).all() and train["image"].std() > 0.1
  assert set(train["label"].tolist()) <= set(want)  # the same classes in both splits
  # Prepared once: a second open reads the prepared files, archives no longer needed.
  for f in os.listdir(manual):
    os.remove(manual / f)
  assert input_pipeline.Dataset(_data_config(name, tmp_path, download=False)
                                ).info.num_train_examples == sizes[0]


@pytest.mark.parametrize("name, files", [("mit67", mit67.MANUAL_FILES),
                                         ("stanford40", stanford40.MANUAL_FILES)])
def test_missing_archives_name_the_files_and_the_folder(name, files, tmp_path, offline):
  for download in (True, False):
    with pytest.raises(input_pipeline.DatasetNotAvailableError) as e:
      input_pipeline.Dataset(_data_config(name, tmp_path, download=download))
    message = str(e.value)
    assert f"{tmp_path}/downloads/manual/" in message and f"{name!r}" in message
    assert all(f in message for f in files), message
  # One archive present, the others missing: the message names what is missing.
  manual = tmp_path / "downloads" / "manual"
  manual.mkdir(parents=True)
  (manual / files[0]).write_bytes(b"")
  with pytest.raises(input_pipeline.DatasetNotAvailableError, match=f"missing {files[1]}"):
    input_pipeline.Dataset(_data_config(name, tmp_path))


def test_split_list_naming_an_unknown_category_is_an_error(tmp_path):
  path = tmp_path / "TrainImages.txt"
  path.write_text("kitchen/a.jpg\nspaceship/b.jpg\n")
  with pytest.raises(ValueError, match="'spaceship/b.jpg' is not <category>/<file>"):
    mit67.read_split_list(str(path))


@pytest.mark.parametrize("name", ["caltech_birds2011", "stanford_dogs", "mit67",
                                  "stanford40", "caltech_birds2011:0.2.0"])
def test_transfer_targets_use_imagenet_preprocessing_at_224(name):
  prep = transforms.get_preprocessing(name)
  assert prep is transforms.IMAGENET_PREPROCESSING and prep.default_image_size == 224
  assert prep.mean == transforms.IMAGENET_MEAN
