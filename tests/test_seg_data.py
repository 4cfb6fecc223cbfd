"""Semantic-segmentation data: the `voc_aug` and `cocostuff10k` builders on fabricated
archives in their real layouts (the train_aug union rule, label reading and mapping,
clear errors), the release's transforms against NumPy/PIL restatements, and the input
pipeline on the offline `digits_seg` (shapes, exact resume, eval coverage)."""
import io
import itertools
import tarfile
import zipfile

import ml_collections
import numpy as np
from PIL import Image, ImageFilter
import pytest
import scipy.io
import tensorflow as tf
import tensorflow_datasets as tfds

from afd_jax import device_data, input_pipeline, seg_transforms
from afd_jax.datasets import (availability, cocostuff10k, digits_canvas, digits_seg,
                              voc_aug)

# VOC: train a b c, val d e; SBD: train b f d g, val h c e. train_aug = VOC train ∪ SBD
# train ∪ SBD val − VOC val = a b c f g h (b, c from VOC); validation = d e.
VOC_LISTS = {"train": ["a", "b", "c"], "val": ["d", "e"]}
SBD_LISTS = {"train": ["b", "f", "d", "g"], "val": ["h", "c", "e"]}
TRAIN_AUG = {"a": "voc", "b": "voc", "c": "voc", "f": "sbd", "g": "sbd", "h": "sbd"}


def _jpeg(h: int, w: int, seed: int) -> bytes:
  pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, format="JPEG")
  return buf.getvalue()


def _shape(image_id: str) -> tuple[int, int]:
  """A distinct, non-square (H, W) per image id."""
  k = ord(image_id[0]) % 5
  return 10 + k, 15 - k


def _label(image_id: str, source: str, num_classes=21) -> np.ndarray:
  """uint8 (H, W) ids of `image_id`, different per source; VOC's with a 255 border row."""
  rng = np.random.default_rng([ord(image_id[0]), len(source)])
  label = rng.integers(0, num_classes, _shape(image_id)).astype(np.uint8)
  if source == "voc":
    label[-1] = 255
  return label


def _palette_png(label: np.ndarray) -> bytes:
  """A palette-mode PNG like VOC's SegmentationClass: the palette index is the class."""
  im = Image.frombytes("P", label.shape[::-1], label.tobytes())
  im.putpalette([(i * 37) % 256 for i in range(256 * 3)])
  buf = io.BytesIO()
  im.save(buf, format="PNG")
  return buf.getvalue()


def _mat(**fields) -> bytes:
  buf = io.BytesIO()
  scipy.io.savemat(buf, fields)
  return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def _fabricate_voc_aug(manual, bad_label: str | None = None) -> None:
  """VOCtrainval_11-May-2012.tar (VOCdevkit/VOC2012/...) and benchmark.tgz
  (benchmark_RELEASE/dataset/...) for the lists above; `bad_label`: a VOC id whose
  SegmentationClass PNG holds class 21."""
  root = "VOCdevkit/VOC2012/"
  with tarfile.open(manual / voc_aug.VOC_ARCHIVE, "w") as tar:
    for split, ids in VOC_LISTS.items():
      _add(tar, f"{root}ImageSets/Segmentation/{split}.txt", "\n".join(ids).encode() + b"\n")
      for i in ids:
        label = _label(i, "voc")
        if i == bad_label:
          label[0, 0] = 21
        _add(tar, f"{root}JPEGImages/{i}.jpg", _jpeg(*_shape(i), seed=ord(i)))
        _add(tar, f"{root}SegmentationClass/{i}.png", _palette_png(label))
  root = "benchmark_RELEASE/dataset/"
  with tarfile.open(manual / voc_aug.SBD_ARCHIVE, "w:gz") as tar:
    for split, ids in SBD_LISTS.items():
      _add(tar, f"{root}{split}.txt", "\n".join(ids).encode())
      for i in ids:
        label = _label(i, "sbd")
        _add(tar, f"{root}img/{i}.jpg", _jpeg(*_shape(i), seed=ord(i)))
        gtcls = {"Segmentation": label, "CategoriesPresent": np.unique(label)[:, None],
                 "Boundaries": np.empty((20, 1), object)}
        gtcls["Boundaries"][:] = [[np.zeros((2, 2))] for _ in range(20)]
        _add(tar, f"{root}cls/{i}.mat", _mat(GTcls=gtcls))


