#!/usr/bin/env bash
# Task distillation, data parallel on one CPU host (msrun, mccl, loopback): phase td1 then td2, or one phase.
#   bash scripts/run_distributed_td_cpu.sh [WORKER_NUM] [CONFIG] [--key value ...]
#   bash scripts/run_distributed_td_cpu.sh 2 configs/td_mr.yaml --phase finetune     # one phase only
#   grep "The best acc" output/td_mr/td2/log.txt
# Env: WORKER_NUM (default 2), MASTER_PORT (default 8118), THREADS per worker (default 1), PYTHON.
set -euo pipefail
cd "$(dirname "$0")/.."
export GLOG_v="${GLOG_v:-3}"      # MindSpore's C++ log: errors only unless set (GLOG_v=2: warnings)
export SCRIPT=run_task_distill.py DEFAULT_CONFIG=configs/td_mr.yaml
if printf '%s\n' "$@" | grep -qE -- "^--phase(=|$)"; then exec bash scripts/msrun_cpu.sh "$@"; fi
LOG_DIR=${LOG_DIR:-output/msrun_log}_td1 bash scripts/msrun_cpu.sh "$@" --phase td1
LOG_DIR=${LOG_DIR:-output/msrun_log}_td2 bash scripts/msrun_cpu.sh "$@" --phase td2
