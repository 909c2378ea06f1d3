"""The resume rules on their own (no training): which config changes a run accepts, and how the
same perceptual weights at another path are recognised by their contents."""

from __future__ import annotations

import ml_collections
import pytest

from conftest import tiny_config
from fewshot_jax import config as config_lib
from fewshot_jax.train import resume


def _saved(cfg, num_videos: int = 8) -> ml_collections.ConfigDict:
  """``cfg`` as a run's checkpoint stores it, through JSON (tuples come back as tuples)."""
  cfg = ml_collections.ConfigDict(cfg.to_dict())
  cfg.runtime = ml_collections.ConfigDict({"num_videos": num_videos,
                                           "content_weights": resume.weight_hashes(cfg)})
  return config_lib.from_json(config_lib.to_json(cfg))


def test_schedule_and_execution_changes_are_allowed_and_returned(tmp_path):
  changes = resume.check_resume(
      tiny_config("train.steps=99", "train.lr_g=1e-4", "train.mesh_shape=(-1, 1)",
                  "train.mesh_axes=('data', 'fsdp')", "data.workers=2", "eval.shots=(1, 4)"),
      _saved(tiny_config()), 8, tmp_path, 3)
  assert set(changes) == {"train.steps", "train.lr_g", "train.mesh_shape", "train.mesh_axes",
                          "data.workers", "eval.shots"}


@pytest.mark.parametrize("override", ["model.g_res_blocks=2", "train.batch_size=8",
                                      "train.b1=0.1", "train.d_steps=1", "data.seed=3",
                                      "loss.fm_weight=1.0", "seed=5", "train.variant='ff'"])
def test_what_defines_the_run_is_refused(override, tmp_path):
  with pytest.raises(resume.ResumeMismatch, match=override.split("=")[0]):
    resume.check_resume(tiny_config(override), _saved(tiny_config()), 8, tmp_path, 3)


def test_the_same_weights_at_another_path_resume_other_weights_do_not(tmp_path):
  """A run moved to another machine names its VGG weights at another path: accepted when the
  file holds what the run trained with (its SHA-256 is kept in runtime.content_weights)."""
  for name, data in (("a", b"weights"), ("b", b"weights"), ("c", b"other weights")):
    (tmp_path / f"{name}.safetensors").write_bytes(data)
  saved = _saved(tiny_config(f"loss.vgg19_path='{tmp_path}/a.safetensors'"))
  moved = resume.check_resume(tiny_config(f"loss.vgg19_path='{tmp_path}/b.safetensors'"),
                              saved, 8, tmp_path, 3)
  assert list(moved) == ["loss.vgg19_path"]
  with pytest.raises(resume.ResumeMismatch, match="loss.vgg19_path: the run has"):
    resume.check_resume(tiny_config(f"loss.vgg19_path='{tmp_path}/c.safetensors'"), saved, 8,
                        tmp_path, 3)
