"""`fewshot-jax data verify`: check every shard of a prepared dataset before a long run reads it.

For TFRecord shards each record's framing is checked (the 8-byte length and the masked CRC32C of
the length, then the data and its masked CRC32C), and every example is decoded with the dataset's
own features. ArrayRecord shards are read record by record and decoded the same way. Problems are
reported by file and byte offset (TFRecord) or record index (ArrayRecord); nothing is modified.
TensorFlow is not needed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Iterator
from typing import Any

from fewshot_jax.data import tfrecords

masked_crc32c = tfrecords.masked_crc32c  # the checksum lives with the reader training uses


@dataclasses.dataclass(frozen=True)
class Problem:
  file: str
  where: str  # "byte 1234" or "record 5"
  error: str


class FramingError(Exception):
  def __init__(self, offset: int, error: str):
    super().__init__(f"byte {offset}: {error}")
    self.offset, self.error = offset, error


def iter_tfrecord(path: str | os.PathLike) -> Iterator[tuple[int, bytes]]:
  """Yields ``(byte offset, payload)`` for each record, checking lengths and both checksums.

  The same checked reader as training's (``fewshot_jax.data.tfrecords``), but strict: verify
  reports a shard's first damaged record and stops there.

  Raises:
    FramingError: at the offset of the first record whose framing is wrong or truncated.
  """
  for record in tfrecords.iter_file(path):
    if record.payload is None:
      raise FramingError(record.offset, record.error)
    yield record.offset, record.payload


def _iter_array_record(path: pathlib.Path) -> Iterator[tuple[int, bytes]]:
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top

  reader = array_record_module.ArrayRecordReader(str(path))
  try:
    for i in range(reader.num_records()):
      yield i, reader.read([i])[0]
  finally:
    reader.close()


def dataset_dirs(data_dir: str | os.PathLike) -> list[pathlib.Path]:
  """Every prepared dataset version folder (holding ``dataset_info.json``) under ``data_dir``."""
  return sorted(p.parent for p in pathlib.Path(data_dir).rglob("dataset_info.json"))


def verify_dataset(directory: pathlib.Path) -> tuple[dict[str, Any], list[Problem]]:
  """Checks all shards of one dataset folder; returns counts and problems."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  features = tfds.features.FeaturesDict.from_config(str(directory))
  info = json.loads((directory / "dataset_info.json").read_text())
  expected = {s["name"]: sum(int(n) for n in s.get("shardLengths", [])) for s in info["splits"]}
  problems: list[Problem] = []
  counts: dict[str, int] = {}
  for shard in sorted(p for p in directory.iterdir() if ".tfrecord-" in p.name
                      or ".array_record-" in p.name):
    split = shard.name.split("-")[1].split(".")[0]
    is_tfrecord = ".tfrecord-" in shard.name
    records = iter_tfrecord(shard) if is_tfrecord else _iter_array_record(shard)
    n = 0
    try:
      for where, payload in records:
        try:
          features.deserialize_example_np(payload)
        except Exception as e:  # pylint: disable=broad-except
          loc = f"byte {where}" if is_tfrecord else f"record {where}"
          problems.append(Problem(str(shard), loc, f"example does not decode: {e}"))
        n += 1
    except FramingError as e:
      problems.append(Problem(str(shard), f"byte {e.offset}", e.error))
    except Exception as e:  # pylint: disable=broad-except
      problems.append(Problem(str(shard), f"record {n}", f"unreadable: {e}"))
    counts[split] = counts.get(split, 0) + n
  for split, n in expected.items():
    if counts.get(split, 0) != n:
      problems.append(Problem(str(directory), f"split {split}",
                              f"{counts.get(split, 0)} readable examples, dataset_info says {n}"))
  return {"dataset": str(directory), "examples": counts}, problems


def verify(data_dir: str | os.PathLike) -> dict[str, Any]:
  """Verifies every dataset under ``data_dir``; ``ok`` is False if anything is wrong."""
  dirs = dataset_dirs(data_dir)
  if not dirs:
    raise FileNotFoundError(f"{data_dir}: no prepared dataset (no dataset_info.json below it)")
  datasets, problems = [], []
  for d in dirs:
    summary, found = verify_dataset(d)
    datasets.append(summary)
    problems.extend(found)
  return {"ok": not problems, "datasets": datasets,
          "problems": [dataclasses.asdict(p) for p in problems]}
