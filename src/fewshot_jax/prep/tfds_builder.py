"""Stage (b) of data prep: a TensorFlow Datasets builder that writes training shards.

One example per video (one row of the discriminator's table W):
  ``frames``: the video's crops, JPEG bytes passed through unchanged (no re-encoding);
  ``landmarks``: float32 ``[T, 68, 2]`` in crop pixels (pixel centres at ``j + 0.5``);
  ``video_index``: dense ``0..V-1`` within the split, in key order, the row of W;
  ``identity``, ``key``, ``source_paths``, ``frame_indices`` (clip, frame) ``[T, 2]``, ``fps``,
  ``detector``, ``detector_version``.

Configs:
  ``voxceleb2``: from a landmark cache of the VoxCeleb2 tree (``dev/…`` -> train, ``test/…`` -> test);
  ``video_folder``: from a landmark cache of any folder of videos (all train);
  ``synthetic``, ``synthetic_64``: rendered by ``fewshot_jax.data.synthetic`` (no manual dir).

The class is not registered with TFDS here (``skip_registration``): the ``tfds build`` entry point
is ``data_prep/talking_heads``, which subclasses it under the dataset name ``talking_heads``;
``fewshot-jax prepare shards`` uses this class directly.
"""

from __future__ import annotations

import functools
import io
import logging
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from fewshot_jax.prep import jpeg, landmark_cache

log = logging.getLogger("fewshot_jax")



class TalkingHeadsConfig(tfds.core.BuilderConfig):
  """Where examples come from, and (synthetic only) how many and how large."""

  def __init__(
      self,
      *,
      source: str,
      image_size: int = 256,
      num_train_videos: int = 0,
      num_test_videos: int = 0,
      frames_per_video: int = 32,
      frame_stride: int = 8,
      jpeg_quality: int = 95,
      **kwargs: Any,
  ):
    super().__init__(**kwargs)
    if source not in ("voxceleb2", "video_folder", "synthetic"):
      raise ValueError(f"source={source!r}: expected voxceleb2, video_folder or synthetic")
    self.source = source
    self.image_size = image_size
    self.num_train_videos = num_train_videos
    self.num_test_videos = num_test_videos
    self.frames_per_video = frames_per_video
    self.frame_stride = frame_stride
    self.jpeg_quality = jpeg_quality


def cache_image_sizes(cache: str | pathlib.Path) -> dict[int, int]:
  """Crop side -> number of readable entries with it, over a landmark cache."""
  sizes: dict[int, int] = {}
  for path in pathlib.Path(cache).rglob("*.npz"):
    try:
      size = int(landmark_cache.read_meta(path)["image_size"])
    except (OSError, ValueError, KeyError):
      continue  # skipped (and logged) again when the split is generated
    sizes[size] = sizes.get(size, 0) + 1
  return sizes


def config_for_cache(name: str, cache: str | pathlib.Path) -> TalkingHeadsConfig:
  """Config ``name`` (voxceleb2 or video_folder) with the image size of the cache's crops:
  the built-in config at its size (256 px), else ``<name>_<size>`` (``video_folder_128``).

  Raises:
    FileNotFoundError: the cache has no readable entries.
    ValueError: the cache mixes crop sizes (one dataset holds one size).
  """
  base = next((c for c in TalkingHeads.BUILDER_CONFIGS if c.name == name), None)
  if base is None or base.source == "synthetic":
    raise ValueError(f"config {name!r}: expected voxceleb2 or video_folder")
  sizes = cache_image_sizes(cache)
  if not sizes:
    raise FileNotFoundError(f"{cache}: no readable cache entries (*.npz); build them with "
                            "`fewshot-jax prepare landmarks --cache ...`")
  if len(sizes) > 1:
    listed = ", ".join(f"{n} of {s} px" for s, n in sorted(sizes.items()))
    raise ValueError(f"{cache}: entries have different crop sizes ({listed}); a dataset holds "
                     "one size: rebuild them at one --image-size")
  (size,) = sizes
  if size == base.image_size:
    return base
  # Its own name, so datasets of two crop sizes can share a data dir (TFDS also refuses a
  # custom config named like a built-in one).
  return TalkingHeadsConfig(name=f"{base.name}_{size}", source=base.source, image_size=size,
                            description=f"{base.description}, {size} px crops")


