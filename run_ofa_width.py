"""DynaBERT / OFA width adaptation: importance-based rewiring of a fine-tuned model, then supernet training over
widths with distillation from the fine-tuned teacher. Usage (model-zoo style):

    python run_ofa_width.py --config_path configs/ofa_mr.yaml
    python run_ofa_width.py --width_mult_list 1.0 0.75 0.5 --train.epochs 2
    grep "The best acc" output/ofa_mr/log.txt
    python run_ofa_width.py --train.distill_from supernet --supernet.init_ckpt output/ofa_mr/supernet.ckpt \
        --depth_mult_list 1.0 0.75 0.5 --loss.lambda2 1.0 --output_dir output/ofa_mr_wd   # stage 2 (docs/width.md)

Writes <output_dir>/: log.txt, metrics.jsonl, manifest.json, config_resolved.yaml, importance.npz,
permutation.json, best_w<width>.ckpt + config_w<width>.json (each width's best sub-model, physically sliced),
best.ckpt (supernet at the best full-width score), supernet.ckpt (last), width_table.md.
"""
import os
import sys

from src.errors import run_main

os.environ.setdefault("GLOG_v", "3")   # MindSpore's C++ log: errors only, unless GLOG_v is set (GLOG_v=2: warnings)
DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "ofa_mr.yaml")


def main(argv=None):
    from src.config import load_config, save_resolved
    cfg = load_config(DEFAULT_CONFIG, argv)
    from src.runs import width
    return width.run(cfg, cfg.output_dir, save_resolved)


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
