"""Output paths, checked before any work starts, so a mistake costs a second and never a user's file.

Every command that writes into a folder it may find already there (a run's ``--workdir``,
``evaluate --out``, ``demo --workdir``) first asks whether that folder is empty, new, or something
this program wrote itself (recognised by a marker file of its own). Anything else is refused with
one line naming the folder and a few of the files that are in the way. Output files are checked for
their kind (suffix) and for a parent folder that exists.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Callable, Sequence


def _listing(path: pathlib.Path, limit: int = 3) -> str:
  names = sorted(p.name for p in path.iterdir())
  more = f", ... ({len(names)} entries)" if len(names) > limit else ""
  return ", ".join(names[:limit]) + more


def check_output_dir(path: str | os.PathLike, flag: str, ours: Callable[[pathlib.Path], bool],
                     what: str) -> pathlib.Path:
  """``path`` if it is missing, an empty folder, or a folder that ``ours`` recognises.

  Args:
    path: the folder a command will write into.
    flag: the option that named it, for the message (``--workdir``).
    ours: whether a non-empty folder was written by this command before (a run's checkpoints, a
      JSON file of ours with its known keys); only then may the command update it.
    what: what the folder should be, for the message ("a training run").

  Raises:
    ValueError: the path is a file, or a folder that holds other things.
  """
  path = pathlib.Path(path)
  if path.exists() and not path.is_dir():
    raise ValueError(f"{flag} {path}: a file, expected a folder for {what}")
  if path.is_dir() and any(path.iterdir()) and not ours(path):
    raise ValueError(
        f"{flag} {path}: the folder holds files that are not {what} ({_listing(path)}); pass a "
        f"new or empty folder (or one written by an earlier run of this command)")
  return path


def json_with_keys(path: pathlib.Path, keys: Sequence[str]) -> bool:
  """Whether ``path`` is a JSON object holding every one of ``keys`` (a file of ours)."""
  try:
    data = json.loads(path.read_text())
  except (OSError, UnicodeDecodeError, ValueError):
    return False
  return isinstance(data, dict) and all(k in data for k in keys)


def is_run(path: pathlib.Path) -> bool:
  """A training run's folder: its checkpoints, or the config.json that training writes."""
  return (path / "checkpoints").is_dir() or json_with_keys(path / "config.json",
                                                           ("model", "train", "runtime"))


def check_output_file(path: str | os.PathLike, flag: str, suffixes: Sequence[str]) -> pathlib.Path:
  """``path`` if it has one of ``suffixes``, is not a folder, and its parent folder exists."""
  path = pathlib.Path(path)
  if path.suffix.lower() not in suffixes:
    raise ValueError(f"{flag} {path}: expected a file ending in {' or '.join(suffixes)}")
  if path.is_dir():
    raise ValueError(f"{flag} {path}: a folder, expected a {'/'.join(suffixes)} file")
  parent = path.absolute().parent
  if not parent.is_dir():
    raise ValueError(f"{flag} {path}: the folder {parent} does not exist")
  if not os.access(parent, os.W_OK):
    raise ValueError(f"{flag} {path}: the folder {parent} is not writable")
  return path


def check_input_file(path: str | os.PathLike, flag: str, suffixes: Sequence[str] = ()) -> pathlib.Path:
  """``path`` if it is an existing file with one of ``suffixes`` (any suffix when empty)."""
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"{flag} {path}: no such file")
  if path.is_dir():
    raise ValueError(f"{flag} {path}: a folder, expected a file")
  if suffixes and path.suffix.lower() not in suffixes:
    raise ValueError(f"{flag} {path}: expected a {' or '.join(suffixes)} file, got "
                     f"{path.suffix or 'no suffix'}")
  return path
