"""``fewshot-jax evaluate``: the paper's self-reenactment protocol on held-out videos, as files.

For each K and method (``protocol.reenact``: shots from the first half of each video, targets from
the second), every generated target is scored against its ground truth:

* SSIM, PSNR and L1 on images in [0, 1];
* LPIPS (``lpips``, VGG16 v0.1), when its converted weights are found (``make lpips-weights``);
* FID (``fid``) over all of a method's generated targets against the real ones, when the FID
  Inception weights are given;
* CSIM, NME and AKD with a face model (``face_metrics``), unless switched off. CSIM's embedder
  (``csim_embedder``: ``dlib``, the offline default, or ``arcface``, the paper's) is named in
  eval.json and in every column title ("CSIM (ArcFace)"), since their scales differ. Frames smaller than
  ``FACE_MIN_SIZE`` are upscaled (bicubic) first, because dlib's HOG detector does not find faces
  much under 80 px; AKD is reported in the model's own pixels.

It writes ``eval.json`` (every number and the settings), ``table.md`` (laid out like the paper's
Table 1: a row per method and K) and ``metrics_vs_k.png``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import pathlib
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from fewshot_jax.atomic_files import atomic_path, write_json, write_text
from fewshot_jax.evaluation import metrics as image_metrics
from fewshot_jax.evaluation import protocol
from fewshot_jax.progress import Progress

log = logging.getLogger("fewshot_jax")

METHODS = ("ff", "ft", "nearest_shot")
FACE_MIN_SIZE = 256
# (key, column title, format, higher is better)
COLUMNS = (
    ("fid", "FID ↓", "{:.1f}", False),
    ("ssim", "SSIM ↑", "{:.3f}", True),
    ("psnr", "PSNR ↑", "{:.2f}", True),
    ("lpips", "LPIPS ↓", "{:.3f}", False),
    ("l1", "L1 ↓", "{:.4f}", False),
    ("csim", "CSIM ↑", "{:.3f}", True),
    ("nme", "NME ↓", "{:.4f}", False),
    ("akd", "AKD px ↓", "{:.2f}", False),
    ("face_detected", "face found ↑", "{:.0%}", True),
)


@dataclasses.dataclass
class EvalSettings:
  shots: tuple[int, ...]
  methods: tuple[str, ...]
  face_metrics: bool = True
  landmarks: str = "dlib"
  fid_weights: str | None = None  # a `convert-weights --kind inception` file; None: no FID
  csim_embedder: str = "dlib"  # face_metrics.EMBEDDERS
  arcface_weights: str | None = None  # a `convert-weights --kind arcface` file (csim_embedder)
  # A `convert-weights --kind lpips` file; None: lpips.default_weights_path() if it exists.
  lpips_weights: str | None = None
  seed: int = 0  # the held-out sample's seed (`--max-videos`), recorded in the header


def _upscaled(frames: np.ndarray, factor: int) -> list[np.ndarray]:
  if factor == 1:
    return list(frames)
  size = frames.shape[1] * factor
  return [np.asarray(Image.fromarray(f).resize((size, size), Image.Resampling.BICUBIC))
          for f in frames]


def face_factor(size: int) -> int:
  """The integer upscale that brings ``size``-px frames to at least ``FACE_MIN_SIZE``."""
  return max(1, math.ceil(FACE_MIN_SIZE / size))


def face_references(real: np.ndarray, backend: Any, embedder: Any) -> list[Any]:
  """The ground truth's faces and embeddings, found once for every K and method scored on them."""
  from fewshot_jax.evaluation import face_metrics  # pylint: disable=g-import-not-at-top

  return face_metrics.references(_upscaled(real, face_factor(real.shape[1])), backend, embedder)


