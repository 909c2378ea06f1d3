"""SHA-256 of a file, read in blocks: how a run, an evaluation or an identity recognises a file by
its contents rather than its path (weights moved to another machine, a picture replaced under the
same name)."""

from __future__ import annotations

import hashlib
import os


def file_sha256(path: str | os.PathLike) -> str:
  """The hex SHA-256 of ``path``'s bytes (``~`` expanded), about a second per 500 MB."""
  digest = hashlib.sha256()
  with open(os.path.expanduser(path), "rb") as f:
    for block in iter(lambda: f.read(1 << 22), b""):
      digest.update(block)
  return digest.hexdigest()
