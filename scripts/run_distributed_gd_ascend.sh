#!/usr/bin/env bash
# General distillation on Ascend with an HCCL rank table (model-zoo contract). UNTESTED on Ascend hardware: the
# rank-table validation and the rank derivation are tested on CPU (tests/test_distributed.py).
#   bash scripts/run_distributed_gd_ascend.sh DEVICE_NUM EPOCH_SIZE RANK_TABLE_FILE [CONFIG] [--key value ...]
# Multi-node: run it on every server of the table; this server is found by its address (hostname -I, or set
# SERVER_ID to its server_id); RANK_ID comes from the table's rank_id, not device_id % device_num.
# Each rank's stdout/stderr goes to output/LOG<rank_id>/log.txt (LOG_ROOT); it runs under taskset with
# cores/DEVICE_NUM cores; the run logs (log.txt on rank 0, log_rank<k>.txt) and checkpoints go to the config's
# output_dir as usual.
# Tip (zoo README): export HCCL_CONNECT_TIMEOUT=600 against "connect p2p timeout".
set -euo pipefail
cd "$(dirname "$0")/.."
export GLOG_v="${GLOG_v:-3}"      # MindSpore's C++ log: errors only unless set (GLOG_v=2: warnings)
if [ $# -lt 3 ]; then
  echo "Usage: bash scripts/run_distributed_gd_ascend.sh DEVICE_NUM EPOCH_SIZE RANK_TABLE_FILE [CONFIG] [--key value ...]" >&2
  exit 2
fi
DEVICE_NUM=$1; EPOCH_SIZE=$2; RANK_TABLE_FILE=$(realpath -m "$3"); shift 3
CONFIG=${DEFAULT_CONFIG:-configs/gd.yaml}
if [ $# -gt 0 ] && [[ "$1" != --* ]]; then CONFIG=$1; shift; fi
SCRIPT=${SCRIPT:-run_general_distill.py}
EPOCH_KEY=${EPOCH_KEY:---train.epochs}
STEPS_KEY=${STEPS_KEY:---train.max_steps}    # EPOCH_SIZE whole epochs: the config's step cap is cleared (a later
                                             # --train.max_steps N in the arguments still caps them)
PYTHON=${PYTHON:-python}
case "$DEVICE_NUM" in ''|*[!0-9]*|0) echo "ERROR: DEVICE_NUM '$DEVICE_NUM': expected a positive integer" >&2; exit 2;; esac
# validates the table (one ERROR line, exit 2) and prints RANK_SIZE then "<rank_id> <device_id>" per local device
PLAN=$($PYTHON -m src.rank_table "$RANK_TABLE_FILE" --device_num "$DEVICE_NUM" \
       --host_ips "${SERVER_ID:-} $(hostname -I 2>/dev/null || true)")
export RANK_TABLE_FILE
export RANK_SIZE=$(echo "$PLAN" | awk 'NR==1 {print $2}')
export DEPLOY_MODE=0 GE_USE_STATIC_MEMORY=1
CORES=$(nproc); PER=$(( CORES / DEVICE_NUM > 0 ? CORES / DEVICE_NUM : 1 ))
i=0
while read -r RANK DEVICE; do
  LOG="${LOG_ROOT:-output}/LOG$RANK"
  mkdir -p "$LOG"
  START=$(( (i * PER) % CORES )); END=$(( START + PER - 1 ))
  echo "rank $RANK on device $DEVICE (cores $START-$END), RANK_SIZE $RANK_SIZE, log $LOG/log.txt"
  DEVICE_ID=$DEVICE RANK_ID=$RANK taskset -c "$START-$END" \
     $PYTHON "$SCRIPT" --config_path "$CONFIG" --device_target Ascend --distributed true \
     "$EPOCH_KEY" "$EPOCH_SIZE" "$STEPS_KEY" 0 "$@" > "$LOG/log.txt" 2>&1 &
  i=$((i + 1))
done < <(echo "$PLAN" | tail -n +2)
wait
