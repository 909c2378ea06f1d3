"""Output folders written whole (an export, an identity), replacing only what we wrote before.

A user points ``--out`` at a folder. If it is the run, a folder of other exports, or their photos,
replacing it would delete their work, so a folder is replaced only when it is empty or holds an
earlier folder of the same kind: its own JSON file with that kind's keys, and no file the kind
does not write. Anything else is refused with the folder's name before any work starts.

The new contents are written into a hidden sibling folder and renamed into place, so a reader
(or an export cut short) sees the old folder or the whole new one, and a failure leaves neither a
half-written folder nor the staging folder behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import shutil
import tempfile
from collections.abc import Callable


@dataclasses.dataclass(frozen=True)
class FolderKind:
  """What a folder of one kind holds, to recognise an earlier one.

  Attributes:
    what: its name in messages ("export", "identity").
    meta: its JSON file.
    keys: keys that JSON file always has.
    files: every name the kind writes (nothing else may be in a folder it replaces).
  """

  what: str
  meta: str
  keys: tuple[str, ...]
  files: frozenset[str]


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def check_replaceable(path: str | os.PathLike, kind: FolderKind) -> pathlib.Path:
  """``path`` made absolute, when it is missing, empty or an earlier ``kind``.

  Raises:
    ValueError: ``path`` is a file, or a folder that is not an earlier ``kind`` (the message
      names it and what was expected).
  """
  path = pathlib.Path(os.path.abspath(path))
  expected = f"expected a new or empty folder, or an earlier {kind.what}"
  if not path.exists() and not path.is_symlink():
    return path
  if path.is_symlink() or not path.is_dir():
    raise ValueError(f"{path}: not a folder; {expected}")
  names = sorted(p.name for p in path.iterdir())
  if not names:
    return path
  meta = path / kind.meta
  try:
    data = json.loads(meta.read_text()) if meta.is_file() else None
  except (OSError, UnicodeDecodeError, json.JSONDecodeError):
    data = None
  if not isinstance(data, dict) or not all(k in data for k in kind.keys):
    raise ValueError(f"{path}: not empty and not an earlier {kind.what} (no {kind.meta} of one "
                     f"among its {len(names)} entries); refusing to replace it: {expected}")
  others = [n for n in names if n not in kind.files]
  if others:
    raise ValueError(f"{path}: an earlier {kind.what}, but it also holds {others}; refusing to "
                     f"replace it (move them out, or choose another folder)")
  return path


def write_folder(path: str | os.PathLike, kind: FolderKind,
                 fill: Callable[[pathlib.Path], None]) -> pathlib.Path:
  """Writes a ``kind`` folder at ``path``: ``fill(staging)`` writes its files, then it replaces
  ``path`` whole. Returns ``path``, absolute.

  Call ``check_replaceable`` before slow work too; it is checked again here, just before the
  swap, in case something was put there meanwhile.

  Raises:
    ValueError: ``path`` is not replaceable (see ``check_replaceable``); nothing is written.
  """
  path = check_replaceable(path, kind)
  path.parent.mkdir(parents=True, exist_ok=True)
  staging = pathlib.Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.new."))
  try:
    fill(staging)
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp's folders are private (0700)
    check_replaceable(path, kind)
    if path.exists():
      # rename(2) replaces an empty folder: the old one moves into a fresh empty one, then goes.
      old = pathlib.Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old."))
      os.replace(path, old)
      try:
        os.replace(staging, path)
      except BaseException:
        os.replace(old, path)
        raise
      shutil.rmtree(old)
    else:
      os.replace(staging, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      shutil.rmtree(staging)
    raise
  return path
