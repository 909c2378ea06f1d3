"""What a resumed run may change, checked against the checkpoint before anything is written.

A run's checkpoint is the record of what it is: ``animate``, ``export`` and ``evaluate`` rebuild the
model from the run's ``config.json``. So when ``train`` finds a checkpoint in its workdir, the
requested config is compared with the checkpoint's own, field by field, before ``config.json`` is
touched:

* **Execution and schedule** fields may change (more steps, another learning rate, logging,
  checkpoint cadence, the mesh, bf16, input workers, evaluation and fine-tuning settings). Each
  change is appended to ``<workdir>/config_changes.jsonl`` with the step it took effect at, so the
  run's history stays readable after its ``config.json`` shows only the latest values.
* **Everything else** is the run's identity: the model, the losses, the data (source, dataset,
  split, image size, number of videos, frames, seeds), K, the batch, the optimiser's betas and the
  schedule of D updates. A change there is refused with every differing field named, and the run
  is left exactly as it was.

A whitelist, not a blacklist: a field added to the configs later is frozen until someone decides
it is safe to change mid-run.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import time
from typing import Any

import ml_collections

from fewshot_jax.file_digest import file_sha256

log = logging.getLogger("fewshot_jax")

CHANGES_FILE = "config_changes.jsonl"

# Fields that change how a run executes, never what it computes (up to rounding): logging and
# checkpoint cadence, the mesh, bf16, remat, input workers, and where the same shards are read
# from (a copy in a bucket; the videos themselves are checked through their count below). A sweep
# ignores them too when it asks whether an entry was edited (sweep.config_hash).
EXECUTION = (
    "train.log_every", "train.checkpoint_every", "train.keep_checkpoints", "train.keep_every",
    "train.sample_every", "train.eval_every",
    "train.mesh_shape", "train.mesh_axes", "train.compute_dtype", "train.remat",
    "data.data_dir", "data.workers", "data.prefetch",
)
# Fields a resumed run may change; a name ending in "." allows its whole section.
MAY_CHANGE = EXECUTION + (
    "train.steps", "train.epochs", "train.lr_g", "train.lr_d",
    "data.eval_split", "data.num_eval_videos",
    "eval.", "finetune.",
)


# Perceptual weights files: their path may change (the same file on another machine, a TPU VM's
# bucket mount) when their contents are the ones the run trained with (runtime.content_weights).
WEIGHT_PATHS = ("loss.vgg19_path", "loss.vggface_path", "loss.vgg16_path")


def weight_hashes(cfg: ml_collections.ConfigDict) -> dict[str, str]:
  """``{loss field: sha256}`` of the perceptual weights files ``cfg`` names, kept in the run."""
  return {k.split(".")[1]: file_sha256(cfg.loss[k.split(".")[1]]) for k in WEIGHT_PATHS
          if cfg.loss.get(k.split(".")[1])}


class ResumeMismatch(ValueError):
  """The requested config changes a field that defines the run in ``workdir``."""


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  out: dict[str, Any] = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
  return out


def _matches(field: str, names: tuple[str, ...]) -> bool:
  return any(field == f or (f.endswith(".") and field.startswith(f)) for f in names)


def _may_change(field: str) -> bool:
  return _matches(field, MAY_CHANGE)


def defining_fields(config: dict[str, Any], ignore: tuple[str, ...] = EXECUTION) -> dict[str, Any]:
  """The flattened config without ``runtime`` and without the ``ignore`` fields: what a run
  computes, for comparing two configs as runs."""
  return {k: v for k, v in sorted(_flatten(config).items())
          if not k.startswith("runtime.") and not _matches(k, ignore)}


def config_changes(requested: ml_collections.ConfigDict,
                   saved: ml_collections.ConfigDict) -> dict[str, tuple[Any, Any]]:
  """``{field: (saved value, requested value)}`` for every field that differs (``runtime``, the
  facts recorded at run time, excluded)."""
  new = _flatten(requested.to_dict())
  old = _flatten(saved.to_dict())
  fields = sorted(k for k in set(new) | set(old) if not k.startswith("runtime."))
  changes = {}
  for k in fields:
    if k not in old:  # a field this version of the code added: the run used its default
      log.info("resume: config field %s is new since the checkpoint; using %r", k, new[k])
      continue
    if k not in new:
      log.warning("resume: the checkpoint's config field %s (%r) no longer exists", k, old[k])
      continue
    if new[k] != old[k]:
      changes[k] = (old[k], new[k])
  return changes


def check_resume(requested: ml_collections.ConfigDict, saved: ml_collections.ConfigDict,
                 num_videos: int, workdir: str | pathlib.Path, step: int) -> dict[str, tuple]:
  """The allowed changes of a resume, or ResumeMismatch naming every refused field.

  Args:
    requested: the config this ``train`` call was given.
    saved: the config stored in the checkpoint at ``step``.
    num_videos: how many training videos the requested data holds (W's rows).
    workdir: the run, for the message.
    step: the checkpoint's step, for the message.
  """
  changes = config_changes(requested, saved)
  trained_with = dict(saved.get("runtime", {}).get("content_weights", {}) or {})
  moved = {k for k, (_, new) in changes.items()
           if k in WEIGHT_PATHS and new and k.split(".")[1] in trained_with
           and os.path.isfile(os.path.expanduser(new))
           and file_sha256(new) == trained_with[k.split(".")[1]]}
  refused = {k: v for k, v in changes.items() if not _may_change(k) and k not in moved}
  saved_videos = saved.get("runtime", {}).get("num_videos")
  problems = [f"{k}: the run has {a!r}, this config {b!r}" for k, (a, b) in refused.items()]
  if saved_videos is not None and int(saved_videos) != num_videos:
    problems.append(f"training videos: the run has {saved_videos}, the data now holds "
                    f"{num_videos}")
  if problems:
    raise ResumeMismatch(
        f"{workdir} holds a run (checkpoint at step {step}) that this config does not match: "
        + "; ".join(problems) + ". Resume with the run's own config (its config.json), or start "
        "the changed config in a new --workdir (--init " + str(workdir) + " starts from its "
        "weights)")
  return changes


def record_changes(workdir: pathlib.Path, step: int, changes: dict[str, tuple]) -> None:
  """Appends the allowed changes of this resume to ``config_changes.jsonl``, one JSON line."""
  from fewshot_jax.atomic_files import write_text  # pylint: disable=g-import-not-at-top

  if not changes:
    return
  for k, (a, b) in changes.items():
    log.info("resume at step %d: %s %r -> %r", step, k, a, b)
  path = workdir / CHANGES_FILE
  old = path.read_text() if path.is_file() else ""
  line = json.dumps({"step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                     "changes": {k: {"from": a, "to": b} for k, (a, b) in changes.items()}})
  write_text(path, old + line + "\n")
