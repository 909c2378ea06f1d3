"""Export and identity folders replace only what they wrote; an identity is finite or refused.

A tiny run trained for one step is enough: what is checked is which folders get replaced, what a
failure leaves behind, and that NaN never turns into a saved identity or a black video.
"""

from __future__ import annotations

import json
import pathlib
import re

import jax
import numpy as np
import pytest

from conftest import random_videos, tiny_config
from fewshot_jax import atomic_files, cli
from fewshot_jax.data import synthetic
from fewshot_jax.data.episodes import EpisodeSource
from fewshot_jax.inference import animate as animate_lib
from fewshot_jax.inference import export as export_lib
from fewshot_jax.inference import identity as identity_lib
from fewshot_jax.inference.driver import load_driver
from fewshot_jax.inference.run import load_run
from fewshot_jax.inference.tensors import save_tree
from fewshot_jax.train.loop import train


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> pathlib.Path:
  workdir = tmp_path_factory.mktemp("run")
  cfg = tiny_config("train.steps=1", "train.checkpoint_every=1")
  frames, points = random_videos(4, 8, cfg.model.image_size)
  train(cfg, workdir, EpisodeSource.from_arrays(frames, points))
  return workdir


def _shots(size: int) -> tuple[np.ndarray, np.ndarray]:
  frames, points = synthetic.render_video(0, 8, size)
  return frames[:2], points[:2]


def _listing(path: pathlib.Path) -> list[str]:
  return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def test_export_replaces_only_an_empty_folder_or_an_earlier_export(run_dir, tmp_path,
                                                                   monkeypatch, capsys):
  run = load_run(run_dir)
  exports = tmp_path / "exports"
  (exports / "b").mkdir(parents=True)
  export_lib.export_run(run, exports / "a", platforms=("cpu",))  # a new folder
  export_lib.export_run(run, exports / "b", platforms=("cpu",))  # an empty one
  assert export_lib.load_exported(exports / "a").psi is None
  # An earlier export is replaced whole (here by one with an identity).
  ident = identity_lib.fit_identity(run, *_shots(run.config.model.image_size), 0,
                                    show_progress=False)
  export_lib.export_run(run, exports / "a", ident, platforms=("cpu",))
  np.testing.assert_array_equal(export_lib.load_exported(exports / "a").psi, ident.psi)
  assert sorted(p.name for p in exports.iterdir()) == ["a", "b"]  # no staging or old folder

  # Anything else is refused, naming the folder, before tracing starts.
  def no_tracing(*args, **kwargs):
    raise AssertionError("traced before --out was checked")

  monkeypatch.setattr(jax.export, "export", no_tracing)
  run_files = _listing(run_dir)
  (exports / "a" / "notes.txt").write_text("mine")
  (tmp_path / "file.bin").write_bytes(b"x")
  for out, message in [
      (run_dir, rf"{re.escape(str(run_dir))}: not empty and not an earlier export \(no "
                r"config.json of one among its \d+ entries\); refusing to replace it"),
      (exports, rf"{re.escape(str(exports))}: not empty and not an earlier export"),
      (exports / "a", rf"{re.escape(str(exports / 'a'))}: an earlier export, but it also holds "
                      r"\['notes.txt'\]; refusing to replace it"),
      (tmp_path / "file.bin", rf"{re.escape(str(tmp_path / 'file.bin'))}: not a folder")]:
    with pytest.raises(ValueError, match=message):
      export_lib.export_run(run, out, platforms=("cpu",))
  assert _listing(run_dir) == run_files
  assert (exports / "a" / "notes.txt").read_text() == "mine"
  assert (tmp_path / "file.bin").read_bytes() == b"x"
  # Through the CLI: one line, exit 2.
  capsys.readouterr()
  assert cli.main(["export", "--checkpoint", str(run_dir), "--out", str(run_dir)]) == 2
  err = capsys.readouterr().err.splitlines()[0]
  assert err.startswith(f"fewshot-jax export: error: {run_dir}: not empty and not an earlier export")
  assert _listing(run_dir) == run_files


def test_a_failed_export_leaves_the_earlier_one_and_no_staging_folder(run_dir, tmp_path,
                                                                      monkeypatch):
  run = load_run(run_dir)
  out = tmp_path / "export"
  export_lib.export_run(run, out, platforms=("cpu",))
  before = {p.name: p.read_bytes() for p in out.iterdir()}
  write_bytes = atomic_files.write_bytes

  def disk_full(path, data):
    if pathlib.Path(path).name == "embedder.jaxexport":
      raise OSError(28, "No space left on device")
    write_bytes(path, data)

  monkeypatch.setattr(atomic_files, "write_bytes", disk_full)
  with pytest.raises(OSError, match="No space left on device"):
    export_lib.export_run(run, out, platforms=("cpu",))
  assert [p.name for p in tmp_path.iterdir()] == ["export"]  # no .export.* folder
  assert {p.name: p.read_bytes() for p in out.iterdir()} == before
  with pytest.raises(OSError, match="No space left on device"):
    export_lib.export_run(run, tmp_path / "new", platforms=("cpu",))
  assert [p.name for p in tmp_path.iterdir()] == ["export"]


