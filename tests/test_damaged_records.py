"""Training never silently consumes a damaged record: a flipped byte, a record that does not parse
and a cut shard are each skipped and logged by shard file and offset, and a resumed stream does
not meet them again."""

from __future__ import annotations

import logging
import pathlib
import shutil
import struct

import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import tiny_config
from fewshot_jax.data import episodes, shards, tfrecords
from fewshot_jax.prep import tfds_builder

VIDEOS = 12


def _build(root: pathlib.Path, file_format: str) -> pathlib.Path:
  """12 synthetic videos of 8 frames at 32 px in 4 shards; the version folder."""
  config = tfds_builder.TalkingHeadsConfig(
      name="damaged_test", source="synthetic", image_size=32, num_train_videos=VIDEOS,
      num_test_videos=0, frames_per_video=8, frame_stride=8)
  builder = tfds_builder.TalkingHeads(config=config, data_dir=root, file_format=file_format)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(num_shards=4))
  return pathlib.Path(builder.data_dir)


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> pathlib.Path:
  return _build(tmp_path_factory.mktemp("clean"), "tfrecord")


@pytest.fixture
def copy(clean, tmp_path) -> pathlib.Path:
  shutil.copytree(clean, tmp_path / "data")
  return tmp_path / "data"


def _records(path: pathlib.Path) -> list[tuple[int, bytes]]:
  return [(r.offset, r.payload) for r in tfrecords.iter_file(path)]


def _frame(payload: bytes) -> bytes:
  """A TFRecord around ``payload`` with correct checksums."""
  length = struct.pack("<Q", len(payload))
  return (length + struct.pack("<I", tfrecords.masked_crc32c(length)) + payload
          + struct.pack("<I", tfrecords.masked_crc32c(payload)))


def _indices_over(directory: pathlib.Path, batches: int) -> set[int]:
  source = episodes.EpisodeSource.from_shards(str(directory))
  cfg = tiny_config("train.batch_size=4", "train.k_shots=3", "data.prefetch=0")
  it = iter(episodes.episode_dataset(source, cfg))
  return {int(i) for _ in range(batches) for i in next(it)["video_index"]}


def test_a_flipped_landmark_byte_skips_the_video_and_names_shard_and_offset(copy, caplog):
  shard = sorted(copy.glob("*-train.tfrecord-*"))[1]
  (offset, payload), *_ = _records(shard)
  video = shards.RecordParser(copy)(payload)
  # A byte of the landmarks themselves: the example still parses, with one wrong coordinate.
  at = payload.index(video["landmarks"][3].tobytes())
  data = bytearray(shard.read_bytes())
  data[offset + 12 + at + 2] ^= 0x40
  shard.write_bytes(bytes(data))
  with caplog.at_level(logging.WARNING, logger="fewshot_jax"):
    seen = _indices_over(copy, 9)  # 36 episodes: every readable video, several times
  assert seen == set(range(VIDEOS)) - {video["video_index"]}
  assert f"{shard} at byte {offset}: data checksum mismatch" in caplog.text


def test_a_record_that_does_not_parse_is_skipped_not_raised(copy, caplog):
  shard = sorted(copy.glob("*-train.tfrecord-*"))[2]
  records = _records(shard)
  second = records[1][0]
  victim = shards.RecordParser(copy)(records[1][1])["video_index"]
  # Framing and checksums right, contents not an example: the checksum cannot catch this one.
  shard.write_bytes(b"".join(_frame(p) for _, p in records[:1]) + _frame(b"\x0a\xff garbage")
                    + b"".join(_frame(p) for _, p in records[2:]))
  with caplog.at_level(logging.WARNING, logger="fewshot_jax"):
    seen = _indices_over(copy, 9)
  assert seen == set(range(VIDEOS)) - {victim}
  assert f"{shard} at byte {second}: it does not parse" in caplog.text


def test_a_damaged_length_ends_the_shard_and_a_resume_does_not_meet_it_again(copy):
  shard = sorted(copy.glob("*-train.tfrecord-*"))[0]
  records = _records(shard)
  assert len(records) == 3
  data = bytearray(shard.read_bytes())
  data[records[1][0] + 3] ^= 0x01  # the second record's length: nothing after it can be found
  shard.write_bytes(bytes(data))
  it = iter(tfrecords.CheckedTFRecordIterDataset(str(shard)))
  first, bad = next(it), next(it)
  assert first.payload == records[0][1]
  assert (bad.offset, bad.payload, bad.error) == (records[1][0], None, "length checksum mismatch")
  state = it.get_state()
  with pytest.raises(StopIteration):
    next(it)
  again = iter(tfrecords.CheckedTFRecordIterDataset(str(shard)))
  again.set_state(state)
  with pytest.raises(StopIteration):  # the resumed reader does not re-read the damage
    next(again)
  # A truncated shard: the cut record is reported, not raised.
  shard.write_bytes(bytes(data[: records[0][0] + 30]))
  (cut,) = list(tfrecords.iter_file(shard))
  assert cut.payload is None and cut.error.startswith("truncated record")


def test_mostly_damaged_shards_stop_the_run(copy):
  for shard in copy.glob("*-train.tfrecord-*"):
    data = bytearray(shard.read_bytes())
    for offset, _ in _records(shard):
      data[offset + 20] ^= 0xFF
    shard.write_bytes(bytes(data))
  # The skip budget (grain's filter threshold: more than half of a window skipped) ends the run.
  with pytest.raises(ValueError, match=r"skipped 100\.00 % of the last seen"):
    _indices_over(copy, 1)


def test_evaluation_reads_refuse_a_damaged_record(copy):
  shard = sorted(copy.glob("*-train.tfrecord-*"))[3]
  offset = _records(shard)[2][0]
  data = bytearray(shard.read_bytes())
  data[offset + 40] ^= 0xFF
  shard.write_bytes(bytes(data))
  with pytest.raises(ValueError, match=f"{shard} at byte {offset}: data checksum mismatch"):
    shards.read_videos(copy, "train")


def test_clean_shards_give_the_same_stream_as_before(clean):
  """The checked reader's records are the bytes grain's own reader returns."""
  from grain import experimental as gx  # pylint: disable=g-import-not-at-top
  for shard in sorted(clean.glob("*-train.tfrecord-*")):
    assert [p for _, p in _records(shard)] == list(gx.TFRecordIterDataset(str(shard)))
  assert np.all([r.payload is not None for r in tfrecords.iter_file(shard)])


def test_a_damaged_array_record_chunk_is_skipped_and_named(tmp_path, caplog):
  directory = _build(tmp_path, "array_record")
  shard = sorted(directory.glob("*-train.array_record-*"))[1]
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  reader = array_record_module.ArrayRecordReader(str(shard))
  victim = shards.RecordParser(directory)(reader.read([0])[0])["video_index"]
  reader.close()
  data = bytearray(shard.read_bytes())
  data[300] ^= 0xFF  # inside the shard's first chunk: riegeli's chunk hash catches it
  shard.write_bytes(bytes(data))
  with caplog.at_level(logging.WARNING, logger="fewshot_jax"):
    seen = _indices_over(directory, 9)
  assert victim not in seen and len(seen) >= VIDEOS - 3  # a chunk may hold several records
  assert f"{shard} at record 0: unreadable: Corrupted Riegeli" in caplog.text
