"""Reading PyTorch ``.pth`` state dicts for the one-time weight conversions (``convert-weights``).

torch is needed only here, and is imported lazily: training, inference and evaluation read the
safetensors files the conversions write. ``torch.load(weights_only=True)`` unpickles tensors and
plain containers only, so a ``.pth`` cannot run code while it is read.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np


def read_state_dict(path: str | os.PathLike) -> Mapping[str, Any]:
  """The ``{name: tensor}`` in ``path`` (a bare state dict, or one under ``"state_dict"``).

  Raises:
    FileNotFoundError: naming ``path``.
    ValueError: naming ``path`` when it holds something else, or cannot be read as a checkpoint.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"checkpoint not found: {os.fspath(path)}")
  import torch  # pylint: disable=g-import-not-at-top

  try:
    state = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # torch raises pickle/zip errors of several kinds for a bad file
    raise ValueError(f"cannot read {os.fspath(path)} as a PyTorch checkpoint: {e}") from e
  if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
    state = state["state_dict"]
  if not isinstance(state, Mapping):
    raise ValueError(f"{os.fspath(path)} does not hold a state dict (got {type(state).__name__})")
  return state


def to_numpy(t: Any) -> np.ndarray:
  """A torch tensor (any device, with or without grad) or array-like as a numpy array."""
  return np.asarray(t.detach().cpu().numpy()) if hasattr(t, "numpy") else np.asarray(t)
