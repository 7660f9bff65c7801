#!/usr/bin/env bash
# TernaryBERT on one device (model-zoo style): quantized distillation of the fine-tuned teacher.
#   bash scripts/run_standalone_ternary.sh                    # embedded default: MR, W2E2A8 (fine-tunes the
#                                                             # teacher first when its checkpoint is missing)
#   bash scripts/run_standalone_ternary.sh [CONFIG] [--key value ...]   e.g. --quant.bits.embedding 8
#   grep "The best acc" output/ternary_mr/w2e2a8/log.txt
set -euo pipefail
cd "$(dirname "$0")/.."
export GLOG_v="${GLOG_v:-3}"      # MindSpore's C++ log: errors only unless set (GLOG_v=2: warnings)
PYTHON=${PYTHON:-python}
CONFIG=configs/ternary_mr.yaml
if [ $# -gt 0 ] && [[ "$1" != --* ]]; then CONFIG=$1; shift; fi      # [CONFIG] is optional before --key value
if [ "$CONFIG" = "configs/ternary_mr.yaml" ]; then
  PYTHON=$PYTHON bash scripts/prepare_default.sh --teacher
elif [ "$CONFIG" = "configs/ternary_conll.yaml" ]; then           # CoNLL-2003: data/conll and its teacher
  PYTHON=$PYTHON bash scripts/prepare_conll.sh --teacher
fi
$PYTHON run_ternary.py --config_path "$CONFIG" "$@"