def score_pairs(fake: np.ndarray, real: np.ndarray, backend: Any, embedder: Any,
                refs: Sequence[Any] | None = None,
                progress: Progress | None = None, lpips_metric: Any = None) -> dict[str, float]:
  """Mean metrics of uint8 generated vs real frames ``[N, S, S, 3]``.

  ``refs`` (``face_references(real, ...)``) saves finding the ground truth's faces again;
  ``lpips_metric`` (an ``lpips.Lpips``) adds LPIPS.
  """
  a = fake.astype(np.float32) / 255.0
  b = real.astype(np.float32) / 255.0
  out = {"ssim": float(np.mean(image_metrics.ssim(a, b))),
         "psnr": float(np.mean(image_metrics.psnr(a, b))),
         "l1": float(np.mean(image_metrics.l1(a, b)))}
  if lpips_metric is not None:
    out["lpips"] = float(np.mean(lpips_metric(fake, real)))
  if backend is not None:
    from fewshot_jax.evaluation import face_metrics  # pylint: disable=g-import-not-at-top

    factor = face_factor(fake.shape[1])
    if refs is None:
      refs = face_references(real, backend, embedder)
    scores = face_metrics.face_scores(_upscaled(fake, factor), None, backend, embedder, refs)
    summary = scores.summary()
    summary["akd"] /= factor
    out.update(summary)
  if progress is not None:
    progress.update(len(fake))
  return out


def evaluate(
    run: Any,
    frames: np.ndarray,
    points: np.ndarray,
    settings: EvalSettings,
    out_dir: str | os.PathLike,
    data_description: str = "",
    write: bool = True,
    sample: dict[str, Any] | None = None,
) -> dict[str, Any]:
  """Runs the protocol for every K in ``settings.shots`` and writes the three files.

  Args:
    run: a ``LoadedRun`` (EMA weights).
    frames: uint8 ``[V, T, S, S, 3]`` held-out videos; ``points``: ``[V, T, 68, 2]``.
    settings: shots, methods and whether to compute the face metrics.
    out_dir: where ``eval.json``, ``table.md`` and ``metrics_vs_k.png`` go.
    data_description: where the videos came from (recorded in eval.json).
    write: False computes the report without writing it (a multi-host sweep's other processes,
      which evaluate in step with process 0 so the slice stays in step for the next run).
    sample: how the videos were drawn and what made them: ``identities`` (one per video),
      ``sampling`` (a sentence) and ``landmark_detector`` (``prep.provenance.check_detector``);
      recorded in the protocol header.
  """
  from fewshot_jax.content import build_content_loss  # pylint: disable=g-import-not-at-top

  unknown = sorted(set(settings.methods) - set(METHODS))
  if unknown:
    raise ValueError(f"unknown methods {unknown}: expected some of {METHODS}")
  protocol.check_shots(settings.shots, frames.shape[1], data_description or "held-out videos")
  t0 = time.perf_counter()
  backend = embedder = None
  if settings.face_metrics:
    from fewshot_jax.evaluation import face_metrics  # pylint: disable=g-import-not-at-top
    from fewshot_jax.prep.backends import make_backend  # pylint: disable=g-import-not-at-top
    # Loaded first, so a bad weights file fails before hours of work.
    embedder = face_metrics.make_embedder(settings.csim_embedder, settings.arcface_weights)
    backend = make_backend(settings.landmarks)
  inception = None
  if settings.fid_weights:  # loaded first, so a bad file fails before hours of work
    from fewshot_jax.evaluation import fid  # pylint: disable=g-import-not-at-top
    inception = fid.FidInception(settings.fid_weights)
  lpips_metric = _load_lpips(settings.lpips_weights)
  cfg = run.config
  content = build_content_loss(cfg.loss)
  _, targets = protocol.split_video(frames.shape[1], 1, cfg.eval.targets_per_video)
  # The targets are the same frames for every K (the second half), so their faces are found once.
  real = frames[:, targets].reshape((-1,) + frames.shape[2:])
  refs = face_references(real, backend, embedder) if backend is not None else None
  real_features = inception(real) if inception is not None else None
  header = protocol_header(run, frames.shape[0], len(targets), settings, content, embedder,
                           sample or {})
  for line in protocol_warnings(header, settings.methods):
    log.warning("evaluate: %s", line)
  per_k = len(real) * len(settings.methods)
  progress = Progress(per_k * len(settings.shots), "score", "frames")
  results: dict[str, dict[str, dict[str, float]]] = {}
  for k in settings.shots:
    r = protocol.reenact(run.graphdef, run.vars, cfg, content, frames, points, k,
                         tuple(settings.methods))
    results[f"k{k}"] = {}
    for m in settings.methods:
      fake = r.images[m].reshape(real.shape)
      row = score_pairs(fake, real, backend, embedder, refs, progress, lpips_metric)
      if inception is not None:
        row = {"fid": fid.fid(inception(fake), real_features), **row}
      results[f"k{k}"][m] = {**row, "model_variant": header["train_variant"]}
  report = {
      "protocol": header,
      "checkpoint": str(run.workdir), "step": run.step,
      "data": data_description, "videos": int(len(frames)), "frames_per_video": int(frames.shape[1]),
      "targets_per_video": int(len(targets)),  # what was scored (the config asks up to this)
      "shots": list(settings.shots), "methods": list(settings.methods),
      "finetune_steps": int(cfg.finetune.steps),
      "face_metrics": ({"landmarks": backend.version,
                        **face_metrics.embedder_record(settings.csim_embedder, embedder),
                        "upscaled_to_at_least": FACE_MIN_SIZE} if backend else None),
      "fid": ({"weights": inception.path, "network": fid.KIND, "real_frames": int(len(real))}
              if inception is not None else None),
      "lpips": ({"weights": lpips_metric.path, "network": lpips_metric.kind} if lpips_metric else None),
      "results": results,
      "seconds": round(time.perf_counter() - t0, 1),
  }
  if not write:
    return report
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  plot_metrics(report, out / "metrics_vs_k.png")
  write_text(out / "table.md", format_table(report))
  # Last: a sweep takes eval.json as "this run is done".
  write_json(out / "eval.json", _finite_or_null(report))
  return report


