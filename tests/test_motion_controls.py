"""Motion controls of animate, on landmarks (no model): the reference frame relative motion is
measured from (``--reference``), how much expression is carried (``--motion-scale``), and which
of head motion and expression is carried (``--animate``)."""

import numpy as np
import pytest

from fewshot_jax import cli
from fewshot_jax.data.synthetic import SyntheticClip
from fewshot_jax.inference import motion as motion_lib

MOUTH = slice(48, 68)


def _pair(num_frames: int = 40) -> tuple[np.ndarray, np.ndarray]:
  """A source face (identity 3 at a frame of its own motion) and another identity's talking,
  turning head as the driver."""
  source = SyntheticClip(3, 20, 64, motion_seed=203).landmarks[11]
  driver = SyntheticClip(53, num_frames, 64, motion_seed=303).landmarks
  return source, driver


def _head(a: np.ndarray, b: np.ndarray) -> tuple[float, float, np.ndarray]:
  """Scale, rotation (degrees) and translation of the head's similarity a -> b."""
  s, r, t = motion_lib.similarity(a[motion_lib.RIGID], b[motion_lib.RIGID])
  return s, float(np.degrees(np.arctan2(r[1, 0], r[0, 0]))), t


def _unposed(out: np.ndarray, source: np.ndarray) -> np.ndarray:
  """``out`` with its head similarity onto the source undone."""
  s, r, t = motion_lib.similarity(out[motion_lib.RIGID], source[motion_lib.RIGID])
  return out @ (s * r).T + t


def test_pose_only_keeps_the_mouth_shape_and_carries_the_head():
  source, driver = _pair()
  pose = motion_lib.retarget(source, driver, animate="pose")
  full = motion_lib.retarget(source, driver)
  for t in range(len(driver)):
    np.testing.assert_allclose(_unposed(pose[t], source)[MOUTH], source[MOUTH], atol=1e-3)
    s_p, deg_p, t_p = _head(source, pose[t])
    s_f, deg_f, t_f = _head(source, full[t])
    assert s_p == pytest.approx(s_f, rel=0.02) and deg_p == pytest.approx(deg_f, abs=1.0)
  # The driver does move its head and mouth here, so the checks above could fail.
  degrees = [_head(source, full[t])[1] for t in range(len(driver))]
  assert max(degrees) - min(degrees) > 3
  gaps = [np.abs(_unposed(full[t], source)[MOUTH] - source[MOUTH]).max() for t in range(len(driver))]
  assert max(gaps) > 1.0


def test_expression_only_keeps_the_head_fixed_and_carries_the_mouth():
  source, driver = _pair()
  expr = motion_lib.retarget(source, driver, animate="expression")
  for t in range(len(driver)):
    s, deg, shift = _head(source, expr[t])
    assert s == pytest.approx(1.0, abs=0.02) and abs(deg) < 0.5 and np.abs(shift).max() < 0.5
  assert max(np.abs(expr[t][MOUTH] - source[MOUTH]).max() for t in range(len(driver))) > 1.0
  # A driver that only moves its head (turns, grows, shifts) leaves the source as it is.
  centre = driver[0].mean(0)
  moved = []
  for k in range(6):
    a = np.radians(4.0 * k)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    moved.append((driver[0] - centre) @ rot.T * (1 + 0.05 * k) + centre + [k, -0.5 * k])
  still = motion_lib.retarget(source, np.stack(moved), animate="expression")
  np.testing.assert_allclose(still, np.broadcast_to(source, still.shape), atol=1e-3)
  assert np.abs(motion_lib.retarget(source, np.stack(moved))[5] - source).max() > 3


