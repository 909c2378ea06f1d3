"""Export: a run (optionally with a fitted identity) -> a directory any JAX runtime can run.

Layout of the export directory:

* ``config.json``: the model config, what was exported, the run and step it came from, and the
  signatures of the functions;
* ``weights.safetensors``: E's and G's weights (the identity's fine-tuned G and its ψ' when one
  is given) and the spectral-norm vectors, as flat ``"g/generator/..."`` names;
* ``generator.jaxexport``: ``generate(weights, landmarks f32[b, 68, 2], psi f32[b, P]) ->
  f32[b, S, S, 3]`` in [-1, 1], serialised with ``jax.export`` for CPU, CUDA and TPU, with a
  symbolic batch ``b``;
* ``embedder.jaxexport``: ``embed(weights, frames u8[b, k, S, S, 3], landmarks f32[b, k, 68, 2])
  -> (ê f32[b, N], psi f32[b, P])``, symbolic in ``b`` and ``k``.

The weights are arguments of the exported functions, not constants inside them, so the serialised
programs stay small and the weights file is the one place that holds them. ``load_exported`` needs
only ``jax``, ``numpy`` and ``safetensors``: no model classes, no flax, no config code.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fewshot_jax.inference.output_dirs import FolderKind, check_replaceable, write_folder

EXPORT_FORMAT = 1
PLATFORMS = ("cpu", "cuda", "tpu")
_FILES = ("config.json", "weights.safetensors", "generator.jaxexport", "embedder.jaxexport")
# An earlier export (of any format): its config.json says what it is; it holds nothing else.
EXPORT_FOLDER = FolderKind("export", "config.json", ("format", "functions", "model"),
                           frozenset(_FILES))


def export_run(run: Any, out: str | os.PathLike, identity: Any = None,
               platforms: tuple[str, ...] = PLATFORMS) -> dict[str, Any]:
  """Writes the export directory ``out`` for ``run`` (a ``LoadedRun``) and, optionally, a fitted
  ``identity``. Returns what was written into ``config.json``.

  ``out`` is replaced only when it is empty or an earlier export (checked first, before minutes
  of tracing on a big model, and again before the swap); the files are written into a hidden
  sibling folder that then replaces ``out`` whole, and is removed if anything fails.

  Raises:
    ValueError: ``out`` is a file, or a folder that is not an earlier export (the run itself, a
      folder of exports, an export with other files added), or the identity holds NaN or Inf;
      nothing is traced or written.
  """
  from fewshot_jax.atomic_files import write_bytes, write_text  # pylint: disable=g-import-not-at-top
  from fewshot_jax.inference import finetune as inf  # pylint: disable=g-import-not-at-top
  from fewshot_jax.inference.tensors import flat_paths, like, save_tree  # pylint: disable=g-import-not-at-top

  out = check_replaceable(out, EXPORT_FOLDER)
  if identity is not None:
    from fewshot_jax.inference.identity import check_finite  # pylint: disable=g-import-not-at-top
    check_finite(identity, "identity")
  cfg = run.config
  v = identity.model_vars(run) if identity is not None else run.vars
  weights = {"g": v.g, "sn": v.sn}
  flat = {k: np.asarray(x) for k, x in flat_paths(weights).items()}
  # D's weights and the table are not inputs: E and G never read them, so tracing drops them.
  def model_vars(flat_weights):
    tree = like(weights, flat_weights)
    return run.vars.replace(g=tree["g"], sn=tree["sn"])

  def generate(flat_weights, points, psi):
    return inf.generate(run.graphdef, model_vars(flat_weights), cfg.model, psi, points)

  def embed(flat_weights, frames, points):
    mv = model_vars(flat_weights)
    e = inf.embed(run.graphdef, mv, cfg.model, frames, points)
    return e, inf.feed_forward_psi(run.graphdef, mv, e)

  s = cfg.model.image_size
  b, k = jax.export.symbolic_shape("b, k")
  spec = {name: jax.ShapeDtypeStruct(x.shape, x.dtype) for name, x in flat.items()}
  psi_dim = int(jax.eval_shape(lambda f: embed(f, np.zeros((1, 1, s, s, 3), np.uint8),
                                               np.zeros((1, 1, 68, 2), np.float32)),
                               spec)[1].shape[-1])
  gen_exp = jax.export.export(jax.jit(generate), platforms=platforms)(
      spec, jax.ShapeDtypeStruct((b, 68, 2), jnp.float32),
      jax.ShapeDtypeStruct((b, psi_dim), jnp.float32))
  emb_exp = jax.export.export(jax.jit(embed), platforms=platforms)(
      spec, jax.ShapeDtypeStruct((b, k, s, s, 3), jnp.uint8),
      jax.ShapeDtypeStruct((b, k, 68, 2), jnp.float32))

  psi = {} if identity is None else {"identity/psi": np.asarray(identity.psi, np.float32)}
  meta = {
      "format": EXPORT_FORMAT,
      "model": cfg.model.to_dict(),
      "image_size": s,
      "psi_dim": psi_dim,
      "embed_dim": int(cfg.model.embed_dim),
      "platforms": list(platforms),
      "run": str(run.workdir.absolute()),
      "run_step": run.step,
      "identity": None if identity is None else identity.info,
      "jax_version": jax.__version__,
      "functions": {
          "generator.jaxexport": "(weights, landmarks f32[b,68,2], psi f32[b,P]) -> "
                                 "f32[b,S,S,3] in [-1,1]",
          "embedder.jaxexport": "(weights, frames u8[b,k,S,S,3], landmarks f32[b,k,68,2]) -> "
                                "(embedding f32[b,N], psi f32[b,P])",
      },
  }

  def fill(staging: pathlib.Path) -> None:
    save_tree(staging / "weights.safetensors", {**flat, **psi})
    write_bytes(staging / "generator.jaxexport", gen_exp.serialize())
    write_bytes(staging / "embedder.jaxexport", emb_exp.serialize())
    write_text(staging / "config.json", json.dumps(meta, indent=2))

  # Swapped in whole: a re-export cut short never leaves new programs next to old weights.
  write_folder(out, EXPORT_FOLDER, fill)
  return meta


@dataclasses.dataclass
class ExportedModel:
  """An export directory, loaded: call ``embed`` and ``generate`` like the in-process functions.

  Attributes:
    config: the contents of ``config.json``.
    weights: the flat weights passed to both functions.
    psi: the exported identity's ψ', or None for a generic (feed-forward) export.
  """

  config: dict[str, Any]
  weights: dict[str, np.ndarray]
  psi: np.ndarray | None
  _generator: Any
  _embedder: Any

  @property
  def image_size(self) -> int:
    return int(self.config["image_size"])

  def embed(self, frames: np.ndarray, landmarks: np.ndarray) -> tuple[jax.Array, jax.Array]:
    """``(ê [b, N], ψ [b, P])`` from uint8 shots ``[b, k, S, S, 3]`` and ``[b, k, 68, 2]``."""
    return self._embedder.call(self.weights, jnp.asarray(frames, jnp.uint8),
                               jnp.asarray(landmarks, jnp.float32))

  def generate(self, landmarks: np.ndarray, psi: np.ndarray | None = None) -> jax.Array:
    """Frames in [-1, 1] ``[b, S, S, 3]`` for landmarks ``[b, 68, 2]``; ``psi`` is ``[P]`` or
    ``[b, P]``, by default the exported identity's."""
    if psi is None:
      if self.psi is None:
        raise ValueError("this export has no identity: pass psi (from embed) to generate")
      psi = self.psi
    landmarks = jnp.asarray(landmarks, jnp.float32)
    psi = jnp.broadcast_to(jnp.asarray(psi, jnp.float32), (landmarks.shape[0], self.config["psi_dim"]))
    return self._generator.call(self.weights, landmarks, psi)


def load_exported(directory: str | os.PathLike) -> ExportedModel:
  """Loads an export directory written by ``export_run`` (or ``fewshot-jax export``).

  Raises:
    FileNotFoundError: a file of the export is missing (the message lists which).
    ValueError: the directory was written by another export format.
  """
  from fewshot_jax.inference.tensors import load_flat  # pylint: disable=g-import-not-at-top

  directory = pathlib.Path(directory)
  missing = [name for name in _FILES if not (directory / name).is_file()]
  if missing:
    raise FileNotFoundError(f"{directory} is not a fewshot_jax export: missing {missing}")
  config = json.loads((directory / "config.json").read_text())
  if config.get("format") != EXPORT_FORMAT:
    raise ValueError(f"{directory}/config.json: export format {config.get('format')!r}, this "
                     f"version reads format {EXPORT_FORMAT}")
  weights = load_flat(directory / "weights.safetensors")
  psi = weights.pop("identity/psi", None)
  gen = jax.export.deserialize(bytearray((directory / "generator.jaxexport").read_bytes()))
  emb = jax.export.deserialize(bytearray((directory / "embedder.jaxexport").read_bytes()))
  return ExportedModel(config=config, weights=weights, psi=psi, _generator=gen, _embedder=emb)
