#!/usr/bin/env bash
# Task distillation on one device (model-zoo style): phase 1 (td1) then phase 2 (td2), from a fine-tuned teacher
# and a GD student.
#   bash scripts/run_standalone_td.sh                      # embedded default (MR), fine-tunes the teacher and
#                                                          # runs GD first when their checkpoints are missing
#   bash scripts/run_standalone_td.sh configs/td_conll.yaml   # CoNLL-2003 NER: prepares data/conll and
#                                                          # fine-tunes its teacher first when missing
#   bash scripts/run_standalone_td.sh [CONFIG] [--key value ...]
#   grep "The best acc" output/td_mr/td2/log.txt
set -euo pipefail
cd "$(dirname "$0")/.."
export GLOG_v="${GLOG_v:-3}"      # MindSpore's C++ log: errors only unless set (GLOG_v=2: warnings)
PYTHON=${PYTHON:-python}
CONFIG=configs/td_mr.yaml
if [ $# -gt 0 ] && [[ "$1" != --* ]]; then CONFIG=$1; shift; fi      # [CONFIG] is optional before --key value
if [ "$CONFIG" = "configs/td_mr.yaml" ] && [ $# -eq 0 ]; then
  PYTHON=$PYTHON bash scripts/prepare_default.sh --teacher
  if [ ! -f output/gd/student.ckpt ]; then
    echo "GD student missing: running general distillation first"
    PYTHON=$PYTHON bash scripts/run_standalone_gd.sh
  fi
elif [ "$CONFIG" = "configs/td_conll.yaml" ] && [ $# -eq 0 ]; then
  PYTHON=$PYTHON bash scripts/prepare_conll.sh --teacher --student
fi
$PYTHON run_task_distill.py --config_path "$CONFIG" --phase td1 "$@"
$PYTHON run_task_distill.py --config_path "$CONFIG" --phase td2 "$@"
