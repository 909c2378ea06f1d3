"""A fitted identity: what animating one new face needs, fitted once and reused.

An identity is ψ (G's AdaIN parameters for this face), the generator weights it goes with (the
meta-learned ones for a feed-forward fit, fine-tuned ones after ``steps`` of fine-tuning), the
spectral-norm vectors, and the shots' own landmarks (relative motion moves *these*, so the face
keeps its shape). It is stored as ``identity.safetensors`` plus ``identity.json`` (the model config
it belongs to, the run it came from, the fit's settings) and ``shots.png`` to look at.

An identity is finite or it does not exist: a fine-tune whose losses or weights turn NaN/Inf stops
with the step and the losses named (``FinetuneDiverged``), and such an identity is neither saved
nor loaded; otherwise it animates into a black video that looks like success.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from fewshot_jax.atomic_files import write_text
from fewshot_jax.inference import finetune as inf
from fewshot_jax.inference.augment import DEFAULT_AUGMENT, augment_shots
from fewshot_jax.inference.faces import Shot
from fewshot_jax.inference.output_dirs import FolderKind, check_replaceable, write_folder
from fewshot_jax.inference.run import IncompatibleCheckpoint, LoadedRun
from fewshot_jax.inference.tensors import flat_paths, from_flat, load_flat, save_tree
from fewshot_jax.progress import Progress

PyTree = Any
IDENTITY_FORMAT = 1
IDENTITY_FOLDER = FolderKind("identity", "identity.json", ("format", "run", "model"),
                             frozenset({"identity.json", "identity.safetensors", "shots.png"}))


class FinetuneDiverged(ValueError):
  """Fine-tuning produced a NaN or Inf loss or weight; the identity is unusable and not kept."""


def nonfinite_tensors(identity: "Identity") -> list[str]:
  """The names (``psi``, ``generator/...``, ``sn/...``) of the identity's tensors holding a NaN or
  an Inf; empty for a usable identity."""
  tree = {"psi": identity.psi, "generator": identity.generator, "sn": identity.sn,
          "shot_landmarks": identity.shot_landmarks}
  return [name for name, x in flat_paths(tree).items()
          if not np.all(np.isfinite(np.asarray(x, np.float32)))]


def check_finite(identity: "Identity", what: str) -> None:
  """Raises ``ValueError`` naming ``what`` and the first non-finite tensors, if any."""
  bad = nonfinite_tensors(identity)
  if bad:
    more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
    raise ValueError(f"{what}: not finite (NaN or Inf) in {', '.join(bad[:3])}{more}; fit the "
                     "identity again (`fewshot-jax finetune`, with fewer steps or lower "
                     "finetune.lr_g / lr_d if it diverged)")


def check_identity_folder(directory: str | os.PathLike) -> pathlib.Path:
  """Refuses, before any fitting, an identity folder that ``save_identity`` would not replace
  (anything but a new or empty folder or an earlier identity); returns it absolute."""
  return check_replaceable(directory, IDENTITY_FOLDER)


@dataclasses.dataclass
class Identity:
  """One face ready to animate.

  Attributes:
    psi: f32 ``[psi_dim]``, ψ' after fine-tuning (P·ê for a feed-forward fit).
    generator: G's weights to use with ``psi``.
    sn: spectral-norm vectors that go with ``generator``.
    shot_landmarks: f32 ``[K, 68, 2]``, the shots' landmarks in crop pixels.
    shots: uint8 ``[K, S, S, 3]``, the cropped shots.
    info: JSON-able facts: run, step, steps fine-tuned, sources, losses.
  """

  psi: np.ndarray
  generator: PyTree
  sn: PyTree
  shot_landmarks: np.ndarray
  shots: np.ndarray
  info: dict[str, Any]

  def model_vars(self, run: LoadedRun):
    """The run's weights with this identity's generator and spectral state swapped in."""
    return run.vars.replace(g={**run.vars.g, "generator": self.generator}, sn=self.sn)


class IdentityFitter:
  """The jitted programs that fit identities for one run: E and P, and the fine-tune step.

  Built once and passed to every ``fit_identity`` call, they compile once for all the sources of
  a batch (per shot count K: jit traces each shape once), instead of once per source (the
  fine-tune step, G and D forward and backward, is the costliest program to compile). The content
  loss (VGG weights read from disk) is built on first use, so a feed-forward fit never reads it.
  The programs are the same functions ``fit_identity`` would build itself, so a shared fitter
  changes no result.
  """

  def __init__(self, run: LoadedRun):
    self.run = run
    cfg, g = run.config, run.graphdef
    self.embed = jax.jit(lambda v, f, p: inf.embed(g, v, cfg.model, f, p))
    self.psi = jax.jit(lambda v, e: inf.feed_forward_psi(g, v, e))
    self._content = None
    self._step = None

  @property
  def content(self):
    """The content loss of ``run.config.loss`` (``content.build_content_loss``)."""
    if self._content is None:
      from fewshot_jax.content import build_content_loss  # pylint: disable=g-import-not-at-top
      self._content = build_content_loss(self.run.config.loss)
    return self._content

  @property
  def step(self):
    """The jitted ``finetune.make_finetune_step`` for this run."""
    if self._step is None:
      self._step = jax.jit(inf.make_finetune_step(self.run.graphdef, self.run.config,
                                                  self.content))
    return self._step


def fit_identity(
    run: LoadedRun,
    frames: np.ndarray,
    points: np.ndarray,
    steps: int,
    show_progress: bool = True,
    fitter: IdentityFitter | None = None,
    augment: int = DEFAULT_AUGMENT,
    seed: int = 0,
) -> Identity:
  """Fits a face from K shots: ê = E(shots), ψ = P·ê, then ``steps`` of fine-tuning (paper §3.3).

  With ``augment`` N > 0, each fine-tuning step's targets are the K shots plus N warp-augmented
  pairs made from them (``inference.augment``, new ones every step, deterministic from ``seed``):
  a single photo then also teaches how its face moves, not only how it looks in one pose. The
  step's batch is K + N every step, so it compiles once. ê and ψ come from the shots alone.

  Args:
    run: a loaded run.
    frames: uint8 ``[K, S, S, 3]`` cropped shots.
    points: f32 ``[K, 68, 2]`` their landmarks in crop pixels.
    steps: fine-tuning steps (0: the feed-forward fit).
    show_progress: print a progress line while fine-tuning.
    fitter: the compiled programs to use (``IdentityFitter(run)``), shared by the fits of a batch
      so they compile once; a new one by default.
    augment: warp-augmented pairs added to each step's targets (0: the shots only).
    seed: the augmentation's seed.

  Raises:
    ValueError: the shots have the wrong shapes or non-finite landmarks, ``augment`` < 0, or
      ``fitter`` belongs to another run.
    FinetuneDiverged: a loss or the fitted weights became NaN or Inf (stopped at that step).
  """
  if fitter is None:
    fitter = IdentityFitter(run)
  elif fitter.run is not run:
    raise ValueError(f"fit_identity: the fitter was built for {fitter.run.workdir}, not for "
                     f"{run.workdir}")
  cfg = run.config
  s = cfg.model.image_size
  if frames.ndim != 4 or frames.shape[1:] != (s, s, 3) or points.shape != (len(frames), 68, 2):
    raise ValueError(f"shots: expected frames [K, {s}, {s}, 3] and landmarks [K, 68, 2], found "
                     f"{frames.shape} and {points.shape}")
  if augment < 0:
    raise ValueError(f"augment {augment}: expected a number of pairs >= 0")
  bad_shots = np.flatnonzero(~np.isfinite(points).all(axis=(1, 2)))
  if bad_shots.size:
    raise ValueError(f"shots: the landmarks of shot(s) {bad_shots.tolist()} hold NaN or Inf")
  e_hat = fitter.embed(run.vars, frames[None], points[None])[0]
  psi = fitter.psi(run.vars, e_hat)
  info: dict[str, Any] = {"finetune_steps": int(steps), "shots": int(len(frames)),
                          "augment": int(augment) if steps > 0 else 0}
  generator, sn = run.vars.g["generator"], run.vars.sn
  if steps > 0:
    content, step = fitter.content, fitter.step
    fs = inf.init_finetune(cfg, run.vars, e_hat, psi)
    progress = Progress(steps, "finetune", "steps") if show_progress else None
    first = last = None
    targets = finetune_targets(frames, points, augment, seed, 0)
    for i in range(steps):
      fs, metrics = step(fs, run.vars, *targets, content.params)
      if i + 1 < steps:  # the next step's pairs are warped while the device runs this one
        targets = finetune_targets(frames, points, augment, seed, i + 1)
      values = {k: float(v) for k, v in jax.device_get(metrics).items()}
      _check_losses(i + 1, steps, values, cfg)  # each step: a diverged fit stops at once
      if progress:
        progress.update(1, f"content {values['ft/content']:.4f}")
      last = values["ft/content"]
      first = last if first is None else first
    psi, generator, sn = fs.psi, fs.generator, fs.sn
    info.update(content_first=first, content_last=last, content_loss=content.description)
  identity = Identity(psi=np.asarray(psi), generator=jax.device_get(generator),
                      sn=jax.device_get(sn), shot_landmarks=np.asarray(points, np.float32),
                      shots=np.asarray(frames, np.uint8), info=info)
  bad = nonfinite_tensors(identity)  # the last update can break the weights after finite losses
  if bad and steps:
    raise FinetuneDiverged(f"fine-tuning diverged: after {steps} steps {', '.join(bad[:3])} hold "
                           f"NaN or Inf; nothing was saved; {_advice(cfg)}")
  if bad:
    raise FinetuneDiverged(f"the feed-forward fit from {run.workdir} (step {run.step}) gives NaN "
                           f"or Inf in {', '.join(bad[:3])}: its weights are not usable")
  return identity


def fit_shots(
    run: LoadedRun,
    shots: Sequence[Shot],
    steps: int,
    show_progress: bool = True,
    fitter: IdentityFitter | None = None,
    augment: int = DEFAULT_AUGMENT,
) -> Identity:
  """``fit_identity`` on cropped source pictures (``faces.load_shots``), recording in its info
  the pictures, which of their faces (0: the largest) and that face's box in each picture, so a
  saved identity and a summary say which person of a group photo was fitted, and the first
  picture's ``paste_back.source_record`` (``paste_source``), so animating the identity later can
  paste back into that picture."""
  if not shots:
    raise ValueError("fit_shots: no shots (expected at least one cropped source picture)")
  identity = fit_identity(run, np.stack([s.frame for s in shots]),
                          np.stack([s.landmarks for s in shots]), steps, show_progress, fitter,
                          augment)
  identity.info.update(
      sources=[s.path for s in shots], face=int(shots[0].face),
      face_boxes=[None if s.face_box is None else [round(x, 1) for x in s.face_box]
                  for s in shots])
  first = shots[0]
  if first.box is not None and first.source_shape is not None:
    from fewshot_jax.inference.paste_back import source_record  # pylint: disable=g-import-not-at-top
    identity.info["paste_source"] = source_record(first.path, first.box, first.source_shape)
  return identity


def finetune_targets(frames: np.ndarray, points: np.ndarray, augment: int, seed: int, step: int
             ) -> tuple[np.ndarray, np.ndarray]:
  """Step ``step``'s fine-tuning targets: the shots, then ``augment`` warped pairs of them."""
  if not augment:
    return frames, points
  more_frames, more_points = augment_shots(frames, points, augment, seed=(seed, step))
  return (np.concatenate([frames, more_frames]),
          np.concatenate([np.asarray(points, np.float32), more_points]))


