"""Task distillation (TinyBERT): teacher fine-tuning, phase 1 (intermediate layers), phase 2 (prediction layer),
and standalone eval. Usage (model-zoo style):

    python run_task_distill.py --config_path configs/td_mr.yaml --phase finetune
    python run_task_distill.py --config_path configs/td_mr.yaml --phase td1
    python run_task_distill.py --config_path configs/td_mr.yaml --phase td2
    grep "The best acc" output/td_mr/td2/log.txt

Each phase writes <output_dir>/<teacher|td1|td2|eval>/ with log.txt, metrics.jsonl, manifest.json,
config_resolved.yaml, config.json and its checkpoints.
"""
import os
import sys

from src.errors import UserError, run_main

os.environ.setdefault("GLOG_v", "3")   # MindSpore's C++ log: errors only, unless GLOG_v is set (GLOG_v=2: warnings)
DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "td_mr.yaml")
PHASE_DIRS = {"finetune": "teacher", "td1": "td1", "td2": "td2", "eval": "eval"}


def main(argv=None):
    from src.config import load_config, save_resolved
    cfg = load_config(DEFAULT_CONFIG, argv)
    if cfg.phase not in PHASE_DIRS:
        raise UserError(f"phase '{cfg.phase}': expected one of {', '.join(PHASE_DIRS)}")
    from src.runs import task_distill
    return task_distill.run(cfg, os.path.join(cfg.output_dir, PHASE_DIRS[cfg.phase]), save_resolved)


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
