"""Metric writers: TensorBoard event files (tensorboardX, no TensorFlow needed) plus JSON lines.

JSON lines (``metrics.jsonl``) are what scripts and tests read; TensorBoard is what people look at.
Only process 0 writes, so a multi-host job produces one log. The methods follow clu's
``MetricWriter`` (``write_scalars``, ``write_images``, ``flush``, ``close``); clu itself is not
used because importing ``clu.metric_writers`` (0.0.12, the latest) imports TensorFlow, which the
training process never loads.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping

import jax
import numpy as np


class MetricLog:
  """Scalars and images to ``<workdir>/metrics.jsonl`` and ``<workdir>/tb/``."""

  def __init__(self, workdir: str | pathlib.Path):
    self.enabled = jax.process_index() == 0
    self.path = pathlib.Path(workdir) / "metrics.jsonl"
    self._tb = None
    if self.enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top

      self.path.parent.mkdir(parents=True, exist_ok=True)
      self._tb = SummaryWriter(str(pathlib.Path(workdir) / "tb"))

  def write_scalars(self, step: int, values: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), **{k: float(v) for k, v in values.items()}}
    with self.path.open("a") as f:
      f.write(json.dumps(record) + "\n")
    for k, v in values.items():
      self._tb.add_scalar(k, float(v), int(step))

  def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
    """Logs uint8 ``[H, W, 3]`` images by tag."""
    if self.enabled:
      for tag, image in images.items():
        self._tb.add_image(tag, image, int(step), dataformats="HWC")

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.flush()
      self._tb.close()
