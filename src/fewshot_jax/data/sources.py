"""The episode sources a config names: prepared shards, or synthetic videos rendered in memory.

Training (``fewshot-jax train``) and sweeps build their inputs here, so a config means the same data
wherever it runs.
"""

from __future__ import annotations

import logging
from typing import Any

import ml_collections
import numpy as np

from fewshot_jax import config_checks
from fewshot_jax.data import episodes

log = logging.getLogger("fewshot_jax")

# Rendering in memory may take at most this share of the memory available: the rest is the
# trainer's (a 256 px step of the paper's model alone holds ~6.5 GiB on CPU, docs/performance.md).
MEMORY_SHARE = 0.25
# Drawing one 256 px synthetic frame (SyntheticClip.frame): 1.8 ms on one core of the 2-core
# development machine (2026-12-01), 0.7 ms at 64 px; it scales with the pixels.
_RENDER_MS_PER_FRAME_256 = 1.8


def train_sources(cfg: ml_collections.ConfigDict) -> tuple[Any, Any]:
  """The training and held-out episode sources that ``cfg.data`` names."""
  dc = cfg.data
  if dc.source == "shards":
    if not dc.data_dir:
      raise ValueError("data.source='shards' needs --config.data.data_dir=DIR (a TFDS data dir)")
    source = episodes.EpisodeSource.from_shards(dc.data_dir, dc.dataset, dc.train_split)
    _check_frames_for_k(source, int(cfg.train.k_shots))
    try:
      held = episodes.EpisodeSource.from_shards(dc.data_dir, dc.dataset, dc.eval_split)
    except KeyError:
      held = None
    return source, held
  if dc.source == "synthetic":
    from fewshot_jax.data import synthetic  # pylint: disable=g-import-not-at-top

    off = synthetic.HELDOUT_SEED_OFFSET
    need, have = config_checks.synthetic_bytes(cfg), config_checks.available_memory()
    if need > have * MEMORY_SHARE:
      # The paper's scale (4,096 videos x 32 frames at 256 px: 24 GiB) does not fit: each
      # episode draws its K + 1 frames when it is sampled instead (the same frames).
      log.warning(
          "data.source='synthetic': %d videos x %d frames at %d px would take %.1f GiB in memory "
          "(%.1f GiB available), so frames are rendered as episodes are drawn (about %.1f ms of "
          "one core per frame; raise data.workers, or write shards once with `fewshot-jax "
          "prepare shards --config synthetic` and train with data.source='shards')",
          dc.num_train_videos, dc.frames_per_video, cfg.model.image_size, need / 2**30,
          have / 2**30, _RENDER_MS_PER_FRAME_256 * (cfg.model.image_size / 256) ** 2)
      videos = synthetic.SyntheticVideos(range(dc.num_train_videos), dc.frames_per_video,
                                         cfg.model.image_size, frame_stride=dc.frame_stride)
      source = episodes.EpisodeSource.from_videos(videos, cfg.model.image_size)
    else:
      source = None

    def render(seeds):
      data = synthetic.make_dataset(list(seeds), dc.frames_per_video, cfg.model.image_size,
                                    workers=dc.workers, progress=True,
                                    frame_stride=dc.frame_stride)
      return episodes.EpisodeSource.from_arrays(data["frames"], data["landmarks"])

    held = render(range(off, off + dc.num_eval_videos)) if dc.num_eval_videos else None
    return source or render(range(dc.num_train_videos)), held
  raise ValueError(f"data.source={dc.source!r}: expected 'shards' or 'synthetic'")


def _check_frames_for_k(source: episodes.EpisodeSource, k: int) -> None:
  """Refuses a K the prepared videos cannot serve, from the first video of the split (data prep
  keeps the same number of frames per video, ``--frames-per-video``): otherwise every episode is
  skipped as too short and the run never gets a batch."""
  from fewshot_jax.data import shards  # pylint: disable=g-import-not-at-top

  first = next(iter(shards.iter_records(source.split)), None)
  if first is None:
    raise ValueError(f"{source.split.directory}: split {source.split.split!r} holds no videos")
  video = source.split.parser()(first)
  if len(video["frames"]) < k + 1:
    raise ValueError(
        f"train.k_shots={k} needs {k + 1} frames per video; {source.split.directory} split "
        f"{source.split.split!r} holds {len(video['frames'])} (its first video, {video['key']}); "
        "lower train.k_shots or prepare the data with more --frames-per-video")


def heldout_arrays(held: episodes.EpisodeSource) -> tuple[np.ndarray, np.ndarray]:
  """A held-out source as whole videos, ``frames [V, T, S, S, 3]`` and ``landmarks [V, T, 68, 2]``,
  the form the evaluation protocol takes."""
  if held.videos is not None:
    return held.videos.frames, held.videos.landmarks
  from fewshot_jax.data import shards  # pylint: disable=g-import-not-at-top
  videos = shards.read_videos(held.split.directory, held.split.split)
  return videos["frames"], videos["landmarks"]
