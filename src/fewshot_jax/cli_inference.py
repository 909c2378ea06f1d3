"""The inference subcommands of ``fewshot-jax``: ``finetune``, ``animate`` and ``export``.

They import no training code: a run's checkpoint is read by ``fewshot_jax.inference.run``. Bad
input (no face in a source, an unreadable video, a checkpoint or identity of another model) ends
the command with one line naming the file and what was expected, and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
from collections.abc import Sequence
from typing import Any

from fewshot_jax.landmarks import check_in_crop
from fewshot_jax.output_paths import check_input_file, check_output_file


def _backend(args: argparse.Namespace):
  from fewshot_jax.prep.backends import make_backend  # pylint: disable=g-import-not-at-top

  options: dict[str, Any] = {}
  if args.landmarks == "dlib":
    options["upsample"] = args.upsample
  elif args.device:
    options["device"] = args.device
  return make_backend(args.landmarks, **options)


def _shots(args: argparse.Namespace, image_size: int, backend_factory):
  """``(frames uint8 [K, S, S, 3], landmarks f32 [K, 68, 2], names)`` from a --shots npz or a
  --synthetic identity (source pictures go through ``faces.load_shots``, see ``_fit``)."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  if getattr(args, "shots", None):
    path = check_input_file(args.shots, "--shots", (".npz",))
    try:
      z = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
      raise ValueError(f"--shots {path}: not a readable .npz ({e})") from e
    with z:
      if "frames" not in z or "landmarks" not in z:
        raise ValueError(f"--shots {path}: expected arrays 'frames' [K,H,W,3] and "
                         f"'landmarks' [K,68,2], found {sorted(z.keys())}")
      frames, points = z["frames"], z["landmarks"].astype(np.float32)
    if frames.ndim != 4 or frames.shape[1:] != (image_size, image_size, 3):
      raise ValueError(f"--shots {path}: frames have shape {frames.shape}, expected "
                       f"[K,{image_size},{image_size},3] (the run's model.image_size)")
    if points.shape != (frames.shape[0], 68, 2):
      raise ValueError(f"--shots {path}: landmarks have shape {points.shape}, expected "
                       f"[{frames.shape[0]},68,2]")
    if frames.dtype != np.uint8:
      raise ValueError(f"--shots {path}: frames are {frames.dtype}, expected uint8 (0-255)")
    check_in_crop(points, image_size, f"--shots {path}", "shot")
    return frames, points, [str(path)]
  from fewshot_jax.data import synthetic  # pylint: disable=g-import-not-at-top

  frames, points = synthetic.render_video(args.synthetic, max(2 * args.k, 2), image_size)
  return frames[: args.k], points[: args.k], [f"synthetic:{args.synthetic}"]


def _check_counts(args: argparse.Namespace) -> None:
  """``finetune``'s inputs and numbers a user can get wrong, refused before a checkpoint is
  loaded (``animate``'s are ``batch.check_options``, shared with the web app)."""
  if args.shots:
    check_input_file(args.shots, "--shots", (".npz",))
  for source in args.source or ():
    check_input_file(source, "--source")
  if args.k < 1:
    raise ValueError(f"--k {args.k}: expected at least 1")
  for flag, value in (("--steps", args.steps), ("--face", args.face),
                      ("--augment", args.augment)):
    if value is not None and value < 0:
      raise ValueError(f"{flag} {value}: expected at least 0")


def _augment(args: argparse.Namespace) -> int:
  from fewshot_jax.inference.augment import DEFAULT_AUGMENT  # pylint: disable=g-import-not-at-top
  return DEFAULT_AUGMENT if args.augment is None else args.augment


def _fit(args: argparse.Namespace, run, steps: int, backend=None):
  from fewshot_jax.inference.identity import fit_identity, fit_shots  # pylint: disable=g-import-not-at-top

  if getattr(args, "source", None):
    from fewshot_jax.inference.faces import load_shots  # pylint: disable=g-import-not-at-top

    shots = load_shots(args.source, backend or _backend(args), run.config.model.image_size,
                       args.enlarge, args.face)
    return fit_shots(run, shots, steps, augment=_augment(args))
  frames, points, names = _shots(args, run.config.model.image_size,
                                 lambda: backend or _backend(args))
  identity = fit_identity(run, frames, points, steps, augment=_augment(args))
  identity.info["sources"] = names
  return identity


