#!/usr/bin/env bash
# The main job on a fresh machine: set up .venv, bring up a local Ray cluster of fake TPU v4
# hosts (2 pods x 2 hosts x 4 chips), run jobs/local-cpu.yaml on it, print the summary, and
# stop the cluster again if this script started it. Extra arguments go to `palm run` (--verbose
# prints Ray's and JAX's worker lines too).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
started=0
if ! palm cluster status >/dev/null 2>&1; then
  palm cluster up --pods 2 --hosts-per-pod 2 --chips-per-host 4
  started=1
fi
trap '[ "$started" = 1 ] && palm cluster down' EXIT
# A finished earlier demo would just resume at its last step: keep it aside, start afresh.
if [ -e runs/local-cpu ]; then mv runs/local-cpu "runs/local-cpu.$(date +%Y%m%d-%H%M%S)"; fi
palm run jobs/local-cpu.yaml "$@"
echo "run folder: runs/local-cpu   (palm status runs/local-cpu; every worker line: runs/local-cpu/logs/workers.log; W&B offline files: runs/local-cpu/wandb)"
