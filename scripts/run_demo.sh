#!/usr/bin/env bash
# The embedded default, end to end on CPU (the README's first command runs this through `make demo`):
#   1. convert all-MiniLM-L6-v2 from its package, build MR records and an IMDB GD corpus (scripts/prepare_default.sh)
#   2. fine-tune the teacher on MR                         -> output/td_mr/teacher
#   3. general distillation of a 3-layer student on IMDB   -> output/gd
#   4. the compression pipeline (run_compress.py, configs/compress_mr.yaml) -> output/compress_mr:
#      depth (TinyBERT TD phases 1 + 2) -> width 0.5 -> TernaryBERT W2E2A8 -> vocabulary pruning -> 2-bit ONNX
#   5. the stage table and "The best acc is X" of the exported model (tools/demo_report.py)
set -euo pipefail
cd "$(dirname "$0")/.."
export GLOG_v="${GLOG_v:-3}"      # MindSpore's C++ log: errors only unless set (GLOG_v=2: warnings)
PYTHON=${PYTHON:-python}
start=$(date +%s)
PYTHON=$PYTHON bash scripts/prepare_default.sh
$PYTHON run_task_distill.py --config_path configs/td_mr.yaml --phase finetune
$PYTHON run_general_distill.py --config_path configs/gd.yaml
$PYTHON run_compress.py --config_path configs/compress_mr.yaml
$PYTHON tools/demo_report.py --compress_dir output/compress_mr --td_dir output/td_mr --gd_dir output/gd \
  --seconds $(( $(date +%s) - start ))