COCO_IDS = {"train": ["COCO_train2014_000000000077", "COCO_train2014_000000000078",
                      "COCO_val2014_000000000079"],
            "test": ["COCO_train2014_000000000080", "COCO_val2014_000000000081"]}


def _coco_s(i: str) -> np.ndarray:
  """uint16 (H, W) COCO-Stuff ids 0..182, with 0 (unlabeled), 1 and 182 present."""
  s = np.random.default_rng(int(i[-2:])).integers(0, 183, (9, 13)).astype(np.uint16)
  s[0, :3] = (0, 1, 182)
  return s


def _fabricate_cocostuff(manual, mismatch: str | None = None) -> None:
  """cocostuff-10k-v1.1.zip: images/, annotations/ (.mat with S), imageLists/;
  `mismatch`: an id whose S is one row taller than its image."""
  with zipfile.ZipFile(manual / cocostuff10k.ARCHIVE, "w") as z:
    for split, ids in COCO_IDS.items():
      z.writestr(f"imageLists/{split}.txt", "\n".join(ids) + "\n")
      for i in ids:
        s = _coco_s(i)
        z.writestr(f"images/{i}.jpg", _jpeg(9, 13, seed=int(i[-2:])))
        if i == mismatch:
          s = np.concatenate([s, s[:1]])
        z.writestr(f"annotations/{i}.mat", _mat(S=s, names=np.array(["x"], object)))


def _config(name, data_dir, **overrides) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict(dict(
      name=name, data_dir=str(data_dir), image_size=16, base_size=16, download=True,
      train_split="train", eval_split="test", shuffle_buffer=64))
  c.update(overrides)
  return c


def _stored_labels(name, data_dir, split) -> dict[str, np.ndarray]:
  builder = tfds.builder(name, data_dir=str(data_dir))
  return {e["filename"].decode(): e["segmentation"][..., 0]
          for e in tfds.as_numpy(builder.as_dataset(split))}


@pytest.fixture
def offline(monkeypatch):
  monkeypatch.setattr(availability, "_network_reachable", lambda: False)


@pytest.fixture
def manual(tmp_path):
  path = tmp_path / "downloads" / "manual"
  path.mkdir(parents=True)
  return path


def test_voc_aug_train_is_the_releases_union_and_labels_are_read(tmp_path, manual,
                                                                  offline):
  _fabricate_voc_aug(manual)
  dataset = input_pipeline.Dataset(_config("voc_aug", tmp_path, eval_split="validation"))
  info = dataset.info
  assert (info.task, info.num_classes, info.ignore_label) == ("segmentation", 21, 255)
  assert (info.num_train_examples, info.num_eval_examples) == (6, 2)
  train = _stored_labels("voc_aug", tmp_path, "train")
  assert set(train) == set(TRAIN_AUG)
  for i, source in TRAIN_AUG.items():  # b, c: VOC's maps (with 255), not SBD's
    np.testing.assert_array_equal(train[i], _label(i, source), err_msg=i)
  val = _stored_labels("voc_aug", tmp_path, "validation")
  assert set(val) == set(VOC_LISTS["val"])
  for i in val:
    np.testing.assert_array_equal(val[i], _label(i, "voc"))
  assert voc_aug.union_ids(["a", "b"], [["b", "x", "v"], ["y", "a"]], ["v"]) == [
      ("a", "voc"), ("b", "voc"), ("x", "sbd"), ("y", "sbd")]
  # Through the pipeline: non-square JPEGs become 16x16 crops with 16x16 label maps.
  batch = next(dataset.train_iterator(2, seed=0))
  assert batch["image"].shape == (2, 16, 16, 3) and batch["label"].shape == (2, 16, 16)
  assert set(np.unique(batch["label"])) <= set(range(21)) | {255}
  evals = list(dataset.eval_iterator(4))
  assert len(evals) == 1 and evals[0]["mask"].tolist() == [1, 1, 0, 0]


