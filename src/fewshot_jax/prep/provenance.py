"""Which landmark detector made a prepared dataset, recorded once for the whole dataset.

Every example already carries its ``detector`` and ``detector_version`` (FAN's version holds the
sha256 prefixes of its S3FD and 2DFAN4 weight files). Data prep also writes a per-split summary
into the dataset's ``metadata.json`` (TFDS's metadata file, next to ``dataset_info.json``), so
that training and ``evaluate`` can say which detector's landmarks a result rests on without
reading every record, and warn when a paper config (``data.expected_detector='fan'``) is run on
another detector's landmarks.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
from collections import Counter
from collections.abc import Iterable
from typing import Any

log = logging.getLogger("fewshot_jax")

METADATA_FILE = "metadata.json"
KEY = "detectors"  # metadata.json: {"detectors": {split: [{detector, version, videos}]}}


def summarize(pairs: Iterable[tuple[str, str]]) -> list[dict[str, Any]]:
  """``(detector, version)`` per video -> one row per distinct pair, most videos first."""
  counts = Counter(pairs)
  return [{"detector": d, "version": v, "videos": n}
          for (d, v), n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def read_detectors(directory: str | os.PathLike, split: str) -> list[dict[str, Any]] | None:
  """The detectors recorded for ``split`` of a dataset version folder; None where none were
  recorded (a dataset prepared before they were)."""
  path = pathlib.Path(directory) / METADATA_FILE
  if not path.is_file():
    return None
  try:
    data = json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise ValueError(f"{path}: not readable JSON ({e})") from e
  rows = data.get(KEY, {}).get(split) if isinstance(data, dict) else None
  return list(rows) if rows else None


def detector_name(rows: list[dict[str, Any]] | None) -> str:
  """``fan``, ``dlib``, ``synthetic``, ``mixed (fan, dlib)`` or ``unrecorded``."""
  if not rows:
    return "unrecorded"
  names = sorted({r["detector"] for r in rows})
  return names[0] if len(names) == 1 else f"mixed ({', '.join(names)})"


def describe(rows: list[dict[str, Any]] | None) -> str:
  """One line for a log or a table header: each detector, its version (weights' hashes) and
  how many videos it made."""
  if not rows:
    return "unrecorded (the dataset's metadata.json names no detector: prepared before it did)"
  return "; ".join(f"{r['detector']} [{r['version']}] x {r['videos']} videos" for r in rows)


def check_detector(directory: str | os.PathLike, split: str, expected: str, what: str) -> dict[str, Any]:
  """Logs the detector of ``split``; warns when ``expected`` is set and it is another one.

  Returns:
    ``{"detector": name, "description": line}``, for recording beside a result.
  """
  rows = read_detectors(directory, split)
  name, line = detector_name(rows), describe(rows)
  log.info("%s: landmarks of %s split %r by %s", what, directory, split, line)
  if expected and name != expected:
    log.warning("%s: this config expects %s landmarks (data.expected_detector=%r, the paper's), "
                "but %s split %r was prepared with %s; results are not the paper's protocol "
                "(re-prepare with `fewshot-jax prepare landmarks --backend %s`)", what,
                expected, expected, directory, split, name, expected)
  return {"detector": name, "description": line}
