"""Paste-back on real inputs: the astronaut's whole picture, her face moved by the carphone clip.

The face is fitted with the carphone-trained model (``carphone_run``); the driver is the clip's
first frames. The pasted frames are checked as ``PasteBack`` returns them (exactly the source
outside the mask, a face where the source's is inside), the mp4 the CLI writes for its size and
frame count, and colour matching on a crop given a colour cast.
"""

from __future__ import annotations

import json
import pathlib
import shutil

import dlib  # noqa: F401  (the dev extra pins it: missing is a failure, not a skip)
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import skimage.data as skdata
from PIL import Image

from carphone_run import SIZE, carphone_run
from test_prep_backends import carphone_path
from fewshot_jax import cli
from fewshot_jax.inference import animate as animate_lib
from fewshot_jax.inference import faces
from fewshot_jax.inference import motion as motion_lib
from fewshot_jax.inference import paste_back
from fewshot_jax.inference.driver import load_driver
from fewshot_jax.inference.identity import load_identity
from fewshot_jax.inference.run import load_run
from fewshot_jax.prep.backends import DlibBackend, make_backend
from fewshot_jax.prep.crop import box_iou
from fewshot_jax.prep.video import read_video
from fewshot_jax.visualize import save_mp4

DRIVER_FRAMES = 8
FINETUNE_STEPS = 60  # after 30 the face is blocks dlib does not see as one


@pytest.fixture(scope="module")
def run_dir() -> pathlib.Path:
  return carphone_run()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, pathlib.Path]:
  """The astronaut as a PNG, and the carphone clip's first frames as a short driver."""
  folder = tmp_path_factory.mktemp("paste_inputs")
  Image.fromarray(skdata.astronaut()).save(folder / "astronaut.png")
  frames, fps = read_video(carphone_path())
  save_mp4(folder / "driver.mp4", frames[:DRIVER_FRAMES], fps)
  return {"source": folder / "astronaut.png", "driver": folder / "driver.mp4"}


@pytest.fixture(scope="module")
def identity_dir(run_dir, inputs, tmp_path_factory) -> pathlib.Path:
  """The astronaut fitted by the CLI, which records her picture for paste-back."""
  out = tmp_path_factory.mktemp("paste_identity") / "astronaut"
  assert cli.main(["finetune", "--checkpoint", str(run_dir), "--source", str(inputs["source"]),
                   "--steps", str(FINETUNE_STEPS), "--out", str(out)]) == 0
  return out


# dlib's HOG scores blurry faces low, and these are 64 px faces shown at about 170 px, so its
# threshold is lowered as in test_inference. No upsampling: the astronaut's face is 91 px wide,
# and the 512 px frames are searched in a fifth of the time.
DETECTOR = DlibBackend(upsample=0, min_score=-0.5)


