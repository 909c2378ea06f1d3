"""``fewshot-jax sweep``: run a list of configs (an ablation study) and collect their results.

A sweep is a module in ``experiments/sweeps/`` (or any path) with ``get_sweep(arg) -> list[dict]``,
each dict a run: ``name`` (its folder under the sweep's workdir), ``config`` (a config name or
path, with ``:arg``) and ``overrides`` (``"section.field=value"`` strings).

Runners:
  * ``local``: each run in turn in this process: train (which resumes from the run's checkpoint),
    then the evaluation protocol on the config's held-out videos into ``<run>/eval``. Then
    ``results.csv``, ``results.md`` and ``results.png`` are written over the finished runs.
    A run is done when it was evaluated at its ``train.steps`` under the config it has now: the
    SHA-256 of the resolved config is kept in ``<run>/sweep_run.json``. A run that was preempted
    (SIGTERM) is not evaluated: the sweep stops there (exit 0) and the next call resumes that run
    from its checkpoint. A run whose sweep entry was edited (anything but how it executes
    and its ``train.steps``: more steps resume it) trains again from scratch in
    ``<name>~<hash>``, and the previous run stays in ``<name>`` untouched (nothing is moved: a
    folder rename is not atomic on a gcsfuse-mounted bucket). A folder under a run's name that
    is not a run is refused, before anything trains.
    With ``--multihost`` (what ``launch_tpu.sh sweep`` runs on every worker of a slice), every
    process trains and evaluates each run together and process 0 writes the files.
  * ``tpu``: each run is handed to ``launch_tpu.sh train --foreground`` on an existing TPU VM
    (``--tpu-name``, ``--zone``, ``--project``), one after another (a slice trains one run at a
    time), with the run's workdir under the sweep's (a folder every worker sees, such as a bucket
    mounted by ``launch_tpu.sh setup --bucket``). It trains only; ``launch_tpu.sh sweep``
    on the same workdir then evaluates (finished runs resume at their last step and go straight
    to evaluation). ``launch_tpu.sh sweep`` alone does both, on the slice.

``--dry-run`` prints what would run (the runs' configs, or the launch commands) and runs nothing.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import importlib.util
import io
import json
import math
import pathlib
import re
import shlex
import subprocess
from collections.abc import Sequence
from typing import Any

from fewshot_jax import config as config_lib
from fewshot_jax import config_checks
from fewshot_jax.train import resume
from fewshot_jax.atomic_files import atomic_path, filesystem_path, write_text

SWEEPS = config_lib.EXPERIMENTS / "sweeps"
LAUNCHER = config_lib.REPO_ROOT / "launch_tpu.sh"
_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")  # a folder name; no ".", "..", dotfiles


@dataclasses.dataclass(frozen=True)
class RunSpec:
  name: str
  config: str
  overrides: tuple[str, ...] = ()


def load_sweep(spec: str) -> list[RunSpec]:
  """Imports ``experiments/sweeps/NAME.py`` (or a path) and validates its runs.

  Raises:
    FileNotFoundError: no such sweep.
    ValueError: a run without a usable name or config, or two runs with one name.
  """
  name, _, arg = spec.partition(":")
  path = pathlib.Path(name)
  if not (path.suffix == ".py" and path.is_file()):
    path = SWEEPS / f"{name}.py"
  if not path.is_file():
    known = sorted(p.stem for p in SWEEPS.glob("*.py"))
    raise FileNotFoundError(f"sweep {name!r}: no {path} (sweeps: {known})")
  module_spec = importlib.util.spec_from_file_location(f"sweep_{path.stem}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  runs = []
  for i, entry in enumerate(module.get_sweep(arg or None)):
    run_name = entry.get("name", "")
    if not _NAME.match(run_name):
      raise ValueError(f"{path}: run {i} has name {run_name!r}; expected letters, digits, _ . - "
                       "(not starting with '.')")
    if not entry.get("config"):
      raise ValueError(f"{path}: run {run_name!r} has no config")
    runs.append(RunSpec(run_name, entry["config"], tuple(entry.get("overrides", ()))))
  names = [r.name for r in runs]
  duplicates = sorted({n for n in names if names.count(n) > 1})
  if duplicates:
    raise ValueError(f"{path}: run names {duplicates} appear more than once")
  # Two runs that would train the same model waste a training each (hours on a TPU).
  seen: dict[str, str] = {}
  for r in runs:
    key = config_lib.to_json(run_config(r))
    if key in seen:
      raise ValueError(f"{path}: runs {seen[key]!r} and {r.name!r} have the same config")
    seen[key] = r.name
  return runs


def run_config(run: RunSpec, extra: Sequence[str] = ()):
  """The run's full config: its config file, its overrides, then the sweep-wide ``extra``."""
  return config_lib.apply_overrides(config_lib.load_config(run.config),
                                    list(run.overrides) + list(extra))


