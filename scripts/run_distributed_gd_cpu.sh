#!/usr/bin/env bash
# General distillation, data parallel on one CPU host through MindSpore's own cluster launcher (msrun, mccl
# backend, loopback). Each worker gets batch_size rows of every global batch (global batch = WORKER_NUM x
# batch_size); gradients are averaged once; rank 0 logs to log.txt and saves, rank k logs to log_rank<k>.txt.
#   bash scripts/run_distributed_gd_cpu.sh [WORKER_NUM] [CONFIG] [--key value ...]
#   e.g. WORKER_NUM=2 bash scripts/run_distributed_gd_cpu.sh 2 configs/gd.yaml --train.max_steps 50
# Env: WORKER_NUM (default 2), MASTER_PORT (default 8118), THREADS per worker (default 1), PYTHON.
# msrun's own logs (scheduler + one per worker): output/msrun_log/ (LOG_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
export GLOG_v="${GLOG_v:-3}"      # MindSpore's C++ log: errors only unless set (GLOG_v=2: warnings)
PYTHON=${PYTHON:-python}
WORKER_NUM=${WORKER_NUM:-2}
if [ $# -gt 0 ] && [[ "$1" =~ ^[0-9]+$ ]]; then WORKER_NUM=$1; shift; fi   # [WORKER_NUM] is optional
CONFIG=${DEFAULT_CONFIG:-configs/gd.yaml}
if [ $# -gt 0 ] && [[ "$1" != --* ]]; then CONFIG=$1; shift; fi
SCRIPT=${SCRIPT:-run_general_distill.py}
case "$WORKER_NUM" in ''|*[!0-9]*|0) echo "ERROR: WORKER_NUM '$WORKER_NUM': expected a positive integer" >&2; exit 2;; esac
[ -f "$CONFIG" ] || { echo "ERROR: CONFIG '$CONFIG' does not exist" >&2; exit 2; }
# msrun starts workers with the `python` found on PATH: make it ours
PY_BIN=$(command -v "$PYTHON")
export PATH="$(dirname "$PY_BIN"):$PATH"
LOG_DIR=${LOG_DIR:-output/msrun_log}
msrun --worker_num="$WORKER_NUM" --local_worker_num="$WORKER_NUM" --master_addr=127.0.0.1 \
      --master_port="${MASTER_PORT:-8118}" --log_dir="$LOG_DIR" --join=True --cluster_time_out=600 \
      "$SCRIPT" --config_path "$CONFIG" --distributed true --device_target CPU --threads "${THREADS:-1}" "$@"
