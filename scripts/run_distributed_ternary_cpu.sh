#!/usr/bin/env bash
# TernaryBERT, data parallel on one CPU host (msrun, mccl, loopback): global batch = WORKER_NUM x batch_size,
# gradients averaged once, rank 0 evaluates, saves and packs; rank k logs to log_rank<k>.txt.
#   bash scripts/run_distributed_ternary_cpu.sh [WORKER_NUM] [CONFIG] [--key value ...]
#   grep "The best acc" output/ternary_mr/w2e2a8/log.txt
# The 8-bit activation statistics (dynamic per-batch max, or EMA ranges) are gathered across ranks in training
# (quant.ActQuantizer(sync_ranks=True)), like SyncBatchNorm: every rank quantizes with the global batch's scale, so
# N workers at batch b match 1 worker at batch N*b (docs/distributed.md). Env: WORKER_NUM, MASTER_PORT, THREADS per
# worker, PYTHON, LOG_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
export GLOG_v="${GLOG_v:-3}"      # MindSpore's C++ log: errors only unless set (GLOG_v=2: warnings)
export SCRIPT=run_ternary.py DEFAULT_CONFIG=configs/ternary_mr.yaml
exec bash scripts/msrun_cpu.sh "$@"
