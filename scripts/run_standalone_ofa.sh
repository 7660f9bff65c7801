#!/usr/bin/env bash
# DynaBERT / OFA width adaptation on one device (model-zoo style).
#   bash scripts/run_standalone_ofa.sh                      # embedded default (MR): fine-tunes the teacher first
#                                                           # when output/td_mr/teacher/best.ckpt is missing
#   bash scripts/run_standalone_ofa.sh [CONFIG] [--key value ...]
#   grep "The best acc" output/ofa_mr/log.txt               # full width; per-width lines beside it
set -euo pipefail
cd "$(dirname "$0")/.."
export GLOG_v="${GLOG_v:-3}"      # MindSpore's C++ log: errors only unless set (GLOG_v=2: warnings)
PYTHON=${PYTHON:-python}
CONFIG=configs/ofa_mr.yaml
if [ $# -gt 0 ] && [[ "$1" != --* ]]; then CONFIG=$1; shift; fi      # [CONFIG] is optional before --key value
if [ "$CONFIG" = "configs/ofa_mr.yaml" ]; then
  PYTHON=$PYTHON bash scripts/prepare_default.sh --teacher
elif [ "$CONFIG" = "configs/ofa_conll.yaml" ]; then           # CoNLL-2003: data/conll and its teacher
  PYTHON=$PYTHON bash scripts/prepare_conll.sh --teacher
fi
$PYTHON run_ofa_width.py --config_path "$CONFIG" "$@"
