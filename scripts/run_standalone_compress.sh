#!/usr/bin/env bash
# The compression pipeline on one device (model-zoo style): TinyBERT depth -> width -> TernaryBERT -> vocabulary
# pruning -> 2-bit ONNX, one stage after the other, each a normal run of its method.
#   bash scripts/run_standalone_compress.sh                   # embedded default: MR (fine-tunes the teacher and
#                                                             # runs general distillation first when missing)
#   bash scripts/run_standalone_compress.sh [CONFIG] [--key value ...]   e.g. --from_stage ternary
#   grep "The best acc" output/compress_mr/log.txt
set -euo pipefail
cd "$(dirname "$0")/.."
export GLOG_v="${GLOG_v:-3}"      # MindSpore's C++ log: errors only unless set (GLOG_v=2: warnings)
PYTHON=${PYTHON:-python}
CONFIG=configs/compress_mr.yaml
if [ $# -gt 0 ] && [[ "$1" != --* ]]; then CONFIG=$1; shift; fi      # [CONFIG] is optional before --key value
if [ "$CONFIG" = "configs/compress_mr.yaml" ]; then
  PYTHON=$PYTHON bash scripts/prepare_default.sh --teacher
  if [ ! -f output/gd/student.ckpt ]; then
    $PYTHON run_general_distill.py --config_path configs/gd.yaml
  fi
elif [ "$CONFIG" = "configs/compress_conll.yaml" ]; then       # CoNLL-2003: data/conll, its teacher, the GD student
  PYTHON=$PYTHON bash scripts/prepare_conll.sh --teacher --student
fi
$PYTHON run_compress.py --config_path "$CONFIG" "$@"
