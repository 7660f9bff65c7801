#!/usr/bin/env bash
# DynaBERT / OFA width supernet, data parallel on one CPU host (msrun, mccl, loopback): every rank computes the
# importance and takes rank 0's permutation, trains on its shard of every global batch (WORKER_NUM x batch_size);
# rank 0 evaluates every width, saves the per-width best sub-models and prints the table.
#   bash scripts/run_distributed_ofa_cpu.sh [WORKER_NUM] [CONFIG] [--key value ...]
#   grep "The best acc" output/ofa_mr/log.txt
# Env: WORKER_NUM, MASTER_PORT, THREADS per worker, PYTHON, LOG_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
export GLOG_v="${GLOG_v:-3}"      # MindSpore's C++ log: errors only unless set (GLOG_v=2: warnings)
export SCRIPT=run_ofa_width.py DEFAULT_CONFIG=configs/ofa_mr.yaml
exec bash scripts/msrun_cpu.sh "$@"