class TalkingHeads(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Talking-head videos as crops + 68 landmarks, one example per video."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Crops, landmarks and provenance per video."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "For voxceleb2 / video_folder, first build a landmark cache:\n"
      "  fewshot-jax prepare landmarks --input ROOT --layout voxceleb2|folder --cache CACHE\n"
      "then pass CACHE as --manual_dir."
  )
  BUILDER_CONFIGS = [
      TalkingHeadsConfig(name="voxceleb2", source="voxceleb2",
                         description="VoxCeleb2 from a landmark cache: dev -> train, test -> test"),
      TalkingHeadsConfig(name="video_folder", source="video_folder",
                         description="Any folder of talking-head videos from a landmark cache"),
      TalkingHeadsConfig(name="synthetic", source="synthetic", image_size=256,
                         num_train_videos=4096, num_test_videos=64,
                         description="Procedural talking heads with exact landmarks, 256x256"),
      TalkingHeadsConfig(name="synthetic_64", source="synthetic", image_size=64,
                         num_train_videos=600, num_test_videos=8,
                         description="The demo's synthetic set: 64x64"),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.image_size
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "frames": tfds.features.Sequence(
                tfds.features.Image(shape=(size, size, 3), encoding_format="jpeg")),
            "landmarks": tfds.features.Tensor(shape=(None, 68, 2), dtype=np.float32),
            "video_index": np.int32,
            "identity": tfds.features.Text(),
            "key": tfds.features.Text(),
            "source_paths": tfds.features.Sequence(tfds.features.Text()),
            "frame_indices": tfds.features.Tensor(shape=(None, 2), dtype=np.int32),
            "fps": np.float32,
            "detector": tfds.features.Text(),
            "detector_version": tfds.features.Text(),
        }),
        supervised_keys=None,
        homepage="https://arxiv.org/abs/1905.08233",
        # Written as metadata.json: the detectors per split (prep/provenance.py).
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    cfg = self.builder_config
    if cfg.source == "synthetic":
      splits = {"train": range(cfg.num_train_videos)}
      if cfg.num_test_videos:
        from fewshot_jax.data.synthetic import HELDOUT_SEED_OFFSET as off  # pylint: disable=g-import-not-at-top
        splits["test"] = range(off, off + cfg.num_test_videos)
      self._record_detectors({
          name: [("synthetic", f"exact landmarks, generator v{_synthetic_version()}")] * len(seeds)
          for name, seeds in splits.items()})
      return {name: self._generate_examples("synthetic", seeds) for name, seeds in splits.items()}
    cache = pathlib.Path(dl_manager.manual_dir)
    paths, detectors = self._readable_entries(cache)
    if cfg.source == "voxceleb2":
      splits = {"train": [p for p in paths if p.relative_to(cache).parts[0] == "dev"],
                "test": [p for p in paths if p.relative_to(cache).parts[0] == "test"]}
      splits = {k: v for k, v in splits.items() if v}
    else:
      splits = {"train": paths}
    if not splits:
      sizes = cache_image_sizes(cache)
      if sizes:  # entries there, none of this config's size: say so, not "no examples"
        raise ValueError(f"{cache}: crops are {', '.join(f'{s} px' for s in sorted(sizes))}, "
                         f"config {cfg.name!r} expects {cfg.image_size} px")
      raise FileNotFoundError(f"{cache}: no cache entries (*.npz) for config {cfg.name!r}")
    self._record_detectors({name: [detectors[q] for q in p] for name, p in splits.items()})
    return {name: self._generate_examples("cache", p) for name, p in splits.items()}

  def _record_detectors(self, per_split: dict[str, list[tuple[str, str]]]) -> None:
    """The detector (and its weights' hashes) behind each split, into metadata.json."""
    from fewshot_jax.prep import provenance  # pylint: disable=g-import-not-at-top

    self.info.metadata[provenance.KEY] = {
        name: provenance.summarize(pairs) for name, pairs in per_split.items()}

  def _readable_entries(
      self, cache: pathlib.Path
  ) -> tuple[list[pathlib.Path], dict[pathlib.Path, tuple[str, str]]]:
    """Cache entries in key order, and each one's (detector, version); an unreadable or
    mismatched one is skipped with a warning, before video indices are assigned, so indices stay
    dense."""
    good, detectors = [], {}
    for path in sorted(cache.rglob("*.npz")):
      try:
        meta = landmark_cache.read_meta(path)
      except (OSError, ValueError, KeyError) as e:
        log.warning("skipping unreadable cache entry %s: %s", path, e)
        continue
      if meta["image_size"] != self.builder_config.image_size:
        log.warning("skipping %s: crops are %d px, config %r expects %d", path,
                    meta["image_size"], self.builder_config.name, self.builder_config.image_size)
        continue
      good.append(path)
      detectors[path] = (str(meta.get("detector", "")), str(meta.get("detector_version", "")))
    return good, detectors

  def download_and_prepare(self, *args: Any, **kwargs: Any) -> None:
    """As TFDS's, but notes whether a Beam runner or Beam options were given: then the splits are
    generated as a Beam pipeline (``tfds build --beam_pipeline_options=…`` or
    ``DownloadConfig(beam_runner=…)``), otherwise in this process."""
    config = kwargs.get("download_config")
    self._use_beam = bool(config and (config.beam_runner or config.beam_options))
    super().download_and_prepare(*args, **kwargs)

  def _generate_examples(self, kind: str, items: Sequence[Any]):
    """Examples of one split: ``kind`` "synthetic" (items: seeds) or "cache" (items: entry paths).

    ``video_index`` is the position in ``items``, so each split's indices are dense. Returns a
    generator, or a Beam ``PTransform`` over the same per-video function when Beam is in use.
    """
    make = functools.partial(
        _synthetic_example if kind == "synthetic" else _cache_example, self.builder_config)
    jobs = list(enumerate(items))
    if getattr(self, "_use_beam", False):
      beam = tfds.core.lazy_imports.apache_beam
      return beam.Create(jobs) | beam.MapTuple(make)
    return (make(index, item) for index, item in jobs)


