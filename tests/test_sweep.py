"""Sweeps: loading, the local runner end to end (with resume), and the TPU runner's launches."""

from __future__ import annotations

import csv
import json
import os
import pathlib
import signal
import subprocess
import sys

import pytest

from conftest import TINY_OVERRIDES
from fewshot_jax import cli, config_checks, sweep
from fewshot_jax.train import loop

TINY_SWEEP = f'''
TINY = {TINY_OVERRIDES!r} + ["train.steps=2", "train.checkpoint_every=2", "data.num_train_videos=4",
    "data.num_eval_videos=2", "data.frames_per_video=8", "eval.shots=(1,)",
    "eval.targets_per_video=2", "finetune.steps=2"]

def get_sweep(arg=None):
  # Two runs with the same shapes, so the second one's programs come from the compile cache.
  return [{{"name": "baseline", "config": "demo_64", "overrides": TINY}},
          {{"name": "seed1", "config": "demo_64", "overrides": TINY + ["seed=1"]}}]
'''


def test_every_shipped_sweep_loads_and_its_configs_build():
  for path in sorted(sweep.SWEEPS.glob("*.py")):
    runs = sweep.load_sweep(str(path))
    assert runs and len({r.name for r in runs}) == len(runs)
    for r in runs:
      config_checks.validate(sweep.run_config(r))  # config file + overrides apply, and are valid
  names = [r.name for r in sweep.load_sweep("paper_ablations")]
  assert names == ["baseline", "ff", "match_x8", "no_fm", "no_attention", "d_steps_2",
                   "k_train_1", "k_train_8"]  # ablation_64: one D step and K = 4
  on_paper = [r.name for r in sweep.load_sweep("paper_ablations:paper_256")]
  assert "d_steps_1" in on_paper and "d_steps_2" not in on_paper and "k_train_8" not in on_paper
  no_attention = sweep.run_config(sweep.RunSpec("x", "ablations/no_attention.py:paper_256"))
  assert no_attention.model.g_attn_up_res == () and no_attention.model.image_size == 256


def test_bad_sweeps_are_refused_with_the_reason(tmp_path):
  bad = tmp_path / "bad.py"
  bad.write_text("def get_sweep(arg=None):\n  return [{'name': 'a', 'config': 'demo_64'}, "
                 "{'name': 'a', 'config': 'demo_64'}]\n")
  with pytest.raises(ValueError, match=r"run names \['a'\] appear more than once"):
    sweep.load_sweep(str(bad))
  bad.write_text("def get_sweep(arg=None):\n  return [{'name': 'a b', 'config': 'demo_64'}]\n")
  with pytest.raises(ValueError, match="run 0 has name 'a b'"):
    sweep.load_sweep(str(bad))
  bad.write_text("def get_sweep(arg=None):\n  return [{'name': '..', 'config': 'demo_64'}]\n")
  with pytest.raises(ValueError, match="run 0 has name '..'"):
    sweep.load_sweep(str(bad))
  bad.write_text("def get_sweep(arg=None):\n  return [{'name': 'a', 'config': 'demo_64'}, "
                 "{'name': 'b', 'config': 'ablations/d_steps_1.py:demo_64'}]\n")
  with pytest.raises(ValueError, match="runs 'a' and 'b' have the same config"):
    sweep.load_sweep(str(bad))
  with pytest.raises(FileNotFoundError, match="sweeps: .*paper_ablations"):
    sweep.load_sweep("no_such_sweep")
  # A bad field in any run is named with its run before any run trains.
  bad.write_text("def get_sweep(arg=None):\n  return [{'name': 'a', 'config': 'demo_64'}, "
                 "{'name': 'b', 'config': 'demo_64', 'overrides': ['train.log_every=-1']}]\n")
  with pytest.raises(ValueError, match="sweep run 'b': config: train.log_every=-1: expected"):
    sweep.run_local(sweep.load_sweep(str(bad)), tmp_path / "sweep")
  assert not (tmp_path / "sweep" / "a").exists()