MARKER = "sweep_run.json"  # in each run's folder: which config it trains, as a hash
# What an entry's run may change and stay the same run: how it executes, and its steps (more steps
# resume it, and it is evaluated again at the new count). Any other change is another run.
# The eval and finetune sections only change how a trained model is evaluated: a change there
# evaluates again (``_evaluation_hash``), without training.
_SAME_RUN_IGNORES = resume.EXECUTION + ("train.steps", "train.epochs", "eval.", "finetune.")


def config_hash(cfg) -> str:
  """SHA-256 of what the run computes (``resume.defining_fields``): a folder holds an entry's run
  only while this matches, so an ablation's edited learning rate never reuses the old model."""
  fields = resume.defining_fields(cfg.to_dict(), _SAME_RUN_IGNORES)
  return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def _read_json(path: pathlib.Path) -> Any:
  try:
    return json.loads(path.read_text())
  except (OSError, UnicodeDecodeError, json.JSONDecodeError):
    return None


def _stored_hash(rundir: pathlib.Path) -> str | None:
  """The config hash of the run in ``rundir``: from the sweep's marker or, for a run trained
  without one (the TPU runner, an older version), from the config.json that training writes."""
  marker = _read_json(rundir / MARKER)
  if isinstance(marker, dict) and isinstance(marker.get("config_sha256"), str):
    return marker["config_sha256"]
  saved = _read_json(rundir / "config.json")
  if isinstance(saved, dict) and "model" in saved and "train" in saved:
    return config_hash(config_lib.from_json_dict(saved))
  return None


def _state(rundir: pathlib.Path, digest: str) -> str:
  """``new``, ``same`` (this config's run, finished or not) or ``edited`` (another config's).

  Raises:
    ValueError: ``rundir`` is a file, or a folder with files that is not a run.
  """
  if not rundir.exists():
    return "new"
  if not rundir.is_dir():
    raise ValueError(f"{rundir}: a file where the sweep's run folder goes; move it away")
  stored = _stored_hash(rundir)
  if stored is None:
    if any(rundir.iterdir()):
      raise ValueError(f"{rundir}: holds files but is not a run of this sweep (no {MARKER} and "
                       "no run config.json); move it away or rename the sweep's run")
    return "new"
  return "same" if stored == digest else "edited"


def run_dir(workdir: pathlib.Path, name: str, digest: str) -> pathlib.Path:
  """Where the entry ``name`` with config hash ``digest`` trains: ``<name>``, unless that folder
  holds the run of an earlier version of the entry, which stays where it is (nothing is moved:
  a folder rename is not atomic on a gcsfuse-mounted bucket); then ``<name>~<hash>``. Editing
  the entry back finds the first run in ``<name>`` again. ``~`` is not allowed in run names."""
  primary = workdir / name
  if _state(primary, digest) != "edited":
    return primary
  return workdir / f"{name}~{digest[:12]}"


def _evaluation_hash(cfg, settings: Any) -> str:
  """SHA-256 of what an evaluation depends on besides the model: the config's ``eval`` and
  ``finetune`` sections and the command's evaluation options (face metrics, CSIM embedder, FID)."""
  data = {"eval": cfg.eval.to_dict(), "finetune": cfg.finetune.to_dict(),
          "settings": {k: repr(v) for k, v in sorted(dataclasses.asdict(settings).items())}}
  return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def _done(rundir: pathlib.Path, digest: str, steps: int, evaluation: str | None = None) -> bool:
  """Evaluated at its ``steps`` under the config whose hash is ``digest`` and, when
  ``evaluation`` is given, with the evaluation settings of that hash (so asking a finished sweep
  for another embedder or more shots evaluates again, without training)."""
  if not rundir.is_dir() or _stored_hash(rundir) != digest:
    return False
  ev = _read_json(rundir / "eval" / "eval.json")
  if not (isinstance(ev, dict) and ev.get("step") == steps):
    return False
  if evaluation is None:
    return True
  marker = _read_json(rundir / MARKER)
  return isinstance(marker, dict) and marker.get("evaluated") == {"step": steps,
                                                                  "sha256": evaluation}


