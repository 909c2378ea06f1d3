"""What checking TFRecord framing and CRC32C costs as records are read (``data/tfrecords.py``).

Why: training now reads every shard through the checked reader instead of grain's
``TFRecordIterDataset``, which skips both checksums. This reads the same real shards (synthetic
256 px videos of 32 JPEG frames, written by the data-prep builder) with both readers, and with the
checked reader plus parsing, and reports MB/s and records/s for each, so the check's share of an
episode's cost can be read off beside ``benchmarks/input.py``'s episodes/s.

  python benchmarks/record_reader.py [--videos 32] [--repeats 5] [--out runs/bench/record_reader.json]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence

import tensorflow_datasets as tfds
from grain import experimental as gx

from fewshot_jax.atomic_files import write_json
from fewshot_jax.data import shards, tfrecords
from fewshot_jax.prep import tfds_builder


def _time(read: Callable[[], Iterable[bytes]], repeats: int) -> tuple[float, int, int]:
  """Median seconds of reading every record, with the record count and bytes."""
  times, count, size = [], 0, 0
  for _ in range(repeats):
    t0 = time.perf_counter()
    count = size = 0
    for payload in read():
      count += 1
      size += len(payload)
    times.append(time.perf_counter() - t0)
  return statistics.median(times), count, size


def main(argv: Sequence[str] | None = None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--videos", type=int, default=32)
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--out", default="runs/bench/record_reader.json")
  args = ap.parse_args(argv)

  with tempfile.TemporaryDirectory() as tmp:
    config = tfds_builder.TalkingHeadsConfig(
        name="bench_records", source="synthetic", image_size=256, num_train_videos=args.videos,
        num_test_videos=4, frames_per_video=32, frame_stride=8)
    builder = tfds_builder.TalkingHeads(config=config, data_dir=tmp, file_format="tfrecord")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(num_shards=4))
    split = shards.open_split(builder.data_dir, "train")
    files = list(split.files)
    parse = split.parser()
    for path in files:  # warm the page cache: both readers then read from memory
      pathlib.Path(path).read_bytes()

    def grain_reader():
      for path in files:
        yield from gx.TFRecordIterDataset(path)

    def checked_reader():
      for path in files:
        for record in tfrecords.CheckedTFRecordIterDataset(path):
          yield record.payload

    def checked_and_parsed():
      for payload in checked_reader():
        parse(payload)
        yield payload

    results = {}
    for name, read in (("grain_unchecked", grain_reader), ("checked", checked_reader),
                       ("checked_and_parsed", checked_and_parsed)):
      seconds, count, size = _time(read, args.repeats)
      results[name] = {"seconds": seconds, "records": count, "bytes": size,
                       "mb_per_s": size / seconds / 1e6, "records_per_s": count / seconds}
      print(f"{name:20s} {results[name]['mb_per_s']:8.1f} MB/s "
            f"{results[name]['records_per_s']:8.1f} records/s ({count} records, {size / 1e6:.1f} MB)")
    results["check_cost_ms_per_record"] = 1e3 * (
        results["checked"]["seconds"] - results["grain_unchecked"]["seconds"]) / max(1, count)
    out = write_json(args.out, {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "videos": args.videos, "frames_per_video": 32, "image_size": 256, "results": results})
    print(f"check: {results['check_cost_ms_per_record']:.3f} ms per record; wrote {out}")


if __name__ == "__main__":
  main()