def test_cocostuff10k_splits_and_the_releases_label_mapping(tmp_path, manual, offline):
  _fabricate_cocostuff(manual)
  info = input_pipeline.Dataset(_config("cocostuff10k", tmp_path)).info
  assert (info.num_classes, info.num_train_examples, info.num_eval_examples) == (182, 3, 2)
  for split, ids in COCO_IDS.items():
    stored = _stored_labels("cocostuff10k", tmp_path, split)
    assert set(stored) == set(ids)
    for i in ids:  # id k -> class k - 1, 0 (unlabeled) -> 255
      s = _coco_s(i).astype(int)
      np.testing.assert_array_equal(stored[i], np.where(s == 0, 255, s - 1))
      assert stored[i][0, :3].tolist() == [255, 0, 181]
  with pytest.raises(ValueError, match="x.mat: label value 183 is outside"):
    cocostuff10k.map_labels(np.array([[3, 183]]), "x.mat")


@pytest.mark.parametrize("name", ["voc_aug", "cocostuff10k"])
def test_missing_archives_name_the_files_and_the_folder(name, tmp_path, offline):
  files = {"voc_aug": voc_aug.MANUAL_FILES, "cocostuff10k": cocostuff10k.MANUAL_FILES}[name]
  for download in (True, False):
    with pytest.raises(input_pipeline.DatasetNotAvailableError) as e:
      input_pipeline.Dataset(_config(name, tmp_path, download=download))
    message = str(e.value)
    assert f"{tmp_path}/downloads/manual/" in message and f"{name!r}" in message
    assert all(f in message for f in files), message
  if name == "voc_aug":  # one of the two present: the message names the other
    (tmp_path / "downloads" / "manual").mkdir(parents=True)
    (tmp_path / "downloads" / "manual" / files[0]).write_bytes(b"")
    with pytest.raises(input_pipeline.DatasetNotAvailableError, match=f"missing {files[1]}"):
      input_pipeline.Dataset(_config(name, tmp_path))


def test_bad_label_value_and_size_mismatch_name_the_file(tmp_path, manual, offline):
  _fabricate_voc_aug(manual, bad_label="d")
  with pytest.raises(input_pipeline.DatasetNotAvailableError,
                     match=r"SegmentationClass/d\.png: label value 21 is outside \[0, 21\)"):
    input_pipeline.Dataset(_config("voc_aug", tmp_path, eval_split="validation"))
  other = tmp_path / "coco"
  (other / "downloads" / "manual").mkdir(parents=True)
  bad = COCO_IDS["test"][1]
  _fabricate_cocostuff(other / "downloads" / "manual", mismatch=bad)
  with pytest.raises(input_pipeline.DatasetNotAvailableError,
                     match=rf"annotations/{bad}\.mat: the image is 9x13 \(HxW\) but its "
                           r"label map is 10x13"):
    input_pipeline.Dataset(_config("cocostuff10k", other))


# --- transforms -------------------------------------------------------------------------

def _ramps(h=30, w=40):
  """uint8 (h, w, 3) image with channel 0 = column, 1 = row, and int32 (h, w) label =
  column: each pixel's label says where its image value came from."""
  rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  image = np.stack([cols, rows, np.full_like(rows, 100)], -1).astype(np.uint8)
  return image, cols.astype(np.int32)


def test_flip_flips_image_and_label_together():
  image, label = _ramps()
  flipped = 0
  for s in range(16):
    out_image, out_label = (t.numpy() for t in seg_transforms.random_flip(
        tf.constant(image), tf.constant(label), tf.constant([s, 1])))
    was = out_label[0, 0] != 0
    np.testing.assert_array_equal(out_label, label[:, ::-1] if was else label)
    np.testing.assert_array_equal(out_image, image[:, ::-1] if was else image)
    flipped += was
  assert 0 < flipped < 16


