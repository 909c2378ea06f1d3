"""Inference: load a run, fit a face from K pictures, generate and animate, export.

Imports no training code. Names are loaded on first use, so ``import fewshot_jax.inference.run``
(or ``load_exported`` on a machine without the landmark backends) pulls in only what it needs.

* ``TalkingHead``: the object API (``load``, ``crop_sources``, ``embed``, ``fit``, ``finetune``,
  ``generate``, ``animate``).
* ``load_run``, ``fit_identity``, ``save_identity``, ``load_identity``, ``load_driver``,
  ``animate.animate``, ``export_run``, ``load_exported``: the functions underneath.
* ``embed``, ``feed_forward_psi``, ``generate``, ``init_finetune``, ``make_finetune_step``:
  pure, jit-able functions of (graph, variables, arrays), used by evaluation too.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "TalkingHead": "api", "Shots": "api",
    "LoadedRun": "run", "load_run": "run", "IncompatibleCheckpoint": "run",
    "Identity": "identity", "fit_identity": "identity", "save_identity": "identity",
    "load_identity": "identity",
    "NoFaceError": "faces", "load_shots": "faces",
    "Driver": "driver", "load_driver": "driver",
    "AnimateSummary": "animate",
    "export_run": "export", "load_exported": "export", "ExportedModel": "export",
    "retarget": "motion",
    "FinetuneState": "finetune", "embed": "finetune", "feed_forward_psi": "finetune",
    "generate": "finetune", "init_finetune": "finetune", "make_finetune_step": "finetune",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
  if name not in _EXPORTS:
    raise AttributeError(f"module 'fewshot_jax.inference' has no attribute {name!r}")
  module = importlib.import_module(f"fewshot_jax.inference.{_EXPORTS[name]}")
  return getattr(module, name)