def _advice(cfg) -> str:
  f = cfg.finetune
  return (f"try fewer steps or a lower finetune.lr_g (now {f.lr_g:g}) / finetune.lr_d "
          f"(now {f.lr_d:g})")


def _check_losses(step: int, steps: int, values: dict[str, float], cfg) -> None:
  bad = {k: v for k, v in values.items() if not np.isfinite(v)}
  if bad:
    names = ", ".join(f"{k}={v}" for k, v in sorted(bad.items()))
    raise FinetuneDiverged(f"fine-tuning diverged at step {step} of {steps}: {names}; it was "
                           f"stopped and nothing was saved; {_advice(cfg)}")


def save_identity(directory: str | os.PathLike, identity: Identity, run: LoadedRun) -> None:
  """Writes the folder ``directory``: ``identity.safetensors``, ``identity.json``, ``shots.png``.

  The folder is written whole (staged, then swapped in), and only over a new or empty folder or
  an earlier identity.

  Raises:
    ValueError: ``directory`` is something else (it names it), or the identity is not finite.
  """
  from fewshot_jax.visualize import save_png  # pylint: disable=g-import-not-at-top

  check_finite(identity, f"identity for {directory}")
  meta = {"format": IDENTITY_FORMAT, "run": str(run.workdir.absolute()), "run_step": run.step,
          "model": run.config.model.to_dict(), **identity.info}

  def fill(staging: pathlib.Path) -> None:
    save_tree(staging / "identity.safetensors",
              {"psi": identity.psi, "generator": identity.generator, "sn": identity.sn,
               "shot_landmarks": identity.shot_landmarks, "shots": identity.shots})
    write_text(staging / "identity.json", json.dumps(meta, indent=2, default=list))
    save_png(staging / "shots.png", np.concatenate(list(identity.shots), axis=1))

  write_folder(directory, IDENTITY_FOLDER, fill)


