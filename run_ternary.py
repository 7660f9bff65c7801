"""TernaryBERT: quantization-aware distillation (2-bit weights, 8-bit activations) of a fine-tuned teacher.
Usage (model-zoo style):

    python run_ternary.py --config_path configs/ternary_mr.yaml
    python run_ternary.py --quant.bits.embedding 8            # W2E8A8
    grep "The best acc" output/ternary_mr/w2e2a8/log.txt
    python tools/pack_ternary.py --run_dir output/ternary_mr/w2e2a8

The run writes <output_dir>/<notation>/ (e.g. w2e2a8) with log.txt, metrics.jsonl, manifest.json,
config_resolved.yaml, config.json, quant.json, best.ckpt, best_quant.ckpt, model.tpack and model_sizes.md.
"""
import os
import sys

from src.errors import run_main

os.environ.setdefault("GLOG_v", "3")   # MindSpore's C++ log: errors only, unless GLOG_v is set (GLOG_v=2: warnings)
DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "ternary_mr.yaml")


def main(argv=None):
    from src.config import load_config, save_resolved
    cfg = load_config(DEFAULT_CONFIG, argv)
    from src.runs import ternary
    return ternary.run(cfg, ternary.run_dir(cfg), save_resolved)


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