def _load_lpips(path: str | None) -> Any:
  """``lpips.Lpips`` from ``path``, or from the default place if there is a file; else None."""
  from fewshot_jax.evaluation import lpips  # pylint: disable=g-import-not-at-top

  if path is None:
    default = lpips.default_weights_path()
    return lpips.Lpips(default) if default.is_file() else None
  return lpips.Lpips(path)  # a named file that is missing or wrong is an error, not a skip


def protocol_header(run: Any, num_videos: int, num_targets: int, settings: EvalSettings,
                    content: Any, embedder: Any, sample: dict[str, Any]) -> dict[str, Any]:
  """What a reader needs to set a table beside the paper's: the sample, the model and the tools.

  ``train_variant`` is the checkpoint's (``train.variant``: "ft" trained with the embedding-match
  loss, "ff" without); ``content_loss`` is what training used (``runtime.content_loss``), beside
  the one fine-tuning used here.
  """
  cfg = run.config
  runtime = cfg.get("runtime", None) or {}
  identities = sample.get("identities")
  detector = sample.get("landmark_detector") or {}
  steps_from_epochs = runtime.get("steps_from_epochs", None)
  return {
      "videos": int(num_videos),
      "identities": int(len(set(map(str, identities)))) if identities is not None else None,
      "targets_per_video": int(num_targets),
      "targets": int(num_videos * num_targets),
      "seed": int(settings.seed),
      "sampling": sample.get("sampling", "every video given"),
      "checkpoint_step": int(run.step),
      "train_variant": str(cfg.train.variant),
      "train_epochs": (float(steps_from_epochs["epochs"]) if steps_from_epochs else None),
      "content_loss": str(runtime.get("content_loss", "unrecorded (a run from before it was)")),
      "finetune_content_loss": content.description,
      "landmark_detector": detector.get("detector", "unrecorded"),
      "landmark_detector_version": detector.get("description", "unrecorded"),
      "expected_detector": str(cfg.data.get("expected_detector", "")) or None,
      "csim_embedder": getattr(embedder, "name", None) if embedder is not None else None,
  }


