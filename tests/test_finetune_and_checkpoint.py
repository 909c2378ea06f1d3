"""A short run end to end below the demo: train, checkpoint, reload, fine-tune, generate, save."""

from __future__ import annotations

import json
import logging

import jax
import numpy as np
import pytest

from conftest import random_videos, tiny_config
from fewshot_jax.data.episodes import EpisodeSource
from fewshot_jax.evaluation import protocol
from fewshot_jax.inference import finetune as inf
from fewshot_jax.inference.run import load_run
from fewshot_jax.inference.tensors import load_tree, save_tree
from fewshot_jax.train.loop import train
from fewshot_jax.train.resume import ResumeMismatch


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("run")
  cfg = tiny_config("train.steps=3", "train.checkpoint_every=2", "train.sample_every=2",
                    "train.eval_every=2", "eval.hook_batches=1")
  frames, points = random_videos(8, 8, cfg.model.image_size)
  held_frames, held_points = random_videos(4, 8, cfg.model.image_size, seed=1)
  # Every program jax lowers is logged (at DEBUG) by name: the step's must be lowered once.
  lowered: list[str] = []

  class Lowerings(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
      if record.getMessage().startswith("Compiling "):
        lowered.append(str(record.args[0]))

  logger = logging.getLogger("jax._src.interpreters.pxla")
  handler, level = Lowerings(), logger.level
  logger.addHandler(handler)
  logger.setLevel(logging.DEBUG)
  try:
    result = train(cfg, workdir, EpisodeSource.from_arrays(frames, points),
                   eval_source=EpisodeSource.from_arrays(held_frames, held_points))
  finally:
    logger.removeHandler(handler)
    logger.setLevel(level)
  return workdir, cfg, result, frames, points, lowered


def test_the_step_compiles_once_for_the_whole_run(trained):
  """Three steps with a checkpoint, samples and an evaluation between them: no recompilation
  (a changed shape, dtype, sharding or weak type in the carried state would show up here)."""
  lowered = trained[5]
  assert lowered.count("jit(step)") == 1, lowered


def test_the_loop_logs_samples_and_held_out_metrics(trained):
  import json  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  workdir = trained[0]
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  evals = [r for r in rows if "eval/ssim" in r]
  assert [r["step"] for r in evals] == [2]
  # Random-noise targets after 2 steps: SSIM near 0 (it ranges over [-1, 1]), PSNR a few dB.
  assert -1 <= evals[0]["eval/ssim"] <= 1 and 0 < evals[0]["eval/psnr"] < 60
  assert all("perf/images_per_sec" in r for r in rows if "g/total" in r)
  grid = Image.open(workdir / "samples" / "step_0000002.png")
  assert grid.size[0] >= 5 * 32  # its K = 2 sources | landmarks | generated | target
  assert list((workdir / "tb").glob("events.out.tfevents.*"))


def test_checkpoint_reloads_the_ema_weights_and_config(trained):
  workdir, cfg, result, _, _, _ = trained
  run = load_run(workdir)
  assert run.step == 3
  assert run.config.runtime.content_loss.startswith("pixel L1")  # said in the saved config
  for a, b in zip(jax.tree.leaves(run.vars.g), jax.tree.leaves(jax.device_get(result.state.ema_g))):
    np.testing.assert_array_equal(a, b)
  assert (workdir / "metrics.jsonl").read_text().count("\n") >= 3


def test_resume_with_another_model_or_data_is_refused_and_the_run_is_untouched(trained):
  """A wrong --config on resume names every field that defines the run, and writes nothing: the
  run's config.json (which animate, export and evaluate rebuild the model from) stays its own."""
  workdir, cfg, _, frames, points, _ = trained
  before = {p.name: p.read_bytes() for p in workdir.glob("*.json*")}
  steps = sorted(p.name for p in (workdir / "checkpoints").iterdir())
  wrong = tiny_config("model.g_res_blocks=2", "train.k_shots=3", "train.steps=9")
  with pytest.raises(ResumeMismatch) as e:
    train(wrong, workdir, EpisodeSource.from_arrays(frames, points))
  message = str(e.value)
  assert "model.g_res_blocks: the run has 1, this config 2" in message
  assert "train.k_shots: the run has 2, this config 3" in message
  assert "train.steps" not in message  # allowed, so not named among the refusals
  with pytest.raises(ResumeMismatch, match="training videos: the run has 8, the data now holds 6"):
    train(tiny_config("train.steps=9"), workdir, EpisodeSource.from_arrays(frames[:6], points[:6]))
  assert {p.name: p.read_bytes() for p in workdir.glob("*.json*")} == before
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == steps
  assert load_run(workdir).config.model.g_res_blocks == 1


def test_rerun_resumes_instead_of_restarting(trained):
  workdir, cfg, _, frames, points, _ = trained
  more = train(tiny_config("train.steps=4"), workdir, EpisodeSource.from_arrays(frames, points))
  assert more.steps_run == 1 and int(more.state.step) == 4
  # The allowed changes are kept with the step they took effect at.
  history = [json.loads(l) for l in (workdir / "config_changes.jsonl").read_text().splitlines()]
  assert len(history) == 1 and history[0]["step"] == 3
  assert history[0]["changes"]["train.steps"] == {"from": 3, "to": 4}
  assert history[0]["changes"]["train.checkpoint_every"]["from"] == 2
  assert load_run(workdir).config.train.steps == 4


def test_finetune_fits_the_shots_and_identity_round_trips(trained, tmp_path):
  workdir, cfg, result, frames, points, _ = trained
  run = load_run(workdir)
  cfg = run.config
  cfg.finetune.steps = 15
  shots, shot_points = frames[0, :4], points[0, :4]
  e_hat = inf.embed(run.graphdef, run.vars, cfg.model, shots[None], shot_points[None])[0]
  psi = inf.feed_forward_psi(run.graphdef, run.vars, e_hat)
  fs = inf.init_finetune(cfg, run.vars, e_hat, psi)
  step = jax.jit(inf.make_finetune_step(run.graphdef, cfg, result.content))
  first = None
  for _ in range(cfg.finetune.steps):
    fs, m = step(fs, run.vars, shots, shot_points, result.content.params)
    first = float(m["ft/content"]) if first is None else first
  assert float(m["ft/content"]) < first
  out = inf.generate(run.graphdef, run.vars, cfg.model, fs.psi, shot_points)
  assert out.shape == (4, cfg.model.image_size, cfg.model.image_size, 3)
  assert float(np.abs(out).max()) <= 1.0
  tree = {"psi": fs.psi, "generator": fs.generator}
  save_tree(tmp_path / "id" / "identity.safetensors", tree)
  back = load_tree(tmp_path / "id" / "identity.safetensors", tree)
  np.testing.assert_array_equal(np.asarray(back["psi"]), np.asarray(fs.psi))
  with pytest.raises(ValueError, match="missing tensors"):
    load_tree(tmp_path / "id" / "identity.safetensors", {**tree, "extra": np.zeros(3)})


def test_protocol_split_and_nearest_shot():
  shots, targets = protocol.split_video(32, 8, 16)
  assert len(shots) == 8 and shots.max() < 16 and targets.min() >= 16
  assert not set(shots) & set(targets)
  with pytest.raises(ValueError, match="first half"):
    protocol.split_video(8, 5, 2)
  shot_points = np.zeros((1, 3, 68, 2), np.float32)
  shot_points[0, 1] += 5
  shot_points[0, 2] += 10
  target = np.full((1, 2, 68, 2), 9.0, np.float32)
  target[0, 1] = 4.0
  np.testing.assert_array_equal(protocol.nearest_shot(shot_points, target), [[2, 1]])


def test_evaluate_writes_the_protocol_table_json_and_plot(trained, tmp_path):
  import json  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from fewshot_jax import cli  # pylint: disable=g-import-not-at-top
  from fewshot_jax.prep import tfds_builder  # pylint: disable=g-import-not-at-top

  workdir = trained[0]
  config = tfds_builder.TalkingHeadsConfig(
      name="eval_test", source="synthetic", image_size=32, num_train_videos=2, num_test_videos=3,
      frames_per_video=8, frame_stride=8)
  builder = tfds_builder.TalkingHeads(config=config, data_dir=tmp_path / "data",
                                      file_format="array_record")
  builder.download_and_prepare()
  # FID with stand-in Inception weights (He-scaled random convs): the real file is not shipped.
  from fewshot_jax.evaluation import fid  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  weights = {k: (rng.normal(0, np.sqrt(2 / np.prod(shape[1:])), shape) if k.endswith("conv.weight")
                 else np.ones(shape) if k.endswith(("bn.weight", "running_var")) else np.zeros(shape))
             for k, shape in fid.expected_shapes().items()}
  fid.save_weights(tmp_path / "inception.safetensors", weights)
  out = tmp_path / "eval"
  assert cli.main(["evaluate", "--checkpoint", str(workdir), "--data-dir", str(tmp_path / "data"),
                   "--shots", "1,2", "--methods", "ff,ft,nearest_shot", "--out", str(out),
                   "--fid-weights", str(tmp_path / "inception.safetensors")]) == 0
  report = json.loads((out / "eval.json").read_text())
  assert report["videos"] == 3 and report["shots"] == [1, 2]
  assert report["step"] == load_run(workdir).step  # the latest checkpoint
  assert set(report["results"]) == {"k1", "k2"}
  for per_k in report["results"].values():
    assert set(per_k) == {"ff", "ft", "nearest_shot"}
    for row in per_k.values():
      assert -1 <= row["ssim"] <= 1 and row["psnr"] > 0 and 0 <= row["l1"] <= 1
      assert {"csim", "nme", "akd", "face_detected", "reference_found"} <= set(row)
      assert row["fid"] >= 0
  assert report["fid"]["real_frames"] == 3 * load_run(workdir).config.eval.targets_per_video
  # Generated frames are not the real ones: every FID is above 0.
  fids = {m: report["results"]["k2"][m]["fid"] for m in ("ff", "ft", "nearest_shot")}
  assert min(fids.values()) > 0, fids
  h = report["protocol"]  # the header a reader sets beside the paper's Table 1
  assert (h["videos"], h["identities"], h["targets"], h["seed"]) == (3, 3, 6, 0)
  assert h["checkpoint_step"] == report["step"] and h["train_variant"] == "ft"
  assert h["landmark_detector"] == "synthetic" and h["content_loss"].startswith("pixel L1")
  table = (out / "table.md").read_text().splitlines()
  assert table[0].startswith("Protocol: 3 videos of 3 identities, 2 targets each")
  top = next(i for i, r in enumerate(table) if r.startswith("| method"))
  assert table[top].startswith("| method | model | K | FID ↓ | SSIM")
  assert [r.split("|")[1:4] for r in table[top + 2:top + 8]] == [
      [" FF ", " FT-trained ", " 1 "], [" FF ", " FT-trained ", " 2 "],
      [" FT ", " FT-trained ", " 1 "], [" FT ", " FT-trained ", " 2 "],
      [" nearest shot ", " – ", " 1 "], [" nearest shot ", " – ", " 2 "]]
  assert Image.open(out / "metrics_vs_k.png").size[0] > 600
  # K that does not fit the first half of the 8-frame videos: one line, exit status 2.
  assert cli.main(["evaluate", "--checkpoint", str(workdir), "--data-dir", str(tmp_path / "data"),
                   "--shots", "8", "--out", str(tmp_path / "bad")]) == 2
