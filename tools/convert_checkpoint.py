"""Convert BERT weights between Hugging Face and MindSpore (the name map is `NAME_MAP` in src/hf_checkpoint.py).

HF -> MindSpore (writes the .ckpt and a config.json beside it):
    python tools/convert_checkpoint.py --direction hf2ms --input <HF dir | model.safetensors | pytorch_model.bin> \\
        --output output/minilm/minilm.ckpt
    e.g. the default teacher:
        --input "$(python -c 'from src.hf_checkpoint import default_teacher_dir as d; print(d())')"
  MindSpore names are BertModel names (`encoder.0.attention.query.weight`), or the names of the project's model of
  the HF head (config.json `architectures`, else the tensor names): BertForSequenceClassification and
  BertForTokenClassification (`bert.` + `classifier.*`), BertForQuestionAnswering (`bert.` + `qa_outputs.*`); the
  checkpoint records its head kind. HF's token / QA models have no pooler: the project's unused one is zeros.
  --with_bert_prefix forces `bert.` on a plain BertModel checkpoint. `pytorch_model.bin` is read without torch
  (plain tensors only).

MindSpore -> HF (writes a folder transformers loads as it is, e.g. `pipeline("text-classification", model=dir)`,
`pipeline("token-classification", ...)` for an NER model, `pipeline("question-answering", ...)` for a QA model):
    python tools/convert_checkpoint.py --direction ms2hf --input output/td_mr/td2/best.ckpt --output hf_out/
  The head is the one the checkpoint records (head_kind: sequence, token, span). The folder: model.safetensors
  (no pooler for token / QA models: HF's have none), config.json (id2label / label2id from the task's label names
  or NER tags; none for QA), vocab.txt,
  tokenizer_config.json, special_tokens_map.json. The task, vocab and max_seq_length default to what the run or
  export folder recorded beside --input (config_resolved.yaml, labels.json, vocab.txt; see --help).
  Width / depth sub-models (tools/slice_width.py): per-layer heads become HF `pruned_heads` (the last heads of each
  layer), the kept layers num_hidden_layers; FFN sizes must be the same in every layer (HF has one
  intermediate_size). TernaryBERT checkpoints (run_ternary.py's best_quant.ckpt + quant.json): the quantized
  weights as fp32 tensors, recorded in config.json's `weight_quantization`.
  hf2ms reads such folders back (pruned_heads -> per-layer head counts).

--config defaults to the config.json beside the input. Strict: every missing/unexpected tensor and shape mismatch
is an error; --non_strict converts what fits and reports what was left out (e.g. a distillation `fit_dense`).
Values are copied bit-exactly in both directions.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("GLOG_v", "3")   # MindSpore's C++ log: errors only, unless GLOG_v is set (GLOG_v=2: warnings)

from src.cli import doc_parser  # noqa: E402
from src.errors import UserError, run_main  # noqa: E402


def parse_args(argv=None):
    p = doc_parser(__doc__)
    p.add_argument("--direction", required=True, choices=["hf2ms", "ms2hf"])
    p.add_argument("--input", required=True,
                   help="hf2ms: HF model dir, model.safetensors or pytorch_model.bin; ms2hf: a MindSpore .ckpt")
    p.add_argument("--output", required=True,
                   help="hf2ms: the .ckpt to write; ms2hf: a directory (or a .safetensors path)")
    p.add_argument("--config", default=None, help="model config.json (default: the one beside --input)")
    p.add_argument("--with_bert_prefix", action="store_true",
                   help="hf2ms: put `bert.` before backbone names even without a classifier")
    p.add_argument("--non_strict", action="store_true", help="convert what fits, report what was left out")
    g = p.add_argument_group("ms2hf: the folder's task and tokenizer (defaults: what is recorded beside --input)")
    g.add_argument("--task", default=None, help="task name (MR, SST-2, MNLI, ..., CoNLL, csv, ner) for the label names "
                   "(default: labels.json or config_resolved.yaml beside --input)")
    g.add_argument("--labels", default=None, help="task csv: comma-separated label names in id order; task ner: "
                   "its tags in id order (O,B-PER,I-PER,...)")
    g.add_argument("--regression", action="store_true", help="task csv: float labels (one output)")
    g.add_argument("--vocab_file", default=None, help="WordPiece vocab.txt (default: vocab.txt beside --input, "
                   "else the run's teacher.vocab, else bert-base-uncased)")
    g.add_argument("--max_seq_length", type=int, default=None, help="tokenizer model_max_length (default: the "
                   "run's data.max_seq_length / labels.json, else max_position_embeddings)")
    g.add_argument("--do_lower_case", action=argparse.BooleanOptionalAction, default=None,
                   help="tokenizer lower-casing (default: labels.json, else true as tools/prepare_data.py)")
    g.add_argument("--quant", default=None, help="a TernaryBERT checkpoint's quant.json (default: the one beside "
                   "--input)")
    g.add_argument("--overwrite", action="store_true", help="replace a non-empty --output folder")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if not os.path.exists(args.input):
        raise UserError(f"--input '{args.input}' does not exist")
    from src.hf_checkpoint import POOLER_FILL, hf_dir_to_ms, ms_to_hf_folder
    if args.direction == "hf2ms":
        for flag in ("task", "labels", "vocab_file", "max_seq_length", "do_lower_case", "quant"):
            if getattr(args, flag) is not None:
                raise UserError(f"--{flag}: only with --direction ms2hf (it describes the HF folder written)")
        if os.path.isdir(args.output) or not args.output.endswith(".ckpt"):
            raise UserError(f"--output '{args.output}': expected the path of a .ckpt file to write")
        res = hf_dir_to_ms(args.input, args.output, config=args.config,
                           with_bert_prefix=True if args.with_bert_prefix else None, strict=not args.non_strict)
        ignored = f" (ignored HF buffers: {', '.join(res['ignored'])})" if res["ignored"] else ""
        pooler = (f"; pooler {POOLER_FILL} ({res['architecture']} has none; unused by the model)"
                  if res["pooler_filled"] else "")
        print(f"converted {res['tensors']} tensors ({res['params']:,} parameters) from {res['input']} "
              f"-> {res['output']}{ignored}; {res['architecture']}, names prefix '{res['prefix']}'{pooler}; "
              f"config {res['config_out']}")
    else:
        if args.output.endswith(".safetensors"):
            raise UserError(f"--output '{args.output}': expected a folder (ms2hf writes the whole HF model folder)")
        task = None
        if args.task:
            from src.export_folder import task_for
            task = task_for(args.task, [x.strip() for x in (args.labels or "").split(",") if x.strip()],
                            args.regression)
        elif args.labels or args.regression:
            raise UserError("--labels / --regression: only with --task csv (--labels also with --task ner)")
        res = ms_to_hf_folder(args.input, args.output, config=args.config, task=task, vocab_file=args.vocab_file,
                              max_seq_length=args.max_seq_length, do_lower_case=args.do_lower_case,
                              quant=args.quant, strict=not args.non_strict, overwrite=args.overwrite)
        pruned = res["pruned_heads"]
        extra = [f"task {res['task']} labels {res['labels']}" if res["labels"] else None,
                 f"pruned_heads {pruned}, which transformers 4.x reads (5.x dropped head pruning)" if pruned else None,
                 f"ternary weights {res['quant']['notation']} stored as fp32" if res["quant"] else None,
                 f"no pooler tensors ({res['architecture']} has none)" if res["dropped"] else None]
        print(f"converted {res['tensors']} tensors ({res['params']:,} parameters) from {res['input']} -> "
              f"{res['output']} ({res['architecture']}, pipeline {res['pipeline']}; vocab {res['vocab_file']}, "
              f"max_seq_length "
              f"{res['max_seq_length']}, do_lower_case {str(res['do_lower_case']).lower()}"
              + "".join(f"; {e}" for e in extra if e) + ")")
    if not res["report"].ok:
        print(f"left out: {res['report'].problems()}")
    return 0


if __name__ == "__main__":
    run_main(main)
