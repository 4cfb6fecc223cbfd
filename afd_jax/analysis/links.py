"""The learned-link evaluation hook: AFD's attention as a teacher × student heatmap."""
from __future__ import annotations

import os

import jax
import numpy as np

from afd_jax.analysis import AnalysisContext

LINKS_PNG = "links.png"


def link_heatmap_hook(ctx: AnalysisContext) -> None:
  """Logs the batch-mean link attention as the TensorBoard image ``links/attention`` and
  writes it to ``<workdir>/links.png``, every ``logging.heatmap_every_epochs`` epochs."""
  every = ctx.config.logging.heatmap_every_epochs
  if not every or ctx.epoch % every:
    return
  att = ctx.method_intermediates().get("attention")
  if att is None or not ctx.is_chief:
    return
  from afd_jax.analysis import heatmap  # matplotlib only when there are links to draw
  mean = np.asarray(jax.device_get(att[-1])).mean(axis=0)
  names = (ctx.distiller.teacher_features, ctx.distiller.student_features)
  title = f"{ctx.config.method.name} links, step {ctx.step}"
  ctx.writer.write_images(ctx.step, {"links/attention": heatmap.render_links(
      mean, *names, title=title)[None]})
  heatmap.save_links_png(os.path.join(ctx.workdir, LINKS_PNG), mean, *names, title=title)
