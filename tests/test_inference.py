"""Inference on real inputs: the astronaut photo animated by the carphone clip, fitted identities,
export, and the errors a user meets.

The checkpoint is trained here, on the carphone speaker's own face crops (real frames, dlib
landmarks), so that its generator has learnt what landmarks mean on a real face; the astronaut is
then a new identity, fitted from one shot.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import dlib  # noqa: F401  (the dev extra pins it: missing is a failure, not a skip)
import numpy as np
import pytest
import skimage.data as skdata
from PIL import Image

from carphone_run import SIZE, TRAIN_STEPS, carphone_run
from test_prep_backends import carphone_path
from fewshot_jax import cli
from fewshot_jax.inference import motion as motion_lib
from fewshot_jax.inference import driver as driver_lib
from fewshot_jax.inference import export as export_lib
from fewshot_jax.inference import faces
from fewshot_jax.inference import finetune as inf
from fewshot_jax.images import to_uint8
from fewshot_jax.inference import TalkingHead
from fewshot_jax.inference import identity as identity_lib
from fewshot_jax.inference.run import IncompatibleCheckpoint, load_run  # noqa: E402
from fewshot_jax.prep.backends import DlibBackend, make_backend  # noqa: E402
from fewshot_jax.prep.video import VideoError, read_video  # noqa: E402
from fewshot_jax.visualize import save_mp4  # noqa: E402

FINETUNE = ["--finetune-steps", "100"]


@pytest.fixture(scope="module")
def backend():
  return make_backend("dlib")


@pytest.fixture(scope="module")
def astronaut(tmp_path_factory) -> pathlib.Path:
  path = tmp_path_factory.mktemp("sources") / "astronaut.png"
  Image.fromarray(skdata.astronaut()).save(path)
  return path


@pytest.fixture(scope="module")
def run_dir() -> pathlib.Path:
  """A small model meta-trained on the carphone speaker's face crops (``carphone_run``)."""
  return carphone_run()


def test_animate_the_astronaut_with_the_carphone_clip(run_dir, astronaut, backend, tmp_path):
  out = tmp_path / "astronaut.mp4"
  ident = tmp_path / "identity"
  assert cli.main(["animate", "--checkpoint", str(run_dir), "--source", str(astronaut),
                   "--driver", str(carphone_path()), "--out", str(out),
                   "--save-identity", str(ident), *FINETUNE, "--no-paste-back"]) == 0
  video, fps = read_video(out)
  driver_frames, driver_fps = read_video(carphone_path())
  assert len(video) == len(driver_frames) == 120
  assert fps == pytest.approx(driver_fps, rel=1e-3)  # 29.97, kept as a fraction
  assert video.shape[1:] == (256, 256, 3)  # the crop: 64 px shown at 256 (test_paste_back: the
  # whole picture)
  # dlib's HOG scores blurry faces low, and these are 64 px frames shown at 256, so the detector's
  # threshold is lowered from 0 to -0.5. It still finds a face in 1 of 120 frames animated by an
  # untrained model (measured), against 104-115 of 120 for models trained like this one.
  lenient = DlibBackend(upsample=1, min_score=-0.5)
  detected = sum(bool(lenient.detect(f)) for f in video)
  print(f"a face in {detected} of {len(video)} generated frames")  # shown with pytest -s
  assert detected > len(video) / 2, f"a face in only {detected} of {len(video)} frames"
  # The identity was saved on the way and animates again without refitting.
  meta = json.loads((ident / "identity.json").read_text())
  assert meta["finetune_steps"] == 100 and meta["sources"] == [str(astronaut)]
  assert meta["content_last"] < meta["content_first"]
  again = tmp_path / "again.mp4"
  assert cli.main(["animate", "--checkpoint", str(run_dir), "--identity", str(ident),
                   "--driver", str(carphone_path()), "--out", str(again),
                   "--layout", "side-by-side", "--no-paste-back"]) == 0
  wide, _ = read_video(again)
  assert wide.shape == (120, 256, 4 * 256, 3)  # shot | driver crop | landmarks | generated
  # Same identity, same driver: the generated column matches the first video (up to H.264).
  assert np.abs(wide[:, :, 3 * 256:].astype(int) - video.astype(int)).mean() < 3


