"""The grain episode pipeline on real shards from the data-prep builder, in both file formats."""

from __future__ import annotations

import logging
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import tiny_config
from fewshot_jax.data import episodes, shards
from fewshot_jax.prep import tfds_builder

VIDEOS = 12


@pytest.fixture(scope="module", params=["tfrecord", "array_record"])
def dataset(request, tmp_path_factory) -> pathlib.Path:
  """12 synthetic videos of 8 frames at 32 px in 4 shards; the version folder."""
  root = tmp_path_factory.mktemp(request.param)
  config = tfds_builder.TalkingHeadsConfig(
      name="episodes_test", source="synthetic", image_size=32, num_train_videos=VIDEOS,
      num_test_videos=4, frames_per_video=8, frame_stride=8)
  builder = tfds_builder.TalkingHeads(config=config, data_dir=root, file_format=request.param)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(num_shards=4))
  return pathlib.Path(builder.data_dir)


def _cfg(*extra: str):
  return tiny_config("train.batch_size=4", "train.k_shots=3", "data.prefetch=2", *extra)


def test_batches_have_the_training_layout_and_real_frames(dataset):
  source = episodes.EpisodeSource.from_shards(str(dataset.parents[2]))  # a TFDS data dir works
  assert source.num_videos == VIDEOS and source.image_size == 32
  assert all(f".{source.kind}-" in f for f in source.split.files)
  batch = next(iter(episodes.episode_dataset(source, _cfg())))
  assert {k: (v.shape, v.dtype.name) for k, v in batch.items()} == {
      "frames": ((4, 3, 32, 32, 3), "uint8"), "landmarks": ((4, 3, 68, 2), "float32"),
      "target": ((4, 32, 32, 3), "uint8"), "target_landmarks": ((4, 68, 2), "float32"),
      "video_index": ((4,), "int32")}
  # Real decoded faces, not blank frames, and the target is not one of the sources.
  assert batch["frames"].std() > 10
  for i in range(4):
    for j in range(3):
      assert not np.array_equal(batch["frames"][i, j], batch["target"][i])
  assert ((batch["landmarks"] > 0) & (batch["landmarks"] < 32)).all()


def test_each_process_reads_its_own_videos(dataset):
  """Two processes' streams over one epoch: disjoint for TFRecord shards (each reads its own),
  and together the same global batches as one process for ArrayRecord."""
  source = episodes.EpisodeSource.from_shards(str(dataset))
  cfg = _cfg("data.shuffle_window=2")  # windows that do not straddle the epoch's end
  per_process = []
  for pi in range(2):
    it = iter(episodes.episode_dataset(source, cfg, process_index=pi, process_count=2))
    per_process.append([next(it) for _ in range(3)])  # 3 batches of 2 = one epoch of 6 videos
  if source.kind == "tfrecord":
    seen = [{int(i) for b in batches for i in b["video_index"]} for batches in per_process]
    assert len(seen[0]) == len(seen[1]) == VIDEOS // 2 and not seen[0] & seen[1]
  else:
    single = iter(episodes.episode_dataset(source, cfg, process_index=0, process_count=1))
    for a, b in zip(per_process[0], per_process[1]):
      whole = next(single)
      for key in whole:
        np.testing.assert_array_equal(np.concatenate([a[key], b[key]]), whole[key])


def test_the_iterator_state_resumes_the_stream_exactly(dataset):
  source = episodes.EpisodeSource.from_shards(str(dataset))
  ds = episodes.episode_dataset(source, _cfg())
  it = iter(ds)
  for _ in range(5):  # into the second epoch
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(4)]
  again = iter(ds)
  again.set_state(state)
  for want in expected:
    got = next(again)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])


