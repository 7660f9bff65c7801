"""The compression pipeline: a fine-tuned teacher -> one small deployable model (TinyBERT depth -> DynaBERT width
-> TernaryBERT -> vocabulary pruning -> 2-bit ONNX). Usage (model-zoo style):

    python run_compress.py --config_path configs/compress_mr.yaml
    python run_compress.py --from_stage ternary --ternary.args.train.max_steps 400   # redo ternary and after
    python run_compress.py --stages ternary vocab export --input_dir output/ofa_mr   # start from another folder
    grep "The best acc" output/compress_mr/log.txt

Writes <output_dir>/: one folder per stage (each a normal run of its method, with stage.json once finished),
export/ (model.onnx, vocab.txt, config.json, labels.json, quant.json, model_card.md), stages.md (the stage
table), log.txt. docs/compress.md.
"""
import os
import sys

from src.errors import run_main

os.environ.setdefault("GLOG_v", "3")   # MindSpore's C++ log: errors only, unless GLOG_v is set (GLOG_v=2: warnings)
DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "compress_mr.yaml")


def main(argv=None):
    from src.config import load_config, save_resolved
    from src.runs import compress
    cfg = load_config(DEFAULT_CONFIG, argv, open_sections=compress.OPEN_SECTIONS)
    return compress.run(cfg, save_resolved)


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