def test_local_sweep_trains_evaluates_collects_and_resumes(tmp_path, capsys, monkeypatch):
  spec = tmp_path / "tiny.py"
  spec.write_text(TINY_SWEEP)
  workdir = tmp_path / "sweep"
  # A preemption notice (a real SIGTERM, caught by the train loop) during the first run: its
  # checkpoint is saved, it is not evaluated, and the sweep stops before the second run.
  start_preemption = loop._Preemption.__init__

  def sigterm_at_once(self):
    start_preemption(self)
    os.kill(os.getpid(), signal.SIGTERM)

  monkeypatch.setattr(loop._Preemption, "__init__", sigterm_at_once)
  assert cli.main(["sweep", str(spec), "--workdir", str(workdir)]) == 0
  assert "baseline: preempted at step 1 of 2; the sweep stops here" in capsys.readouterr().out
  summary = json.loads((workdir / "baseline" / "train_summary.json").read_text())
  assert summary["preempted"] and summary["steps"] == 1
  assert not (workdir / "baseline" / "eval").exists() and not (workdir / "seed1").exists()
  assert not (workdir / "results.csv").exists()
  monkeypatch.undo()
  # The next call resumes the preempted run at step 1, then runs the second one.
  assert cli.main(["sweep", str(spec), "--workdir", str(workdir)]) == 0
  assert json.loads((workdir / "baseline" / "train_summary.json").read_text())["resumed_from"] == 1
  for name in ("baseline", "seed1"):
    report = json.loads((workdir / name / "eval" / "eval.json").read_text())
    assert report["step"] == 2 and set(report["results"]) == {"k1"}
    assert (workdir / name / "eval" / "table.md").is_file()
  rows = list(csv.DictReader((workdir / "results.csv").open()))
  assert [r["run"] for r in rows] == ["baseline", "seed1"]
  assert all(-1 <= float(r["k1_ft_ssim"]) <= 1 for r in rows)
  assert rows[0]["k1_ff_ssim"] != rows[1]["k1_ff_ssim"]  # two different models
  table = (workdir / "results.md").read_text().splitlines()
  assert table[0].startswith("| run | steps | FF SSIM K=1") and len(table) == 4
  assert (workdir / "results.png").stat().st_size > 5000
  # A second call finds both runs done and only collects.
  capsys.readouterr()
  assert cli.main(["sweep", str(spec), "--workdir", str(workdir)]) == 0
  assert capsys.readouterr().out.count("done, skipped") == 2
  # A run trained without the sweep's marker (by the TPU runner) is recognised by its config.json.
  (workdir / "baseline" / sweep.MARKER).unlink()
  assert cli.main(["sweep", str(spec), "--workdir", str(workdir), "--dry-run"]) == 0
  assert capsys.readouterr().out.count("(2 steps, done)") == 2

  # More steps, or another way to execute, is the same run: it resumes (dry run: nothing trains).
  spec.write_text(TINY_SWEEP.replace('TINY + ["seed=1"]',
                                     'TINY + ["seed=1", "train.steps=3", "data.prefetch=3"]'))
  assert cli.main(["sweep", str(spec), "--workdir", str(workdir), "--dry-run"]) == 0
  assert f"(3 steps, to resume) -> {workdir / 'seed1'}" in capsys.readouterr().out
  # An edited entry is not done: it trains again in a new folder; the previous run stays whole.
  spec.write_text(TINY_SWEEP.replace('TINY + ["seed=1"]', 'TINY + ["seed=1", "train.lr_g=1e-4"]'))
  assert cli.main(["sweep", str(spec), "--workdir", str(workdir), "--dry-run"]) == 0
  out = capsys.readouterr().out
  assert "(2 steps, done)" in out and "(2 steps, entry edited: to run again)" in out
  assert [row["run"] for row in sweep.collect(sweep.load_sweep(str(spec)), workdir)] == ["baseline"]
  before = {p.relative_to(workdir): p.stat().st_mtime_ns for p in (workdir / "seed1").rglob("*")}
  assert cli.main(["sweep", str(spec), "--workdir", str(workdir)]) == 0
  out = capsys.readouterr().out
  (edited,) = workdir.glob("seed1~*")
  assert f"seed1: entry edited since {workdir / 'seed1'} was trained; that run stays" in out
  assert {p.relative_to(workdir): p.stat().st_mtime_ns
          for p in (workdir / "seed1").rglob("*")} == before  # untouched
  assert json.loads((edited / "train_summary.json").read_text())["resumed_from"] == 0
  assert json.loads((edited / "eval" / "eval.json").read_text())["step"] == 2
  # baseline lost its marker above, so which evaluation settings scored it is unknown: it is
  # evaluated again (its checkpoint is at its steps: nothing trains).
  assert out.count("done, skipped") == 0
  assert json.loads((workdir / "baseline" / "train_summary.json").read_text())["resumed_from"] == 2
  assert [r["run"] for r in csv.DictReader((workdir / "results.csv").open())] == ["baseline",
                                                                                   "seed1"]
  # Edited back: the first seed1 run is found where it always was, done, and nothing trains.
  spec.write_text(TINY_SWEEP)
  monkeypatch.setattr(loop, "train", lambda *a, **k: pytest.fail("a finished run trained again"))
  assert cli.main(["sweep", str(spec), "--workdir", str(workdir)]) == 0
  assert capsys.readouterr().out.count("done, skipped") == 2


