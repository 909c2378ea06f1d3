"""Stage (b) of data prep: TFDS shards from the synthetic generator and from a landmark cache of a
real clip, in both file formats, read back and compared with what went in."""

import shutil

import apache_beam as beam
import dlib  # noqa: F401  (the dev extra pins it: missing is a failure, not a skip)
import numpy as np
import pytest
import tensorflow_datasets as tfds

from fewshot_jax import cli
from fewshot_jax.data import synthetic
from fewshot_jax.prep import jpeg, landmark_cache, layouts, tfds_builder
from test_prep_backends import carphone_path


def test_synthetic_array_record_shards_read_back_without_tensorflow(tmp_path):
  config = tfds_builder.TalkingHeadsConfig(
      name="synthetic_test", source="synthetic", image_size=64, num_train_videos=5,
      num_test_videos=2, frames_per_video=6, frame_stride=8)
  builder = tfds_builder.TalkingHeads(config=config, data_dir=tmp_path, file_format="array_record")
  builder.download_and_prepare()
  assert builder.info.splits["train"].num_examples == 5
  assert builder.info.splits["test"].num_examples == 2
  source = builder.as_data_source("train")  # random access over ArrayRecord; no TensorFlow
  seen = set()
  for example in source:
    seed = int(example["key"].decode().split("/")[1])
    frames, points = synthetic.render_video(seed, 6, 64, frame_stride=8)
    decoded = np.stack(example["frames"])  # the numpy decoder gives a list per sequence
    assert decoded.shape == (6, 64, 64, 3) and decoded.dtype == np.uint8
    np.testing.assert_array_equal(example["landmarks"], points)
    # The stored JPEGs are exactly the rendered frames encoded at the configured quality.
    expected = np.stack([jpeg.decode(jpeg.encode(f, 95)) for f in frames])
    np.testing.assert_array_equal(decoded, expected)
    assert example["frame_indices"][:, 1].tolist() == [0, 8, 16, 24, 32, 40]
    seen.add(int(example["video_index"]))
  assert seen == set(range(5))  # dense rows of W


@pytest.fixture(scope="module")
def carphone_cache(tmp_path_factory):
  root = tmp_path_factory.mktemp("videos")
  (root / "speaker").mkdir()
  shutil.copy(carphone_path(), root / "speaker" / "carphone.mp4")
  cache = tmp_path_factory.mktemp("cache")
  opts = landmark_cache.PrepOptions(frames_per_video=8, image_size=256)
  summary = landmark_cache.build_cache(layouts.list_videos(root, "folder"), cache, opts)
  assert summary["written"] == 1
  (cache / "broken.npz").write_bytes(b"not an npz")  # skipped with a warning, indices stay dense
  return cache


def test_cache_to_tfrecord_shards_via_cli_keeps_crops_and_landmarks(carphone_cache, tmp_path):
  assert cli.main(["prepare", "shards", "--config", "video_folder", "--manual-dir",
                   str(carphone_cache), "--data-dir", str(tmp_path)]) == 0
  built = tfds.builder_from_directory(next(tmp_path.glob("talking_heads/video_folder/*")))
  assert built.info.splits["train"].num_examples == 1
  assert list(tmp_path.glob("talking_heads/video_folder/*/*.tfrecord*"))
  ds = built.as_dataset(split="train", decoders={"frames": tfds.decode.SkipDecoding()})
  (example,) = list(tfds.as_numpy(ds))
  frames, points, meta = landmark_cache.load_entry(carphone_cache / "speaker" / "carphone.npz")
  # The JPEG bytes pass through untouched: decoded shards equal decoded cache entries exactly.
  for data, frame in zip(example["frames"], frames):
    np.testing.assert_array_equal(jpeg.decode(data), frame)
  np.testing.assert_array_equal(example["landmarks"], points)
  assert example["video_index"] == 0
  assert example["identity"].decode() == "speaker"
  assert example["detector"].decode() == "dlib"
  assert example["source_paths"][0].decode().endswith("carphone.mp4")
  assert example["frame_indices"].shape == (8, 2)
  assert example["fps"] == pytest.approx(meta["fps"])


def test_beam_direct_runner_writes_the_same_examples(tmp_path):
  config = tfds_builder.TalkingHeadsConfig(
      name="synthetic_beam", source="synthetic", image_size=32, num_train_videos=4,
      num_test_videos=0, frames_per_video=4, frame_stride=2)
  examples = {}
  for mode in ("local", "beam"):
    builder = tfds_builder.TalkingHeads(config=config, data_dir=tmp_path / mode,
                                        file_format="array_record")
    download_config = tfds.download.DownloadConfig(
        beam_runner=beam.runners.DirectRunner() if mode == "beam" else None)
    builder.download_and_prepare(download_config=download_config)
    assert builder._use_beam == (mode == "beam")  # pylint: disable=protected-access
    assert builder.info.splits["train"].num_examples == 4
    examples[mode] = {ex["key"]: ex for ex in builder.as_data_source("train")}
  assert sorted(examples["beam"]) == sorted(examples["local"])
  for key, ex in examples["beam"].items():
    ref = examples["local"][key]
    assert ex["video_index"] == ref["video_index"]
    np.testing.assert_array_equal(ex["landmarks"], ref["landmarks"])
    np.testing.assert_array_equal(np.stack(ex["frames"]), np.stack(ref["frames"]))
