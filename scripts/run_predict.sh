#!/usr/bin/env bash
# Predict with an exported folder (export.py --export_dir) on raw text; paths are relative to where it is run.
#   bash scripts/run_predict.sh MODEL_DIR "text one" "text two"
#   bash scripts/run_predict.sh MODEL_DIR --text_file texts.txt [--output out.jsonl]
#   bash scripts/run_predict.sh MODEL_DIR --csv reviews.csv --text_column text [--text_b_column t2]
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: bash scripts/run_predict.sh MODEL_DIR TEXT... | --text_file F | --csv F --text_column C" >&2
  exit 2
fi
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
MODEL_DIR=$1; shift
export GLOG_v="${GLOG_v:-3}"      # MindSpore's C++ log: errors only unless set (GLOG_v=2: warnings)
PYTHON=${PYTHON:-python}
exec $PYTHON "$ROOT/run_predict.py" --model_dir "$MODEL_DIR" "$@"
