"""Does fine-tuning on warp-augmented shots animate one photo better? The astronaut, driven by the
carphone clip, fitted with and without ``--augment``, at the same steps and at the same wall time.

Why: one photo fitted alone is memorised in its pose; every other pose the generator must invent.
Warped copies of the photo (``inference.augment``) show the fine-tune how this face moves. This
measures whether that shows in the animation, with the model the tests use (``tests/
carphone_run.py``: demo_64's architecture meta-trained 600 steps on the carphone speaker):

* **identity distance**: the dlib ResNet descriptor (``evaluation.face_metrics``) of each
  generated frame, aligned on the landmarks it was driven with, against the source photo's at
  full resolution; Euclidean, as dlib's own (< 0.6 is "the same person" for dlib). The 64 px shot
  itself scores ``shot_distance``: a perfect 64 px reconstruction would score about that.
* **face detection rate**: dlib's HOG detector on the generated frames (64 px shown at 256,
  bicubic, as ``animate`` writes them), at its default threshold and at -0.5 (as
  ``tests/test_inference.py`` judges this small model's blurry frames).

Conditions: ``plain`` and ``augment`` at the run's ``finetune.steps``, and ``plain`` given the
wall time ``augment`` took (more steps; refitted once if the machine's load made it miss that
time by more than 20%). Each option is compiled once before it is timed (a one-step fit), so
the times are fine-tuning only (the warping of the augmented pairs, on the host, included). Writes the JSON (``--out``) and a picture
(``--picture``): driver crops, then generated without and with augmentation at the same steps,
then without at the same wall time.

  PYTHONPATH=src python benchmarks/single_photo_augment.py [--run RUN] [--augment 8]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from fewshot_jax.atomic_files import write_json
from fewshot_jax.evaluation.face_metrics import DlibFaceEmbedder
from fewshot_jax.inference import TalkingHead
from fewshot_jax.inference import augment as augment_lib
from fewshot_jax.inference import motion as motion_lib
from fewshot_jax.inference.driver import iter_driver_crops, load_driver
from fewshot_jax.inference.faces import crop_shot
from fewshot_jax.output_paths import check_output_file
from fewshot_jax.prep.backends import DlibBackend
from fewshot_jax.visualize import grid, save_png

ROOT = pathlib.Path(__file__).parents[1]
TAG = "single_photo_augment"
SHOW = 256  # generated frames are judged as animate writes them: 64 px shown at 256


def _default_run() -> pathlib.Path:
  sys.path.insert(0, str(ROOT / "tests"))
  from carphone_run import carphone_run  # pylint: disable=g-import-not-at-top
  return carphone_run()


def _carphone() -> pathlib.Path:
  sys.path.insert(0, str(ROOT / "tests"))
  from test_prep_backends import carphone_path  # pylint: disable=g-import-not-at-top
  return pathlib.Path(carphone_path())


def _check_outputs(out: pathlib.Path, picture: pathlib.Path) -> None:
  """Refuses to replace files this benchmark did not write."""
  check_output_file(out, "--out", (".json",))
  check_output_file(picture, "--picture", (".png",))
  ours = False
  if out.exists():
    try:
      ours = json.loads(out.read_text()).get("benchmark") == TAG
    except (OSError, ValueError):
      ours = False
    if not ours:
      raise SystemExit(f"--out {out}: exists and was not written by this benchmark; not replaced")
  if picture.exists() and not ours:
    raise SystemExit(f"--picture {picture}: exists and was not written by this benchmark")


def _upscale(frame: np.ndarray) -> np.ndarray:
  return np.asarray(Image.fromarray(frame).resize((SHOW, SHOW), Image.Resampling.BICUBIC))


def _score(frames: np.ndarray, targets: np.ndarray, source_embedding: np.ndarray,
           embedder: DlibFaceEmbedder, detectors: dict[str, DlibBackend]) -> dict[str, float]:
  big = [_upscale(f) for f in frames]
  scale = SHOW / frames.shape[1]
  embs = embedder.embed_many(big, [p * scale for p in targets])
  dist = np.linalg.norm(embs - source_embedding[None], axis=1)
  out = {"identity_distance": float(dist.mean()),
         "identity_distance_median": float(np.median(dist)),
         "same_person_rate": float((dist < 0.6).mean())}
  for name, det in detectors.items():
    out[f"detected_{name}"] = float(np.mean([bool(det.detect(f)) for f in big]))
  return out


def _fit(head: TalkingHead, shot, steps: int, augment: int) -> tuple[Any, float]:
  t0 = time.perf_counter()
  ident = head.finetune(shot.frame[None], shot.landmarks[None], steps=steps, augment=augment,
                        show_progress=True)
  return ident, time.perf_counter() - t0


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--run", default=None, help="run directory (default: tests' carphone_run())")
  p.add_argument("--augment", type=int, default=8, help="augmented pairs per step")
  p.add_argument("--steps", type=int, default=None, help="default: the run's finetune.steps")
  p.add_argument("--out", default=str(ROOT / "docs" / "augment_single_photo.json"))
  p.add_argument("--picture", default=str(ROOT / "docs" / "augment_single_photo.png"))
  p.add_argument("--columns", type=int, default=6, help="driver frames in the picture")
  args = p.parse_args(argv)
  out, picture = pathlib.Path(args.out), pathlib.Path(args.picture)
  _check_outputs(out, picture)  # before minutes of work

  import skimage.data as skdata  # pylint: disable=g-import-not-at-top

  run_dir = pathlib.Path(args.run) if args.run else _default_run()
  head = TalkingHead.load(run_dir, batch_size=8)
  size = head.image_size
  steps = head.config.finetune.steps if args.steps is None else args.steps
  backend = DlibBackend(upsample=1)
  photo = skdata.astronaut()
  shot = crop_shot(photo, backend, size, "astronaut")
  face = backend.detect(photo)[0]
  embedder = DlibFaceEmbedder()
  source_embedding = embedder.embed(photo, face.landmarks)
  shot_distance = float(np.linalg.norm(
      embedder.embed(_upscale(shot.frame), shot.landmarks * (SHOW / size)) - source_embedding))

  carphone = _carphone()
  driver = load_driver(carphone, backend, size, show_progress=False)
  raw = load_driver(carphone, backend, size, smooth_sigma=0.0, show_progress=False)
  measured = augment_lib.ranges_from(raw.landmarks, size)
  ref = motion_lib.resolve_reference("first", shot.landmarks, driver.landmarks)
  targets = motion_lib.retarget(shot.landmarks, driver.landmarks, "relative", ref)
  detectors = {"default": backend, "lenient": DlibBackend(upsample=1, min_score=-0.5)}

  # Compile each option's fine-tune step once, so that the timed fits are fine-tuning only.
  for n in (0, args.augment):
    head.finetune(shot.frame[None], shot.landmarks[None], steps=1, augment=n, show_progress=False)
  fits: dict[str, dict[str, Any]] = {}
  plain, t_plain = _fit(head, shot, steps, 0)
  aug, t_aug = _fit(head, shot, steps, args.augment)
  # Same wall time: plain fine-tuning for as many steps as fit in augment's time. The machine's
  # load changes the rate, so a fit that missed the time by more than 20% is redone once with
  # the steps scaled by the miss; every try is recorded.
  same_time, tries = max(steps, int(round(steps * t_aug / t_plain))), []
  for _ in range(2):
    plain_long, t_long = _fit(head, shot, same_time, 0)
    tries.append({"steps": same_time, "finetune_seconds": round(t_long, 2)})
    if abs(t_long - t_aug) <= 0.2 * t_aug:
      break
    same_time = max(steps, int(round(same_time * t_aug / t_long)))
  same_time = tries[-1]["steps"]
  frames = {}
  for name, ident, secs, n, k in (("plain", plain, t_plain, steps, 0),
                                  ("augment", aug, t_aug, steps, args.augment),
                                  ("plain_same_time", plain_long, t_long, same_time, 0)):
    frames[name] = head.generate(targets, ident)
    fits[name] = {"steps": n, "augment": k, "finetune_seconds": round(secs, 2),
                  "content_last": ident.info.get("content_last"),
                  **_score(frames[name], targets, source_embedding, embedder, detectors)}
    print(name, json.dumps(fits[name]))

  def better(a: dict[str, float], b: dict[str, float]) -> bool:
    return (a["identity_distance"] < b["identity_distance"]
            and a["detected_default"] >= b["detected_default"]
            and a["detected_lenient"] >= b["detected_lenient"])

  verdict = {"better_than_plain_same_steps": better(fits["augment"], fits["plain"]),
             "better_than_plain_same_time": better(fits["augment"], fits["plain_same_time"])}
  verdict["default_augment"] = augment_lib.DEFAULT_AUGMENT

  cols = np.linspace(0, len(targets) - 1, args.columns).round().astype(int)
  crops = list(iter_driver_crops(driver, size))
  big = lambda im: np.asarray(Image.fromarray(im).resize((128, 128), Image.Resampling.BICUBIC))  # noqa: E731
  blank = np.full((128, 128, 3), 255, np.uint8)
  rows = [[blank] + [big(crops[i]) for i in cols],
          [big(shot.frame)] + [big(frames["plain"][i]) for i in cols],
          [big(shot.frame)] + [big(frames["augment"][i]) for i in cols],
          [big(shot.frame)] + [big(frames["plain_same_time"][i]) for i in cols]]
  save_png(picture, grid(rows))

  load = os.getloadavg()
  write_json(out, {
      "benchmark": TAG, "run": str(run_dir), "source": "skimage.data.astronaut",
      "driver": carphone.name, "driver_frames": len(targets), "reference": ref,
      "image_size": size, "augment": args.augment, "shot_distance": round(shot_distance, 4),
      "ranges_used": augment_lib.CARPHONE_RANGES.to_dict(),
      "ranges_measured_on_driver": measured.to_dict(),
      "fits": fits, "same_time_tries": tries, "verdict": verdict,
      "picture": {"file": picture.name, "rows": ["driver crop", "without augment", "with augment",
                                                     "without, same wall time"],
                  "driver_frames": cols.tolist()},
      "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                  "load_average_at_end": [round(x, 2) for x in load]},
  })
  print(json.dumps(verdict))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
