#!/usr/bin/env bash
# Data parallel on one CPU host through MindSpore's own cluster launcher (msrun, mccl backend, loopback), for any
# entry script; scripts/run_distributed_{gd,td,ternary,ofa}_cpu.sh set SCRIPT and DEFAULT_CONFIG and call it.
#   SCRIPT=run_ternary.py bash scripts/msrun_cpu.sh [WORKER_NUM] [CONFIG] [--key value ...]
# Each worker gets batch_size rows of every global batch (global batch = WORKER_NUM x batch_size); gradients are
# averaged once; rank 0 logs to log.txt and saves, rank k logs to log_rank<k>.txt.
# Env: SCRIPT (the entry script), DEFAULT_CONFIG (CONFIG when none is given), WORKER_NUM (default 2), MASTER_PORT
# (default 8118), THREADS per worker (default 1), PYTHON, LOG_DIR (msrun's own logs, default output/msrun_log).
set -euo pipefail
cd "$(dirname "$0")/.."
export GLOG_v="${GLOG_v:-3}"      # MindSpore's C++ log: errors only unless set (GLOG_v=2: warnings)
PYTHON=${PYTHON:-python}
WORKER_NUM=${WORKER_NUM:-2}
if [ $# -gt 0 ] && [[ "$1" =~ ^[0-9]+$ ]]; then WORKER_NUM=$1; shift; fi   # [WORKER_NUM] is optional
CONFIG=${DEFAULT_CONFIG:-}
if [ $# -gt 0 ] && [[ "$1" != --* ]]; then CONFIG=$1; shift; fi
SCRIPT=${SCRIPT:-}
[ -n "$SCRIPT" ] || { echo "ERROR: SCRIPT: set the entry script to launch, e.g. SCRIPT=run_ternary.py" >&2; exit 2; }
[ -f "$SCRIPT" ] || { echo "ERROR: SCRIPT '$SCRIPT' does not exist" >&2; exit 2; }
case "$WORKER_NUM" in ''|*[!0-9]*|0) echo "ERROR: WORKER_NUM '$WORKER_NUM': expected a positive integer" >&2; exit 2;; esac
[ -n "$CONFIG" ] || { echo "ERROR: CONFIG: give the config file (or set DEFAULT_CONFIG)" >&2; exit 2; }
[ -f "$CONFIG" ] || { echo "ERROR: CONFIG '$CONFIG' does not exist" >&2; exit 2; }
# msrun starts workers with the `python` found on PATH: make it ours
PY_BIN=$(command -v "$PYTHON") || { echo "ERROR: PYTHON '$PYTHON' not found (set PYTHON to the python that has MindSpore)" >&2; exit 2; }
export PATH="$(dirname "$PY_BIN"):$PATH"
LOG_DIR=${LOG_DIR:-output/msrun_log}
msrun --worker_num="$WORKER_NUM" --local_worker_num="$WORKER_NUM" --master_addr=127.0.0.1 \
      --master_port="${MASTER_PORT:-8118}" --log_dir="$LOG_DIR" --join=True --cluster_time_out=600 \
      "$SCRIPT" --config_path "$CONFIG" --distributed true --device_target CPU --threads "${THREADS:-1}" "$@"
