"""Sweeps: loading, the local runner end to end (with resume), and the TPU runner's launches."""

from __future__ import annotations

import csv
import json
import os
import pathlib
import subprocess
import sys

import pytest

from conftest import TINY_OVERRIDES
from fewshot_jax import cli, sweep

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
      sweep.run_config(r)  # config file + overrides apply
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


def test_local_sweep_trains_evaluates_collects_and_resumes(tmp_path, capsys):
  spec = tmp_path / "tiny.py"
  spec.write_text(TINY_SWEEP)
  workdir = tmp_path / "sweep"
  assert cli.main(["sweep", str(spec), "--workdir", str(workdir)]) == 0
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
