"""The `DatasetInfo` every builder here shares: one image and its class label."""
from __future__ import annotations

from typing import Sequence

import tensorflow_datasets as tfds


def dataset_info(builder: tfds.core.DatasetBuilder, description: str, homepage: str,
                 citation: str, *, names: Sequence[str] | None = None,
                 num_classes: int | None = None,
                 image_shape: tuple[int, int, int] | None = None) -> tfds.core.DatasetInfo:
  """``{'image', 'label'}`` features, supervised keys ``('image', 'label')``.

  Args:
    names / num_classes: the class names, or only their number.
    image_shape: a fixed (H, W, 3), or None for images of any size.
  """
  return tfds.core.DatasetInfo(
      builder=builder,
      description=description,
      features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=image_shape),
          "label": tfds.features.ClassLabel(names=names, num_classes=num_classes),
      }),
      supervised_keys=("image", "label"),
      homepage=homepage,
      citation=citation,
  )