def cmd_finetune(args: argparse.Namespace, overrides: Sequence[str]) -> int:
  from fewshot_jax.inference.identity import save_identity  # pylint: disable=g-import-not-at-top
  from fewshot_jax.inference.run import load_run  # pylint: disable=g-import-not-at-top

  from fewshot_jax.inference.identity import check_identity_folder  # pylint: disable=g-import-not-at-top
  check_identity_folder(args.out)  # before minutes of fitting, not after
  _check_counts(args)
  run = load_run(args.checkpoint, overrides=overrides)
  steps = run.config.finetune.steps if args.steps is None else args.steps
  identity = _fit(args, run, steps)
  save_identity(args.out, identity, run)
  print(json.dumps({"identity": str(args.out), "finetune_steps": steps,
                    "shots": identity.info["shots"], "augment": identity.info["augment"],
                    "content_last": identity.info.get("content_last"),
                    "face": identity.info.get("face"),
                    "face_boxes": identity.info.get("face_boxes")}))
  return 0


def _is_batch(args: argparse.Namespace) -> bool:
  """Whether -o names a folder: several faces or drivers, or a --source-dir/--driver-dir."""
  faces = len(args.source or ()) + len(args.identity or ())
  return bool(args.source_dir or args.driver_dir or faces > 1 or len(args.driver or ()) > 1)


def cmd_animate(args: argparse.Namespace, overrides: Sequence[str]) -> int:
  """One pair (``-o x.mp4``) or a batch (``-o FOLDER``), through ``inference.batch`` either way:
  every input and output is checked before a checkpoint is loaded."""
  from fewshot_jax.inference import batch as batch_lib  # pylint: disable=g-import-not-at-top
  from fewshot_jax.inference.run import load_run  # pylint: disable=g-import-not-at-top

  folder = _is_batch(args)
  if not folder:
    check_output_file(args.out, "--out", (".mp4",))
  drivers = batch_lib.gather_drivers(args.driver or (), args.driver_dir)
  if not folder:  # the output checked against the driver before the sources are read
    batch_lib.check_out_file(args.out, drivers[0])
  sources = batch_lib.gather_sources(args.source or (), args.source_dir, args.identity or ())
  p = batch_lib.plan(sources, drivers, args.out, folder, (args.source_dir, args.driver_dir))
  if args.save_identity:
    if len(sources) != 1:
      raise ValueError(f"--save-identity {args.save_identity}: saves one identity, and this "
                       f"call fits {len(sources)} faces; save each with `fewshot-jax finetune`")
    if not sources[0].pictures:
      raise ValueError(f"--save-identity {args.save_identity}: the face is an --identity "
                       "already; --save-identity saves one fitted from -s/--source")
    from fewshot_jax.inference.identity import check_identity_folder  # pylint: disable=g-import-not-at-top
    check_identity_folder(args.save_identity)
  options = batch_lib.check_options(batch_lib.Options(
      finetune_steps=args.finetune_steps, motion=args.motion, layout=args.layout,
      batch_size=args.batch_size, reference=args.reference, motion_scale=args.motion_scale,
      region=args.animate, fps=args.fps, smooth=args.smooth, enlarge=args.enlarge,
      face=args.face, driver_face=args.driver_face, save_identity=args.save_identity,
      verbose=bool(getattr(args, "verbose", False)), audio=args.audio,
      augment=_augment(args), paste_back=args.paste_back, max_size=args.max_size), drivers,
      folder, sources)
  run = load_run(args.checkpoint, overrides=overrides)
  needs_backend = any(s.pictures for s in sources) or any(d.suffix != ".npy" for d in drivers)
  results, status = batch_lib.run_batch(p, run, _backend(args) if needs_backend else None,
                                        options)
  if not folder:
    print(json.dumps(results[0]))
    return status
  written = [r["out"] for r in results if r["status"] == "written"]
  failed = [r["out"] for r in results if r["status"] == "failed"]
  print(f"wrote {len(written)} of {len(results)} videos to {p.folder} (each pair's record in "
        f"{p.folder / batch_lib.BATCH_FILE})" + (f"; failed: {', '.join(failed)}" if failed else ""))
  print(json.dumps({"batch": str(p.folder / batch_lib.BATCH_FILE), "written": written,
                    "failed": failed}))
  return status


