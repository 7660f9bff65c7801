"""General distillation (TinyBERT): pretrained teacher -> student on raw-text records.

    python run_general_distill.py --config_path configs/gd.yaml --data.dir data/imdb_gd --output_dir output/gd

Writes <output_dir>/student.ckpt (student backbone under `bert.` + fit_dense, reused by TD phase 1),
config.json, log.txt, metrics.jsonl, manifest.json and config_resolved.yaml.
"""
import os
import sys

from src.errors import run_main

os.environ.setdefault("GLOG_v", "3")   # MindSpore's C++ log: errors only, unless GLOG_v is set (GLOG_v=2: warnings)
DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "gd.yaml")


def main(argv=None):
    from src.config import load_config, save_resolved
    cfg = load_config(DEFAULT_CONFIG, argv)               # config errors before MindSpore is imported
    from src.runs import general_distill
    return general_distill.run(cfg, save_resolved)


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
