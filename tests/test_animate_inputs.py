"""Faces and inputs of ``animate``: which face of a group picture (``--face``), the short flags, and
batches (several sources and drivers in one call, one compiled program, bad items skipped).

Real faces: the astronaut (skimage) and the carphone clip, with the carphone-trained model
(``carphone_run``). Drivers are short (a 6-frame ``.npy`` and the clip's first 8 frames) and
fine-tuning takes 1 step, so each test costs seconds.
"""

from __future__ import annotations

import json
import pathlib

import dlib  # noqa: F401  (the dev extra pins it: missing is a failure, not a skip)
import numpy as np
import pytest
import skimage.data as skdata
from jax import monitoring
from jax._src import dispatch
from PIL import Image

from carphone_run import SIZE, carphone_run
from test_prep_backends import carphone_path
from fewshot_jax import cli
from fewshot_jax.data import synthetic
from fewshot_jax.inference import batch as batch_lib
from fewshot_jax.inference import faces
from fewshot_jax.inference import identity as identity_lib
from fewshot_jax.inference.run import load_run
from fewshot_jax.prep import backends
from fewshot_jax.prep.video import read_video
from fewshot_jax.visualize import save_mp4

SMALL, LARGE = 256, 352  # the two astronauts' sides; dlib finds both faces at these sizes


@pytest.fixture(scope="module")
def run_dir() -> pathlib.Path:
  return carphone_run()


@pytest.fixture(scope="module")
def run(run_dir):
  return load_run(run_dir)


@pytest.fixture(scope="module")
def backend():
  return backends.make_backend("dlib")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, pathlib.Path]:
  """Source pictures and short drivers: the astronaut; two astronauts side by side (the smaller
  on the left, so face 0, the largest, is the right one); a noise picture without a face; a
  6-frame landmark driver; the carphone clip's first 8 frames."""
  folder = tmp_path_factory.mktemp("inputs")
  astronaut = Image.fromarray(skdata.astronaut())
  astronaut.save(folder / "astronaut.png")
  two = Image.new("RGB", (SMALL + LARGE, LARGE))
  two.paste(astronaut.resize((SMALL, SMALL)), (0, LARGE - SMALL))
  two.paste(astronaut.resize((LARGE, LARGE)), (SMALL, 0))
  two.save(folder / "two.png")
  noise = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
  Image.fromarray(noise).save(folder / "noise.png")
  np.save(folder / "talk.npy", synthetic.render_video(1, 6, SIZE)[1])
  frames, fps = read_video(carphone_path())
  save_mp4(folder / "clip.mp4", frames[:8], fps)
  return {p.stem: p for p in folder.iterdir()}


def _centre_x(box) -> float:
  return 0.5 * (box[0] + box[2])


def test_face_picks_a_face_by_size(run, backend, inputs, tmp_path):
  two = inputs["two"]
  image = faces.read_image(two)
  found = backend.detect(image)
  assert len(found) == 2 and found[0].size > found[1].size  # the backend's order: largest first
  largest = faces.crop_shot(image, backend, SIZE, str(two), face=0)
  smaller = faces.crop_shot(image, backend, SIZE, str(two), face=1)
  assert _centre_x(largest.face_box) > SMALL > _centre_x(smaller.face_box)
  assert tuple(largest.face_box) == tuple(found[0].box)
  assert tuple(smaller.face_box) == tuple(found[1].box)
  # The order is the size, whatever order a backend lists its faces in.
  assert all(a is b for a, b in zip(faces.largest_first(found[::-1]), found))

  # Through animate's code path (the CLI's, with the run loaded once for the file).
  two_face = batch_lib.gather_sources([[str(two)]])
  drivers = batch_lib.gather_drivers([str(inputs["talk"])])
  out = tmp_path / "left.mp4"
  (summary,), status = batch_lib.run_batch(
      batch_lib.plan(two_face, drivers, out, False), run, backend,
      batch_lib.Options(finetune_steps=0, face=1))
  assert status == 0 and summary["face"] == 1 and summary["frames"] == 6
  (box,) = summary["face_boxes"]
  assert _centre_x(box) < SMALL and np.allclose(box, smaller.face_box, atol=0.1)
  assert len(read_video(out)[0]) == 6

  missing = tmp_path / "none.mp4"
  line = (f"{two}: --face 5 asks for face 5 (0 is the largest), but the dlib landmark backend "
          f"found 2 faces in the {SMALL + LARGE}x{LARGE} image (expected --face 0 to 1)")
  with pytest.raises(faces.NoFaceError) as e:
    batch_lib.run_batch(batch_lib.plan(two_face, drivers, missing, False), run, backend,
                        batch_lib.Options(finetune_steps=0, face=5))
  assert str(e.value) == line  # the CLI prints it as one line, exit status 2 (test_inference)
  assert not missing.exists()


