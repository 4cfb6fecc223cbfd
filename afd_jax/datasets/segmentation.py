"""What every semantic-segmentation builder here shares: features, metadata, validation.

Features ``{'image': Image (H, W, 3), 'segmentation': Image (H, W, 1) uint8 class ids
(255 = ignore), 'filename': Text (the image id in its archive)}``, supervised keys
``('image', 'segmentation')``. A segmentation map has no `ClassLabel`, so the number of
classes (and the ignore value) is stored in the info's metadata:
``info.metadata == {'num_classes': K, 'ignore_label': 255}``.
"""
from __future__ import annotations

import io

import numpy as np
import tensorflow_datasets as tfds

IGNORE_LABEL = 255


def dataset_info(builder: tfds.core.DatasetBuilder, description: str, homepage: str,
                 citation: str, *, num_classes: int,
                 image_shape: tuple[int, int] | None = None) -> tfds.core.DatasetInfo:
  """``{'image', 'segmentation', 'filename'}`` features; classes in the metadata.

  Args:
    num_classes: K; labels are 0..K-1 or `IGNORE_LABEL`.
    image_shape: a fixed (H, W), or None for images of any size.
  """
  h, w = image_shape or (None, None)
  return tfds.core.DatasetInfo(
      builder=builder,
      description=description,
      features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=(h, w, 3)),
          "segmentation": tfds.features.Image(shape=(h, w, 1)),
          "filename": tfds.features.Text(),
      }),
      supervised_keys=("image", "segmentation"),
      homepage=homepage,
      citation=citation,
      metadata=tfds.core.MetadataDict(num_classes=num_classes, ignore_label=IGNORE_LABEL),
  )


def image_hw(encoded: bytes, where: str) -> tuple[int, int]:
  """(height, width) of an encoded image, read from its header."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(io.BytesIO(encoded)) as im:
      return im.size[1], im.size[0]
  except Exception as e:  # PIL raises several types for a file that is no image
    raise ValueError(f"{where}: not a readable image ({e})") from e


def indexed_png(encoded: bytes, where: str) -> np.ndarray:
  """uint8 (H, W) class ids of a palette or grey PNG (VOC's SegmentationClass: the palette
  index is the class; a colour-converted RGB map would lose it)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(io.BytesIO(encoded)) as im:
    if im.mode not in ("P", "L"):
      raise ValueError(f"{where}: a label map must be a palette (P) or grey (L) PNG of "
                       f"class ids, not mode {im.mode!r}")
    return np.array(im, np.uint8)


def example(filename: str, image: bytes | np.ndarray, label: np.ndarray, num_classes: int,
            where: str) -> dict:
  """One validated example.

  Args:
    filename: the image id.
    image: encoded image bytes (stored as they are) or uint8 (H, W, 3).
    label: (H, W) class ids, values in [0, num_classes) or `IGNORE_LABEL`.
    num_classes: K.
    where: file(s) named in the errors.

  Raises:
    ValueError: image and label sizes differ, or a label value is out of range.
  """
  hw = image_hw(image, where) if isinstance(image, bytes) else image.shape[:2]
  label = np.asarray(label)
  if label.ndim != 2 or tuple(label.shape) != tuple(hw):
    raise ValueError(f"{where}: the image is {hw[0]}x{hw[1]} (HxW) but its label map is "
                     f"{'x'.join(map(str, label.shape))}")
  bad = (label < 0) | ((label >= num_classes) & (label != IGNORE_LABEL))
  if bad.any():
    raise ValueError(f"{where}: label value {int(label[bad].flat[0])} is outside "
                     f"[0, {num_classes}) and not the ignore label {IGNORE_LABEL}")
  return {"image": image, "segmentation": label.astype(np.uint8)[..., None],
          "filename": filename}