def cmd_export(args: argparse.Namespace, overrides: Sequence[str]) -> int:
  from fewshot_jax.inference.export import export_run  # pylint: disable=g-import-not-at-top
  from fewshot_jax.inference.identity import load_identity  # pylint: disable=g-import-not-at-top
  from fewshot_jax.inference.run import load_run  # pylint: disable=g-import-not-at-top

  run = load_run(args.checkpoint, overrides=overrides)
  identity = load_identity(args.identity, run) if args.identity else None
  meta = export_run(run, args.out, identity, platforms=tuple(args.platforms.split(",")))
  sizes = {p.name: p.stat().st_size for p in sorted(pathlib.Path(args.out).iterdir())}
  print(json.dumps({"export": str(args.out), "platforms": meta["platforms"], "bytes": sizes}))
  return 0


def _landmark_options(p: argparse.ArgumentParser) -> None:
  p.add_argument("--landmarks", choices=("dlib", "fan"), default="dlib",
                 help="landmark backend for source pictures and driver videos")
  p.add_argument("--upsample", type=int, default=1, help="dlib: detector upsampling steps")
  p.add_argument("--device", default=None, help="fan: cpu, cuda or cuda:N")
  p.add_argument("--enlarge", type=float, default=1.8,
                 help="crop side / landmark box side (as the training data was cut)")


_FACE_HELP = ("which face of each source picture to use when it shows several: 0 is the "
              "largest, 1 the next (ordered by detector box size, then score)")
_BATCH_HELP = """\
Several faces and drivers: every face is animated by every driver, and -o is a folder where each
pair writes <source-stem>--<driver-stem>.mp4. Each -s names the pictures of one face (its shots,
as a single -s always has), so repeat -s for several faces, or give --source-dir with one picture
per face. A batch of portraits moved by the same clip is the common case, and the product of the
inputs covers it without listing pairs. The model is loaded and compiled once, each face fitted
once and each driver's landmarks found once. A bad input (no face, an unreadable video) is skipped
with one line on stderr and recorded in batch.json; the others are written, and the exit status
is 2 if any pair failed. A video of that name in the folder is replaced only if batch.json says an
earlier batch wrote it; anything else in the way is refused before work starts."""


def _augment_option(p: argparse.ArgumentParser) -> None:
  from fewshot_jax.inference.augment import DEFAULT_AUGMENT  # pylint: disable=g-import-not-at-top

  p.add_argument("--augment", type=int, default=None, metavar="N",
                 help="fine-tune on N warp-augmented pairs of the shots too, new ones each step "
                      f"(head turns, mouth and eye openings; default {DEFAULT_AUGMENT})")


