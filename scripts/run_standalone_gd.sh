#!/usr/bin/env bash
# General distillation on one device (model-zoo style).
#   bash scripts/run_standalone_gd.sh                      # embedded default: MiniLM-L6 teacher, IMDB corpus
#   bash scripts/run_standalone_gd.sh [CONFIG] [--key value ...]
#   e.g. bash scripts/run_standalone_gd.sh configs/gd.yaml --data.dir data/wiki --train.epochs 3
# Output: output_dir from the config (default output/gd): log.txt, student.ckpt, config.json.
set -euo pipefail
cd "$(dirname "$0")/.."
export GLOG_v="${GLOG_v:-3}"      # MindSpore's C++ log: errors only unless set (GLOG_v=2: warnings)
PYTHON=${PYTHON:-python}
CONFIG=configs/gd.yaml
if [ $# -gt 0 ] && [[ "$1" != --* ]]; then CONFIG=$1; shift; fi      # [CONFIG] is optional before --key value
if [ "$CONFIG" = "configs/gd.yaml" ] && [ $# -eq 0 ]; then
  PYTHON=$PYTHON bash scripts/prepare_default.sh
fi
$PYTHON run_general_distill.py --config_path "$CONFIG" "$@"
