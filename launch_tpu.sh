#!/usr/bin/env bash
# launch_tpu.sh: run fewshot_jax jobs on a Cloud TPU VM.
# This version prints its interface; the gcloud-driven subcommands land with the evaluation/sweeps
# work (they will create, set up, train, sweep, report status, ssh and delete).
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: launch_tpu.sh SUBCOMMAND [options]

subcommands (planned interface):
  create   create the TPU VM (queued resource or spot)
  setup    install fewshot-jax[tpu] on every worker
  train    run `fewshot-jax train` on all workers (multi-host), resuming from --workdir
  sweep    hand each run of an experiments/sweeps file to `train`
  status   show the VM and job state
  ssh      open a shell on a worker
  delete   delete the VM

options:
  --name NAME --zone ZONE --accelerator TYPE (e.g. v5litepod-16) --project PROJECT
  --config CONFIG --workdir gs://BUCKET/PATH --dry-run

Not implemented yet in this build: it only prints this text.
USAGE
}

usage
case "${1:-}" in
  ""|-h|--help|help) exit 0 ;;
  *) echo "launch_tpu.sh: subcommand '$1' is not implemented yet" >&2; exit 2 ;;
esac