def test_pasted_frames_are_the_source_outside_the_mask_and_show_the_face_where_it_was(
    run_dir, inputs, identity_dir):
  run = load_run(run_dir)
  identity = load_identity(identity_dir, run)
  record = identity.info["paste_source"]
  assert record["path"] == str(inputs["source"].absolute())
  assert (record["width"], record["height"]) == (512, 512)
  target = paste_back.load_target(record)
  assert target.size == (512, 512)
  np.testing.assert_array_equal(target.image, skdata.astronaut())  # no resize below --max-size
  driver = load_driver(inputs["driver"], make_backend("dlib"), SIZE, fps=25.0,
                       show_progress=False)
  points = motion_lib.retarget(identity.shot_landmarks[0], driver.landmarks, "relative")
  gen = animate_lib.make_generator(run, DRIVER_FRAMES)
  crops = gen(jax.tree.map(jnp.asarray, identity.model_vars(run)), jnp.asarray(identity.psi),
              points)
  paster = paste_back.PasteBack(target, SIZE)
  frames = paster(crops)
  assert frames.shape == (DRIVER_FRAMES, 512, 512, 3) and frames.dtype == np.uint8

  source = skdata.astronaut()
  outside = paster.mask == 0
  diff = np.abs(frames.astype(int) - source.astype(int))
  print(f"max |pasted - source| outside the mask: {diff[:, outside].max()} over "
        f"{outside.sum()} pixels; inside: mean {diff[:, ~outside].mean():.1f}")
  assert diff[:, outside].max() == 0
  # The mask is the crop box, feathered: it covers the face and no more than the box.
  x0, y0, x1, y1 = target.box
  ys, xs = np.nonzero(~outside)
  assert x0 <= xs.min() and xs.max() < x1 and y0 <= ys.min() and ys.max() < y1
  face = make_backend("dlib").detect(source)[0]  # as the shot was found (upsampled once)
  lo, hi = face.landmarks.min(axis=0).astype(int), np.ceil(face.landmarks.max(axis=0)).astype(int)
  assert (paster.mask[lo[1]:hi[1], lo[0]:hi[0]] == 1).all()  # the landmarks: the crop's alone
  fx0, fy0, fx1, fy1 = face.box.astype(int)
  assert (paster.mask[fy0:fy1, fx0:fx1] > 0.9).all()  # dlib's box, forehead included
  assert diff[:, ~outside].mean() > 1  # the generated face, not the source copied through

  # Inside: dlib finds a face where the source's is, with its landmarks where the driver put them
  # (carried from crop pixels into the picture's by the crop box).
  scale = (x1 - x0) / SIZE
  ious, errors = [], []
  for frame, want in zip(frames, points):
    found = DETECTOR.detect(frame)
    best = max(found, key=lambda f: box_iou(f.box, face.box), default=None)
    ious.append(box_iou(best.box, face.box) if best else 0.0)
    if best:
      errors.append(np.linalg.norm(best.landmarks - (want * scale + [x0, y0]), axis=1).mean())
  print(f"face box IoU with the source's per frame: {np.round(ious, 2).tolist()}; landmark "
        f"error {np.round(errors, 1).tolist()} px (face {face.size:.0f} px)")
  assert sum(iou >= 0.5 for iou in ious) >= DRIVER_FRAMES - 1, ious
  assert np.median(errors) < 0.1 * face.size, errors


def test_colour_matching_removes_the_seam():
  """The source's own crop given a colour cast, pasted back: matched, the colour step where the
  mask reaches full weight is as small as for the crop without a cast; unmatched, it is large."""
  source = skdata.astronaut()
  shot = faces.crop_shot(source, make_backend("dlib"), 128, "astronaut")
  target = paste_back.PasteTarget(*paste_back.fit_picture(source, shot.box, 1024), "astronaut")
  cast = np.clip(shot.frame * np.array([1.25, 0.85, 0.8]) + [12, -6, 0], 0, 255).astype(np.uint8)
  mask = paste_back.PasteBack(target, 128).mask
  # The seam: pixels of full weight next to the feather band (a hard edge would show there).
  full = mask == 1
  rim = full & ~(np.roll(full, 3, 0) & np.roll(full, -3, 0) & np.roll(full, 3, 1)
                 & np.roll(full, -3, 1))

  def step(crop, match):
    out = paste_back.PasteBack(target, 128, match_colours=match)(crop[None])[0]
    return np.abs(out.astype(float) - source)[rim].mean()

  clean, matched, unmatched = step(shot.frame, True), step(cast, True), step(cast, False)
  print(f"mean |pasted - source| at the seam: no cast {clean:.1f}, cast matched {matched:.1f}, "
        f"cast unmatched {unmatched:.1f}")
  assert matched < clean + 3
  assert unmatched > 3 * matched


