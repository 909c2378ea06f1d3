"""`fewshot-jax data verify` finds a flipped byte and a truncated shard, by file and offset."""

import json
import struct

import pytest

from fewshot_jax import cli
from fewshot_jax.prep import tfds_builder, verify


@pytest.fixture
def shards(tmp_path):
  config = tfds_builder.TalkingHeadsConfig(
      name="synthetic_verify", source="synthetic", image_size=32, num_train_videos=3,
      num_test_videos=2, frames_per_video=4, frame_stride=2)
  tfds_builder.TalkingHeads(config=config, data_dir=tmp_path).download_and_prepare()
  (directory,) = verify.dataset_dirs(tmp_path)
  return tmp_path, directory


def _records(path):
  return [offset for offset, _ in verify.iter_tfrecord(path)]


def test_clean_dataset_verifies(shards, capsys):
  data_dir, _ = shards
  assert cli.main(["data", "verify", "--data-dir", str(data_dir)]) == 0
  report = json.loads(capsys.readouterr().out)
  assert report["ok"] and report["datasets"][0]["examples"] == {"train": 3, "test": 2}


def test_known_crc32c_value():
  # CRC32C("123456789") = 0xE3069283 (the standard check value), then TFRecord's mask.
  crc = 0xE3069283
  assert verify.masked_crc32c(b"123456789") == (
      (((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def test_flipped_byte_and_truncation_are_reported_by_file_and_offset(shards, capsys):
  data_dir, directory = shards
  train = next(directory.glob("*-train.tfrecord-*"))
  test = next(directory.glob("*-test.tfrecord-*"))
  offsets = _records(train)
  second = offsets[1]
  data = bytearray(train.read_bytes())
  data[second + 12 + 40] ^= 0xFF  # a byte inside the second record's payload
  train.write_bytes(bytes(data))
  raw = test.read_bytes()
  (length,) = struct.unpack("<Q", raw[:8])
  test.write_bytes(raw[: 16 + length + 20])  # first record whole, the second cut short
  assert cli.main(["data", "verify", "--data-dir", str(data_dir)]) == 1
  report = json.loads(capsys.readouterr().out)
  problems = {(p["file"], p["where"]): p["error"] for p in report["problems"]}
  assert problems[(str(train), f"byte {second}")] == "data checksum mismatch"
  assert "truncated" in problems[(str(test), f"byte {16 + length}")]
  assert not report["ok"]
