"""Prepared TFDS datasets on disk, read without TensorFlow.

Data prep (``fewshot_jax.prep.tfds_builder``) writes one example per video into TFRecord or
ArrayRecord shards next to ``dataset_info.json`` and ``features.json``. Training reads those files
directly: it lists a split's shards from the folder, and parses each record with TFDS's NumPy
example parser. Records are parsed but frames are *not* decoded here: an episode needs K + 1 of a
video's 32 JPEGs, so decoding is left to the episode sampler (about 3.5x less JPEG work at K = 8).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fewshot_jax.data import tfrecords

log = logging.getLogger("fewshot_jax")

_SHARD = re.compile(r"^(?P<name>.+)-(?P<split>[\w]+)\.(?P<format>tfrecord|array_record)-"
                    r"(?P<index>\d{5})-of-(?P<count>\d{5})$")


@dataclasses.dataclass(frozen=True)
class Split:
  """One split of a prepared dataset: its shard files and what each record holds."""

  directory: pathlib.Path
  split: str
  file_format: str  # "tfrecord" or "array_record"
  files: tuple[str, ...]
  num_examples: int
  image_size: int
  shard_lengths: tuple[int, ...] = ()  # examples per file, in ``files`` order

  def parser(self) -> "RecordParser":
    return RecordParser(self.directory)

  def locate(self, index: int) -> tuple[str, int]:
    """The shard file holding example ``index`` of the split, and its record index there."""
    for path, n in zip(self.files, self.shard_lengths):
      if index < n:
        return path, index
      index -= n
    raise IndexError(f"{self.directory}: split {self.split!r} has {self.num_examples} examples")


def find_dataset_dir(data_dir: str | os.PathLike, dataset: str = "") -> pathlib.Path:
  """The version folder of a prepared dataset.

  Args:
    data_dir: a TFDS data dir (``<data_dir>/<name>/<config>/<version>/``) or the version folder.
    dataset: ``name/config`` (optionally ``/version``) when ``data_dir`` holds several; the newest
      version is taken when none is given.

  Raises:
    FileNotFoundError: naming what was looked for and what was found.
  """
  root = pathlib.Path(data_dir)
  if (root / "dataset_info.json").is_file():
    return root
  base = root / dataset if dataset else root
  found = sorted((p.parent for p in base.rglob("dataset_info.json")), key=_version_key)
  if not found:
    raise FileNotFoundError(
        f"{base}: no prepared dataset (no dataset_info.json below it); build one with "
        f"`fewshot-jax prepare shards --data-dir {root} ...`")
  names = {str(p.parent.relative_to(root)) for p in found}
  if len(names) > 1:
    raise FileNotFoundError(
        f"{root} holds several datasets ({', '.join(sorted(names))}); set data.dataset to one")
  return found[-1]


def _version_key(path: pathlib.Path) -> tuple[int, ...]:
  try:
    return tuple(int(x) for x in path.name.split("."))
  except ValueError:
    return (-1,)


def open_split(directory: str | os.PathLike, split: str) -> Split:
  """The shards of ``split`` in a dataset version folder, checked against ``dataset_info.json``."""
  directory = pathlib.Path(directory)
  info = json.loads((directory / "dataset_info.json").read_text())
  splits = {s["name"]: s for s in info.get("splits", [])}
  if split not in splits:
    raise KeyError(f"{directory}: no split {split!r}; it has {sorted(splits)}")
  files, formats = [], set()
  for p in sorted(directory.iterdir()):
    m = _SHARD.match(p.name)
    if m and m["split"] == split:
      files.append(str(p))
      formats.add(m["format"])
  expected = len(splits[split].get("shardLengths", []))
  if len(files) != expected or len(formats) != 1:
    raise FileNotFoundError(
        f"{directory}: split {split!r} should have {expected} shard files, found {len(files)} "
        f"({', '.join(sorted(formats)) or 'none'}); was the build interrupted?")
  features = json.loads((directory / "features.json").read_text())
  image_size = _image_size(features)
  lengths = tuple(int(n) for n in splits[split]["shardLengths"])
  return Split(directory=directory, split=split, file_format=formats.pop(), files=tuple(files),
               num_examples=sum(lengths), image_size=image_size, shard_lengths=lengths)


def _image_size(features: dict[str, Any]) -> int:
  """The frame side from ``features.json`` (frames: Sequence(Image(shape=(S, S, 3))))."""
  try:
    frames = features["featuresDict"]["features"]["frames"]["sequence"]["feature"]
    dims = frames["image"]["shape"]["dimensions"]
    return int(dims[0])
  except (KeyError, IndexError, TypeError, ValueError) as e:
    raise ValueError("features.json does not describe talking-head frames "
                     "(frames: Sequence(Image(shape=(S, S, 3))))") from e


class RecordParser:
  """Serialized example bytes -> ``{frames: list[bytes] (JPEG), landmarks, video_index, key}``.

  Picklable (it rebuilds TFDS's parser from the folder), so grain worker processes can use it.
  """

  def __init__(self, directory: str | os.PathLike):
    self.directory = str(directory)
    self._parser = None

  def __getstate__(self) -> dict[str, Any]:
    return {"directory": self.directory, "_parser": None}

  def _get(self):
    if self._parser is None:
      import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
      from tensorflow_datasets.core import example_parser  # pylint: disable=g-import-not-at-top
      features = tfds.features.FeaturesDict.from_config(self.directory)
      self._parser = example_parser.ExampleParserNp(features.get_serialized_info())
    return self._parser

  def __call__(self, record: bytes) -> dict[str, Any]:
    ex = self._get().parse_example(record)
    key = ex["key"]
    return {
        "frames": list(ex["frames"]),
        "landmarks": np.asarray(ex["landmarks"], np.float32).reshape(-1, 68, 2),
        "video_index": int(ex["video_index"]),
        "key": key.decode() if isinstance(key, bytes) else str(key),
        "identity": _text(ex.get("identity", key)),
    }


def _text(value: Any) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


class CheckedParser:
  """``tfrecords.Record`` -> a parsed video, or None for a damaged record (logged by shard file
  and offset), so the episode pipeline skips it under its skip budget instead of stopping.

  A record whose checksum passed but which does not parse, or whose landmarks are not finite, is
  skipped the same way: it was written wrong, and a re-read would fail the same way every time.
  """

  def __init__(self, parser: RecordParser):
    self.parser = parser

  def __call__(self, record: tfrecords.Record) -> dict[str, Any] | None:
    if record.payload is None:
      log.warning("skipping damaged record %s at %s: %s", record.path, record.where, record.error)
      return None
    try:
      video = self.parser(record.payload)
    except Exception as e:  # pylint: disable=broad-except  (protobuf and numpy raise many types)
      log.warning("skipping record %s at %s: it does not parse as an example: %s", record.path,
                  record.where, e)
      return None
    if not np.isfinite(video["landmarks"]).all():
      log.warning("skipping record %s at %s (video %s): its landmarks are not all finite",
                  record.path, record.where, video["key"])
      return None
    return video


def iter_records(split: Split):
  """Every serialized example of ``split``, shard by shard, in storage order (no TensorFlow).

  Raises:
    ValueError: a TFRecord is damaged (named by shard file and byte offset).
  """
  if split.file_format == "array_record":
    from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
    for path in split.files:
      reader = array_record_module.ArrayRecordReader(str(path))
      try:
        for i in range(reader.num_records()):
          yield reader.read([i])[0]
      finally:
        reader.close()
  else:
    for path in split.files:
      for record in tfrecords.iter_file(path):
        if record.payload is None:
          raise ValueError(f"{record.path} at {record.where}: {record.error}; "
                           "`fewshot-jax data verify` lists every damaged record")
        yield record.payload


def read_videos(
    directory: str | os.PathLike, split: str, max_videos: int | None = None,
    choose: Callable[[list[str]], Sequence[int]] | None = None,
) -> dict[str, np.ndarray]:
  """A split's videos decoded into arrays, in ``video_index`` order (for evaluation).

  Args:
    choose: given every video's identity (in ``video_index`` order), the positions to keep
      (evaluation's stratified sample); applied before ``max_videos`` and before any JPEG is
      decoded.

  Returns:
    ``frames`` uint8 ``[V, T, S, S, 3]``, ``landmarks`` f32 ``[V, T, 68, 2]``, ``keys`` ``[V]``,
    ``identities`` ``[V]``.

  Raises:
    ValueError: the videos have different frame counts (they cannot be stacked; the message names
      two of them).
  """
  from fewshot_jax.prep import jpeg  # pylint: disable=g-import-not-at-top

  s = open_split(directory, split)
  parse = s.parser()
  videos = sorted((parse(r) for r in iter_records(s)), key=lambda v: v["video_index"])
  if choose is not None:
    videos = [videos[i] for i in sorted(choose([v["identity"] for v in videos]))]
  if max_videos is not None:
    videos = videos[:max_videos]
  lengths = {len(v["frames"]) for v in videos}
  if len(lengths) > 1:
    short = min(videos, key=lambda v: len(v["frames"]))
    long = max(videos, key=lambda v: len(v["frames"]))
    raise ValueError(f"{directory} split {split!r}: videos have {sorted(lengths)} frames (e.g. "
                     f"{short['key']}: {len(short['frames'])}, {long['key']}: "
                     f"{len(long['frames'])}); evaluation needs equal lengths")
  return {
      "frames": np.stack([np.stack([jpeg.decode(f) for f in v["frames"]]) for v in videos]),
      "landmarks": np.stack([v["landmarks"] for v in videos]),
      "keys": np.asarray([v["key"] for v in videos]),
      "identities": np.asarray([v["identity"] for v in videos]),
  }
