"""The episode sources a config names: prepared shards, or synthetic videos rendered in memory.

Training (``fewshot-jax train``) and sweeps build their inputs here, so a config means the same data
wherever it runs.
"""

from __future__ import annotations

from typing import Any

import ml_collections
import numpy as np

from fewshot_jax.data import episodes


def train_sources(cfg: ml_collections.ConfigDict) -> tuple[Any, Any]:
  """The training and held-out episode sources that ``cfg.data`` names."""
  dc = cfg.data
  if dc.source == "shards":
    if not dc.data_dir:
      raise ValueError("data.source='shards' needs --config.data.data_dir=DIR (a TFDS data dir)")
    source = episodes.EpisodeSource.from_shards(dc.data_dir, dc.dataset, dc.train_split)
    try:
      held = episodes.EpisodeSource.from_shards(dc.data_dir, dc.dataset, dc.eval_split)
    except KeyError:
      held = None
    return source, held
  if dc.source == "synthetic":
    from fewshot_jax.data import synthetic  # pylint: disable=g-import-not-at-top

    def render(seeds):
      data = synthetic.make_dataset(list(seeds), dc.frames_per_video, cfg.model.image_size,
                                    workers=dc.workers, progress=True,
                                    frame_stride=dc.frame_stride)
      return episodes.EpisodeSource.from_arrays(data["frames"], data["landmarks"])

    off = synthetic.HELDOUT_SEED_OFFSET
    held = render(range(off, off + dc.num_eval_videos)) if dc.num_eval_videos else None
    return render(range(dc.num_train_videos)), held
  raise ValueError(f"data.source={dc.source!r}: expected 'shards' or 'synthetic'")


def heldout_arrays(held: episodes.EpisodeSource) -> tuple[np.ndarray, np.ndarray]:
  """A held-out source as whole videos, ``frames [V, T, S, S, 3]`` and ``landmarks [V, T, 68, 2]``,
  the form the evaluation protocol takes."""
  if held.videos is not None:
    return held.videos.frames, held.videos.landmarks
  from fewshot_jax.data import shards  # pylint: disable=g-import-not-at-top
  videos = shards.read_videos(held.split.directory, held.split.split)
  return videos["frames"], videos["landmarks"]
