"""The paper's evaluation protocol and training recipe: stratified sampling with a seed, K that
the held-out videos can serve, the protocol header, the paper configs' refusal to train pixel L1,
steps from epochs, fine-tuning's D schedule, and the detector recorded with a dataset."""

from __future__ import annotations

import json
import logging
import shutil
import types

import jax
import numpy as np
import pytest

from conftest import random_videos, tiny_config
from fewshot_jax import cli
from fewshot_jax import config as config_lib
from fewshot_jax import config_checks
from fewshot_jax.content import build_content_loss
from fewshot_jax.evaluation import protocol, report
from fewshot_jax.inference import finetune as inf
from fewshot_jax.prep import landmark_cache, layouts, provenance, tfds_builder
from fewshot_jax.train import schedule
from fewshot_jax.train import state as st
from test_prep_backends import carphone_path


def test_max_videos_samples_every_identity_before_a_second_video_of_any():
  # 3 identities with 5, 2 and 1 videos, in key order: the first 3 in key order are one person.
  ids = ["a"] * 5 + ["b"] * 2 + ["c"]
  picked = protocol.sample_videos(ids, 3, seed=0)
  assert sorted(ids[i] for i in picked) == ["a", "b", "c"]
  five = protocol.sample_videos(ids, 5, seed=0)
  counts = {k: sum(ids[i] == k for i in five) for k in "abc"}
  assert counts == {"a": 2, "b": 2, "c": 1}  # round-robin over identities
  assert list(protocol.sample_videos(ids, 3, seed=0)) == list(picked)  # the seed decides
  draws = {tuple(protocol.sample_videos(ids, 3, seed=s)) for s in range(20)}
  assert len(draws) > 3  # uniform within an identity: not always its first video
  assert list(protocol.sample_videos(ids, None, seed=0)) == list(range(8))
  with pytest.raises(ValueError, match="--max-videos 0: expected at least 1"):
    protocol.sample_videos(ids, 0, seed=0)


def test_a_k_the_videos_cannot_serve_is_refused_naming_the_frames_needed():
  protocol.check_shots((1, 8, 32), 64, "data split 'test'")
  with pytest.raises(ValueError, match=r"data split 'test': K=32 needs held-out videos of at "
                     r"least 64 frames .* these have 32: .*--test-frames-per-video 64"):
    protocol.check_shots((1, 8, 32), 32, "data split 'test'")
  assert protocol.frames_needed(32, 32) == 64