def test_scale_crop_keeps_image_and_label_aligned_and_labels_nearest():
  image, label = _ramps()
  seen_sizes = set()
  for s in range(12):
    key = tf.constant([s, 2])
    out_image, out_label = (t.numpy() for t in seg_transforms.random_scale_crop(
        tf.constant(image), tf.constant(label), key, base_size=30, crop_size=24))
    valid = out_label != 255
    # Bilinear image vs nearest label of the same ramp: within a pixel.
    assert np.abs(out_image[..., 0][valid] - out_label[valid]).max() <= 1.5
    seen_sizes.add(len(np.unique(out_label[valid])))
    # The whole transform (flip, blur too): label values only from the input's (nearest).
    out_image, out_label = (t.numpy() for t in seg_transforms.train_transform(
        tf.constant(image), tf.constant(label), key, crop_size=24, base_size=30))
    assert out_image.shape == (24, 24, 3) and out_image.dtype == np.float32
    assert out_label.shape == (24, 24) and out_label.dtype == np.int32
    assert set(np.unique(out_label)) <= set(range(40)) | {255}
  assert len(seen_sizes) > 3  # the scale varies


def test_padding_fills_image_0_and_label_fill_at_the_bottom_right():
  image = np.full((10, 12, 3), 200, np.uint8)
  label = np.where(np.arange(12) < 6, 3, 7)[None].repeat(10, 0).astype(np.int32)
  for fill in (255, 0):
    for s in range(6):  # short side in [4, 16] of a 10x12 image: always padded to 20
      out_image, out_label = (t.numpy() for t in seg_transforms.random_scale_crop(
          tf.constant(image), tf.constant(label), tf.constant([s, 3]), base_size=8,
          crop_size=20, label_fill=fill))
      padded = ~np.isin(out_label, (3, 7))
      assert (out_label[padded] == fill).all() and padded.any()
      np.testing.assert_allclose(out_image[padded], 0)
      np.testing.assert_allclose(out_image[~padded], 200, atol=1e-3)
      rows, cols = np.nonzero(~padded)  # the image is the top-left block
      assert rows.min() == 0 and cols.min() == 0
      assert padded[rows.max() + 1:].all() and padded[:, cols.max() + 1:].all()


def test_val_transform_is_pils_fixed_resize():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
  label = rng.choice(np.array([0, 4, 9, 255], np.uint8), (37, 53))
  for size in (24, 61):
    out_image, out_label = (t.numpy() for t in seg_transforms.fixed_resize(
        tf.constant(image), tf.constant(label), size))
    pil_image = np.array(Image.fromarray(image).resize((size, size), Image.BILINEAR))
    pil_label = np.array(Image.fromarray(label).resize((size, size), Image.NEAREST))
    np.testing.assert_allclose(out_image, pil_image, atol=1.0)  # PIL rounds to uint8
    np.testing.assert_array_equal(out_label, pil_label)


def test_blur_is_pils_gaussian_blur():
  image = np.random.default_rng(1).integers(0, 256, (20, 30, 3), dtype=np.uint8)
  for radius in (0.3, 0.7, 0.99):
    pil = np.array(Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius)))
    ours = seg_transforms.gaussian_blur(tf.constant(image, tf.float32), radius).numpy()
    assert np.abs(ours - pil).mean() < 1.0 and np.abs(ours - pil).max() <= 3.0
  np.testing.assert_allclose(seg_transforms.gaussian_blur(tf.constant(image, tf.float32),
                                                          0.0), image)


