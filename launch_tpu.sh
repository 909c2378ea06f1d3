#!/usr/bin/env bash
# Run fewshot_jax on a Cloud TPU VM slice: create it, install the project on every worker, train
# with multi-host initialisation, watch it, and delete it.
#
#   ./launch_tpu.sh create --name NAME --zone ZONE --accelerator v5litepod-16 --project PROJECT [--spot | --queued]
#   ./launch_tpu.sh setup  --name NAME --zone ZONE --project PROJECT [--bucket BUCKET]
#   ./launch_tpu.sh train  --name NAME --zone ZONE --project PROJECT --config paper_256 --workdir /gcs/BUCKET/runs/x [--foreground] [-- --config.train.steps=1000]
#   ./launch_tpu.sh sweep  --name NAME --zone ZONE --project PROJECT --sweep paper_ablations --workdir /gcs/BUCKET/sweeps/x [--foreground] [-- --fid-weights FILE]
#   ./launch_tpu.sh status --name NAME --zone ZONE --project PROJECT
#   ./launch_tpu.sh ssh    --name NAME --zone ZONE --project PROJECT [--worker 0]
#   ./launch_tpu.sh delete --name NAME --zone ZONE --project PROJECT [--queued]
#
# The workdir must be a folder every worker sees: `setup --bucket BUCKET` mounts gs://BUCKET at
# /gcs/BUCKET on every worker (gcsfuse), and Orbax's multi-host checkpoints need exactly that. The
# mount caches no metadata, so each worker sees the others' files at once, and checkpoints are
# committed by a commit_success.txt file, never a folder rename, which gcsfuse cannot do atomically
# on a flat bucket (docs/architecture.md, "Run directories").
# --dry-run prints every gcloud command instead of running it. `train` resumes by itself: the
# trainer picks up the workdir's latest checkpoint, so re-running `train` after a preemption (or
# after `create` brings a spot slice back) continues the run. Arguments after `--` are passed to
# `fewshot-jax train` (config overrides, --init), or to `fewshot-jax sweep`. `train --foreground`
# waits for the run to end, which is how `fewshot-jax sweep --runner tpu` runs a sweep's runs one
# after another on one slice. `sweep` runs a whole sweep (experiments/sweeps/NAME.py[:ARG]) on the
# slice: each run trained on all workers, then evaluated, then results.{csv,md,png} in the workdir;
# re-running it skips the finished runs and resumes the current one.
set -euo pipefail

usage() {
  # The comment block at the top of this file.
  sed -n '2,/^set -euo pipefail$/{/^#/p;}' "$0" | sed 's/^# \{0,1\}//'
  exit "${1:-2}"
}

die() {
  echo "launch_tpu.sh: $*" >&2
  exit 2
}

command="${1:-}"
[[ -n "$command" ]] || usage
shift

name="" zone="" project="" accelerator="" version="" config="" workdir="" bucket="" sweep=""
worker="0" remote_dir="fewshot_jax" spot=0 queued=0 dry_run=0 foreground=0
train_args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name|--zone|--project|--accelerator|--version|--config|--workdir|--worker|--remote-dir|--bucket|--sweep)
      [[ $# -ge 2 ]] || die "$1 needs a value" ;;&
    --name) name="$2"; shift 2 ;;
    --zone) zone="$2"; shift 2 ;;
    --project) project="$2"; shift 2 ;;
    --accelerator) accelerator="$2"; shift 2 ;;
    --version) version="$2"; shift 2 ;;
    --config) config="$2"; shift 2 ;;
    --workdir) workdir="$2"; shift 2 ;;
    --worker) worker="$2"; shift 2 ;;
    --remote-dir) remote_dir="$2"; shift 2 ;;
    --bucket) bucket="$2"; shift 2 ;;
    --sweep) sweep="$2"; shift 2 ;;
    --spot) spot=1; shift ;;
    --queued) queued=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    --foreground) foreground=1; shift ;;
    -h|--help) usage 0 ;;
    --) shift; train_args=("$@"); break ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done

require() {
  local flag value
  for flag in "$@"; do
    value="${flag#--}"
    value="${!value}"
    [[ -n "$value" ]] || die "$command needs --$flag"
  done
}

# Runs (or with --dry-run prints) one command, quoted so it can be pasted back into a shell.
run() {
  if [[ "$dry_run" == 1 ]]; then
    printf '%q ' "$@"
    printf '\n'
  else
    "$@"
  fi
}

# The runtime image for an accelerator family, unless --version says otherwise.
runtime_version() {
  if [[ -n "$version" ]]; then
    echo "$version"
    return
  fi
  case "$accelerator" in
    v6e-*) echo "v2-alpha-tpuv6e" ;;
    v5litepod-*) echo "v2-alpha-tpuv5-lite" ;;
    v5p-*) echo "v2-alpha-tpuv5" ;;
    *) echo "tpu-ubuntu2204-base" ;;
  esac
}

where=()
set_where() {
  require name zone project
  where=(--zone="$zone" --project="$project")
}