def test_identity_and_export_reproduce_the_in_process_generator(run_dir, astronaut, backend,
                                                                tmp_path):
  head = TalkingHead.load(run_dir, batch_size=4)
  run = head.run
  shots = head.crop_sources([astronaut])
  assert shots.frames.shape == (1, SIZE, SIZE, 3) and shots.paths == [str(astronaut)]
  shot = faces.Shot(shots.frames[0], shots.landmarks[0], shots.paths[0])
  ident = head.finetune(shots.frames, shots.landmarks, steps=3, show_progress=False)
  identity_lib.save_identity(tmp_path / "id", ident, run)
  back = identity_lib.load_identity(tmp_path / "id", run)
  np.testing.assert_array_equal(back.psi, ident.psi)
  np.testing.assert_array_equal(back.shot_landmarks, shot.landmarks[None])
  # generate: batched (10 frames in batches of 4, one program), uint8, the pure function's output.
  points = shot.landmarks + np.random.default_rng(1).normal(0, 1.0, (10, 68, 2)).astype(np.float32)
  frames = head.generate(points, back)
  assert frames.shape == (10, SIZE, SIZE, 3) and frames.dtype == np.uint8
  want = to_uint8(inf.generate(run.graphdef, back.model_vars(run), run.config.model, back.psi,
                               points))
  assert np.abs(frames.astype(int) - want.astype(int)).max() <= 1
  # The feed-forward fit is ψ = P·ê with the meta-learned generator.
  ff = head.fit(shots.frames, shots.landmarks)
  e = head.embed(shots.frames, shots.landmarks)
  np.testing.assert_allclose(ff.psi, np.asarray(inf.feed_forward_psi(run.graphdef, run.vars, e)),
                             atol=1e-5)

  assert cli.main(["export", "--checkpoint", str(run_dir), "--identity", str(tmp_path / "id"),
                   "--out", str(tmp_path / "export")]) == 0
  exported = export_lib.load_exported(tmp_path / "export")
  assert exported.config["platforms"] == ["cpu", "cuda", "tpu"]
  rng = np.random.default_rng(0)
  for batch in (1, 3):  # one program, symbolic batch
    points = shot.landmarks + rng.normal(0, 1.0, (batch, 68, 2)).astype(np.float32)
    want = inf.generate(run.graphdef, back.model_vars(run), run.config.model, back.psi, points)
    np.testing.assert_allclose(np.asarray(exported.generate(points)), np.asarray(want), atol=1e-5)
  shots = np.stack([shot.frame, shot.frame[:, ::-1]])[None]  # k = 2
  shot_points = np.stack([shot.landmarks, shot.landmarks])[None]
  e, psi = exported.embed(shots, shot_points)
  want_e = inf.embed(run.graphdef, run.vars, run.config.model, shots, shot_points)
  np.testing.assert_allclose(np.asarray(e), np.asarray(want_e), atol=1e-5)
  np.testing.assert_allclose(np.asarray(psi), np.asarray(
      inf.feed_forward_psi(run.graphdef, run.vars, want_e)), atol=1e-5)


def test_loading_a_run_imports_no_training_code(run_dir):
  code = ("import sys\nfrom fewshot_jax.inference.run import load_run\n"
          f"run = load_run({str(run_dir)!r})\n"
          "bad = [m for m in sys.modules if m.startswith(('fewshot_jax.train', 'grain', "
          "'tensorflow'))]\nassert not bad, bad\nprint(run.step)")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == str(TRAIN_STEPS)


def test_clear_errors(run_dir, backend, tmp_path, capsys):
  no_face = tmp_path / "coffee.png"
  Image.fromarray(skdata.coffee()).save(no_face)
  with pytest.raises(faces.NoFaceError, match="coffee.png: no face"):
    faces.load_shots([no_face], backend, SIZE)
  # Through the CLI: one line naming the file, exit status 2, no traceback.
  assert cli.main(["animate", "--checkpoint", str(run_dir), "--source", str(no_face),
                   "--driver", str(carphone_path()), "--out", str(tmp_path / "x.mp4")]) == 2
  assert "coffee.png: no face found" in capsys.readouterr().err
  assert not (tmp_path / "x.mp4").exists()

  broken = tmp_path / "broken.mp4"
  broken.write_bytes(pathlib.Path(carphone_path()).read_bytes()[:5000])
  with pytest.raises(VideoError, match="broken.mp4"):
    driver_lib.load_driver(broken, backend, SIZE, show_progress=False)

  noise = tmp_path / "noise.mp4"
  save_mp4(noise, np.random.default_rng(0).integers(0, 256, (6, 96, 96, 3), dtype=np.uint8), 10)
  with pytest.raises(faces.NoFaceError, match=r"noise.mp4: no face found in any of its 6 frames"):
    driver_lib.load_driver(noise, backend, SIZE, show_progress=False)

  with pytest.raises(IncompatibleCheckpoint, match=r"expected \(8,\), found \(16,\)"):
    load_run(run_dir, overrides=["model.e_channels=(8, 32, 64, 128)"])

  ident = tmp_path / "id"
  run = load_run(run_dir)
  frames = np.zeros((1, SIZE, SIZE, 3), np.uint8)
  points = np.full((1, 68, 2), SIZE / 2, np.float32)
  identity_lib.save_identity(ident, identity_lib.fit_identity(run, frames, points, 0), run)
  meta = json.loads((ident / "identity.json").read_text())
  meta["model"]["image_size"] = 128
  (ident / "identity.json").write_text(json.dumps(meta))
  with pytest.raises(IncompatibleCheckpoint, match="model.image_size: expected 64, found 128"):
    identity_lib.load_identity(ident, run)