def test_the_paper_configs_use_the_paper_protocol_and_recipe():
  base = config_lib.load_config("base")
  assert base.eval.shots == (1, 8, 32) and base.eval.targets_per_video == 32
  ft, ff = config_lib.load_config("vox2_256_ft"), config_lib.load_config("vox2_256_ff")
  assert (ft.train.variant, ft.train.epochs, ft.loss.match_weight) == ("ft", 75.0, 10.0)
  assert (ff.train.variant, ff.train.epochs, ff.loss.match_weight) == ("ff", 150.0, 0.0)
  assert ft.data.expected_detector == ff.data.expected_detector == "fan"
  cfg, record = schedule.resolve_steps(ft, 1000)
  assert cfg.train.steps == 1563 == -(-75 * 1000 // 48) and record["epochs"] == 75
  assert record == {"epochs": 75.0, "num_videos": 1000, "batch_size": 48, "steps": 1563,
                    "configured_steps": ft.train.steps}
  assert schedule.resolve_steps(ff, 1000)[0].train.steps == 3125
  same, none = schedule.resolve_steps(base, 1000)
  assert same is base and none is None  # epochs 0: train.steps as given


@pytest.mark.parametrize("name", ["paper_256", "vox2_256", "vox2_256_ft", "vox2_256_ff"])
def test_paper_configs_refuse_to_train_pixel_l1_unless_allowed(name, tmp_path):
  cfg = config_lib.apply_overrides(config_lib.load_config(name), ["data.data_dir=/d"])
  with pytest.raises(ValueError, match=r"loss.vgg19_path: not set, .*allow_pixel_fallback=False.*"
                     r"set loss.vgg19_path and loss.vggface_path"):
    config_checks.validate(cfg, check_files=False)
  half = tmp_path / "vgg19.safetensors"
  half.write_bytes(b"x")
  with pytest.raises(ValueError, match=r"loss.vggface_path: not set"):
    config_checks.validate(config_lib.apply_overrides(cfg, [f"loss.vgg19_path={half}"]))
  config_checks.validate(config_lib.apply_overrides(cfg, ["loss.allow_pixel_fallback=True"]),
                         check_files=False)
  config_checks.validate(config_lib.load_config("demo_64"))  # the demo may train pixel L1


def test_finetuning_takes_the_meta_learning_d_steps_unless_told():
  cfg = tiny_config("train.d_steps=2")
  assert inf.d_steps(cfg) == 2
  assert inf.d_steps(config_lib.apply_overrides(cfg, ["finetune.d_steps=1"])) == 1
  graphdef, v = st.abstract_model(cfg, 4)
  v = st.init_train_state(cfg, 4, jax.random.PRNGKey(0)).vars
  content = build_content_loss(cfg.loss)
  frames, points = random_videos(1, 2, cfg.model.image_size)
  e = inf.embed(graphdef, v, cfg.model, frames, points)[0]
  fs = inf.init_finetune(cfg, v, e, inf.feed_forward_psi(graphdef, v, e))
  fs, metrics = jax.jit(inf.make_finetune_step(graphdef, cfg, content))(
      fs, v, frames[0], points[0], content.params)
  d_count = int(fs.opt_d[0].count)  # Adam's step counter: one per D update
  g_count = int(fs.opt_g[0].count)
  assert (g_count, d_count) == (1, 2)
  assert all(np.isfinite(float(x)) for x in metrics.values())


def _header(variant: str, targets: int, detector: str, expected: str) -> dict:
  cfg = config_lib.apply_overrides(tiny_config(), [f"train.variant={variant}",
                                                   f"data.expected_detector={expected}"])
  cfg.runtime = {"content_loss": "pixel L1 x 1.0", "steps_from_epochs": {"epochs": 75.0}}
  run = types.SimpleNamespace(config=cfg, step=1234)
  embedder = types.SimpleNamespace(name="dlib-resnet-v1")
  content = types.SimpleNamespace(description="pixel L1 x 1.0")
  sample = {"identities": np.asarray(["a", "a", "b"]), "sampling": "--max-videos 3",
            "landmark_detector": {"detector": detector, "description": f"{detector} [v1]"}}
  settings = report.EvalSettings((1, 8), ("ff", "ft"), seed=7)
  return report.protocol_header(run, 3, targets, settings, content, embedder, sample)


def test_the_protocol_header_names_sample_model_and_tools():
  h = _header("ft", 32, "fan", "fan")
  assert h == {**h, "videos": 3, "identities": 2, "targets_per_video": 32, "targets": 96,
               "seed": 7, "checkpoint_step": 1234, "train_variant": "ft", "train_epochs": 75.0,
               "content_loss": "pixel L1 x 1.0", "landmark_detector": "fan",
               "csim_embedder": "dlib-resnet-v1"}
  rep = {"protocol": h, "methods": ["ff"], "videos": 3, "targets_per_video": 32,
         "finetune_steps": 3, "fid": None,
         "results": {"k1": {"ff": {"ssim": 0.5, "model_variant": "ft"}}}}
  table = report.format_table(rep)
  assert "3 videos of 2 identities, 32 targets each (96 in all), seed 7" in table
  assert "checkpoint step 1234, trained as FT" in table and "75 epochs" in table
  assert "content loss: pixel L1 x 1.0" in table
  assert "Landmarks: fan (fan [v1]). CSIM embedder: dlib-resnet-v1." in table
  assert "| FF | FT-trained | 1 | 0.500 |" in table
  warnings = report.protocol_warnings(h, ("ff", "ft"))
  assert len(warnings) == 1 and "FF rows come from an FT-trained model" in warnings[0]
  assert report.protocol_warnings(_header("ff", 32, "fan", "fan"), ("ff",)) == []
  few = report.protocol_warnings(_header("ff", 16, "dlib", "fan"), ("ff",))
  assert any("16 targets per video, the paper has 32" in w for w in few)
  assert any("the landmarks are dlib's, this config expects fan's" in w for w in few)


def test_prepare_landmarks_defaults_to_fan_and_64_test_frames_for_voxceleb2(tmp_path, monkeypatch):
  seen = {}
  monkeypatch.setattr(landmark_cache, "build_cache",
                      lambda entries, cache, opts, **kw: seen.update(opts=opts) or {})
  root = tmp_path / "vox"
  (root / "test" / "mp4" / "id00001" / "v1").mkdir(parents=True)
  shutil.copy(carphone_path(), root / "test" / "mp4" / "id00001" / "v1" / "00001.mp4")
  args = ["prepare", "landmarks", "--input", str(root), "--cache", str(tmp_path / "c")]
  assert cli.main(args + ["--layout", "voxceleb2"]) == 0
  assert (seen["opts"].backend, seen["opts"].test_frames_per_video) == ("fan", 64)
  folder = tmp_path / "folder"
  folder.mkdir()
  shutil.copy(carphone_path(), folder / "carphone.mp4")
  assert cli.main(["prepare", "landmarks", "--input", str(folder), "--cache",
                   str(tmp_path / "c2"), "--layout", "folder"]) == 0
  assert (seen["opts"].backend, seen["opts"].test_frames_per_video) == ("dlib", 32)
  assert cli.main(["prepare", "landmarks", "--input", str(root), "--cache", str(tmp_path / "c"),
                   "--layout", "voxceleb2", "--test-frames-per-video", "1"]) == 2


def test_the_test_split_keeps_more_frames_and_the_dataset_records_its_detector(tmp_path, caplog):
  root = tmp_path / "vox"
  for split in ("dev", "test"):
    (root / split / "mp4" / "id00001" / "v1").mkdir(parents=True)
    shutil.copy(carphone_path(), root / split / "mp4" / "id00001" / "v1" / "00001.mp4")
  cache = tmp_path / "cache"
  opts = landmark_cache.PrepOptions(frames_per_video=4, test_frames_per_video=6, image_size=64)
  summary = landmark_cache.build_cache(layouts.list_videos(root, "voxceleb2"), cache, opts)
  assert summary["written"] == 2
  _, train_points, train_meta = landmark_cache.load_entry(cache / "dev/id00001/v1.npz")
  _, test_points, test_meta = landmark_cache.load_entry(cache / "test/id00001/v1.npz")
  assert (len(train_points), len(test_points)) == (4, 6)
  assert test_meta["options"]["frames_per_video"] == 6
  # Changing only the test split's count redoes only its entries (refused here, by name).
  more = landmark_cache.PrepOptions(frames_per_video=4, test_frames_per_video=8, image_size=64)
  with pytest.raises(ValueError, match=r"test/id00001/v1.npz: built with other options: "
                     r"frames_per_video=6 \(now 8\)"):
    landmark_cache.build_cache(layouts.list_videos(root, "voxceleb2"), cache, more)
  builder = tfds_builder.TalkingHeads(config=tfds_builder.config_for_cache("voxceleb2", cache),
                                      data_dir=tmp_path / "data")
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=cache))
  directory = builder.data_dir
  meta = json.loads((tmp_path / "data").joinpath(directory).joinpath("metadata.json").read_text())
  (row,) = meta["detectors"]["test"]
  assert row["detector"] == "dlib" and row["videos"] == 1 and "dlib" in row["version"]
  with caplog.at_level(logging.INFO, logger="fewshot_jax"):
    got = provenance.check_detector(directory, "test", "fan", "evaluate")
  assert got["detector"] == "dlib"
  assert any("expects fan landmarks" in r.message and r.levelno == logging.WARNING
             for r in caplog.records)
  from fewshot_jax.data import shards  # pylint: disable=g-import-not-at-top
  held = shards.read_videos(directory, "test",
                            choose=lambda ids: protocol.sample_videos(ids, 1, 0))
  assert held["frames"].shape[:2] == (1, 6) and list(held["identities"]) == ["id00001"]
