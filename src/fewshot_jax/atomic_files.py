"""Atomic file writes: a reader sees the old file or the whole new one, never a partial one.

Every artefact a user opens (PNGs, videos, weights, metrics) is written to a temporary file in the
target's directory and renamed over the target. The temporary file gets the permissions a plain
``open(path, "w")`` would have given (``0o666`` minus the umask), not ``mkstemp``'s private 0600.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import tempfile
from collections.abc import Iterator
from typing import Any


def filesystem_path(path: str | os.PathLike, what: str) -> pathlib.Path:
  """``path`` as a ``pathlib.Path``, refusing URLs (``gs://...``) with the way out.

  Run directories are written through the filesystem (atomic renames, appends), which object
  stores do not offer; ``pathlib`` would even turn ``gs://b/x`` into a local ``gs:/b/x``. On Cloud
  TPU, mount the bucket (``launch_tpu.sh setup --bucket B`` puts gs://B at /gcs/B on every worker).
  """
  text = os.fspath(path)
  if "://" in text:
    raise ValueError(f"{what} {text}: a URL, not a folder; mount the bucket (e.g. gcsfuse, or "
                     "`launch_tpu.sh setup --bucket B`, which mounts gs://B at /gcs/B) and give "
                     "the mounted path")
  return pathlib.Path(text)


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
  """Yields a temporary path next to ``path``; on success it replaces ``path``, on error it is
  removed and ``path`` is left as it was.

  The temporary name keeps ``path``'s suffix, so writers that infer a format from it still work.
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
  os.close(fd)
  try:
    yield tmp
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(tmp)
    raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
  """Writes ``data`` to ``path`` atomically, fsynced before the rename."""
  with atomic_path(path) as tmp:
    with open(tmp, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())


def write_text(path: str | os.PathLike, text: str) -> None:
  write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, data: Any) -> pathlib.Path:
  """Writes ``data`` as indented JSON (one trailing newline) atomically; returns the path."""
  write_text(path, json.dumps(data, indent=2) + "\n")
  return pathlib.Path(path)