def test_driver_frames_without_a_face_hold_the_last_landmarks(backend, tmp_path):
  frames, fps = read_video(carphone_path())
  frames = frames[:40].copy()
  frames[20:25] = 0  # five black frames
  path = tmp_path / "gap.mp4"
  save_mp4(path, frames, fps)
  driver = driver_lib.load_driver(path, backend, SIZE, smooth_sigma=0.0, show_progress=False)
  assert len(driver) == 40 and driver.held >= 5 and driver.fps == pytest.approx(fps, rel=1e-3)
  # Held in the video's pixels (the crop box itself keeps gliding: it is smoothed over time).
  side = driver.boxes[:, 2] - driver.boxes[:, 0]
  in_frame = driver.landmarks * (side / SIZE)[:, None, None] + driver.boxes[:, None, :2]
  for i in range(20, 25):
    np.testing.assert_allclose(in_frame[i], in_frame[19], atol=1e-3)
  # In crop pixels, like the training data: the face fills the middle of the crop.
  assert ((driver.landmarks > 0) & (driver.landmarks < SIZE)).all()


def _face(width: float = 1.0, mouth: float = 0.0) -> np.ndarray:
  """A frontal iBUG-68-like point set: jaw arc, brows, nose, eyes, lips (mouth opens by
  ``mouth`` px)."""
  rng = np.random.default_rng(1)
  p = rng.uniform(-10, 10, (68, 2))
  p[:17, 0] = np.linspace(-12, 12, 17) * width
  p[:17, 1] = 8 - 10 * np.cos(np.linspace(-1.2, 1.2, 17))
  p[48:68, 1] = 8 + np.where(np.arange(48, 68) >= 57, mouth, 0.0)
  return p + 32


def test_relative_motion_keeps_the_source_face_shape():
  source = _face(width=0.8)  # a narrow face
  driver_first = _face(width=1.2)  # a wide one
  theta = np.deg2rad(10)
  rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
  # The driver turns by 10 degrees, grows by 10%, moves by (3, -2) and opens the mouth by 4 px.
  opened = _face(width=1.2, mouth=4.0)
  centre = driver_first.mean(0)
  moved = (opened - centre) @ rot.T * 1.1 + centre + np.array([3.0, -2.0])
  out = motion_lib.retarget(source, np.stack([driver_first, moved]), "relative")
  np.testing.assert_allclose(out[0], source, atol=1e-4)  # first frame: the source itself
  # Undo the head motion on the output: the source's shape with the mouth open, the jaw still
  # the source's width (not the driver's).
  s, r, t = motion_lib.similarity(out[1][:48], source[:48])
  back = (out[1] * s) @ r.T + t
  jaw = lambda p: p[16, 0] - p[0, 0]  # noqa: E731
  assert jaw(back) == pytest.approx(jaw(source), rel=0.02)
  mouth_gap = lambda p: p[57:68, 1].mean() - p[48:57, 1].mean()  # noqa: E731
  scale = motion_lib.similarity(driver_first, source)[0]
  assert mouth_gap(back) - mouth_gap(source) == pytest.approx(4.0 * scale, rel=0.1)
  assert s == pytest.approx(1 / 1.1, rel=0.02)  # the head grew by 10%, as the driver's
  absolute = motion_lib.retarget(source, np.stack([driver_first, moved]), "absolute")
  np.testing.assert_allclose(absolute[1], moved, atol=1e-4)
