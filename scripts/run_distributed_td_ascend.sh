#!/usr/bin/env bash
# Task distillation (one phase per call) on Ascend with an HCCL rank table. UNTESTED on Ascend hardware.
#   bash scripts/run_distributed_td_ascend.sh DEVICE_NUM EPOCH_SIZE RANK_TABLE_FILE [CONFIG] --phase td1|td2|finetune [--key value ...]
# EPOCH_SIZE sets <phase>.epochs and clears <phase>.max_steps (td_mr.yaml caps td1 at 150 steps; a later
# --<phase>.max_steps N still caps the run). Same contract as run_distributed_gd_ascend.sh (LOG<rank_id>/, SERVER_ID).
set -euo pipefail
cd "$(dirname "$0")/.."
export GLOG_v="${GLOG_v:-3}"      # MindSpore's C++ log: errors only unless set (GLOG_v=2: warnings)
if [ $# -lt 3 ]; then
  echo "Usage: bash scripts/run_distributed_td_ascend.sh DEVICE_NUM EPOCH_SIZE RANK_TABLE_FILE [CONFIG] --phase PHASE [--key value ...]" >&2
  exit 2
fi
PHASE=$(printf '%s\n' "$@" | awk 'prev == "--phase" {print; exit} {prev = $0}')
case "$PHASE" in finetune|td1|td2) ;; *) echo "ERROR: --phase: expected finetune, td1 or td2" >&2; exit 2;; esac
SCRIPT=run_task_distill.py DEFAULT_CONFIG=configs/td_mr.yaml EPOCH_KEY="--$PHASE.epochs" STEPS_KEY="--$PHASE.max_steps" \
  exec bash scripts/run_distributed_gd_ascend.sh "$@"