def test_a_folder_that_is_not_a_run_is_refused_before_anything_trains(tmp_path, capsys,
                                                                       monkeypatch):
  spec = tmp_path / "tiny.py"
  spec.write_text(TINY_SWEEP)
  workdir = tmp_path / "sweep"
  (workdir / "seed1").mkdir(parents=True)
  (workdir / "seed1" / "holiday.jpg").write_bytes(b"a user's photo")
  monkeypatch.setattr(loop, "train", lambda *a, **k: pytest.fail("trained"))
  for dry_run in ([], ["--dry-run"]):
    assert cli.main(["sweep", str(spec), "--workdir", str(workdir), *dry_run]) == 2
    assert capsys.readouterr().err.splitlines()[0] == (
        f"fewshot-jax sweep: error: {workdir / 'seed1'}: holds files but is not a run of this "
        "sweep (no sweep_run.json and no run config.json); move it away or rename the sweep's run")
  assert (workdir / "seed1" / "holiday.jpg").read_bytes() == b"a user's photo"
  assert not (workdir / "baseline").exists()
  (workdir / "seed1" / "holiday.jpg").rename(workdir / "photo")
  (workdir / "seed1").rmdir()
  (workdir / "photo").rename(workdir / "seed1")
  assert cli.main(["sweep", str(spec), "--workdir", str(workdir), "--dry-run"]) == 2
  assert "seed1: a file where the sweep's run folder goes" in capsys.readouterr().err


def test_tpu_runner_hands_each_run_to_launch_tpu_in_turn(tmp_path):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  log = tmp_path / "calls.jsonl"
  (bin_dir / "gcloud").write_text(f"#!{sys.executable}\nimport json, sys\n"
                                  f"open({str(log)!r}, 'a').write(json.dumps(sys.argv[1:]) + "
                                  "'\\n')\n")
  (bin_dir / "gcloud").chmod(0o755)
  env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
  subprocess.run([sys.executable, "-m", "fewshot_jax.cli", "sweep", "cpu_ablations:50",
                  "--workdir", "/gcs/bkt/abl", "--runner", "tpu", "--tpu-name", "t1", "--zone",
                  "z1", "--project", "p1"], env=env, check=True, capture_output=True)
  calls = [json.loads(line) for line in log.read_text().splitlines()]
  assert len(calls) == 4
  runs = []
  for call in calls:
    assert call[:5] == ["compute", "tpus", "tpu-vm", "ssh", "t1"] and "--worker=all" in call
    command = call[-1]
    assert "nohup" not in command and "tee -a train.log" in command  # one run after another
    assert "--multihost --config.train.steps=50" in command
    runs.append(command.split("--workdir ")[1].split()[0])
  assert runs == ["/gcs/bkt/abl/baseline", "/gcs/bkt/abl/no_fm", "/gcs/bkt/abl/no_attention",
                  "/gcs/bkt/abl/ff"]
  r = subprocess.run([sys.executable, "-m", "fewshot_jax.cli", "sweep", "cpu_ablations",
                      "--workdir", "/gcs/b", "--runner", "tpu"], env=env, capture_output=True,
                     text=True)
  assert r.returncode == 2 and "--runner tpu needs --tpu-name" in r.stderr
  with pytest.raises(ValueError, match="gs://b/x: a URL, not a folder; mount the bucket"):
    sweep.run_local(sweep.load_sweep("cpu_ablations"), "gs://b/x")
  # A bad field in any run is named before the first launch, not on the TPU hours later.
  with pytest.raises(ValueError, match="sweep run 'baseline': config: train.batch_size=0"):
    sweep.launch_commands(sweep.load_sweep("cpu_ablations"), "/gcs/b",
                          {"name": "t", "zone": "z", "project": "p"}, ["train.batch_size=0"])
