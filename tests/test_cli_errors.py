"""Every subcommand answers a user's mistake with one line naming the input, and exit status 2;
``-v`` shows the traceback instead. Nothing the user made is touched."""

from __future__ import annotations

import argparse
import pathlib

import numpy as np
import pytest

from fewshot_jax import cli, cli_inference


@pytest.fixture
def user_folder(tmp_path):
  folder = tmp_path / "mine"
  folder.mkdir()
  (folder / "thesis.tex").write_text("a year of work")
  return folder


def _run(capsys, *argv: str) -> str:
  """Runs the CLI; returns its one error line after checking the exit status and the hint."""
  rc = cli.main(list(argv))
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 2, err
  assert len(err) == 2 and err[1].startswith("(fewshot-jax -v "), err
  assert err[0].startswith(f"fewshot-jax {argv[0]}: error: "), err
  return err[0]


def test_each_subcommand_names_the_bad_input(capsys, tmp_path, user_folder):
  npy = tmp_path / "shots.npy"
  np.save(npy, np.zeros((1, 68, 2), np.float32))
  txt = tmp_path / "weights.txt"
  txt.write_text("not weights")
  foreign = tmp_path / "vgg.safetensors"
  foreign.write_bytes(b"a file convert-weights did not write")
  missing = str(tmp_path / "missing")
  driver = tmp_path / "driver.mp4"
  driver.write_bytes(b"a video")
  lookalike_run = tmp_path / "export"
  lookalike_run.mkdir()
  (lookalike_run / "config.json").write_text('{"format": 1, "model": {}}')
  lookalike_demo = tmp_path / "project"
  (lookalike_demo / "run").mkdir(parents=True)
  (lookalike_demo / "notes.txt").write_text("mine")
  lookalike_cache = tmp_path / "videos"
  lookalike_cache.mkdir()
  np.savez(lookalike_cache / "clip.npz", x=np.zeros(3))
  cases = [
      (("train", "--config", "nope", "--workdir", missing), "config 'nope': no such file"),
      (("train", "--config", "demo_64", "--workdir", missing, "--config.train.log_every=-1"),
       "train.log_every=-1: expected an int >= 0 (0: off)"),
      (("train", "--config", "demo_64", "--workdir", missing, "--config.train.stepz=5"),
       "--config.train.stepz: no field 'stepz'"),
      (("train", "--config", "demo_64", "--workdir", str(user_folder)),
       f"--workdir {user_folder}: the folder holds files that are not a training run (thesis.tex)"),
      (("train", "--config", "demo_64", "--workdir", missing, "--init", missing),
       f"--init {missing}: not a run"),
      (("demo", "--workdir", str(user_folder)), "not a demo's output (thesis.tex)"),
      (("evaluate", "--checkpoint", missing, "--data-dir", missing, "--out", str(user_folder)),
       f"--out {user_folder}: the folder holds files that are not an evaluation"),
      (("evaluate", "--checkpoint", missing, "--data-dir", missing, "--out", missing),
       f"{missing} is not a run directory"),
      (("prepare", "landmarks", "--input", missing, "--cache", missing),
       f"--input {missing}: no such folder"),
      (("prepare", "landmarks", "--input", str(tmp_path), "--cache", str(user_folder)),
       f"--cache {user_folder}: the folder holds files that are not a landmark cache"),
      (("prepare", "landmarks", "--input", str(tmp_path), "--cache", missing, "--enlarge", "0.5"),
       "--enlarge 0.5: expected > 1"),
      (("prepare", "shards", "--config", "video_folder", "--data-dir", missing),
       "reads a landmark cache: pass --manual-dir CACHE"),
      (("data", "verify", "--data-dir", missing), f"--data-dir {missing}: no such folder"),
      (("convert-weights", "--kind", "vgg19", "--src", missing, "--dst", "x.safetensors"),
       f"--src {missing}: no such file"),
      (("convert-weights", "--kind", "vgg19", "--src", str(txt), "--dst", "x.safetensors"),
       f"--src {txt}: expected a .pth or .pt or .bin file, got .txt"),
      (("convert-weights", "--kind", "vgg19", "--src", str(npy.with_suffix(".pth")), "--dst",
        str(tmp_path / "x.npz")), "no such file"),
      (("sweep", "nope", "--workdir", missing), "sweep 'nope': no"),
      (("finetune", "--checkpoint", missing, "--shots", str(npy), "--out", missing),
       f"--shots {npy}: expected a .npz file, got .npy"),
      (("finetune", "--checkpoint", missing, "--synthetic", "1", "--out", str(user_folder)),
       f"{user_folder}: not empty and not an earlier identity"),
      (("finetune", "--checkpoint", missing, "--synthetic", "1", "--k", "0", "--out", missing),
       "--k 0: expected at least 1"),
      (("animate", "--checkpoint", missing, "--identity", missing, "--driver", str(npy),
        "--out", str(tmp_path / "out.avi")), "--out " + str(tmp_path / "out.avi") +
       ": expected a file ending in .mp4"),
      (("animate", "--checkpoint", missing, "--identity", missing, "--driver", missing,
        "--out", str(tmp_path / "out.mp4")), f"--driver {missing}: no such file"),
      (("animate", "--checkpoint", missing, "--identity", missing, "--driver", str(npy),
        "--out", str(tmp_path / "nodir" / "out.mp4")), "does not exist"),
      (("animate", "--checkpoint", missing, "--identity", missing, "--driver", str(npy),
        "--out", str(tmp_path / "out.mp4")), f"--identity {missing}: no such folder"),
      (("export", "--checkpoint", missing, "--out", missing), f"{missing} is not a run directory"),
      (("animate", "--checkpoint", missing, "--identity", missing, "--driver", str(driver),
        "--out", str(driver)), f"--out {driver}: is the driver itself"),
      # Weak look-alikes of our own folders are not ours: an export's config.json is not a run's,
      # a folder named run/ is not a demo's, a user's .npz is not a cache entry.
      (("train", "--config", "demo_64", "--workdir", str(lookalike_run)),
       "not a training run (config.json)"),
      (("demo", "--workdir", str(lookalike_demo)), "not a demo's output (notes.txt, run)"),
      (("prepare", "landmarks", "--input", str(tmp_path), "--cache", str(lookalike_cache)),
       "not a landmark cache (clip.npz)"),
  ]
  for argv, expected in cases:
    line = _run(capsys, *argv)
    assert expected in line, (argv, line)
  assert (user_folder / "thesis.tex").read_text() == "a year of work"
  assert sorted(p.name for p in user_folder.iterdir()) == ["thesis.tex"]
  assert foreign.read_bytes() == b"a file convert-weights did not write"
  assert driver.read_bytes() == b"a video"
  assert (lookalike_run / "config.json").read_text() == '{"format": 1, "model": {}}'