def test_fit_picture_keeps_the_pixels_with_even_sides_at_most_max_size():
  image = np.pad(skdata.astronaut()[:301], ((0, 0), (0, 1), (0, 0)), mode="edge")  # 513x301
  box = np.array([10.0, 20.0, 110.0, 120.0])
  same, same_box = paste_back.fit_picture(image, box, 1024)
  assert same.shape == (300, 512, 3)  # the odd row and column dropped, nothing resampled
  np.testing.assert_array_equal(same, image[:300, :512])
  np.testing.assert_array_equal(same_box, box)
  small, small_box = paste_back.fit_picture(image, box, 200)
  assert small.shape == (116, 200, 3)  # 200 x 301/513 = 117.3, floored to even
  np.testing.assert_allclose(small_box, box * [200 / 513, 116 / 301, 200 / 513, 116 / 301])


def test_animate_writes_the_whole_picture_and_says_when_it_cannot(
    run_dir, inputs, identity_dir, tmp_path, capsys):
  base = ["animate", "--checkpoint", str(run_dir), "--driver", str(inputs["driver"])]

  def animate(*argv: str) -> dict:
    capsys.readouterr()
    assert cli.main([*base, *argv]) == 0
    return json.loads(capsys.readouterr().out.splitlines()[-1])

  wide = tmp_path / "wide.mp4"
  summary = animate("--identity", str(identity_dir), "--out", str(wide), "--max-size", "256",
                    "--layout", "side-by-side")
  assert summary["paste_back"] and summary["paste_note"] == ""
  assert (summary["width"], summary["height"]) == (4 * 256, 256)
  video, _ = read_video(wide)
  assert video.shape == (DRIVER_FRAMES, 256, 4 * 256, 3)  # the panels at the picture's height
  # Far from the face, the picture is the astronaut's, brought to 256 px (up to H.264).
  small = np.asarray(Image.fromarray(skdata.astronaut()).resize((256, 256),
                                                                Image.Resampling.LANCZOS))
  assert np.abs(video[:, 200:, 3 * 256:].astype(int) - small[200:]).mean() < 5

  # The identity taken to where another picture has its source's name (a copy whose record names
  # photo.png): the crop, and the summary says why; asked for, paste-back refuses in one line.
  photo = tmp_path / "photo.png"
  Image.fromarray(skdata.astronaut()[:, ::-1]).save(photo)
  ident = tmp_path / "moved_identity"
  shutil.copytree(identity_dir, ident)
  meta = json.loads((ident / "identity.json").read_text())
  meta["paste_source"]["path"] = str(photo)
  (ident / "identity.json").write_text(json.dumps(meta))
  changed = tmp_path / "changed.mp4"
  capsys.readouterr()
  assert cli.main([*base, "--identity", str(ident), "--out", str(changed)]) == 0
  line, summary = capsys.readouterr().out.splitlines()[-2:]
  summary = json.loads(summary)
  assert not summary["paste_back"] and summary["width"] == 256
  assert summary["paste_note"] == (f"no paste-back: the source picture {photo} changed since the "
                                   "identity was fitted (its sha256 differs)")
  assert "of the face crop (no paste-back: the source picture" in line
  refused = tmp_path / "refused.mp4"
  missing = str(tmp_path / "no_run")  # refused before a checkpoint is loaded
  assert cli.main(["animate", "--checkpoint", missing, "--driver", str(inputs["driver"]),
                   "--identity", str(ident), "--out", str(refused), "--paste-back"]) == 2
  err = capsys.readouterr().err.splitlines()[-2]
  assert err == (f"fewshot-jax animate: error: --paste-back: the source picture {photo} changed "
                 "since the identity was fitted (its sha256 differs); animate with --source, or "
                 "--no-paste-back for the face crop")
  assert not refused.exists()
  assert cli.main([*base, "--identity", str(ident), "--out", str(refused), "--max-size",
                   "1"]) == 2
  assert capsys.readouterr().err.startswith("fewshot-jax animate: error: --max-size 1: expected "
                                            "at least 2\n")