def test_an_identity_folder_replaces_only_an_earlier_identity(run_dir, tmp_path):
  run = load_run(run_dir)
  ident = identity_lib.fit_identity(run, *_shots(run.config.model.image_size), 0,
                                    show_progress=False)
  identity_lib.save_identity(tmp_path / "id", ident, run)
  ident.info["sources"] = ["again"]
  identity_lib.save_identity(tmp_path / "id", ident, run)  # an earlier identity: replaced
  assert identity_lib.load_identity(tmp_path / "id", run).info["sources"] == ["again"]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["id"]
  photos = tmp_path / "photos"
  photos.mkdir()
  (photos / "me.jpg").write_bytes(b"a photo")
  run_files = _listing(run_dir)
  for folder in (photos, run_dir):
    with pytest.raises(ValueError, match=rf"{re.escape(str(folder))}: not empty and not an "
                                         r"earlier identity \(no identity.json of one"):
      identity_lib.save_identity(folder, ident, run)
    with pytest.raises(ValueError, match=rf"{re.escape(str(folder))}: not empty and not an "
                                         "earlier identity"):
      identity_lib.check_identity_folder(folder)  # what a caller checks before fitting
  assert _listing(photos) == ["me.jpg"] and _listing(run_dir) == run_files
  (tmp_path / "id" / "notes.txt").write_text("mine")
  with pytest.raises(ValueError, match=r"an earlier identity, but it also holds \['notes.txt'\]"):
    identity_lib.save_identity(tmp_path / "id", ident, run)
  assert (tmp_path / "id" / "notes.txt").read_text() == "mine"


def test_a_diverging_finetune_stops_with_a_message_and_saves_nothing(run_dir, tmp_path, capsys):
  out = tmp_path / "id"
  assert cli.main(["finetune", "--checkpoint", str(run_dir), "--synthetic", "0", "--k", "2",
                   "--steps", "6", "--out", str(out), "--config.finetune.lr_g=1e30"]) == 2
  last = [line for line in capsys.readouterr().err.splitlines() if " error: " in line][0]
  assert re.search(r"^fewshot-jax finetune: error: fine-tuning diverged at step [1-6] of 6: .*ft/content=nan.*; it was stopped "
                   r"and nothing was saved; try fewer steps or a lower finetune.lr_g \(now 1e\+30\)",
                   last), last
  assert list(tmp_path.iterdir()) == []
  # Not-finite shot landmarks are a bad input, named as such, not a divergence.
  run = load_run(run_dir)
  frames, points = _shots(run.config.model.image_size)
  points[1, 5] = np.nan
  with pytest.raises(ValueError, match=r"shots: the landmarks of shot\(s\) \[1\] hold NaN or Inf"):
    identity_lib.fit_identity(run, frames, points, 2, show_progress=False)


def test_animate_refuses_a_non_finite_identity(run_dir, tmp_path, capsys):
  run = load_run(run_dir)
  size = run.config.model.image_size
  ident = identity_lib.fit_identity(run, *_shots(size), 0, show_progress=False)
  driver_path = tmp_path / "driver.npy"
  np.save(driver_path, synthetic.render_video(1, 6, size)[1])
  # An identity with a NaN, as written before fits were checked: refused on load, one line.
  folder = tmp_path / "nan_id"
  identity_lib.save_identity(folder, ident, run)
  psi = ident.psi.copy()
  psi[3] = np.nan
  save_tree(folder / "identity.safetensors",
            {"psi": psi, "generator": ident.generator, "sn": ident.sn,
             "shot_landmarks": ident.shot_landmarks, "shots": ident.shots})
  out = tmp_path / "out.mp4"
  capsys.readouterr()
  assert cli.main(["animate", "--checkpoint", str(run_dir), "--identity", str(folder),
                   "--driver", str(driver_path), "--out", str(out)]) == 2
  err = capsys.readouterr().err.splitlines()[0]
  assert err.startswith(f"fewshot-jax animate: error: {folder / 'identity.safetensors'}: not "
                        "finite (NaN or Inf) in psi;"), err
  assert not out.exists()
  bad = identity_lib.Identity(psi=psi, generator=ident.generator, sn=ident.sn,
                              shot_landmarks=ident.shot_landmarks, shots=ident.shots, info={})
  driver = load_driver(driver_path, None, size, show_progress=False)
  with pytest.raises(ValueError, match=r"identity: not finite \(NaN or Inf\) in psi"):
    animate_lib.animate(run, bad, driver, out, show_progress=False)
  with pytest.raises(ValueError, match="not finite"):
    identity_lib.save_identity(tmp_path / "never", bad, run)
  # Finite weights that still generate NaN frames (ψ far out of range): no black video either.
  huge = identity_lib.Identity(psi=ident.psi * 1e30, generator=ident.generator, sn=ident.sn,
                               shot_landmarks=ident.shot_landmarks, shots=ident.shots, info={})
  with pytest.raises(animate_lib.NonFiniteFrames,
                     match=rf"{re.escape(str(out))}: not written: from frame 0, generated frame "
                           "0 of this batch of 6 is NaN or Inf"):
    animate_lib.animate(run, huge, driver, out, show_progress=False)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["driver.npy", "nan_id"]
  assert json.loads((folder / "identity.json").read_text())["format"] == 1