def load_identity(directory: str | os.PathLike, run: LoadedRun) -> Identity:
  """Reads an identity saved by ``save_identity`` for use with ``run``.

  Raises:
    FileNotFoundError: the directory lacks identity.json or identity.safetensors.
    IncompatibleCheckpoint: the identity was fitted with a model of another shape (the message
      lists the differing ``model.*`` fields, expected vs found).
    ValueError: its tensors are missing or hold NaN or Inf (written before fits were checked).
  """
  directory = pathlib.Path(directory)
  meta_path = directory / "identity.json"
  if not meta_path.is_file():
    raise FileNotFoundError(f"{directory} is not an identity: no identity.json (write one with "
                            "`fewshot-jax finetune`)")
  meta = json.loads(meta_path.read_text())
  if meta.get("format") != IDENTITY_FORMAT:
    raise IncompatibleCheckpoint(f"{meta_path}: identity format {meta.get('format')!r}, this "
                                 f"version reads format {IDENTITY_FORMAT}; fit it again with "
                                 "`fewshot-jax finetune`")
  expected = json.loads(json.dumps(run.config.model.to_dict(), default=list))
  found = meta.get("model", {})
  diffs = [f"model.{k}: expected {expected[k]!r}, found {found.get(k)!r}"
           for k in sorted(expected) if found.get(k) != expected[k]]
  if diffs:
    raise IncompatibleCheckpoint(f"{directory}: fitted for another model than {run.workdir}'s:\n  "
                                 + "\n  ".join(diffs))
  path = directory / "identity.safetensors"
  flat = load_flat(path)
  shots = flat.get("shots")
  if shots is None or "psi" not in flat or "shot_landmarks" not in flat:
    raise ValueError(f"{path}: missing tensors (expected psi, shots, shot_landmarks, generator/*, "
                     f"sn/*; found {sorted(flat)[:6]}...)")
  tree = from_flat(flat, {"generator": run.vars.g["generator"], "sn": run.vars.sn}, path)
  identity = Identity(
      psi=flat["psi"], generator=tree["generator"], sn=tree["sn"],
      shot_landmarks=flat["shot_landmarks"], shots=shots,
      info={k: v for k, v in meta.items() if k != "model"})
  check_finite(identity, str(path))
  return identity