def _steps(rundir: pathlib.Path, cfg) -> int | None:
  """The steps the entry's run trains for: ``train.steps``, or with ``train.epochs`` the count
  training derived from the data's size and recorded in the run's config.json (None before the
  run has started: then it is not done)."""
  if float(cfg.train.get("epochs", 0.0)) <= 0:
    return int(cfg.train.steps)
  saved = _read_json(rundir / "config.json")
  try:
    return int(saved["train"]["steps"])
  except (TypeError, KeyError, ValueError):
    return None


def _record_evaluation(rundir: pathlib.Path, steps: int, evaluation: str) -> None:
  marker = _read_json(rundir / MARKER)
  marker["evaluated"] = {"step": steps, "sha256": evaluation}
  write_text(rundir / MARKER, json.dumps(marker, indent=2) + "\n")


def _claim(rundir: pathlib.Path, r: RunSpec, extra: Sequence[str], digest: str) -> None:
  """Marks ``rundir`` as this entry's run (once; the hash ignores what may change in it)."""
  if _state(rundir, digest) == "edited":  # run_dir chose it: only a race could get here
    raise ValueError(f"{rundir}: holds another config's run")
  if _read_json(rundir / MARKER) is None:
    rundir.mkdir(parents=True, exist_ok=True)
    write_text(rundir / MARKER, json.dumps({
        "name": r.name, "config": r.config, "overrides": list(r.overrides),
        "extra_overrides": list(extra), "config_sha256": digest}, indent=2) + "\n")


def _sync(name: str) -> None:
  """All processes wait here (multi-host: process 0 moved folders on the shared workdir)."""
  import jax  # pylint: disable=g-import-not-at-top

  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def run_local(runs: Sequence[RunSpec], workdir: str | pathlib.Path, extra: Sequence[str] = (),
              face_metrics: bool = False, fid_weights: str | None = None,
              dry_run: bool = False, csim_embedder: str = "dlib",
              arcface_weights: str | None = None) -> list[dict[str, Any]]:
  """Trains and evaluates each run in turn (skipping finished ones); returns the results rows,
  or ``[]`` when a run was preempted (the sweep stops; calling it again resumes that run).

  Raises:
    ValueError: a config does not load, or a run's folder holds something that is not a run
      (checked for every run before anything trains).
  """
  workdir = filesystem_path(workdir, "sweep workdir")
  configs = [run_config(r, extra) for r in runs]  # every config is checked before anything runs
  for r, cfg in zip(runs, configs):
    try:
      config_checks.validate(cfg, check_files=not dry_run)
    except ValueError as e:
      raise ValueError(f"sweep run {r.name!r}: {e}") from e
  digests = [config_hash(cfg) for cfg in configs]
  rundirs = [run_dir(workdir, r.name, d) for r, d in zip(runs, digests)]
  states = [_state(p, d) for p, d in zip(rundirs, digests)]
  if dry_run:
    for r, cfg, d, rundir, state in zip(runs, configs, digests, rundirs, states):
      edited = rundir.name != r.name
      state = ("done" if _done(rundir, d, _steps(rundir, cfg)) else
               "entry edited: to run again" if edited and state == "new" else
               {"new": "to run", "same": "to resume"}[state])
      print(f"{r.name}: {r.config} {' '.join(r.overrides + tuple(extra))} "
            f"({cfg.train.steps} steps, {state}) -> {rundir}")
    return []
  import jax  # pylint: disable=g-import-not-at-top

  from fewshot_jax.data.sources import heldout_arrays, train_sources  # pylint: disable=g-import-not-at-top
  from fewshot_jax.evaluation import report  # pylint: disable=g-import-not-at-top
  from fewshot_jax.inference.run import load_run  # pylint: disable=g-import-not-at-top
  from fewshot_jax.train.loop import train  # pylint: disable=g-import-not-at-top

  # Multi-host (launch_tpu.sh sweep): every process trains and evaluates each run together;
  # process 0 writes the evaluation and the results.
  lead = jax.process_index() == 0
  for i, (r, cfg, digest, rundir) in enumerate(zip(runs, configs, digests, rundirs)):
    head = f"sweep {i + 1}/{len(runs)} {r.name}"
    if rundir.name != r.name:
      print(f"{head}: entry edited since {workdir / r.name} was trained; that run stays, this "
            f"one trains in {rundir}", flush=True)
    if lead:
      _claim(rundir, r, extra, digest)
    _sync(f"sweep claim {r.name}")
    settings = report.EvalSettings(tuple(cfg.eval.shots), ("ff", "ft"), face_metrics,
                                   fid_weights=fid_weights, csim_embedder=csim_embedder,
                                   arcface_weights=arcface_weights)
    evaluation = _evaluation_hash(cfg, settings)
    if _done(rundir, digest, _steps(rundir, cfg), evaluation):
      print(f"{head}: done, skipped", flush=True)
      continue
    print(f"{head}: {r.config} {' '.join(r.overrides)}", flush=True)
    source, held = train_sources(cfg)
    if held is None:
      raise ValueError(f"run {r.name}: its config has no held-out videos to evaluate on "
                       "(data.num_eval_videos = 0, or no data.eval_split in the shards)")
    result = train(cfg, rundir, source, eval_source=held)
    step = int(jax.device_get(result.state.step))
    if result.preempted:
      print(f"{head}: preempted at step {step} of {result.config.train.steps}; the sweep stops "
            "here and resumes this run when it is run again", flush=True)
      return []
    if step != result.config.train.steps:
      raise ValueError(f"{rundir}: its checkpoint is at step {step}, not train.steps = "
                       f"{result.config.train.steps}; it was trained outside this sweep entry")
    frames, points = heldout_arrays(held)
    report.evaluate(load_run(rundir), frames, points, settings, rundir / "eval",
                    data_description=f"{cfg.data.source} held-out videos", write=lead)
    if lead:
      _record_evaluation(rundir, step, evaluation)
  return collect(runs, workdir, extra) if lead else []


