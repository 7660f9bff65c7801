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
export SCRIPT=run_general_distill.py DEFAULT_CONFIG=configs/gd.yaml
exec bash scripts/msrun_cpu.sh "$@"