def protocol_warnings(header: dict[str, Any], methods: Sequence[str]) -> list[str]:
  """Where this evaluation departs from the paper's protocol, one sentence each."""
  out = []
  if "ff" in methods and header["train_variant"] == "ft":
    out.append("the FF rows come from an FT-trained model (train.variant='ft', with the match "
               "loss); the paper's Ours-FF is a model trained without it (vox2_256_ff)")
  if header["targets_per_video"] < protocol.PAPER_TARGETS:
    out.append(f"{header['targets_per_video']} targets per video, the paper has "
               f"{protocol.PAPER_TARGETS} (FID and every mean are over fewer frames); prepare the "
               "test split with --test-frames-per-video 64")
  expected = header.get("expected_detector")
  if expected and header["landmark_detector"] != expected:
    out.append(f"the landmarks are {header['landmark_detector']}'s, this config expects "
               f"{expected}'s (data.expected_detector)")
  return out


def _finite_or_null(tree: Any) -> Any:
  """NaN/inf -> None, so eval.json is strict JSON (a metric with no usable frame is null)."""
  if isinstance(tree, dict):
    return {k: _finite_or_null(v) for k, v in tree.items()}
  if isinstance(tree, list):
    return [_finite_or_null(v) for v in tree]
  if isinstance(tree, float) and not math.isfinite(tree):
    return None
  return tree


