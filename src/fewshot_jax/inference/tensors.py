"""Pytrees of arrays <-> flat ``"a/b/0/c"``-keyed tensors (safetensors files, exported weights).

Weights leave the process as flat name -> array maps: safetensors stores exactly that (no pickle,
memory-mappable), and an exported function takes such a dict, so any runtime can feed it from the
file without knowing the model's nesting.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

import jax
import numpy as np

from fewshot_jax.atomic_files import atomic_path


def _key(entry: Any) -> str:
  return str(getattr(entry, "key", getattr(entry, "name", getattr(entry, "idx", entry))))


def flat_paths(tree: Any) -> dict[str, Any]:
  """``{"a/b/0/c": leaf}``; dict keys, attribute names and list indices all become strings, so a
  tree and its Orbax or safetensors copy (where integer keys come back as strings) agree."""
  return {"/".join(_key(p) for p in path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def like(reference: Any, tree: Any) -> Any:
  """``tree``'s leaves (matched by flat path) in the exact structure of ``reference``."""
  have = flat_paths(tree)
  return jax.tree.unflatten(jax.tree.structure(reference),
                            [have[k] for k in flat_paths(reference)])


def save_tree(path: str | os.PathLike, tree: Any, metadata: dict[str, str] | None = None) -> None:
  """Writes a pytree's leaves to safetensors, keyed by their flat paths, atomically."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top

  flat = {k: np.array(v, order="C") for k, v in flat_paths(tree).items()}  # keeps 0-d shapes
  with atomic_path(path) as tmp:
    save_file(flat, tmp, metadata=metadata)


def load_flat(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """A safetensors file as a flat dict, with an error naming the file if it is missing or bad."""
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top

  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"no such file: {path}")
  try:
    return load_file(str(path))
  except Exception as e:  # safetensors raises its own error types for bad headers
    raise ValueError(f"{path}: not a readable safetensors file ({e})") from e


def load_tree(path: str | os.PathLike, reference: Any) -> Any:
  """Reads a file written by ``save_tree`` into the structure of ``reference``, checking that
  every tensor is there with the reference's shape."""
  return from_flat(load_flat(path), reference, path)


def from_flat(data: dict[str, np.ndarray], reference: Any, path: str | os.PathLike) -> Any:
  """``data`` (flat, from ``path``) in the structure of ``reference``; the error names ``path``
  and the missing or misshapen tensors."""
  expected = flat_paths(reference)
  missing = sorted(set(expected) - set(data))
  if missing:
    raise ValueError(f"{path}: missing tensors {missing[:5]} (and {max(0, len(missing) - 5)} more)")
  for k, ref in expected.items():
    if data[k].shape != np.shape(ref):
      raise ValueError(f"{path}: tensor {k} has shape {data[k].shape}, expected {np.shape(ref)}")
  return like(reference, data)