def launch_commands(runs: Sequence[RunSpec], workdir: str, tpu: dict[str, str],
                    extra: Sequence[str] = ()) -> list[list[str]]:
  """The ``launch_tpu.sh train`` command of each run."""
  for key in ("name", "zone", "project"):
    if not tpu.get(key):
      raise ValueError(f"--runner tpu needs --tpu-{key}" if key == "name" else
                       f"--runner tpu needs --{key}")
  for r in runs:  # fail here, not on the TPU after hours of earlier runs
    try:
      config_checks.validate(run_config(r, extra), check_files=False)  # files are the VM's
    except ValueError as e:
      raise ValueError(f"sweep run {r.name!r}: {e}") from e
  commands = []
  for r in runs:
    overrides = [o if o.startswith("--config.") else f"--config.{o}"
                 for o in list(r.overrides) + list(extra)]
    commands.append(["bash", str(LAUNCHER), "train", "--foreground", "--name", tpu["name"],
                     "--zone", tpu["zone"], "--project", tpu["project"], "--config", r.config,
                     "--workdir", f"{workdir.rstrip('/')}/{r.name}", "--", *overrides])
  return commands


def run_tpu(runs: Sequence[RunSpec], workdir: str, tpu: dict[str, str], extra: Sequence[str] = (),
            dry_run: bool = False) -> None:
  for command in launch_commands(runs, workdir, tpu, extra):
    if dry_run:
      print(shlex.join(command))
    else:
      subprocess.run(command, check=True)


# What the results table shows, per K: (method, metric).
_SHOWN = (("ff", "ssim"), ("ff", "psnr"), ("ff", "lpips"), ("ft", "ssim"), ("ft", "psnr"),
          ("ft", "lpips"))


