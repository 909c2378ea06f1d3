"""Episodes for meta-learning, as a grain pipeline: videos -> K shots + 1 target -> batches.

One pipeline serves every source. A source yields videos (``frames``: JPEG bytes or uint8
arrays, ``landmarks [T, 68, 2]``, ``video_index``, ``key``):

* **TFRecord shards** (data prep's default): a checked reader per shard (framing and CRC32C,
  ``fewshot_jax.data.tfrecords``), interleaved over ``cycle_length`` shards, then a window
  shuffle. Shard order is reshuffled every epoch.
* **ArrayRecord shards**: random access (``tfds`` data source), so a global shuffle per epoch.
* **Videos in memory** (tests, the synthetic quick path): random access, a global shuffle.

Each process reads its own slice (shards, or records for random access) and builds the *local*
part of the global batch; ``global_batch`` turns it into sharded global arrays. Episode sampling
uses grain's per-element RNG (seeded by ``data.seed``), so the stream is a pure function of the
seed and the position, and the iterator's state, saved with each checkpoint, resumes it exactly.

A video that cannot be decoded is logged by key and skipped; a damaged record (bad checksum or
framing, or one that does not parse) is logged by shard file and offset and skipped; the run goes
on, within the skip budget.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Mapping
from typing import Any

import grain
import jax
from grain import experimental as gx
import ml_collections
import numpy as np

from fewshot_jax.data import shards, tfrecords
from fewshot_jax.prep import jpeg

log = logging.getLogger("fewshot_jax")

Batch = dict[str, np.ndarray]


def _decode(frame: Any) -> np.ndarray:
  """A frame as uint8 ``[H, W, 3]``: in-memory videos hold arrays, shards hold JPEG bytes."""
  if isinstance(frame, np.ndarray) and frame.dtype == np.uint8 and frame.ndim == 3:
    return frame
  return jpeg.decode(frame)


@dataclasses.dataclass(frozen=True)
class EpisodeMaker:
  """A video -> one episode: ``k_shots`` source frames and a target that is not among them.

  Only the K + 1 chosen frames are decoded. Returns None (and logs the video's key) for a video
  that is too short or does not decode, so one bad record does not stop a long run.
  """

  k_shots: int
  image_size: int

  def __call__(self, video: Mapping[str, Any] | None, rng: np.random.Generator) -> Batch | None:
    if video is None:  # a damaged record, already logged by shards.CheckedParser
      return None
    key = video.get("key", "?")
    frames, points = video["frames"], video["landmarks"]
    t = len(frames)
    if t < self.k_shots + 1 or points.shape[0] != t:
      log.warning("skipping video %s: %d frames and %d landmark rows, an episode needs %d",
                  key, t, points.shape[0], self.k_shots + 1)
      return None
    picks = rng.choice(t, self.k_shots + 1, replace=False)
    try:
      images = np.stack([_decode(frames[i]) for i in picks])
    except Exception as e:  # pylint: disable=broad-except  (PIL raises many types)
      log.warning("skipping video %s: a frame does not decode: %s", key, e)
      return None
    if images.shape[1:] != (self.image_size, self.image_size, 3):
      log.warning("skipping video %s: frames are %s, expected %d x %d x 3", key,
                  images.shape[1:], self.image_size, self.image_size)
      return None
    lm = points[picks].astype(np.float32)
    return {
        "frames": images[:-1],
        "landmarks": lm[:-1],
        "target": images[-1],
        "target_landmarks": lm[-1],
        "video_index": np.int32(video["video_index"]),
    }


class InMemoryVideos:
  """Random access over videos held in arrays: ``frames [V, T, H, W, 3]``, ``landmarks [V, T, 68, 2]``;
  row ``i`` is W's row ``i``."""

  def __init__(self, frames: np.ndarray, landmarks: np.ndarray):
    if frames.ndim != 5 or landmarks.shape[:2] != frames.shape[:2]:
      raise ValueError(f"frames {frames.shape} and landmarks {landmarks.shape}: expected "
                       "[V, T, H, W, 3] and [V, T, 68, 2]")
    self.frames, self.landmarks = frames, landmarks

  def __len__(self) -> int:
    return self.frames.shape[0]

  @property
  def num_frames(self) -> int:
    return self.frames.shape[1]

  def __getitem__(self, i: int) -> dict[str, Any]:
    return {"frames": self.frames[i], "landmarks": self.landmarks[i], "video_index": i,
            "key": f"video/{i}"}


@dataclasses.dataclass(frozen=True)
class EpisodeSource:
  """Where training videos come from, and how many rows W needs."""

  kind: str  # "tfrecord", "array_record" or "memory"
  num_videos: int
  image_size: int
  split: shards.Split | None = None
  videos: Any = None  # random access: InMemoryVideos, or synthetic.SyntheticVideos (streamed)

  @classmethod
  def from_arrays(cls, frames: np.ndarray, landmarks: np.ndarray) -> "EpisodeSource":
    videos = InMemoryVideos(frames, landmarks)
    return cls("memory", len(videos), frames.shape[2], videos=videos)

  @classmethod
  def from_videos(cls, videos: Any, image_size: int) -> "EpisodeSource":
    """Any random-access collection of videos (``len``, ``[i]``, ``num_frames``), e.g. synthetic
    videos rendered as their episodes are drawn."""
    return cls("memory", len(videos), image_size, videos=videos)

  @classmethod
  def from_shards(cls, data_dir: str, dataset: str = "", split: str = "train") -> "EpisodeSource":
    s = shards.open_split(shards.find_dataset_dir(data_dir, dataset), split)
    return cls(s.file_format, s.num_examples, s.image_size, split=s)


def local_batch_size(global_batch: int, process_count: int) -> int:
  if global_batch % process_count:
    raise ValueError(f"train.batch_size={global_batch} does not split over {process_count} "
                     "processes")
  return global_batch // process_count


def episode_dataset(
    source: EpisodeSource,
    cfg: ml_collections.ConfigDict,
    process_index: int | None = None,
    process_count: int | None = None,
) -> grain.IterDataset:
  """This process's endless stream of local batches (``train.batch_size / process_count`` each).

  Batch layout: ``frames uint8 [b, K, H, W, 3]``, ``landmarks f32 [b, K, 68, 2]``,
  ``target uint8 [b, H, W, 3]``, ``target_landmarks f32 [b, 68, 2]``, ``video_index i32 [b]``.
  """
  pi = jax.process_index() if process_index is None else process_index
  pc = jax.process_count() if process_count is None else process_count
  dc = cfg.data
  if source.image_size != cfg.model.image_size:
    where = source.split.directory if source.split else "the in-memory videos"
    raise ValueError(f"{where}: frames are {source.image_size} px, model.image_size is "
                     f"{cfg.model.image_size}")
  local = local_batch_size(cfg.train.batch_size, pc)
  k = int(cfg.train.k_shots)
  if source.videos is not None and source.videos.num_frames < k + 1:
    raise ValueError(f"train.k_shots={k} needs {k + 1} frames per video; the in-memory videos "
                     f"have {source.videos.num_frames}")
  maker = EpisodeMaker(k, int(cfg.model.image_size))
  if source.kind == "tfrecord":
    ds = _tfrecord_batches(source.split, cfg, maker, local, pi, pc)
  else:
    ds = _random_access_batches(source, cfg, maker, local, pi)
  if int(dc.workers) > 0:
    from absl import flags  # pylint: disable=g-import-not-at-top
    if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; we do not use absl.app
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=int(dc.workers),
                                                     per_worker_buffer_size=int(dc.prefetch)))
  elif int(dc.prefetch) > 0:
    # In-process: a thread still overlaps JPEG decoding (which releases the GIL) with the step.
    ds = gx.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=int(dc.prefetch))
  return ds


