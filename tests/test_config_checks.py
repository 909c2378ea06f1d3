"""Configs are checked in one place before anything compiles: every shipped config passes, each
mistake is named by its field, intervals of 0 are off, and the paper's synthetic source streams."""

from __future__ import annotations

import pathlib
import time

import numpy as np
import pytest

from conftest import random_videos, tiny_config
from fewshot_jax import config as config_lib
from fewshot_jax import config_checks
from fewshot_jax.data import episodes, synthetic
from fewshot_jax.data.sources import train_sources
from fewshot_jax.train.loop import train

SHIPPED = sorted(p for p in config_lib.EXPERIMENTS.rglob("*.py")
                 if p.name != "__init__.py" and "sweeps" not in p.parts)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(config_lib.EXPERIMENTS)))
def test_every_shipped_config_is_valid(path):
  cfg = config_lib.load_config(str(path))
  if cfg.data.source == "shards":  # the one field such a config leaves to the user
    with pytest.raises(ValueError, match="data.data_dir='': expected a TFDS data dir"):
      config_checks.validate(cfg)
    cfg.data.data_dir = "/data/shards"
  if not cfg.loss.allow_pixel_fallback:  # the paper's configs: the perceptual weights too
    with pytest.raises(ValueError, match="loss.vgg19_path: not set"):
      config_checks.validate(cfg)
    cfg.loss.vgg19_path, cfg.loss.vggface_path = "/w/vgg19.safetensors", "/w/vggface.safetensors"
    config_checks.validate(cfg, check_files=False)
    return
  config_checks.validate(cfg)


@pytest.mark.parametrize("override, message", [
    ("train.log_every=-1", "train.log_every=-1: expected an int >= 0 (0: off)"),
    ("train.checkpoint_every=-5", "train.checkpoint_every=-5: expected an int >= 0 (0: off)"),
    ("train.k_shots=0", "train.k_shots=0: expected an int >= 1"),
    ("train.k_shots=40", "data.frames_per_video=32: expected at least train.k_shots + 1 = 41"),
    ("train.batch_size=0", "train.batch_size=0: expected an int >= 1"),
    ("train.lr_g=0.0", "train.lr_g=0.0: expected > 0"),
    ("train.b2=1.0", "train.b2=1.0: expected in [0, 1)"),
    ("train.variant='fx'", "train.variant='fx': expected 'ft' or 'ff'"),
    ("train.compute_dtype='float16'", "train.compute_dtype='float16': expected 'float32' or"),
    ("train.mesh_shape=(-1, -1)", "train.mesh_shape=(-1, -1): expected positive ints, with at most"),
    ("train.mesh_axes=('data', 'fsdp')", "train.mesh_axes=('data', 'fsdp'): expected one name per"),
    ("data.source='shard'", "data.source='shard': expected 'shards' or 'synthetic'"),
    ("data.source='shards'", "data.data_dir='': expected a TFDS data dir"),
    ("data.frame_stride=0", "data.frame_stride=0: expected an int >= 1"),
    ("loss.fm_weight=-1.0", "loss.fm_weight=-1.0: expected >= 0"),
    ("loss.vgg19_path='/nonexistent/vgg19.safetensors'",
     "loss.vgg19_path='/nonexistent/vgg19.safetensors': no such file"),
    ("model.embed_dim=64", "model.embed_dim=64 must equal model.e_channels[-1]=128"),
    ("model.g_up_channels=(32, 16)", "model.g_up_channels=(32, 16): expected as many entries"),
    ("model.e_attn_res=(128,)", "model.e_attn_res=(128,): expected a tuple of resolutions"),
    ("finetune.d_steps=-1", "finetune.d_steps=-1: expected an int >= 0"),
    ("eval.shots=(0, 8)", "eval.shots=(0, 8): expected a non-empty tuple of ints >= 1"),
])
def test_each_mistake_is_named_by_its_field(override, message):
  cfg = config_lib.apply_overrides(config_lib.load_config("demo_64"), [override])
  with pytest.raises(ValueError) as e:
    config_checks.validate(cfg)
  assert message in str(e.value)


def test_all_problems_are_reported_at_once():
  cfg = config_lib.apply_overrides(config_lib.load_config("demo_64"),
                                   ["train.log_every=-1", "train.batch_size=0"])
  with pytest.raises(ValueError, match="train.batch_size=0: .*; train.log_every=-1"):
    config_checks.validate(cfg)


def test_train_refuses_a_bad_config_before_building_anything(tmp_path):
  frames, points = random_videos(4, 8, 32)
  workdir = tmp_path / "run"
  t0 = time.perf_counter()
  with pytest.raises(ValueError, match="train.d_steps=0"):
    train(tiny_config("train.d_steps=0"), workdir, episodes.EpisodeSource.from_arrays(frames, points))
  assert time.perf_counter() - t0 < 5  # no compile happened
  assert not workdir.exists()


def test_every_interval_of_zero_is_off(tmp_path):
  """0 turns logging, checkpoints, samples and evaluation off alike; before, log_every=0 and
  checkpoint_every=0 died with a ZeroDivisionError after the step had compiled."""
  frames, points = random_videos(8, 8, 32)
  cfg = tiny_config("train.steps=2", "train.log_every=0", "train.checkpoint_every=0",
                    "train.sample_every=0", "train.eval_every=0", "train.keep_every=0")
  result = train(cfg, tmp_path, episodes.EpisodeSource.from_arrays(frames, points),
                 eval_source=episodes.EpisodeSource.from_arrays(frames[:4], points[:4]))
  assert int(result.state.step) == 2
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["2"]  # the final one
  rows = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert len(rows) == 1 and '"step": 2' in rows[0]  # the last step is always logged
  assert not (tmp_path / "samples").exists()


def test_the_paper_config_on_synthetic_data_streams_instead_of_allocating_24_gib():
  """paper_256's default source is 4,096 synthetic videos x 32 frames at 256 px: 24 GiB as
  arrays. It must start at once, holding no frames, and draw the same frames render_video does."""
  cfg = config_lib.load_config("paper_256")
  assert config_checks.synthetic_bytes(cfg) > 24 * 2**30
  t0 = time.perf_counter()
  source, held = train_sources(cfg)
  assert time.perf_counter() - t0 < 60  # the 16 held-out videos are rendered; the rest are not
  assert source.num_videos == 4096 and isinstance(source.videos, synthetic.SyntheticVideos)
  video = source.videos[4095]
  want_frames, want_points = synthetic.render_video(4095, 32, 256, frame_stride=8)
  np.testing.assert_array_equal(video["landmarks"], want_points)
  for t in (0, 17, 31):
    np.testing.assert_array_equal(video["frames"][t], want_frames[t])
  maker = episodes.EpisodeMaker(8, 256)
  episode = maker(video, np.random.default_rng(0))
  assert episode["frames"].shape == (8, 256, 256, 3) and episode["target"].shape == (256, 256, 3)
  assert held.num_videos == 16


def test_the_demo_config_still_renders_into_memory():
  cfg = config_lib.apply_overrides(config_lib.load_config("demo_64"),
                                   ["data.num_train_videos=4", "data.num_eval_videos=0"])
  source, held = train_sources(cfg)
  assert isinstance(source.videos, episodes.InMemoryVideos) and held is None