def collect(runs: Sequence[RunSpec], workdir: pathlib.Path, extra: Sequence[str] = ()
            ) -> list[dict[str, Any]]:
  """Reads every finished run's eval.json (evaluated at its steps, under its current config);
  writes results.csv, results.md and results.png."""
  from fewshot_jax.evaluation.face_metrics import label_of  # pylint: disable=g-import-not-at-top

  rows = []
  for r in runs:
    cfg = run_config(r, extra)
    digest = config_hash(cfg)
    rundir = run_dir(workdir, r.name, digest)
    if not _done(rundir, digest, _steps(rundir, cfg)):
      continue
    path = rundir / "eval" / "eval.json"
    ev = json.loads(path.read_text())
    row: dict[str, Any] = {"run": r.name, "config": r.config,
                           "overrides": " ".join(r.overrides), "step": ev["step"],
                           "csim_embedder": label_of(ev.get("face_metrics")) or ""}
    header = ev.get("protocol") or {}  # what the numbers rest on (evaluation/report.py)
    row["train_variant"] = header.get("train_variant", cfg.train.variant)
    row["content_loss"] = header.get("content_loss", "unrecorded")
    for k, per_method in ev["results"].items():
      for method, values in per_method.items():
        for metric, value in values.items():
          row[f"{k}_{method}_{metric}"] = value
    rows.append(row)
  if not rows:
    return rows
  fields = list(dict.fromkeys(key for row in rows for key in row))
  buf = io.StringIO()
  writer = csv.DictWriter(buf, fieldnames=fields)
  writer.writeheader()
  writer.writerows(rows)
  write_text(workdir / "results.csv", buf.getvalue())
  ks = sorted({int(key.split("_")[0][1:]) for key in fields if re.match(r"^k\d+_", key)})
  head = [f"{m.upper()} {metric.upper()} K={k}" for k in ks for m, metric in _SHOWN]
  # CSIM columns are per embedder: runs evaluated with ArcFace and with dlib never share one.
  csim = [(label, m, k) for label in dict.fromkeys(row["csim_embedder"] for row in rows) if label
          for k in ks for m in ("ff", "ft")
          if any(row["csim_embedder"] == label and f"k{k}_{m}_csim" in row for row in rows)]
  head += [f"{m.upper()} {label} K={k}" for label, m, k in csim]
  lines = ["| run | steps | " + " | ".join(head) + " |", "|---|---|" + "---|" * len(head)]
  for row in rows:
    cells = []
    for k in ks:
      for m, metric in _SHOWN:
        v = row.get(f"k{k}_{m}_{metric}")
        cells.append("–" if v is None or not math.isfinite(v) else
                     (f"{v:.3f}" if metric in ("ssim", "lpips") else f"{v:.2f}"))
    for label, m, k in csim:
      v = row.get(f"k{k}_{m}_csim") if row["csim_embedder"] == label else None
      cells.append("–" if v is None or not math.isfinite(v) else f"{v:.3f}")
    lines.append(f"| {row['run']} | {row['step']} | " + " | ".join(cells) + " |")
  write_text(workdir / "results.md", "\n".join(lines) + "\n")
  _plot(rows, ks, workdir / "results.png")
  return rows


def _plot(rows: list[dict[str, Any]], ks: list[int], path: pathlib.Path) -> None:
  """SSIM of FF and FT per run, one panel per K."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, axes = plt.subplots(1, len(ks), figsize=(1.2 + 1.1 * len(rows) * len(ks), 3.2),
                           squeeze=False)
  names = [row["run"] for row in rows]
  for ax, k in zip(axes[0], ks):
    for j, method in enumerate(("ff", "ft")):
      values = [row.get(f"k{k}_{method}_ssim") for row in rows]
      values = [float("nan") if v is None else v for v in values]
      ax.bar([i + 0.4 * j for i in range(len(rows))], values, width=0.4, label=method.upper())
    ax.set_xticks([i + 0.2 for i in range(len(rows))], names, rotation=30, ha="right")
    finite = [v for row in rows for m in ("ff", "ft")
              if (v := row.get(f"k{k}_{m}_ssim")) is not None and math.isfinite(v)]
    if finite:  # ablations differ by hundredths: an axis from 0 would hide them
      ax.set_ylim(max(-1.0, min(finite) - 0.05), min(1.0, max(finite) + 0.02))
    ax.set_title(f"SSIM, K = {k} (axis not from 0)")
    ax.grid(axis="y", alpha=0.3)
  handles, labels = axes[0][0].get_legend_handles_labels()
  fig.legend(handles, labels, loc="upper center", ncols=2)  # above the panels, over no bar
  fig.tight_layout(rect=(0, 0, 1, 0.9))
  with atomic_path(path) as tmp:
    fig.savefig(tmp, format="png", dpi=110)
  plt.close(fig)