def _tfrecord_batches(split: shards.Split, cfg: ml_collections.ConfigDict, maker: EpisodeMaker,
                      local: int, pi: int, pc: int) -> grain.IterDataset:
  """Sequential reading: this process's shards, reshuffled each epoch, interleaved ``cycle_length``
  at a time, then a window shuffle. The stream depends on the process and worker counts (each
  reads its own shards); random-access formats do not have that limit."""
  dc = cfg.data
  seed = int(dc.seed)
  files = list(split.files)
  mine = files[pi::pc]
  workers = max(1, int(dc.workers))
  if len(mine) < workers:
    raise ValueError(f"{split.directory}: {len(files)} TFRecord shards give process {pi} of {pc} "
                     f"{len(mine)}, fewer than data.workers={workers}; rebuild with more shards "
                     "or use fewer workers")
  per_epoch = grain.MapDataset.source(mine).shuffle(seed=seed).repeat(None)
  ds = gx.InterleaveIterDataset(per_epoch.map(tfrecords.CheckedTFRecordIterDataset),
                                cycle_length=min(int(dc.cycle_length), len(mine)))
  ds = gx.WindowShuffleIterDataset(ds, window_size=int(dc.shuffle_window), seed=seed)
  ds = ds.map(shards.CheckedParser(split.parser())).random_map(maker, seed=seed + 1)
  ds = ds.filter(lambda e: e is not None)
  # Skipping a bad video or a damaged record is fine; a dataset of mostly bad ones is a broken
  # run: grain raises once more than half of a window of 1000 was skipped (each one logged).
  ds = gx.WithOptionsIterDataset(ds, gx.DatasetOptions(filter_raise_threshold_ratio=0.5))
  return ds.batch(local, drop_remainder=True)


