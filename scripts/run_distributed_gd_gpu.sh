#!/usr/bin/env bash
# General distillation, data parallel on GPUs (NCCL) through msrun. UNTESTED on GPU hardware (this project was
# verified on CPU with the mccl backend only; see docs/distributed.md).
#   bash scripts/run_distributed_gd_gpu.sh DEVICE_NUM EPOCH_SIZE [CONFIG] [--key value ...]
# Multi-node: run this on every node with MASTER_ADDR (node 0's address), NODE_RANK and WORKER_NUM
# (total workers) set; DEVICE_NUM is the number of GPUs on this node.
# mpirun variant (zoo style; msrun is preferred since MindSpore 2.3):
#   mpirun --allow-run-as-root -n DEVICE_NUM --output-filename log_output --merge-stderr-to-stdout \
#     python run_general_distill.py --device_target GPU --distributed true --train.epochs EPOCH_SIZE ...
#   (mpirun as a GPU launcher does NOT work for CPU/mccl: see docs/distributed.md)
set -euo pipefail
cd "$(dirname "$0")/.."
export GLOG_v="${GLOG_v:-3}"      # MindSpore's C++ log: errors only unless set (GLOG_v=2: warnings)
if [ $# -lt 2 ]; then
  echo "Usage: bash scripts/run_distributed_gd_gpu.sh DEVICE_NUM EPOCH_SIZE [CONFIG] [--key value ...]" >&2; exit 2
fi
DEVICE_NUM=$1; EPOCH_SIZE=$2; shift 2
CONFIG=${DEFAULT_CONFIG:-configs/gd.yaml}
if [ $# -gt 0 ] && [[ "$1" != --* ]]; then CONFIG=$1; shift; fi
SCRIPT=${SCRIPT:-run_general_distill.py}
EPOCH_KEY=${EPOCH_KEY:---train.epochs}
PYTHON=${PYTHON:-python}
PY_BIN=$(command -v "$PYTHON")
export PATH="$(dirname "$PY_BIN"):$PATH"
msrun --worker_num="${WORKER_NUM:-$DEVICE_NUM}" --local_worker_num="$DEVICE_NUM" \
      --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="${MASTER_PORT:-8118}" --node_rank="${NODE_RANK:-0}" \
      --log_dir="${LOG_DIR:-output/msrun_log}" --join=True --cluster_time_out=600 \
      "$SCRIPT" --config_path "$CONFIG" --distributed true --device_target GPU "$EPOCH_KEY" "$EPOCH_SIZE" "$@"
