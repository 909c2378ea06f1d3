"""The ``fewshot-jax`` command.

Subcommands: ``demo``, ``train``, ``finetune``, ``convert-weights``. Config overrides are given as
``--config.SECTION.FIELD=VALUE`` after the other options, e.g.
``fewshot-jax train --config demo_64 --workdir runs/x --config.train.steps=50``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

DEFAULT_CACHE = pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache"))


def _setup(verbose: bool) -> None:
  """Logging and the persistent XLA compilation cache (re-runs skip most compile time)."""
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
  logging.getLogger("absl").setLevel(logging.INFO if verbose else logging.WARNING)
  import jax  # pylint: disable=g-import-not-at-top

  cache = os.environ.get("FEWSHOT_JAX_XLA_CACHE", str(DEFAULT_CACHE / "fewshot_jax" / "xla"))
  if cache:
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.0)


def _config(args: argparse.Namespace, overrides: Sequence[str]):
  from fewshot_jax import config as config_lib  # pylint: disable=g-import-not-at-top

  return config_lib.apply_overrides(config_lib.load_config(args.config), overrides)


def cmd_demo(args: argparse.Namespace, overrides: Sequence[str]) -> int:
  from fewshot_jax import demo  # pylint: disable=g-import-not-at-top

  out = demo.run_demo(_config(args, overrides), args.workdir)
  failed = [k for k, ok in out["checks"].items() if not ok]
  print(f"wrote {args.workdir}/metrics.json, samples.png, reenactment.mp4, reenactment.gif")
  if failed and args.strict:
    print(f"learning checks failed: {failed}", file=sys.stderr)
    return 1
  return 0


def _init_distributed(args: argparse.Namespace) -> None:
  """Joins a multi-process job when launched as one (flags, or JAX's environment on TPU pods).

  ``jax.distributed.initialize`` must run before anything touches the devices. On Cloud TPU it
  needs no arguments; elsewhere the coordinator's address, the process count and this process's id
  come from the flags (or FEWSHOT_COORDINATOR / FEWSHOT_NUM_PROCESSES / FEWSHOT_PROCESS_ID).
  """
  import jax  # pylint: disable=g-import-not-at-top

  coordinator = args.coordinator or os.environ.get("FEWSHOT_COORDINATOR")
  num = args.num_processes or os.environ.get("FEWSHOT_NUM_PROCESSES")
  pid = args.process_id if args.process_id is not None else os.environ.get("FEWSHOT_PROCESS_ID")
  if not (args.multihost or coordinator):
    return
  jax.distributed.initialize(
      coordinator_address=coordinator, num_processes=None if num is None else int(num),
      process_id=None if pid is None else int(pid))
  logging.getLogger("fewshot_jax").info(
      "process %d of %d, %d local of %d devices", jax.process_index(), jax.process_count(),
      jax.local_device_count(), jax.device_count())


def train_sources(cfg) -> tuple[Any, Any]:
  """The training and held-out episode sources that ``cfg.data`` names."""
  from fewshot_jax.data import episodes  # pylint: disable=g-import-not-at-top

  dc = cfg.data
  if dc.source == "shards":
    if not dc.data_dir:
      raise SystemExit("data.source='shards' needs --config.data.data_dir=DIR (a TFDS data dir)")
    source = episodes.EpisodeSource.from_shards(dc.data_dir, dc.dataset, dc.train_split)
    try:
      held = episodes.EpisodeSource.from_shards(dc.data_dir, dc.dataset, dc.eval_split)
    except KeyError:
      held = None
    return source, held
  if dc.source == "synthetic":
    from fewshot_jax.data import synthetic  # pylint: disable=g-import-not-at-top

    def render(seeds):
      data = synthetic.make_dataset(list(seeds), dc.frames_per_video, cfg.model.image_size,
                                    workers=dc.workers, progress=True,
                                    frame_stride=dc.frame_stride)
      return episodes.EpisodeSource.from_arrays(data["frames"], data["landmarks"])

    off = synthetic.HELDOUT_SEED_OFFSET
    held = render(range(off, off + dc.num_eval_videos)) if dc.num_eval_videos else None
    return render(range(dc.num_train_videos)), held
  raise SystemExit(f"data.source={dc.source!r}: expected 'shards' or 'synthetic'")


def cmd_train(args: argparse.Namespace, overrides: Sequence[str]) -> int:
  _init_distributed(args)
  from fewshot_jax.train.loop import train  # pylint: disable=g-import-not-at-top

  cfg = _config(args, overrides)
  source, held = train_sources(cfg)
  result = train(cfg, args.workdir, source, init=args.init, eval_source=held)
  what = "preempted at" if result.preempted else "trained to"
  print(f"{what} step {int(result.state.step)}; checkpoints in {args.workdir}/checkpoints")
  return 0


def _load_shots(args: argparse.Namespace, image_size: int):
  import numpy as np  # pylint: disable=g-import-not-at-top

  if args.shots:
    path = pathlib.Path(args.shots)
    if not path.is_file():
      raise SystemExit(f"--shots {path}: no such file")
    with np.load(path, allow_pickle=False) as z:
      if "frames" not in z or "landmarks" not in z:
        raise SystemExit(f"--shots {path}: expected arrays 'frames' [K,H,W,3] and "
                         f"'landmarks' [K,68,2], found {sorted(z.keys())}")
      frames, points = z["frames"], z["landmarks"].astype(np.float32)
  else:
    from fewshot_jax.data import synthetic  # pylint: disable=g-import-not-at-top

    frames, points = synthetic.render_video(args.synthetic, max(2 * args.k, 2), image_size)
    frames, points = frames[: args.k], points[: args.k]
  if frames.ndim != 4 or frames.shape[1:] != (image_size, image_size, 3):
    raise SystemExit(f"shots: frames have shape {frames.shape}, expected [K,{image_size},"
                     f"{image_size},3] (the run's model.image_size)")
  if points.shape != (frames.shape[0], 68, 2):
    raise SystemExit(f"shots: landmarks have shape {points.shape}, expected "
                     f"[{frames.shape[0]},68,2]")
  return frames, points


def cmd_finetune(args: argparse.Namespace, overrides: Sequence[str]) -> int:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from fewshot_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from fewshot_jax.content import build_content_loss  # pylint: disable=g-import-not-at-top
  from fewshot_jax.images import to_uint8  # pylint: disable=g-import-not-at-top
  from fewshot_jax.inference import finetune as inf  # pylint: disable=g-import-not-at-top
  from fewshot_jax.inference.run import load_run, save_identity  # pylint: disable=g-import-not-at-top
  from fewshot_jax.progress import Progress  # pylint: disable=g-import-not-at-top

  run = load_run(args.run)
  cfg = config_lib.apply_overrides(run.config, overrides)
  if args.steps is not None:
    cfg.finetune.steps = args.steps
  frames, points = _load_shots(args, cfg.model.image_size)
  content = build_content_loss(cfg.loss)
  e_hat = jax.jit(lambda v, f, p: inf.embed(run.graphdef, v, cfg.model, f, p))(
      run.vars, frames[None], points[None])[0]
  psi = jax.jit(lambda v, e: inf.feed_forward_psi(run.graphdef, v, e))(run.vars, e_hat)
  fs = inf.init_finetune(cfg, run.vars, e_hat, psi)
  step = jax.jit(inf.make_finetune_step(run.graphdef, cfg, content))
  progress = Progress(cfg.finetune.steps, "finetune", "steps")
  for _ in range(cfg.finetune.steps):
    fs, metrics = step(fs, run.vars, frames, points, content.params)
    progress.update(1, f"content {float(metrics['ft/content']):.4f}")
  out = pathlib.Path(args.out)
  save_identity(out, {"psi": fs.psi, "generator": fs.generator, "d": fs.d, "w_proj": fs.w_proj,
                      "sn": fs.sn},
                {"run": str(pathlib.Path(args.run).absolute()), "run_step": run.step,
                 "finetune_steps": cfg.finetune.steps, "shots": int(frames.shape[0])})
  if args.drive:
    from fewshot_jax.visualize import save_mp4  # pylint: disable=g-import-not-at-top

    drive = np.load(args.drive, allow_pickle=False).astype(np.float32)
    v = run.vars.replace(g={**run.vars.g, "generator": fs.generator}, sn=fs.sn)
    video = to_uint8(jax.jit(lambda v, psi, p: inf.generate(run.graphdef, v, cfg.model, psi, p))(
        v, fs.psi, drive))
    save_mp4(out / "drive.mp4", video, args.fps, upscale=max(1, 256 // cfg.model.image_size))
  print(json.dumps({"identity": str(out), "steps": cfg.finetune.steps}))
  return 0


def cmd_convert_weights(args: argparse.Namespace, overrides: Sequence[str]) -> int:
  del overrides
  from fewshot_jax.models import perceptual  # pylint: disable=g-import-not-at-top

  perceptual.convert_checkpoint(args.kind, args.src, args.dst)
  print(f"wrote {args.dst}")
  return 0


def cmd_prepare_landmarks(args: argparse.Namespace, overrides: Sequence[str]) -> int:
  del overrides
  from fewshot_jax.prep import landmark_cache, layouts  # pylint: disable=g-import-not-at-top

  entries = layouts.list_videos(args.input, args.layout)
  if args.backend == "dlib":
    backend_options = (("upsample", args.upsample),)
  else:
    # torch would give every worker all the cores; share them out instead.
    threads = max(1, (os.cpu_count() or 1) // max(1, args.workers))
    backend_options = (("device", args.device), ("flip", args.flip), ("threads", threads))
  opts = landmark_cache.PrepOptions(
      frames_per_video=args.frames_per_video, image_size=args.image_size, enlarge=args.enlarge,
      jpeg_quality=args.jpeg_quality, min_face_size=args.min_face_size, backend=args.backend,
      backend_options=backend_options)
  summary = landmark_cache.build_cache(entries, args.cache, opts, workers=args.workers)
  print(json.dumps(summary))
  return 0


def cmd_prepare_shards(args: argparse.Namespace, overrides: Sequence[str]) -> int:
  del overrides
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  from fewshot_jax.prep import tfds_builder  # pylint: disable=g-import-not-at-top

  if not args.config.startswith("synthetic") and not args.manual_dir:
    raise SystemExit(f"prepare shards --config {args.config} reads a landmark cache: pass "
                     "--manual-dir CACHE (written by `fewshot-jax prepare landmarks`)")
  builder = tfds_builder.TalkingHeads(
      config=args.config, data_dir=args.data_dir, file_format=args.file_format)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=args.manual_dir))
  splits = {name: info.num_examples for name, info in builder.info.splits.items()}
  print(json.dumps({"data_dir": builder.data_dir, "splits": splits}))
  return 0


def cmd_data_verify(args: argparse.Namespace, overrides: Sequence[str]) -> int:
  del overrides
  from fewshot_jax.prep import verify  # pylint: disable=g-import-not-at-top

  report = verify.verify(args.data_dir)
  print(json.dumps(report, indent=2))
  for p in report["problems"]:
    print(f"CORRUPT {p['file']} at {p['where']}: {p['error']}", file=sys.stderr)
  return 0 if report["ok"] else 1


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="fewshot-jax",
      description="Few-shot talking-head models (Zakharov et al. 2019) in JAX. Config fields can "
      "be overridden with --config.SECTION.FIELD=VALUE.")
  parser.add_argument("-v", "--verbose", action="store_true", help="show library logs (Orbax)")
  sub = parser.add_subparsers(dest="command", required=True)

  p = sub.add_parser("demo", help="synthetic data -> meta-learn demo_64 -> reenact held-out faces")
  p.add_argument("--workdir", default="runs/demo")
  p.add_argument("--config", default="demo_64", help="config name or path[:arg]")
  p.add_argument("--strict", action="store_true", help="exit 1 if a learning check fails")
  p.set_defaults(func=cmd_demo)

  p = sub.add_parser("train", help="meta-learn E, G and D; resumes from WORKDIR's checkpoint")
  p.add_argument("--config", required=True, help="config name or path[:arg]")
  p.add_argument("--workdir", required=True)
  p.add_argument("--init", help="another run's workdir to start from (when WORKDIR has none)")
  p.add_argument("--multihost", action="store_true",
                 help="call jax.distributed.initialize() (Cloud TPU: no other flags needed)")
  p.add_argument("--coordinator", help="host:port of process 0 (multi-process, not TPU)")
  p.add_argument("--num-processes", type=int)
  p.add_argument("--process-id", type=int)
  p.set_defaults(func=cmd_train)

  p = sub.add_parser("finetune", help="fit a new identity from K shots and save it")
  p.add_argument("--run", required=True, help="a run directory written by train/demo")
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument("--shots", help="npz with frames uint8 [K,H,W,3] and landmarks [K,68,2]")
  src.add_argument("--synthetic", type=int, help="fit this synthetic identity seed instead")
  p.add_argument("--k", type=int, default=8, help="shots to take with --synthetic")
  p.add_argument("--steps", type=int, default=None, help="default: the run's finetune.steps")
  p.add_argument("--out", required=True, help="directory for identity.safetensors/.json")
  p.add_argument("--drive", help="npy of driving landmarks [T,68,2]: also writes drive.mp4")
  p.add_argument("--fps", type=float, default=15.0)
  p.set_defaults(func=cmd_finetune)

  p = sub.add_parser("convert-weights", help="convert a PyTorch VGG checkpoint to safetensors")
  p.add_argument("--kind", choices=("vgg19", "vggface"), required=True)
  p.add_argument("--src", required=True, help=".pth state dict (read with weights_only=True)")
  p.add_argument("--dst", required=True, help="output .safetensors")
  p.set_defaults(func=cmd_convert_weights)

  p = sub.add_parser("prepare", help="data prep from real videos")
  stage = p.add_subparsers(dest="stage", required=True)
  q = stage.add_parser("landmarks", help="videos -> a resumable cache of face crops + landmarks")
  q.add_argument("--input", required=True, help="root folder of the videos")
  q.add_argument("--layout", choices=("voxceleb2", "folder"), default="folder")
  q.add_argument("--cache", required=True, help="output folder: <key>.npz per video")
  q.add_argument("--backend", choices=("dlib", "fan"), default="dlib",
                 help="dlib: offline HOG + shape predictor; fan: face-alignment S3FD + 2DFAN4")
  q.add_argument("--upsample", type=int, default=1, help="dlib: detector upsampling steps")
  q.add_argument("--device", default=None, help="fan: cpu, cuda or cuda:N (default: cuda if seen)")
  q.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True,
                 help="fan: average FAN over the mirrored crop too")
  q.add_argument("--workers", type=int, default=1, help="processes")
  q.add_argument("--frames-per-video", type=int, default=32)
  q.add_argument("--image-size", type=int, default=256)
  q.add_argument("--enlarge", type=float, default=1.8, help="crop side / landmark box side")
  q.add_argument("--jpeg-quality", type=int, default=95)
  q.add_argument("--min-face-size", type=float, default=40.0, help="pixels in the source video")
  q.set_defaults(func=cmd_prepare_landmarks)
  q = stage.add_parser("shards", help="a landmark cache (or the synthetic generator) -> TFDS shards")
  q.add_argument("--config", default="video_folder",
                 choices=("voxceleb2", "video_folder", "synthetic", "synthetic_64"))
  q.add_argument("--manual-dir", help="the landmark cache (not needed for synthetic configs)")
  q.add_argument("--data-dir", required=True, help="TFDS data dir to write into")
  q.add_argument("--file-format", choices=("tfrecord", "array_record"), default="tfrecord")
  q.set_defaults(func=cmd_prepare_shards)

  p = sub.add_parser("data", help="checks on prepared datasets")
  action = p.add_subparsers(dest="action", required=True)
  q = action.add_parser("verify", help="check every shard's framing, checksums and examples")
  q.add_argument("--data-dir", required=True)
  q.set_defaults(func=cmd_data_verify)
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  overrides = [a for a in argv if a.startswith("--config.")]
  rest = [a for a in argv if not a.startswith("--config.")]
  args = build_parser().parse_args(rest)
  _setup(args.verbose)
  return args.func(args, overrides)


if __name__ == "__main__":
  sys.exit(main())