def test_convert_weights_never_overwrites_a_file_it_did_not_write(capsys, tmp_path):
  src = tmp_path / "vgg19.pth"
  src.write_bytes(b"\0")
  dst = tmp_path / "vgg19.safetensors"
  dst.write_bytes(b"someone else's file")
  line = _run(capsys, "convert-weights", "--kind", "vgg19", "--src", str(src), "--dst", str(dst))
  assert f"--dst {dst}: exists and was not written by convert-weights" in line
  assert dst.read_bytes() == b"someone else's file"


def test_verbose_shows_the_traceback(tmp_path):
  with pytest.raises(FileNotFoundError):
    cli.main(["-v", "data", "verify", "--data-dir", str(tmp_path / "missing")])


def test_shot_landmarks_in_video_pixels_are_refused(tmp_path):
  """A shots file whose landmarks are in the source video's pixels (here 4x the crop) would be
  drawn off the image; it is refused, naming the file and the shot."""
  size = 64
  frames = np.zeros((3, size, size, 3), np.uint8)
  rng = np.random.default_rng(0)
  points = rng.uniform(10, 50, (3, 68, 2)).astype(np.float32)
  good = tmp_path / "good.npz"
  np.savez(good, frames=frames, landmarks=points)
  args = argparse.Namespace(source=None, shots=str(good))
  got_frames, got_points, names = cli_inference._shots(args, size, None)
  np.testing.assert_array_equal(got_points, points)
  video_pixels = points.copy()
  video_pixels[2] *= 4
  bad = tmp_path / "bad.npz"
  np.savez(bad, frames=frames, landmarks=video_pixels)
  with pytest.raises(ValueError, match=rf"--shots {bad}: shot 2 has landmarks in \[\d+, \d+\], "
                                       r"expected crop pixels within \[0, 64\]"):
    cli_inference._shots(argparse.Namespace(source=None, shots=str(bad)), size, None)
  assert pathlib.Path(bad).is_file()


def test_a_landmark_driver_in_video_pixels_is_refused_naming_the_frame(tmp_path):
  """A .npy driver is read as crop pixels; one exported in its video's pixels (a 640 x 480 clip,
  here from frame 5 on) would be drawn off the image, so it is refused instead."""
  from fewshot_jax.inference.driver import load_driver  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  points = rng.uniform(20, 44, (10, 68, 2)).astype(np.float32)
  good = tmp_path / "crop.npy"
  np.save(good, points)
  assert load_driver(str(good), None, 64, smooth_sigma=0).landmarks.shape == (10, 68, 2)
  points[5:] *= 10
  bad = tmp_path / "video.npy"
  np.save(bad, points)
  with pytest.raises(ValueError, match=rf"driver {bad}: frame 5 has landmarks in \[\d+, \d+\], "
                                       r"expected crop pixels within \[0, 64\]"):
    load_driver(str(bad), None, 64)
