"""Loading experiment configs and applying command-line overrides.

Configs are ml_collections ``get_config(arg)`` modules in ``experiments/``. A config is named by a
path (``experiments/demo_64.py``, optionally ``:arg``) or by its bare name (``demo_64``), looked up in
the repository's ``experiments/`` folder. Overrides take the form ``--config.train.steps=50``; the
value is parsed as a Python literal and must match the field's type, so a typo fails loudly instead
of silently adding a field.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import pathlib
import sys
from collections.abc import Sequence

import ml_collections

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
EXPERIMENTS = REPO_ROOT / "experiments"


def resolve_config_path(name: str) -> pathlib.Path:
  """Maps a config name or path to an existing ``.py`` file, or raises FileNotFoundError."""
  candidates = [pathlib.Path(name), EXPERIMENTS / name, EXPERIMENTS / f"{name}.py"]
  for candidate in candidates:
    if candidate.suffix == ".py" and candidate.is_file():
      return candidate.resolve()
  raise FileNotFoundError(
      f"config {name!r}: no such file, and no {candidates[-1]} (configs are experiments/*.py, "
      "ablations are experiments/ablations/*.py)"
  )


def load_config(spec: str) -> ml_collections.ConfigDict:
  """Imports a config module and calls its ``get_config(arg)``.

  Args:
    spec: ``path/or/name[:arg]``.

  Returns:
    The config.
  """
  name, _, arg = spec.partition(":")
  path = resolve_config_path(name)
  package_dir = path.parent
  if (package_dir / "__init__.py").is_file():
    root = str(package_dir.parent)
    if root not in sys.path:
      sys.path.insert(0, root)
    module = importlib.import_module(f"{package_dir.name}.{path.stem}")
  else:
    spec_ = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(module)
  return module.get_config(arg or None)


def _parse_value(raw: str, current: object, key: str) -> object:
  if isinstance(current, str):
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
      return raw[1:-1]
    return raw
  try:
    value = ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    raise ValueError(f"--config.{key}={raw!r}: not a Python literal") from None
  if isinstance(current, bool):
    if not isinstance(value, bool):
      raise ValueError(f"--config.{key}={raw!r}: expected True or False")
  elif isinstance(current, float) and isinstance(value, int):
    value = float(value)
  elif isinstance(current, tuple) and isinstance(value, (list, tuple)):
    value = tuple(value)
  elif isinstance(current, tuple) and isinstance(value, (int, float)):
    value = (value,)
  if current is not None and type(value) is not type(current):
    raise ValueError(
        f"--config.{key}={raw!r}: expected {type(current).__name__}, got {type(value).__name__}"
    )
  return value


def apply_overrides(
    config: ml_collections.ConfigDict, overrides: Sequence[str]
) -> ml_collections.ConfigDict:
  """Applies ``--config.a.b=value`` strings (or ``a.b=value``) to a copy of ``config``."""
  config = ml_collections.ConfigDict(config.to_dict())
  for item in overrides:
    key_value = item[len("--config."):] if item.startswith("--config.") else item
    if "=" not in key_value:
      raise ValueError(f"override {item!r}: expected --config.FIELD=VALUE")
    key, raw = key_value.split("=", 1)
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
      if part not in node:
        raise ValueError(f"--config.{key}: no section {part!r}")
      node = node[part]
    if leaf not in node:
      raise ValueError(f"--config.{key}: no field {leaf!r} (fields: {sorted(node.keys())})")
    node[leaf] = _parse_value(raw, node[leaf], key)
  return config


def to_json(config: ml_collections.ConfigDict) -> str:
  """Serialises a config; tuples become lists and come back as tuples via ``from_json``."""
  return json.dumps(config.to_dict(), indent=2, sort_keys=True)


def _tuplify(obj: object) -> object:
  if isinstance(obj, dict):
    return {k: _tuplify(v) for k, v in obj.items()}
  if isinstance(obj, list):
    return tuple(_tuplify(v) for v in obj)
  return obj


def from_json(text: str) -> ml_collections.ConfigDict:
  """Rebuilds a config saved by ``to_json``."""
  return from_json_dict(json.loads(text))


def from_json_dict(data: dict) -> ml_collections.ConfigDict:
  """Rebuilds a config from its JSON-decoded dict (lists become tuples again)."""
  return ml_collections.ConfigDict(_tuplify(data))
