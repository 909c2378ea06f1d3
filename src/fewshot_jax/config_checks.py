"""Every field a user can set, checked in one place before anything compiles.

``validate(cfg)`` runs when a command has its final config (after ``--config.*`` overrides) and
before a mesh, a dataset or a program is built, so a typo costs a second, not minutes of XLA
compilation followed by a ``ZeroDivisionError``. Each problem is a ValueError whose message
starts with the field's name and says what was expected; all problems are reported at once.

Conventions the checks enforce:

* **Types** follow ``experiments/base.py``: a field that is an int there must be an int (a float
  such as ``1e5`` for ``train.steps`` is refused), floats accept ints.
* **Intervals** (``train.log_every``, ``checkpoint_every``, ``sample_every``, ``eval_every``,
  ``keep_every``) are ``>= 0``, and 0 means off, the same for each.
* **Files** named by the config (perceptual weights) must exist now, not at the first step.
* **The paper's loss**: a config with ``loss.allow_pixel_fallback=False`` (``paper_256`` and the
  ``vox2_256*`` configs) is refused without both VGG paths, instead of training pixel L1 with one
  log line that no result file repeats.
* **Memory**: a synthetic source that would not fit in this machine's memory streams instead
  (``data/sources.py``); ``synthetic_bytes`` is the arithmetic both use.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable
from typing import Any

import ml_collections

INTERVALS = ("log_every", "checkpoint_every", "sample_every", "eval_every", "keep_every")


def _base() -> ml_collections.ConfigDict:
  from fewshot_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  return config_lib.load_config("base")


def _type_problems(cfg: Any, base: Any, prefix: str = "") -> list[str]:
  problems = []
  for key in base.keys():
    name = f"{prefix}{key}"
    if key not in cfg:
      problems.append(f"{name}: missing (every config has it; see experiments/base.py)")
      continue
    want, got = base[key], cfg[key]
    if isinstance(want, ml_collections.ConfigDict):
      if not isinstance(got, ml_collections.ConfigDict):
        problems.append(f"{name}: expected a section, got {got!r}")
      else:
        problems.extend(_type_problems(got, want, f"{name}."))
      continue
    if isinstance(want, bool):
      ok = isinstance(got, bool)
    elif isinstance(want, int):
      ok = isinstance(got, int) and not isinstance(got, bool)
    elif isinstance(want, float):
      ok = isinstance(got, (int, float)) and not isinstance(got, bool)
    elif isinstance(want, tuple):
      ok = isinstance(got, tuple)
    else:
      ok = isinstance(got, type(want))
    if not ok:
      problems.append(f"{name}={got!r}: expected {type(want).__name__}")
  return problems


def _check(problems: list[str], name: str, value: Any, ok: Callable[[Any], bool],
           expected: str) -> None:
  try:
    good = ok(value)
  except TypeError:
    good = False
  if not good:
    problems.append(f"{name}={value!r}: expected {expected}")


def _ints(v: Any) -> bool:
  return all(isinstance(x, int) and not isinstance(x, bool) for x in v)


def validate(cfg: ml_collections.ConfigDict, *, check_files: bool = True) -> None:
  """Raises ValueError listing every field of ``cfg`` that is wrong, each with what was expected.

  Args:
    cfg: a full config (a run's saved config may carry a ``runtime`` section; it is ignored).
    check_files: also require the files the config names to exist (off for a config that is only
      being displayed, such as a sweep's dry run on another machine).
  """
  from fewshot_jax.models.talking_head import validate_model_config  # pylint: disable=g-import-not-at-top

  problems = _type_problems(cfg, _base())
  if problems:  # the range checks below assume the types
    raise ValueError("config: " + "; ".join(problems))
  m, d, lo, t, f, e = cfg.model, cfg.data, cfg.loss, cfg.train, cfg.finetune, cfg.eval
  p = problems
  pos = lambda v: v > 0  # noqa: E731
  nonneg = lambda v: v >= 0  # noqa: E731

  _check(p, "model.image_size", m.image_size, lambda v: v >= 16, "an int >= 16")
  for name in ("e_channels", "d_channels", "g_down_channels", "g_up_channels"):
    _check(p, f"model.{name}", m[name], lambda v: len(v) > 0 and _ints(v) and min(v) > 0,
           "a non-empty tuple of positive ints")
  for name in ("e_attn_res", "d_attn_res", "g_attn_down_res", "g_attn_up_res"):
    _check(p, f"model.{name}", m[name], lambda v: _ints(v) and all(0 < r <= m.image_size for r in v),
           f"a tuple of resolutions between 1 and model.image_size={m.image_size}")
  _check(p, "model.g_res_blocks", m.g_res_blocks, nonneg, "an int >= 0")
  _check(p, "model.g_up_channels", m.g_up_channels,
         lambda v: len(v) == len(m.g_down_channels),
         f"as many entries as model.g_down_channels ({len(m.g_down_channels)}): G upsamples "
         "back to the image size")
  _check(p, "model.landmark_thickness", m.landmark_thickness, nonneg, ">= 0 (0: scaled)")
  if not p:
    try:
      validate_model_config(m)
    except ValueError as err:
      p.append(str(err))

  _check(p, "data.source", d.source, lambda v: v in ("shards", "synthetic"),
         "'shards' or 'synthetic'")
  if d.source == "shards":
    _check(p, "data.data_dir", d.data_dir, bool,
           "a TFDS data dir (data.source='shards'), e.g. --config.data.data_dir=DIR")
  for name in ("cycle_length", "shuffle_window", "prefetch", "frame_stride"):
    _check(p, f"data.{name}", d[name], pos, "an int >= 1")
  _check(p, "data.workers", d.workers, nonneg, "an int >= 0 (0: decode on a thread)")
  _check(p, "data.expected_detector", d.expected_detector, lambda v: v in ("", "dlib", "fan"),
         "'', 'dlib' or 'fan'")
  _check(p, "data.num_eval_videos", d.num_eval_videos, nonneg, "an int >= 0")
  if d.source == "synthetic":
    _check(p, "data.num_train_videos", d.num_train_videos, pos, "an int >= 1")
    _check(p, "data.frames_per_video", d.frames_per_video, lambda v: v >= t.k_shots + 1,
           f"at least train.k_shots + 1 = {t.k_shots + 1} (K shots and a target per episode)")

  _check(p, "loss.vgg19_preprocess", lo.vgg19_preprocess, lambda v: v in ("caffe", "torchvision"),
         "'caffe' or 'torchvision'")
  for name in ("vgg19_weight", "vggface_weight", "vgg16_weight", "pixel_weight", "adv_weight",
               "fm_weight", "match_weight"):
    _check(p, f"loss.{name}", lo[name], nonneg, ">= 0")
  missing = [n for n in ("vgg19_path", "vggface_path") if not lo[n]]
  if missing and not lo.allow_pixel_fallback:
    p.append(f"loss.{missing[0]}: not set, and this config trains the paper's perceptual loss "
             f"(loss.allow_pixel_fallback=False): set {' and '.join('loss.' + n for n in missing)} "
             "(`fewshot-jax convert-weights`), or --config.loss.allow_pixel_fallback=True to "
             "train with pixel L1 instead")
  for name in ("vgg19_path", "vggface_path", "vgg16_path"):
    path = lo[name]
    if check_files and path and not pathlib.Path(os.path.expanduser(path)).is_file():
      kind = {"vgg16": "lpips", "vgg19": f"vgg19{'_caffe' * (lo.vgg19_preprocess == 'caffe')}"
              }.get(name.split("_")[0], name.split("_")[0])
      p.append(f"loss.{name}={path!r}: no such file (convert it with `fewshot-jax "
               f"convert-weights --kind {kind}`)")

  _check(p, "train.variant", t.variant, lambda v: v in ("ft", "ff"), "'ft' or 'ff'")
  _check(p, "train.steps", t.steps, nonneg, "an int >= 0")
  _check(p, "train.epochs", t.epochs, nonneg,
         ">= 0 (0: train.steps as given; > 0: steps from the training set's size)")
  _check(p, "train.batch_size", t.batch_size, pos, "an int >= 1")
  _check(p, "train.k_shots", t.k_shots, pos, "an int >= 1")
  _check(p, "train.d_steps", t.d_steps, pos, "an int >= 1 (D updates per G update)")
  for name in ("lr_g", "lr_d"):
    _check(p, f"train.{name}", t[name], pos, "> 0")
  for name in ("b1", "b2"):
    _check(p, f"train.{name}", t[name], lambda v: 0 <= v < 1, "in [0, 1)")
  _check(p, "train.ema_decay", t.ema_decay, lambda v: 0 <= v < 1, "in [0, 1)")
  _check(p, "train.flip_prob", t.flip_prob, lambda v: 0 <= v <= 1, "in [0, 1]")
  for name in INTERVALS:
    _check(p, f"train.{name}", t[name], nonneg, "an int >= 0 (0: off)")
  _check(p, "train.keep_checkpoints", t.keep_checkpoints, pos, "an int >= 1")
  _check(p, "train.mesh_shape", t.mesh_shape,
         lambda v: len(v) > 0 and _ints(v) and all(x > 0 or x == -1 for x in v)
         and list(v).count(-1) <= 1, "positive ints, with at most one -1")
  _check(p, "train.mesh_axes", t.mesh_axes, lambda v: len(v) == len(t.mesh_shape),
         f"one name per entry of train.mesh_shape ({len(t.mesh_shape)})")
  _check(p, "train.compute_dtype", t.compute_dtype, lambda v: v in ("float32", "bfloat16"),
         "'float32' or 'bfloat16'")

  _check(p, "finetune.steps", f.steps, nonneg, "an int >= 0 (0: feed-forward)")
  for name in ("lr_g", "lr_d"):
    _check(p, f"finetune.{name}", f[name], pos, "> 0")
  _check(p, "finetune.d_steps", f.d_steps, nonneg, "an int >= 0 (0: train.d_steps)")

  _check(p, "eval.shots", e.shots, lambda v: len(v) > 0 and _ints(v) and min(v) >= 1,
         "a non-empty tuple of ints >= 1")
  _check(p, "eval.targets_per_video", e.targets_per_video, pos, "an int >= 1")
  _check(p, "eval.hook_batches", e.hook_batches, pos, "an int >= 1")
  if p:
    raise ValueError("config: " + "; ".join(p))


def synthetic_bytes(cfg: ml_collections.ConfigDict) -> int:
  """Bytes the synthetic training and held-out videos take when rendered into memory."""
  d, s = cfg.data, cfg.model.image_size
  videos = d.num_train_videos + d.num_eval_videos
  return videos * d.frames_per_video * (s * s * 3 + 68 * 2 * 4)


def available_memory() -> int:
  """Bytes this machine can still give (MemAvailable), or a large number where unknown."""
  try:
    for line in pathlib.Path("/proc/meminfo").read_text().splitlines():
      if line.startswith("MemAvailable:"):
        return int(line.split()[1]) * 1024
  except OSError:
    pass
  return 1 << 62