def test_transform_is_a_function_of_its_key_and_sizes_are_checked():
  image, label = _ramps()

  def run(key):
    return [t.numpy() for t in seg_transforms.train_transform(
        tf.constant(image), tf.constant(label), tf.constant(key), 24, 30)]

  a, b, c = run([5, 6]), run([5, 6]), run([5, 7])
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_array_equal(a[1], b[1])
  assert not np.array_equal(a[0], c[0])
  with pytest.raises(ValueError, match="crop size"):
    seg_transforms.check_sizes(0, 513)
  with pytest.raises(ValueError, match=r"base_size=1 is too small: .*\[int\(base_size·0.5\)"):
    seg_transforms.check_sizes(8, 1)


def test_the_scale_range_bounds_the_short_side():
  """A 10x12 image padded into a 20x20 crop shows its scaled size: the short side is
  always int(10 · s) for s in the range, exactly 10 for (1, 1)."""
  image = np.full((10, 12, 3), 200, np.uint8)
  label = np.full((10, 12), 3, np.int32)

  def short_sides(scale_range):
    sides = set()
    for s in range(16):
      _, out_label = (t.numpy() for t in seg_transforms.random_scale_crop(
          tf.constant(image), tf.constant(label), tf.constant([s, 4]), base_size=10,
          crop_size=20, label_fill=255, scale_range=scale_range))
      rows, cols = np.nonzero(out_label == 3)
      sides.add(rows.max() + 1)
    return sides

  assert short_sides((1.0, 1.0)) == {10}
  assert short_sides((0.8, 1.2)) <= set(range(8, 13)) and len(short_sides((0.8, 1.2))) > 1
  assert min(short_sides(seg_transforms.SCALE_RANGE)) < 8  # the release's reaches 5
  for bad in ((0, 1), (1.5, 1.0), "wide", (1,)):
    with pytest.raises(ValueError, match=r"^config.data.scale_range=.*; accepted: two "):
      seg_transforms.check_scale_range(bad)


def test_the_seg_preprocessing_is_the_datasets_own_or_the_one_named_by_data_augment():
  voc = seg_transforms.get_preprocessing("voc_aug")
  coco = seg_transforms.get_preprocessing("cocostuff10k")
  assert (voc.label_fill, coco.label_fill) == (0, seg_transforms.IGNORE_LABEL)
  assert voc.default_image_size == coco.default_image_size == 513 and voc.flip
  digits = seg_transforms.get_preprocessing("digits_seg")
  assert digits.default_image_size == 48 and not digits.flip
  assert seg_transforms.get_preprocessing("ade20k", "cocostuff10k") == coco
  with pytest.raises(ValueError, match=r"^dataset 'ade20k' has no preprocessing of its "
                     r"own \(those with one: voc_aug, cocostuff10k, digits_seg\); set "
                     r"config.data.augment to one of: voc_aug, cocostuff10k, digits_seg$"):
    seg_transforms.get_preprocessing("ade20k")
  with pytest.raises(ValueError, match=r"^unknown config.data.augment='voc'; accepted: "
                     r"voc_aug, cocostuff10k, digits_seg$"):
    seg_transforms.get_preprocessing("voc_aug", "voc")


# --- the input pipeline on digits_seg ---------------------------------------------------

def _digits_config(data_dir, **overrides):
  c = ml_collections.ConfigDict(dict(
      name="digits_seg", data_dir=data_dir, shuffle_buffer=1024, download=False,
      train_split="train", eval_split="test",
      num_train_examples=ml_collections.config_dict.placeholder(int)))
  c.update(overrides)
  return c


