#!/usr/bin/env bash
# General distillation on all 25,000 IMDB reviews at seq 128 as sentence pairs (the BERT pre-training layout),
# streamed from shards. Estimated time on this kind of machine: docs/results.md, bench:gd_corpus block (one epoch,
# many hours on 2 CPU cores).
#   bash scripts/run_gd_imdb_full.sh [--key value ...]       e.g. --train.max_steps 1000 --output_dir output/gd_full
# Env: PYTHON (default python), WORKERS (tokenizing processes, default 2), DATA (default data/imdb_gd_full).
# Output: data/imdb_gd_full/train-00000.tf_record ... + train_schema.json; output/gd_imdb_full (log.txt,
# student.ckpt, config.json). --resume true continues a run that was stopped, mid-corpus.
set -euo pipefail
cd "$(dirname "$0")/.."
export GLOG_v="${GLOG_v:-3}"      # MindSpore's C++ log: errors only unless set (GLOG_v=2: warnings)
PYTHON=${PYTHON:-python}
WORKERS=${WORKERS:-2}
DATA=${DATA:-data/imdb_gd_full}
PYTHON=$PYTHON bash scripts/prepare_default.sh          # the teacher (output/minilm)
if [ ! -f "$DATA/train_schema.json" ]; then
  $PYTHON tools/prepare_data.py --task gd --source imdb --max_seq_length 128 --random_next 0.5 \
    --workers "$WORKERS" --rows_per_shard 4096 --output_dir "$DATA"
fi
$PYTHON run_general_distill.py --config_path configs/gd.yaml --data.dir "$DATA" --data.in_memory false \
  --data.max_seq_length 128 --data.length_buckets 128 --output_dir output/gd_imdb_full "$@"