def _cache_example(
    config: TalkingHeadsConfig, index: int, path: pathlib.Path
) -> tuple[str, dict[str, Any]]:
  """One video from a landmark-cache entry; the JPEG bytes pass through without re-encoding."""
  del config
  crops, landmarks, meta = landmark_cache.read_entry(path)
  return meta["key"], {
      "frames": [io.BytesIO(c) for c in crops],
      "landmarks": landmarks,
      "video_index": index,
      "identity": meta["identity"],
      "key": meta["key"],
      "source_paths": meta["clips"],
      "frame_indices": np.asarray(meta["frames"], np.int32).reshape(-1, 2),
      "fps": meta["fps"],
      "detector": meta["detector"],
      "detector_version": meta["detector_version"],
  }


def _synthetic_version() -> int:
  from fewshot_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  return synthetic.GENERATOR_VERSION


def _synthetic_example(
    config: TalkingHeadsConfig, index: int, seed: int
) -> tuple[str, dict[str, Any]]:
  """One synthetic video, rendered and JPEG-encoded here."""
  from fewshot_jax.data import synthetic  # pylint: disable=g-import-not-at-top

  frames, points = synthetic.render_video(
      seed, config.frames_per_video, config.image_size, frame_stride=config.frame_stride)
  t = np.arange(config.frames_per_video) * config.frame_stride
  key = f"synthetic/{seed}"
  return key, {
      "frames": [io.BytesIO(jpeg.encode(f, config.jpeg_quality)) for f in frames],
      "landmarks": points,
      "video_index": index,
      "identity": f"synthetic_{seed}",
      "key": key,
      "source_paths": [f"synthetic:{seed}"],
      "frame_indices": np.stack([np.zeros_like(t), t], axis=1).astype(np.int32),
      "fps": 25.0,
      "detector": "synthetic",
      "detector_version": f"exact landmarks, generator v{synthetic.GENERATOR_VERSION}",
  }