def test_digits_seg_builder_and_train_batches(digits_seg_data_dir):
  builder = tfds.builder("digits_seg", data_dir=digits_seg_data_dir)
  assert builder.info.supervised_keys == ("image", "segmentation")
  assert builder.info.metadata["num_classes"] == digits_seg.NUM_CLASSES == 11
  dataset = input_pipeline.Dataset(_digits_config(digits_seg_data_dir))
  assert dataset.info == input_pipeline.DatasetInfo(
      "digits_seg", 11, 1000, 200, 48, task="segmentation", ignore_label=255)
  first = next(iter(tfds.as_numpy(builder.as_dataset("test"))))
  assert first["image"].shape == (48, 48, 3) and first["segmentation"].shape == (48, 48, 1)
  assert {0, 255} < set(np.unique(first["segmentation"])) <= set(range(11)) | {255}
  batch = next(dataset.train_iterator(8, seed=0))
  assert batch["image"].shape == (8, 48, 48, 3) and batch["image"].dtype == np.float32
  assert batch["label"].shape == (8, 48, 48) and batch["label"].dtype == np.int32
  assert batch["index"].shape == (8,) and batch["index"].dtype == np.int32
  assert set(np.unique(batch["label"])) <= set(range(11)) | {255}
  with pytest.raises(ValueError, match="segmentation dataset"):
    dataset.train_labels()
  # Never device-resident: 'auto' picks tf.data, an explicit 'device' is an error.
  assert device_data.choose_pipeline(_digits_config(None, pipeline="auto"),
                                     dataset) == "tfdata"
  with pytest.raises(ValueError, match="segmentation dataset"):
    device_data.choose_pipeline(_digits_config(None, pipeline="device"), dataset)


def test_digits_canvas_is_one_labelled_digit_drawn_as_on_digits_seg(digits_canvas_data_dir):
  """The pretraining set: 3,000 / 600 32x32 canvases, every class, each label the digit
  `digits_seg.render` drew (redrawn here from the builder's seeded generator)."""
  builder = tfds.builder("digits_canvas", data_dir=digits_canvas_data_dir)
  assert builder.info.features["label"].num_classes == 10
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == {
      "train": 3000, "test": 600}
  test = list(tfds.as_numpy(builder.as_dataset("test", shuffle_files=False)))
  assert test[0]["image"].shape == (32, 32, 3)
  labels = np.array([e["label"] for e in test])
  assert np.bincount(labels, minlength=10).min() > 30
  ink, digit, pools = digits_seg._glyphs()  # pylint: disable=protected-access
  rng = np.random.default_rng([digits_canvas.SEED, 1])
  drawn = {}
  for _ in range(600):
    image, label = digits_seg.render(rng, ink, digit, pools["test"], canvas=32,
                                     max_digits=1, sides=digits_canvas.DIGIT_SIDES)
    drawn[image.tobytes()] = set(np.unique(label)) - {0, 255}
  # (TFDS stores a split in its own order: matched by the image.)
  assert all(drawn[e["image"].tobytes()] == {e["label"] + 1} for e in test)


def test_digits_seg_resume_at_step_k_equals_the_uninterrupted_stream(digits_seg_data_dir):
  config = _digits_config(digits_seg_data_dir, num_train_examples=32)  # 4 steps/epoch
  straight = list(itertools.islice(input_pipeline.Dataset(config).train_iterator(8, 0), 7))
  assert not np.array_equal(straight[0]["label"], straight[1]["label"])  # steps differ
  for k in (2, 5):  # within epoch 0; within epoch 1
    resumed = itertools.islice(input_pipeline.Dataset(config).train_iterator(8, 0, k), 2)
    for got, want in zip(resumed, straight[k:k + 2], strict=True):
      for key in ("image", "label", "index"):
        np.testing.assert_array_equal(got[key], want[key])


def test_digits_seg_eval_covers_each_image_once(digits_seg_data_dir):
  config = _digits_config(digits_seg_data_dir)
  batches = list(input_pipeline.Dataset(config).eval_iterator(64))
  assert len(batches) == 4  # 200 = 64 + 64 + 64 + 8
  mask = np.concatenate([b["mask"] for b in batches])
  labels = np.concatenate([b["label"] for b in batches])
  assert mask.sum() == 200 and labels.shape == (256, 48, 48) and labels.dtype == np.int32
  assert (labels[200:] == 255).all()
  # At the canvas size the val transform is the identity: the stored maps, in order.
  builder = tfds.builder("digits_seg", data_dir=digits_seg_data_dir)
  stored = np.stack([e["segmentation"][..., 0] for e in tfds.as_numpy(
      builder.as_dataset("test", shuffle_files=False))])
  np.testing.assert_array_equal(labels[:200], stored)
