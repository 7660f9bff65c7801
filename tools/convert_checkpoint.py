"""Convert BERT weights between Hugging Face and MindSpore (the name map is `NAME_MAP` in src/hf_checkpoint.py).

HF -> MindSpore (writes the .ckpt and a config.json beside it):
    python tools/convert_checkpoint.py --direction hf2ms --input <HF dir | model.safetensors | pytorch_model.bin> \\
        --output output/minilm/minilm.ckpt
    e.g. the default teacher: --input "$(python -c 'from src.hf_checkpoint import default_teacher_dir as d; print(d())')"
  MindSpore names are BertModel names (`encoder.0.attention.query.weight`), or BertForSequenceClassification names
  (`bert.` + `classifier.*`) automatically when the HF checkpoint has a classifier. --with_bert_prefix forces
  `bert.` on a plain BertModel checkpoint. `pytorch_model.bin` is read without torch (plain tensors only).

MindSpore -> HF (writes model.safetensors + config.json):
    python tools/convert_checkpoint.py --direction ms2hf --input output/minilm/minilm.ckpt --output hf_out/

--config defaults to the config.json beside the input. Strict: every missing/unexpected tensor and shape mismatch
is an error; --non_strict converts what fits and reports what was left out (e.g. a distillation `fit_dense`).
Values are copied bit-exactly in both directions.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("GLOG_v", "3")   # MindSpore's C++ log: errors only, unless GLOG_v is set (GLOG_v=2: warnings)

from src.errors import UserError, run_main  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--direction", required=True, choices=["hf2ms", "ms2hf"])
    p.add_argument("--input", required=True,
                   help="hf2ms: HF model dir, model.safetensors or pytorch_model.bin; ms2hf: a MindSpore .ckpt")
    p.add_argument("--output", required=True,
                   help="hf2ms: the .ckpt to write; ms2hf: a directory (or a .safetensors path)")
    p.add_argument("--config", default=None, help="model config.json (default: the one beside --input)")
    p.add_argument("--with_bert_prefix", action="store_true",
                   help="hf2ms: put `bert.` before backbone names even without a classifier")
    p.add_argument("--non_strict", action="store_true", help="convert what fits, report what was left out")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if not os.path.exists(args.input):
        raise UserError(f"--input '{args.input}' does not exist")
    from src.hf_checkpoint import hf_dir_to_ms, ms_to_hf
    if args.direction == "hf2ms":
        if os.path.isdir(args.output) or not args.output.endswith(".ckpt"):
            raise UserError(f"--output '{args.output}': expected the path of a .ckpt file to write")
        res = hf_dir_to_ms(args.input, args.output, config=args.config,
                           with_bert_prefix=True if args.with_bert_prefix else None, strict=not args.non_strict)
        ignored = f" (ignored HF buffers: {', '.join(res['ignored'])})" if res["ignored"] else ""
        print(f"converted {res['tensors']} tensors ({res['params']:,} parameters) from {res['input']} "
              f"-> {res['output']}{ignored}; names prefix '{res['prefix']}'; config {res['config_out']}")
    else:
        if args.output.endswith(".safetensors"):
            out_file = args.output
        else:
            os.makedirs(args.output, exist_ok=True)
            out_file = os.path.join(args.output, "model.safetensors")
        config_out = os.path.join(os.path.dirname(os.path.abspath(out_file)), "config.json")
        res = ms_to_hf(args.input, out_file, config=args.config, config_out=config_out, strict=not args.non_strict)
        print(f"converted {res['tensors']} tensors ({res['params']:,} parameters) from {res['input']} "
              f"-> {res['output']}; config {res['config_out']}")
        if res["per_layer_sizes"]:
            print("note: the config has per-layer head/FFN sizes, which HF transformers' BertModel cannot build; "
                  "the files load with this project's src.hf_checkpoint.load_hf_into")
    if not res["report"].ok:
        print(f"left out: {res['report'].problems()}")
    return 0


if __name__ == "__main__":
    run_main(main)