def test_motion_scale_runs_from_the_references_expression_to_the_drivers():
  source, driver = _pair()
  zero = motion_lib.retarget(source, driver, scale=0.0)
  np.testing.assert_allclose(zero, motion_lib.retarget(source, driver, animate="pose"), atol=1e-4)
  np.testing.assert_allclose(motion_lib.retarget(source, driver, scale=1.0),
                             motion_lib.retarget(source, driver), atol=1e-5)
  half, one = (motion_lib.retarget(source, driver, scale=s, animate="expression") for s in (0.5, 1))
  np.testing.assert_allclose(half, 0.5 * (one + source[None]), atol=1e-4)
  # Absolute motion at scale 0 holds the driver's reference frame's expression on its moving head.
  absolute = motion_lib.retarget(source, driver, "absolute", reference=5, scale=0.0)
  np.testing.assert_allclose(_unposed(absolute[9], driver[5])[MOUTH], driver[5][MOUTH], atol=1e-3)
  np.testing.assert_allclose(motion_lib.retarget(source, driver, "absolute", reference=5),
                             driver, atol=1e-5)


@pytest.fixture(scope="module")
def carphone_points() -> np.ndarray:
  """dlib landmarks of 12 frames spread over the carphone clip (a real talking head)."""
  from test_prep_backends import carphone_path  # pylint: disable=g-import-not-at-top
  from fewshot_jax.prep.backends import make_backend  # pylint: disable=g-import-not-at-top
  from fewshot_jax.prep.video import iter_frames  # pylint: disable=g-import-not-at-top

  backend = make_backend("dlib")
  points = []
  for i, frame, _ in iter_frames(carphone_path()):
    if i % 8 == 0:
      points.append(backend.detect(frame)[0].landmarks)
    if len(points) == 12:
      break
  return np.stack(points)


def test_auto_reference_is_the_driver_frame_closest_to_the_source(carphone_points):
  driver = carphone_points
  # The source is frame 7 of the clip, elsewhere in the picture and 1.4 times as large: only pose
  # and expression make it that frame.
  source = driver[7] * 1.4 + np.array([-20.0, 13.0])
  assert motion_lib.resolve_reference("auto", source, driver) == 7
  out = motion_lib.retarget(source, driver, reference="auto")
  np.testing.assert_allclose(out[7], source, atol=1e-3)  # at the reference: the source itself
  assert motion_lib.resolve_reference("first", source, driver) == 0
  first = motion_lib.retarget(source, driver)
  assert np.abs(first[7] - source).max() > 1.0  # from the first frame, frame 7 is a motion
  # A synthetic source of another identity: the pick is the brute-force nearest frame.
  src, drv = _pair()
  gaps = [np.linalg.norm(motion_lib.normalised(f) - motion_lib.normalised(src), axis=-1).mean()
          for f in drv]
  assert motion_lib.resolve_reference("auto", src, drv) == int(np.argmin(gaps)) != 0


def test_bad_controls_name_the_option(tmp_path, capsys):
  source, driver = _pair(4)
  with pytest.raises(ValueError, match=r"^reference 500: beyond the driver's 4 frames"):
    motion_lib.retarget(source, driver, reference=500)
  with pytest.raises(ValueError, match=r"^motion_scale -1: expected a finite scale >= 0"):
    motion_lib.retarget(source, driver, scale=-1)
  with pytest.raises(ValueError, match=r"^animate 'mouth': expected one of"):
    motion_lib.retarget(source, driver, animate="mouth")
  npy = tmp_path / "driver.npy"
  np.save(npy, driver)
  photo = tmp_path / "photo.png"
  photo.write_bytes(b"not read: the options are refused first")
  base = ["animate", "--checkpoint", str(tmp_path / "missing"), "--source", str(photo),
          "--driver", str(npy), "--out", str(tmp_path / "out.mp4")]
  cases = [
      (["--reference", "500"], "--reference 500: beyond the driver's 4 frames (expected auto, "
                               "first or 0 to 3)"),
      (["--reference", "-2"], "--reference -2: expected auto, first or a driver frame index >= 0"),
      (["--reference", "best"], "--reference best: expected auto, first or a driver frame index"),
      (["--motion-scale", "-1"], "--motion-scale -1.0: expected a finite scale >= 0"),
      (["--motion-scale", "nan"], "--motion-scale nan: expected a finite scale >= 0"),
      (["--animate", "mouth"], "--animate 'mouth': expected one of ('all', 'pose', 'expression')"),
  ]
  for extra, expected in cases:
    assert cli.main(base + extra) == 2, extra
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("fewshot-jax animate: error: " + expected), (extra, err)
  assert not (tmp_path / "out.mp4").exists()