# ArrayRecord only: TFRecord streams depend on the worker count by design (each reads its shards).
@pytest.mark.parametrize("dataset", ["array_record"], indirect=True)
def test_worker_processes_give_the_same_stream_and_resume(dataset):
  """Random-access batches are built whole by one worker each, so the stream does not depend on
  the number of workers; a worker-backed iterator's state resumes it exactly."""
  source = episodes.EpisodeSource.from_shards(str(dataset))
  assert source.kind == "array_record"
  inline = iter(episodes.episode_dataset(source, _cfg()))
  want = [next(inline) for _ in range(6)]
  ds = episodes.episode_dataset(source, _cfg("data.workers=2"))
  it = iter(ds)
  try:
    got = [next(it) for _ in range(3)]
    state = it.get_state()
  finally:
    it.close()  # grain's advice: close worker-backed iterators rather than wait for the GC
  resumed = iter(ds)
  try:
    resumed.set_state(state)
    got += [next(resumed) for _ in range(3)]
  finally:
    resumed.close()
  for a, b in zip(got, want):
    for key in b:
      np.testing.assert_array_equal(a[key], b[key])


def test_training_input_never_imports_tensorflow(dataset):
  code = (
      "import sys\n"
      f"sys.path.insert(0, {str(pathlib.Path(__file__).parent)!r})\n"
      "from conftest import tiny_config\n"
      "from fewshot_jax.data import episodes\n"
      f"source = episodes.EpisodeSource.from_shards({str(dataset)!r})\n"
      "it = iter(episodes.episode_dataset(source, tiny_config('train.batch_size=4')))\n"
      "next(it); next(it)\n"
      "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]


def test_a_bad_video_is_skipped_and_named(caplog):
  maker = episodes.EpisodeMaker(k_shots=2, image_size=8)
  good = np.zeros((4, 8, 8, 3), np.uint8)
  points = np.zeros((4, 68, 2), np.float32)
  rng = np.random.default_rng(0)
  with caplog.at_level(logging.WARNING, logger="fewshot_jax"):
    assert maker({"frames": [b"not a jpeg"] * 4, "landmarks": points, "video_index": 0,
                  "key": "vox/id1/broken"}, rng) is None
    assert maker({"frames": good[:2], "landmarks": points[:2], "video_index": 1,
                  "key": "vox/id2/short"}, rng) is None
  assert "vox/id1/broken" in caplog.text and "does not decode" in caplog.text
  assert "vox/id2/short" in caplog.text and "needs 3" in caplog.text
  assert maker({"frames": good, "landmarks": points, "video_index": 2}, rng)["frames"].shape == (
      2, 8, 8, 3)


def test_dataset_lookup_errors_say_what_was_found(dataset, tmp_path):
  with pytest.raises(FileNotFoundError, match="no prepared dataset"):
    shards.find_dataset_dir(tmp_path)
  with pytest.raises(KeyError, match="no split 'validation'"):
    shards.open_split(dataset, "validation")
  # A shard missing from a build that was cut short.
  import shutil  # pylint: disable=g-import-not-at-top
  copy = tmp_path / "copy"
  shutil.copytree(dataset, copy)
  next(copy.glob("*-train.*-00002-of-00004")).unlink()
  with pytest.raises(FileNotFoundError, match="should have 4 shard files, found 3"):
    shards.open_split(copy, "train")
  cfg = _cfg()
  cfg.model.image_size = 64
  with pytest.raises(ValueError, match="frames are 32 px, model.image_size is 64"):
    episodes.episode_dataset(episodes.EpisodeSource.from_shards(str(dataset)), cfg)


def test_a_k_the_prepared_videos_cannot_serve_is_refused_before_training(dataset):
  """8-frame videos serve K <= 7; K = 8 would skip every video and never yield a batch."""
  from fewshot_jax.data.sources import train_sources  # pylint: disable=g-import-not-at-top

  source, _ = train_sources(_cfg("data.source='shards'", f"data.data_dir='{dataset}'",
                                 "train.k_shots=7"))
  assert source.num_videos == VIDEOS
  with pytest.raises(ValueError, match=r"train.k_shots=8 needs 9 frames per video; .* split "
                                       r"'train' holds 8 \(its first video"):
    train_sources(_cfg("data.source='shards'", f"data.data_dir='{dataset}'", "train.k_shots=8"))
