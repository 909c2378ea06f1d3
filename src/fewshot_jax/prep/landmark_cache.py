"""Stage (a) of data prep: videos -> one cache entry per video (crops + landmarks), in parallel.

Landmark detection is the slow part of preparing a talking-head corpus, so this stage is built to be
run once and resumed: each video becomes one ``<cache>/<key>.npz`` written atomically, re-running
skips every video that already has an entry (or a recorded rejection), and bad videos are recorded
in ``rejected.jsonl`` with the reason instead of stopping the run.

A re-run honours changed options: each entry and each rejection records the options that made it
(``options_record``). An entry built with other options is refused by name (or rebuilt with
``rebuild=True``); a rejection made under other options, or for a transient cause (an unexpected
error, out of memory), is retried; ``retry_rejected=True`` retries every rejection. Two videos
with one key (``clip.mp4`` and ``clip.mov``) are refused before anything is written.

An entry holds (numpy arrays only; loaded with ``allow_pickle=False``):
  * ``jpeg`` uint8 ``[N]`` and ``offsets`` int64 ``[T + 1]``: T JPEG crops, back to back;
  * ``landmarks`` float32 ``[T, 68, 2]`` in crop pixels;
  * ``meta``: a JSON string: key, identity, clips, per-frame (clip, frame index), fps, detector name
    and version, crop settings, and ``options``: the ``options_record`` that built it.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import json
import multiprocessing
import os
import pathlib
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from fewshot_jax.atomic_files import atomic_path
from fewshot_jax.prep import backends as backends_lib
from fewshot_jax.prep import crop as crop_lib
from fewshot_jax.prep import jpeg
from fewshot_jax.prep import video as video_lib
from fewshot_jax.prep.layouts import VideoEntry
from fewshot_jax.prep.video import VideoError, count_frames, iter_frames
from fewshot_jax.progress import Progress

REJECTED = "rejected.jsonl"
# Rejections whose cause may be gone on the next run; they are retried without being asked.
TRANSIENT_KINDS = frozenset({"unexpected error", "out of memory"})
# Backend options that change how fast, not what: not part of an entry's identity.
_SPEED_ONLY_OPTIONS = frozenset({"threads", "device"})


@dataclasses.dataclass(frozen=True)
class PrepOptions:
  """How each video is turned into an entry."""

  frames_per_video: int = 32
  image_size: int = 256
  enlarge: float = 1.8
  jpeg_quality: int = 95
  min_face_size: float = 40.0  # pixels, in the source frame
  candidates_per_frame: int = 2  # frames run through the detector per frame kept
  backend: str = "dlib"
  backend_options: tuple[tuple[str, Any], ...] = (("upsample", 1),)
  # Frames kept per video of the test split (0: frames_per_video). The paper's protocol takes
  # K = 32 shots from the first half and 32 targets from the second: 64 frames.
  test_frames_per_video: int = 0

  def frames_for(self, entry: VideoEntry) -> tuple[int, str]:
    """Frames to keep of ``entry``, and the option that says so (for a rejection's message)."""
    if entry.split == "test" and self.test_frames_per_video:
      return self.test_frames_per_video, "test_frames_per_video"
    return self.frames_per_video, "frames_per_video"


class Rejected(Exception):
  """A video that cannot become an entry: ``kind`` for the summary, the message for the log."""

  def __init__(self, kind: str, message: str):
    # Both arguments go to Exception so that pickling (results coming back from worker
    # processes) rebuilds it; a missing argument there would hang the pool's result thread.
    super().__init__(kind, message)
    self.kind, self.message = kind, message

  def __str__(self) -> str:
    return self.message


def entry_path(cache: pathlib.Path, key: str) -> pathlib.Path:
  return cache / f"{key}.npz"


def options_record(opts: PrepOptions, entry: VideoEntry | None = None) -> dict[str, Any]:
  """The options that decide what an entry holds (as JSON would give them back), for comparing a
  cache entry or a rejection with a re-run's options.

  With ``entry``, ``frames_per_video`` is the count kept for that entry's split and
  ``test_frames_per_video`` is left out, so changing the test split's count redoes only the
  test split's entries."""
  record = dataclasses.asdict(opts)
  if entry is not None:
    record["frames_per_video"] = opts.frames_for(entry)[0]
    del record["test_frames_per_video"]
  record["backend_options"] = {k: v for k, v in opts.backend_options
                               if k not in _SPEED_ONLY_OPTIONS}
  record["decoder"] = video_lib.DECODER_VERSION
  return json.loads(json.dumps(record))


def _built_with(meta: dict[str, Any]) -> dict[str, Any]:
  """The options an entry was built with; entries from before ``options`` was recorded give
  what their metadata holds."""
  if "options" in meta:
    return {"decoder": 1, **meta["options"]}  # before the decoder was recorded: version 1
  return {"backend": meta.get("detector"), "image_size": meta.get("image_size"),
          "enlarge": meta.get("enlarge"), "jpeg_quality": meta.get("jpeg_quality"),
          "frames_per_video": len(meta.get("frames", [])), "decoder": 1}


def option_differences(built: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
  """``name=built (now wanted)`` for each option that differs, in name order."""
  return [f"{k}={built[k]!r} (now {wanted[k]!r})" for k in sorted(built)
          if k in wanted and built[k] != wanted[k]]


def prepare_video(
    entry: VideoEntry, backend: backends_lib.LandmarkBackend, opts: PrepOptions
) -> dict[str, np.ndarray]:
  """Detects, tracks, selects and crops one video. Raises ``Rejected`` with the reason."""
  counts = []
  for clip in entry.clips:
    try:
      counts.append(count_frames(clip))
    except VideoError as e:
      raise Rejected(e.kind, str(e)) from e
  total = sum(counts)
  keep_n, flag = opts.frames_for(entry)
  if total < keep_n:
    raise Rejected("too few frames", f"too few frames: {total} < {flag}={keep_n}")
  # Candidate frames spread evenly over all clips; the detector runs on these only.
  n_cand = min(total, opts.candidates_per_frame * keep_n)
  wanted = set(np.linspace(0, total - 1, n_cand).round().astype(int).tolist())
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
  frames: list[np.ndarray] = []
  where: list[tuple[int, int]] = []
  fps = 0.0
  for c, clip in enumerate(entry.clips):
    try:
      for i, frame, fps in iter_frames(clip):
        if starts[c] + i in wanted:
          frames.append(frame)
          where.append((c, i))
    except VideoError as e:
      raise Rejected(e.kind, str(e)) from e
  detections = [backend.detect(f) for f in frames]
  tracks = crop_lib.link_tracks(detections, max_gap=3)
  main = crop_lib.main_track(tracks)
  if main is None:
    raise Rejected("no face", f"no face in {len(frames)} sampled frames")
  if main.mean_size < opts.min_face_size:
    raise Rejected("face too small", f"face too small: {main.mean_size:.0f} px < "
                   f"min_face_size={opts.min_face_size:g}")
  for other in tracks:
    if (other is not main and other.mean_size >= 0.7 * main.mean_size
        and len(other.frames) >= 0.5 * len(main.frames)):
      raise Rejected("several faces", f"several faces: a second face of {other.mean_size:.0f} px in "
                     f"{len(other.frames)} of {len(frames)} sampled frames")
  if len(main.frames) < keep_n:
    raise Rejected("too few frames with the face",
                   f"too few frames with the face: {len(main.frames)} < {flag}={keep_n}")
  keep = np.linspace(0, len(main.frames) - 1, keep_n).round().astype(int)
  points = np.stack([main.faces[k].landmarks for k in keep])
  boxes = crop_lib.crop_boxes(points, opts.enlarge)
  jpegs, crop_points = [], []
  for k, box, p in zip(keep, boxes, points):
    image, q = crop_lib.crop_frame(frames[main.frames[k]], box, p, opts.image_size)
    jpegs.append(np.frombuffer(jpeg.encode(image, opts.jpeg_quality), np.uint8))
    crop_points.append(q)
  meta = {
      "key": entry.key,
      "identity": entry.identity,
      "clips": [str(c) for c in entry.clips],
      "frames": [list(where[main.frames[k]]) for k in keep],
      "fps": fps,
      "detector": backend.name,
      "detector_version": backend.version,
      "image_size": opts.image_size,
      "enlarge": opts.enlarge,
      "jpeg_quality": opts.jpeg_quality,
      "options": options_record(opts, entry),
  }
  return {
      "jpeg": np.concatenate(jpegs),
      "offsets": np.concatenate([[0], np.cumsum([len(j) for j in jpegs])]).astype(np.int64),
      "landmarks": np.stack(crop_points).astype(np.float32),
      "meta": np.asarray(json.dumps(meta)),
  }


def is_cache(path: pathlib.Path) -> bool:
  """A folder this program built as a cache: its rejections file, or an entry it can read."""
  if (path / REJECTED).is_file():
    return True
  for entry in itertools.islice(path.rglob("*.npz"), 3):
    try:
      read_meta(entry)
      return True
    except (OSError, ValueError, KeyError):
      continue
  return False


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
  """An entry's metadata only (npz members load lazily, so the crops are not read)."""
  with np.load(path, allow_pickle=False) as z:
    return json.loads(str(z["meta"]))


def read_entry(path: str | os.PathLike) -> tuple[list[bytes], np.ndarray, dict[str, Any]]:
  """An entry's JPEG crops (bytes, as written), landmarks ``[T, 68, 2]`` and metadata."""
  with np.load(path, allow_pickle=False) as z:
    data, offsets = z["jpeg"], z["offsets"]
    crops = [data[a:b].tobytes() for a, b in zip(offsets[:-1], offsets[1:])]
    return crops, z["landmarks"].astype(np.float32), json.loads(str(z["meta"]))


def load_entry(path: str | os.PathLike) -> tuple[list[np.ndarray], np.ndarray, dict[str, Any]]:
  """Decoded crops ``[T]`` of uint8 ``[S, S, 3]``, landmarks ``[T, 68, 2]`` and the metadata."""
  crops, landmarks, meta = read_entry(path)
  return [jpeg.decode(c) for c in crops], landmarks, meta


_WORKER: dict[str, Any] = {}


def _init_worker(opts: PrepOptions) -> None:
  _WORKER["backend"] = backends_lib.make_backend(opts.backend, **dict(opts.backend_options))
  _WORKER["opts"] = opts


def _work(job: tuple[VideoEntry, str]) -> tuple[str, Rejected | None]:
  """Runs in a worker: writes one entry; returns (key, the rejection or None)."""
  entry, cache = job
  try:
    data = prepare_video(entry, _WORKER["backend"], _WORKER["opts"])
  except Rejected as e:
    return entry.key, e
  except MemoryError as e:
    return entry.key, Rejected("out of memory", f"out of memory: {e}")
  except Exception as e:  # pylint: disable=broad-except
    # One broken video must not end a multi-day run; the reason names the exception.
    return entry.key, Rejected("unexpected error", f"unexpected {type(e).__name__}: {e}")
  with atomic_path(entry_path(pathlib.Path(cache), entry.key)) as tmp:
    np.savez(tmp, **data)
  return entry.key, None


def _rejections(cache: pathlib.Path) -> dict[str, dict[str, Any]]:
  """The latest recorded rejection of each key; a torn last line (killed mid-write) is ignored."""
  path = cache / REJECTED
  latest: dict[str, dict[str, Any]] = {}
  if path.exists():
    for line in path.read_text().splitlines():
      try:
        row = json.loads(line)
        latest[row["key"]] = row
      except (json.JSONDecodeError, KeyError, TypeError):
        continue
  return latest


def _check_unique_keys(entries: Sequence[VideoEntry]) -> None:
  """Refuses two videos with one key: the second would overwrite the first's entry."""
  seen: dict[str, VideoEntry] = {}
  for e in entries:
    if e.key in seen:
      raise ValueError(f"{seen[e.key].clips[0]} and {e.clips[0]} both map to cache key "
                       f"{e.key!r}; rename one of them (keys ignore the extension)")
    seen[e.key] = e


def _plan(entries: Sequence[VideoEntry], cache: pathlib.Path, opts: PrepOptions,
          retry_rejected: bool, rebuild: bool) -> tuple[list[VideoEntry], dict[str, int]]:
  """The videos to (re)do, and counts of why.

  Raises:
    ValueError: an entry was built with other options and ``rebuild`` is off (names the entry
      and the differences).
  """
  rejections = _rejections(cache)
  todo: list[VideoEntry] = []
  why: Counter[str] = Counter()
  mismatched: list[tuple[pathlib.Path, list[str]]] = []
  for e in entries:
    path = entry_path(cache, e.key)
    wanted = options_record(opts, e)
    if path.exists():
      try:
        differences = option_differences(_built_with(read_meta(path)), wanted)
      except (OSError, ValueError, KeyError) as err:
        # Entries are written atomically, so this is most likely not ours (a user's own .npz in
        # the folder): never overwrite it.
        raise ValueError(f"{path}: not a cache entry this program can read ({err}); move it "
                         "away, or use another --cache") from err
      if not differences:
        why["done"] += 1
      elif rebuild:
        todo.append(e)
        why["rebuilt"] += 1
      else:
        mismatched.append((path, differences))
      continue
    row = rejections.get(e.key)
    if row is None:
      todo.append(e)
    elif retry_rejected or row.get("kind") in TRANSIENT_KINDS or (
        "options" in row and option_differences(row["options"], wanted)):
      todo.append(e)
      why["retried_rejected"] += 1
    else:
      why["rejected_before"] += 1
  if mismatched:
    path, differences = mismatched[0]
    more = f" ({len(mismatched) - 1} more entries differ too)" if len(mismatched) > 1 else ""
    raise ValueError(f"{path}: built with other options: {', '.join(differences)}{more}; pass "
                     "--rebuild to rebuild such entries, or use another --cache")
  return todo, dict(why)


def build_cache(
    entries: Sequence[VideoEntry],
    cache: str | os.PathLike,
    opts: PrepOptions,
    workers: int = 1,
    retry_rejected: bool = False,
    rebuild: bool = False,
) -> dict[str, Any]:
  """Writes an entry per video into ``cache`` (skipping finished ones); returns the summary.

  Args:
    retry_rejected: retry every recorded rejection, not only transient ones and those made under
      other options.
    rebuild: rebuild entries made with other options instead of refusing to run.

  Raises:
    ValueError: two videos share a key, or (without ``rebuild``) an entry was built with other
      options.
  """
  cache = pathlib.Path(cache)
  _check_unique_keys(entries)
  by_key = {e.key: e for e in entries}
  todo, why = _plan(entries, cache, opts, retry_rejected, rebuild) if cache.is_dir() else (
      list(entries), {})
  cache.mkdir(parents=True, exist_ok=True)
  skipped = len(entries) - len(todo)
  reasons: Counter[str] = Counter()
  written = 0
  t0 = time.perf_counter()
  progress = Progress(len(todo), "landmarks", "videos")
  jobs = [(e, str(cache)) for e in todo]
  with open(cache / REJECTED, "a", encoding="utf-8") as rejected:

    def record(key: str, rejection: Rejected | None) -> None:
      nonlocal written
      if rejection is None:
        written += 1
      else:
        reasons[rejection.kind] += 1
        line = {"key": key, "kind": rejection.kind, "reason": str(rejection), "options": options_record(opts, by_key[key])}
        rejected.write(json.dumps(line) + "\n")
        rejected.flush()
        os.fsync(rejected.fileno())
      progress.update(1, extra=f"written {written} rejected {sum(reasons.values())}")

    if workers > 1 and len(jobs) > 1:
      # A worker that dies (a codec or dlib crash) makes the executor raise BrokenProcessPool
      # rather than hang; entries written so far stay, and a re-run resumes after them.
      with concurrent.futures.ProcessPoolExecutor(
          workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
          initargs=(opts,)) as pool:
        for future in concurrent.futures.as_completed([pool.submit(_work, j) for j in jobs]):
          record(*future.result())
    elif jobs:
      _init_worker(opts)
      for job in jobs:
        record(*_work(job))
  seconds = time.perf_counter() - t0
  summary = {
      "videos": len(entries),
      "skipped_already_done": skipped,
      "rebuilt": why.get("rebuilt", 0),
      "retried_rejected": why.get("retried_rejected", 0),
      "written": written,
      "rejected": sum(reasons.values()),
      "rejected_by_reason": dict(sorted(reasons.items())),
      "seconds": round(seconds, 2),
      "videos_per_second": round(len(todo) / seconds, 3) if seconds > 0 and todo else 0.0,
      "workers": workers,
  }
  print("landmark cache: " + json.dumps(summary), file=sys.stderr)
  return summary