# One shell line run on every worker; `set -e` there too, so a failed step fails the launch.
on_all_workers() {
  run gcloud compute tpus tpu-vm ssh "$name" "${where[@]}" --worker=all --command="set -euo pipefail; $1"
}

case "$command" in
  create)
    require accelerator
    set_where
    spot_flag=()
    [[ "$spot" == 1 ]] && spot_flag=(--spot)
    if [[ "$queued" == 1 ]]; then
      run gcloud compute tpus queued-resources create "$name" --node-id="$name" "${where[@]}" \
        --accelerator-type="$accelerator" --runtime-version="$(runtime_version)" "${spot_flag[@]}"
    else
      run gcloud compute tpus tpu-vm create "$name" "${where[@]}" \
        --accelerator-type="$accelerator" --version="$(runtime_version)" "${spot_flag[@]}"
    fi
    ;;
  setup)
    set_where
    # Ship exactly the committed tree (no local runs/ or .venv), then install with the tpu extra.
    repo="$(cd "$(dirname "$0")" && pwd)"
    archive="$(mktemp -d -t fewshot_jax.XXXXXX)/fewshot_jax.tar.gz"
    trap 'rm -rf "$(dirname "$archive")"' EXIT
    run git -C "$repo" archive --format=tar.gz --prefix="$remote_dir/" -o "$archive" HEAD
    run gcloud compute tpus tpu-vm scp "$archive" "$name:fewshot_jax.tar.gz" "${where[@]}" --worker=all
    rd="$(printf '%q' "$remote_dir")"
    on_all_workers "rm -rf $rd && tar xzf fewshot_jax.tar.gz && cd $rd && python3 -m venv .venv && .venv/bin/pip install --quiet -e '.[tpu]'"
    if [[ -n "$bucket" ]]; then
      # gcsfuse from Google's apt repository (if missing), then the bucket at /gcs/BUCKET.
      b="$(printf '%q' "$bucket")"
      on_all_workers "command -v gcsfuse >/dev/null || { echo \"deb https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -c -s) main\" | sudo tee /etc/apt/sources.list.d/gcsfuse.list && curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo apt-key add - && sudo apt-get update -q && sudo apt-get install -y -q gcsfuse; }; sudo mkdir -p /gcs/$b && sudo chown \"\$USER\" /gcs/$b && { mountpoint -q /gcs/$b || gcsfuse --implicit-dirs --metadata-cache-ttl-secs 0 $b /gcs/$b; }"
    fi
    ;;
  train|sweep)
    if [[ "$command" == train ]]; then
      require config workdir
    else
      require sweep workdir
    fi
    set_where
    [[ "$workdir" != *://* ]] || die "--workdir $workdir: the trainer writes through the filesystem; mount the bucket (setup --bucket B puts gs://B at /gcs/B on every worker) and pass a /gcs/B/... path"
    [[ "$workdir" == /* ]] || die "--workdir $workdir: give an absolute path that every worker sees (e.g. /gcs/BUCKET/runs/x)"
    extra=""
    if [[ ${#train_args[@]} -gt 0 ]]; then
      extra=" $(printf '%q ' "${train_args[@]}")"
    fi
    if [[ "$command" == train ]]; then
      job_cmd=".venv/bin/fewshot-jax train --config $(printf '%q' "$config") --workdir $(printf '%q' "$workdir") --multihost${extra}"
    else
      job_cmd=".venv/bin/fewshot-jax sweep $(printf '%q' "$sweep") --workdir $(printf '%q' "$workdir") --runner local --multihost${extra}"
    fi
    if [[ "$foreground" == 1 ]]; then
      # Until the job ends (fewshot-jax sweep --runner tpu runs its runs one after another).
      on_all_workers "cd $(printf '%q' "$remote_dir") && $job_cmd 2>&1 | tee -a train.log"
    else
      # Detached, so the slice keeps working when this shell goes away; each worker logs to train.log.
      on_all_workers "cd $(printf '%q' "$remote_dir") && nohup $job_cmd >> train.log 2>&1 < /dev/null &"
    fi
    ;;
  status)
    set_where
    if [[ "$queued" == 1 ]]; then
      run gcloud compute tpus queued-resources describe "$name" "${where[@]}"
    fi
    run gcloud compute tpus tpu-vm describe "$name" "${where[@]}" --format="value(state,health,acceleratorType)"
    run gcloud compute tpus tpu-vm ssh "$name" "${where[@]}" --worker=0 --command="tail -n 5 $(printf '%q' "$remote_dir")/train.log"
    ;;
  ssh)
    set_where
    run gcloud compute tpus tpu-vm ssh "$name" "${where[@]}" --worker="$worker"
    ;;
  delete)
    set_where
    if [[ "$queued" == 1 ]]; then
      run gcloud compute tpus queued-resources delete "$name" "${where[@]}" --force --quiet
    else
      run gcloud compute tpus tpu-vm delete "$name" "${where[@]}" --quiet
    fi
    ;;
  -h|--help) usage 0 ;;
  *) die "unknown command '$command': expected create | setup | train | sweep | status | ssh | delete" ;;
esac