def add_parsers(sub: Any) -> None:
  """Adds ``finetune``, ``animate`` and ``export`` to the ``fewshot-jax`` subparsers."""
  p = sub.add_parser("finetune", help="fit a new identity from K pictures and save it")
  p.add_argument("--checkpoint", "--run", dest="checkpoint", required=True,
                 help="a run directory written by train/demo")
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument("-s", "--source", nargs="+", help="photos or paintings of one face (any size)")
  src.add_argument("--shots", help="npz with cropped frames uint8 [K,S,S,3] and landmarks [K,68,2]")
  src.add_argument("--synthetic", type=int, help="fit this synthetic identity seed instead")
  p.add_argument("--k", type=int, default=8, help="shots to take with --synthetic")
  p.add_argument("--steps", type=int, default=None,
                 help="fine-tuning steps (default: the run's finetune.steps; 0: feed-forward)")
  p.add_argument("-o", "--out", required=True,
                 help="identity directory (identity.safetensors/.json)")
  p.add_argument("--face", type=int, default=0, metavar="N", help=_FACE_HELP)
  _augment_option(p)
  _landmark_options(p)
  p.set_defaults(func=cmd_finetune)

  p = sub.add_parser(
      "animate", help="make a video of a face driven by a video's landmarks",
      formatter_class=argparse.RawDescriptionHelpFormatter,
      description="Animates each face (-s, --source-dir, --identity) with each driver (-d, "
      "--driver-dir).\n\n" + _BATCH_HELP)
  p.add_argument("--checkpoint", "--run", dest="checkpoint", required=True,
                 help="a run directory written by train/demo")
  p.add_argument("-s", "--source", nargs="+", action="append", metavar="PICTURE",
                 help="photos or paintings of one face (any size; several: its shots); repeat "
                      "-s for several faces")
  p.add_argument("--source-dir", metavar="DIR",
                 help="a folder of pictures: each one a face of its own")
  p.add_argument("--identity", action="append", metavar="DIR",
                 help="an identity directory from `fewshot-jax finetune` (repeatable)")
  p.add_argument("-d", "--driver", "--driving", dest="driver", action="append", metavar="VIDEO",
                 help="driving video (any format PyAV reads) or landmarks .npy [T,68,2] in crop "
                      "pixels; repeat for several")
  p.add_argument("--driver-dir", metavar="DIR",
                 help="a folder of driving videos and .npy landmarks: each one a driver")
  p.add_argument("-o", "--out", required=True,
                 help="output .mp4 (at the driver's fps) for one face and one driver; else a "
                      "folder, where each pair writes <source>--<driver>.mp4 and batch.json")
  p.add_argument("--face", type=int, default=0, metavar="N", help=_FACE_HELP)
  p.add_argument("--driver-face", type=int, default=0, metavar="N",
                 help="which face of a driver video to track, counted as --face (0: the "
                      "largest) in the first frame showing that many faces")
  p.add_argument("--finetune-steps", type=int, default=None,
                 help="with --source: fine-tuning steps (default: the run's finetune.steps; 0: "
                      "feed-forward)")
  _augment_option(p)
  p.add_argument("--save-identity", help="with one --source: also save the fitted identity here")
  p.add_argument("--motion", choices=("relative", "absolute"), default="relative",
                 help="relative: the driver's motion on the source's own face shape")
  p.add_argument("--reference", default="first",
                 help="driver frame relative motion is measured from: first, auto (the frame "
                      "closest to the source's pose and expression) or a frame index")
  p.add_argument("--motion-scale", type=float, default=1.0,
                 help="scales the expression relative to the reference (0: the reference's, 1: "
                      "the driver's, >1 exaggerates)")
  p.add_argument("--animate", default="all",
                 help="all, pose (head motion only) or expression (expression only)")
  p.add_argument("--layout", choices=("single", "side-by-side"), default="single")
  p.add_argument("--paste-back", action=argparse.BooleanOptionalAction, default=None,
                 help="paste the generated face back into the whole source picture (default: "
                      "yes when the picture is at hand: -s/--source, or an --identity whose "
                      "recorded picture is unchanged; otherwise the face crop, and the summary "
                      "says why)")
  p.add_argument("--max-size", type=int, default=1024,
                 help="with paste-back: the output's longer side at most this many pixels")
  p.add_argument("--audio", action=argparse.BooleanOptionalAction, default=True,
                 help="copy a driver video's sound into the output, in sync and cut to the frames "
                      "written (AAC copied, other codecs re-encoded to AAC)")
  p.add_argument("--smooth", type=float, default=1.0,
                 help="temporal smoothing of the driver's landmarks, in frames (0: none)")
  p.add_argument("--fps", type=float, default=25.0, help="frame rate of a .npy driver")
  p.add_argument("--batch-size", type=int, default=8, help="frames generated per call")
  _landmark_options(p)
  p.set_defaults(func=cmd_animate)

  p = sub.add_parser("export", help="write weights + jax.export programs that run without us")
  p.add_argument("--checkpoint", "--run", dest="checkpoint", required=True)
  p.add_argument("--identity", help="an identity directory: export its fine-tuned G and ψ'")
  p.add_argument("--out", required=True, help="export directory")
  p.add_argument("--platforms", default="cpu,cuda,tpu",
                 help="comma-separated jax.export platforms")
  p.set_defaults(func=cmd_export)