def report_columns(report: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
  """The ``COLUMNS`` that ``report`` has values for, CSIM's titled with its embedder
  ("CSIM (ArcFace) ↑"): a table or plot never shows a bare "CSIM"."""
  from fewshot_jax.evaluation.face_metrics import label_of  # pylint: disable=g-import-not-at-top

  label = label_of(report.get("face_metrics")) or "CSIM (unknown embedder)"
  cols = []
  for key, title, fmt, up in COLUMNS:
    if any(key in m for per_k in report["results"].values() for m in per_k.values()):
      cols.append((key, f"{label} ↑" if key == "csim" else title, fmt, up))
  return cols


def format_table(report: dict[str, Any]) -> str:
  """Markdown in the shape of the paper's Table 1: one row per method and K."""
  cols = report_columns(report)
  lines = format_header(report.get("protocol"))
  lines += ["| method | model | K | " + " | ".join(c[1] for c in cols) + " |",
            "|---|---|---|" + "---|" * len(cols)]
  for method in report["methods"]:
    for key, per_k in report["results"].items():
      row = per_k[method]
      cells = [fmt.format(row[c]) if c in row and math.isfinite(row[c]) else "–"
               for c, _, fmt, _ in cols]
      model = ("–" if method == "nearest_shot" else
               f"{str(row.get('model_variant', '?')).upper()}-trained")
      lines.append(f"| {method.upper() if method != 'nearest_shot' else 'nearest shot'} | "
                   f"{model} | {key[1:]} | " + " | ".join(cells) + " |")
  fid_note = ("FID: not computed (no Inception weights: `--fid-weights`)."
              if report.get("fid") is None else
              f"FID over {report['fid']['real_frames']} frames per method and K.")
  lpips_note = ("LPIPS: not computed (no weights: `make lpips-weights`)."
                if report.get("lpips") is None else f"LPIPS: {report['lpips']['network']}.")
  return "\n".join(lines) + f"\n\n{report['videos']} held-out videos × " \
      f"{report['targets_per_video']} targets; FT = {report['finetune_steps']} steps. {fid_note} " \
      f"{lpips_note}\n"


def format_header(header: dict[str, Any] | None) -> list[str]:
  """The protocol as markdown lines above the table (nothing for a report without one)."""
  if not header:
    return []
  ids = header["identities"] if header["identities"] is not None else "unrecorded"
  lines = [
      f"Protocol: {header['videos']} videos of {ids} identities, {header['targets_per_video']} "
      f"targets each ({header['targets']} in all), seed {header['seed']} "
      f"({header['sampling']}).",
      f"Model: checkpoint step {header['checkpoint_step']}, trained as "
      f"{header['train_variant'].upper()} (train.variant={header['train_variant']!r}"
      + (f", {header['train_epochs']:g} epochs" if header.get("train_epochs") else "")
      + f"); content loss: {header['content_loss']}.",
      f"Landmarks: {header['landmark_detector']} ({header['landmark_detector_version']}). "
      f"CSIM embedder: {header['csim_embedder'] or 'none (face metrics off)'}.",
  ]
  return [*lines, ""]


def plot_metrics(report: dict[str, Any], path: pathlib.Path) -> None:
  """One panel per metric against K, a line per method."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  ks = [int(k[1:]) for k in report["results"]]
  cols = report_columns(report)
  fig, axes = plt.subplots(1, len(cols), figsize=(3.2 * len(cols), 3.0), squeeze=False)
  for ax, (key, title, _, _) in zip(axes[0], cols):
    for method in report["methods"]:
      ys = [report["results"][f"k{k}"][method].get(key, float("nan")) for k in ks]
      ax.plot(ks, ys, marker="o", label=method)
    ax.set_title(title)
    ax.set_xlabel("K (shots)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.grid(alpha=0.3)
  axes[0][0].legend()
  fig.tight_layout()
  with atomic_path(path) as tmp:
    fig.savefig(tmp, format="png", dpi=110)
  plt.close(fig)


def parse_list(text: str, kind: type = int) -> tuple[Any, ...]:
  """``"1,8,32"`` -> ``(1, 8, 32)``."""
  try:
    return tuple(kind(x) for x in text.split(",") if x.strip())
  except ValueError as e:
    raise ValueError(f"{text!r}: expected a comma-separated list of {kind.__name__}") from e


def evaluate_command(checkpoint: str, data_dir: str, dataset: str, split: str, shots: Sequence[int],
                     methods: Sequence[str], out: str, face: bool, landmarks: str,
                     max_videos: int | None, overrides: Sequence[str],
                     fid_weights: str | None = None, csim_embedder: str = "dlib",
                     arcface_weights: str | None = None, seed: int = 0) -> dict[str, Any]:
  """What ``fewshot-jax evaluate`` runs: load, read the held-out split, evaluate, write."""
  from fewshot_jax.data import shards  # pylint: disable=g-import-not-at-top
  from fewshot_jax.inference.run import load_run  # pylint: disable=g-import-not-at-top

  from fewshot_jax.prep import provenance  # pylint: disable=g-import-not-at-top

  run = load_run(checkpoint, overrides=overrides)
  directory = shards.find_dataset_dir(data_dir, dataset)
  held = shards.read_videos(directory, split,
                            choose=lambda ids: protocol.sample_videos(ids, max_videos, seed))
  detector = provenance.check_detector(directory, split,
                                       run.config.data.get("expected_detector", ""), "evaluate")
  sampling = ("every video of the split" if max_videos is None else
              f"--max-videos {max_videos}: uniform, stratified by identity")
  size = run.config.model.image_size
  if held["frames"].shape[2] != size:
    raise ValueError(f"{directory}: frames are {held['frames'].shape[2]} px, the checkpoint's "
                     f"model.image_size is {size}")
  return evaluate(run, held["frames"], held["landmarks"],
                  EvalSettings(tuple(shots), tuple(methods), face, landmarks, fid_weights,
                               csim_embedder, arcface_weights, seed=seed),
                  out, data_description=f"{directory} split {split}",
                  sample={"identities": held["identities"], "sampling": sampling,
                          "landmark_detector": detector})
