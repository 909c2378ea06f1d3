"""Converted networks' weights as safetensors files: shapes checked, tagged with the network.

Every converter (``convert-weights --kind ...``) writes through here, and every loader checks
through here, so a file of the wrong network, or with a tensor of the wrong shape, is named in one
line with the first few problems, whichever network it was meant for.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import safetensors.numpy

from fewshot_jax.atomic_files import write_bytes


def check_shapes(flat: Mapping[str, Any], expected: Mapping[str, tuple[int, ...]], where: str,
                 what: str) -> None:
  """Raises ValueError naming ``where`` when ``flat`` lacks a tensor of ``expected`` or has one
  of another shape (``what``: the network, for the message)."""
  problems = []
  for key, shape in expected.items():
    if key not in flat:
      problems.append(f"missing {key!r} (expected shape {shape})")
    elif tuple(flat[key].shape) != shape:
      problems.append(f"{key!r} has shape {tuple(flat[key].shape)}, expected {shape}")
  if problems:
    more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
    raise ValueError(f"{where}: not {what}: " + "; ".join(problems[:5]) + more)


def save_tagged(path: str | os.PathLike, flat: Mapping[str, np.ndarray],
                expected: Mapping[str, tuple[int, ...]], kind: str, what: str) -> None:
  """Writes the ``expected`` tensors of ``flat`` as float32 safetensors (atomically), tagged
  ``kind`` in the header, after checking their shapes."""
  check_shapes(flat, expected, os.fspath(path), what)
  data = safetensors.numpy.save({k: np.ascontiguousarray(flat[k], np.float32) for k in expected},
                                {"kind": kind})
  write_bytes(path, data)