_READER_LOCK = threading.Lock()


class _ArrayRecords:
  """Random access to a split's serialized records, opened lazily in each process.

  The reader is opened on first use, once per process (under a lock), and never pickled: a reader
  opened in the trainer and then shipped to grain's worker processes, with its thread pool, is not
  something a fresh process can rely on.
  """

  def __init__(self, split: shards.Split):
    self.split, self._reader = split, None

  def __getstate__(self) -> dict[str, Any]:
    return {"split": self.split, "_reader": None}

  def __len__(self) -> int:
    return self.split.num_examples

  def __getitem__(self, index: int) -> tfrecords.Record:
    """Record ``index`` of the split, or a payload-less ``Record`` naming its shard file and
    record index when ArrayRecord cannot read it (its chunk checksums failed, or it is cut)."""
    path, within = self.split.locate(index)
    try:
      payload = self._read(index)
    except Exception as e:  # pylint: disable=broad-except  (riegeli raises several kinds)
      return tfrecords.Record(path, within, None, f"unreadable: {e}", unit="record")
    return tfrecords.Record(path, within, payload, unit="record")

  def _read(self, index: int) -> bytes:
    reader = self._reader
    if reader is None:
      # grain calls this from a pool of threads. Without the lock, several of them imported
      # tensorflow_datasets at once in a fresh worker process and deadlocked on the import locks
      # (seen with py-spy: a worker's threads parked inside tfds's __init__, the trainer waiting).
      with _READER_LOCK:
        if self._reader is None:
          import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
          builder = tfds.builder_from_directory(str(self.split.directory))
          self._reader = builder.as_data_source(self.split.split).data_source  # bytes
        reader = self._reader
    return reader[index]


class _GlobalBatches:
  """Local batch ``b`` of a global stream that is the same for any process or worker count.

  Global position ``g`` holds video ``perm[g]`` (a fresh shuffle of all videos each epoch) with an
  episode drawn from ``rng(seed, g)``. Global batch ``b`` is positions ``b*B .. b*B+B-1``, and
  process ``p`` builds rows ``p*b_local .. (p+1)*b_local - 1`` of it, reading only those videos.
  A video that fails is replaced by the next one in storage order, deterministically.
  """

  def __init__(self, records: grain.MapDataset, maker: EpisodeMaker, seed: int,
               global_size: int, local: int, process_index: int):
    self.records, self.maker, self.seed = records, maker, seed
    self.perm = grain.MapDataset.range(len(records)).shuffle(seed=seed).repeat(None)
    self.global_size, self.local, self.offset = global_size, local, process_index * local

  def _episode(self, g: int) -> Batch:
    index = self.perm[g]
    rng = np.random.default_rng([self.seed, g])
    for attempt in range(_MAX_REPLACEMENTS):
      episode = self.maker(self.records[(index + attempt) % len(self.records)], rng)
      if episode is not None:
        return episode
    raise RuntimeError(f"{_MAX_REPLACEMENTS} videos in a row from storage index {index} could "
                       "not make an episode (see the warnings above); is the dataset broken?")

  def __call__(self, b: int) -> Batch:
    start = b * self.global_size + self.offset
    rows = [self._episode(start + j) for j in range(self.local)]
    return {key: np.stack([r[key] for r in rows]) for key in rows[0]}


_MAX_REPLACEMENTS = 16
_ENDLESS = 2**62  # batches: a MapDataset needs a length; this one is never reached


def _random_access_batches(source: EpisodeSource, cfg: ml_collections.ConfigDict,
                           maker: EpisodeMaker, local: int, pi: int) -> grain.IterDataset:
  """ArrayRecord shards or in-memory videos: a global shuffle, batches independent of how many
  processes or workers build them (the multi-host test relies on it)."""
  if source.kind == "array_record":
    records = grain.MapDataset.source(_ArrayRecords(source.split)).map(
        shards.CheckedParser(source.split.parser()))
  elif source.kind == "memory":
    records = grain.MapDataset.source(source.videos)
  else:
    raise ValueError(f"unknown episode source kind {source.kind!r}")
  batches = _GlobalBatches(records, maker, int(cfg.data.seed), int(cfg.train.batch_size), local,
                           pi)
  return grain.MapDataset.range(_ENDLESS).map(batches).to_iter_dataset()


def global_batch(local: Mapping[str, np.ndarray], sharding: jax.sharding.Sharding) -> dict:
  """Each process's local batch -> global arrays split along the batch axis (also on 1 process)."""
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local.items()}