def test_a_batch_compiles_once_and_skips_a_source_without_a_face(run_dir, inputs, tmp_path,
                                                                  capsys, monkeypatch):
  traces: list[str] = []

  def on_event(event: str, _: float, **kwargs) -> None:
    if event == dispatch.JAXPR_TRACE_EVENT:  # one per jit cache miss (compiled or not)
      traces.append(kwargs.get("fun_name"))

  detected, fitted = [], []
  detect, fit = backends.DlibBackend.detect, identity_lib.fit_identity
  monkeypatch.setattr(backends.DlibBackend, "detect",
                      lambda self, frame: detected.append(frame.shape) or detect(self, frame))
  monkeypatch.setattr(identity_lib, "fit_identity",
                      lambda *a, **k: fitted.append(a[1].shape) or fit(*a, **k))
  out = tmp_path / "batch"
  monitoring.register_event_duration_secs_listener(on_event)
  try:
    status = cli.main(["animate", "--run", str(run_dir), "-s", str(inputs["astronaut"]),
                       "-s", str(inputs["noise"]), "-s", str(inputs["two"]),
                       "-d", str(inputs["talk"]), "--driving", str(inputs["clip"]),
                       "-o", str(out), "--finetune-steps", "1"])
  finally:
    monitoring.unregister_event_duration_listener(on_event)
  captured = capsys.readouterr()
  assert status == 2  # a pair failed
  # One generator and one fine-tune step for 4 videos and 2 fits.
  assert traces.count("gen") == 1 and traces.count("step") == 1, traces
  # Each source fitted once, each driver's frames detected once: 8 clip frames + 3 pictures.
  assert len(fitted) == 2 and len(detected) == 8 + 3
  want = {"astronaut--talk.mp4": 6, "astronaut--clip.mp4": 8, "two--talk.mp4": 6,
          "two--clip.mp4": 8}
  assert sorted(p.name for p in out.iterdir()) == sorted([*want, "batch.json"])
  for name, frames in want.items():
    assert len(read_video(out / name)[0]) == frames, name
  record = json.loads((out / "batch.json").read_text())
  assert sorted(record["written"]) == sorted(want)
  assert sorted(record["failed"]) == ["noise--clip.mp4", "noise--talk.mp4"]
  noise = next(s for s in record["sources"] if s["name"] == "noise")
  assert noise["error"].startswith(f"{inputs['noise']}: no face found")
  skipped = [line for line in captured.err.splitlines() if "skipped" in line]
  assert skipped == [f"fewshot-jax animate: skipped source noise (2 pairs): {noise['error']}"]
  assert {r["out"]: r["face"] for r in record["pairs"] if r["status"] == "written"} == {
      n: 0 for n in want}
  assert "failed: noise--talk.mp4, noise--clip.mp4" in captured.out

  # The same batch again may replace what it wrote; a file it did not write is refused.
  sources = batch_lib.gather_sources([[str(inputs["astronaut"])]])
  drivers = batch_lib.gather_drivers([str(inputs["talk"])])
  assert batch_lib.plan(sources, drivers, out, True).pairs[0].out == out / "astronaut--talk.mp4"
  other = tmp_path / "other"
  other.mkdir()
  (other / "astronaut--talk.mp4").write_bytes(b"a user's video")
  with pytest.raises(ValueError, match="astronaut--talk.mp4 is in the way and was not written"):
    batch_lib.plan(sources, drivers, other, True)
  assert (other / "astronaut--talk.mp4").read_bytes() == b"a user's video"


def test_short_flags_and_batch_plans(inputs, tmp_path):
  args = cli.build_parser().parse_args(
      ["animate", "--run", "r", "-s", "a.png", "b.png", "-s", "c.png", "-d", "x.mp4",
       "--driving", "y.npy", "--driver", "z.mp4", "-o", "out", "--face", "1"])
  assert args.source == [["a.png", "b.png"], ["c.png"]]
  assert args.driver == ["x.mp4", "y.npy", "z.mp4"] and args.out == "out" and args.face == 1
  args = cli.build_parser().parse_args(["finetune", "--run", "r", "-s", "a.png", "-o", "id"])
  assert args.source == ["a.png"] and args.out == "id"
  # A folder of inputs: each picture a face, hidden temporaries left out.
  (tmp_path / ".two.png.tmp.png").write_bytes(b"")
  for name in ("astronaut", "two"):
    (tmp_path / f"{name}.png").write_bytes(inputs[name].read_bytes())
  sources = batch_lib.gather_sources(source_dir=str(tmp_path))
  assert [s.name for s in sources] == ["astronaut", "two"]
  drivers = batch_lib.gather_drivers([str(inputs["talk"])])
  # Two faces with one stem would write one file twice: refused before work starts.
  twice = sources + batch_lib.gather_sources([[str(inputs["astronaut"])]])
  with pytest.raises(ValueError, match="astronaut--talk.mp4 would be written for both"):
    batch_lib.plan(twice, drivers, tmp_path / "out", True)
  with pytest.raises(ValueError, match="is an input folder too"):
    batch_lib.plan(sources, drivers, tmp_path, True, inputs=[str(tmp_path)])
  with pytest.raises(ValueError, match=r"2 sources x 1 drivers make 2 videos, written into a "
                                       "folder"):
    batch_lib.plan(sources, drivers, tmp_path / "x.mp4", False)


def test_driver_face_picks_the_face_the_track_starts_from(inputs, tmp_path):
  from fewshot_jax.inference import driver as driver_lib  # pylint: disable=g-import-not-at-top

  two = np.asarray(Image.open(inputs["two"]))
  video = tmp_path / "two.mp4"
  save_mp4(video, np.stack([two] * 2), 10)
  # After H.264, dlib also scores a patch of the larger astronaut's suit at 0.03 (its box is the
  # largest: it would be face 0); the faces score 1.4-1.5, so a threshold of 0.5 drops it alone.
  backend = backends.DlibBackend(min_score=0.5)
  right = driver_lib.load_driver(video, backend, SIZE, show_progress=False, face=0)
  left = driver_lib.load_driver(video, backend, SIZE, show_progress=False, face=1)
  assert right.held == left.held == 0
  assert (right.boxes[:, 0] + right.boxes[:, 2]).min() / 2 > SMALL
  assert (left.boxes[:, 0] + left.boxes[:, 2]).max() / 2 < SMALL
  with pytest.raises(faces.NoFaceError, match=rf"driver {video}: --driver-face 2 asks for face 2 "
                                              r"\(0 is the largest\), but at most 2 faces were "
                                              r"found in one of its 2 frames"):
    driver_lib.load_driver(video, backend, SIZE, show_progress=False, face=2)
