"""Artefacts are replaced whole or not at all, and readable like any file the user writes."""

import os

import numpy as np
import pytest

from fewshot_jax.atomic_files import atomic_path, write_text
from fewshot_jax.visualize import save_png


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
  target = tmp_path / "metrics.json"
  write_text(target, '{"v": 1}')
  with pytest.raises(RuntimeError):
    with atomic_path(target) as tmp:
      with open(tmp, "w") as f:
        f.write('{"v": 2, "trunc')
      raise RuntimeError("killed mid-write")
  assert target.read_text() == '{"v": 1}'
  assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_written_files_get_the_umask_permissions_not_0600(tmp_path):
  old = os.umask(0o022)
  try:
    save_png(tmp_path / "sub" / "grid.png", np.zeros((4, 4, 3), np.uint8))
  finally:
    os.umask(old)
  assert (tmp_path / "sub" / "grid.png").stat().st_mode & 0o777 == 0o644


def test_temporary_keeps_the_suffix_for_format_sniffing_writers(tmp_path):
  with atomic_path(tmp_path / "cache.npz") as tmp:
    assert tmp.endswith(".npz")
    np.savez(tmp, a=np.arange(3))
  with np.load(tmp_path / "cache.npz") as z:
    assert z["a"].tolist() == [0, 1, 2]
