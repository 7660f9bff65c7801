"""Export a trained classifier (teacher, TinyBERT student, width sub-model, ternary model) to MINDIR / ONNX / AIR.
Usage (model-zoo style):

    python export.py --config_path output/td_mr/td2/config.json --ckpt_file output/td_mr/td2/best.ckpt \
        --file_format MINDIR --file_name output/export/td_mr_student --batch_size 32 --seq_length 64
    python export.py ... --file_format ONNX            # exact GELU as ONNX Erf, LayerNorm fusable (docs/export.md)
    python export.py ... --width_mult 0.667            # slice a width supernet checkpoint first
    python export.py ... --ternary --ckpt_file <run>/model.tpack --file_format ONNX --int8   # TernaryBERT, int8 kernels
    python export.py ... --ternary --ckpt_file <run>/model.tpack --file_format ONNX --nbits 2  # 2-bit MatMulNBits
    python export.py ... --ternary --ckpt_file <run>/model.tpack --file_format ONNX --int8 --nbits 2  # both
    python run_eval_onnx.py --model_file output/export/td_mr_student.onnx --task MR --data_dir data/mr
    python export.py ... --file_format ONNX --task MR --export_dir output/export/td_mr   # a folder to ship:
    python run_predict.py --model_dir output/export/td_mr "a gripping, funny film"     # model + vocab + labels
    python export.py ... --file_format ONNX --task CoNLL --export_dir output/export/conll   # token / span tasks too

Inputs: input_ids, token_type_ids, input_mask (int32, [batch_size, seq_length], fixed). Output: the logits
[batch_size, num_labels] ([batch_size, seq_length, num_labels] for token and span heads). Every export is reloaded
and compared with the checkpoint before it is written.
"""
import argparse
import os
import sys

from src.cli import doc_parser
from src.errors import UserError, run_main

os.environ.setdefault("GLOG_v", "3")   # MindSpore's C++ log: errors only, unless GLOG_v is set (GLOG_v=2: warnings)


def parse_args(argv):
    p = doc_parser(__doc__)
    p.add_argument("--config_path", required=True, help="model config.json written beside the checkpoint")
    p.add_argument("--ckpt_file", required=True, help="classifier checkpoint (e.g. <run>/best.ckpt)")
    p.add_argument("--file_name", default=None, help="output path; the format's extension is added (default "
                                                     "tinybert; not with --export_dir)")
    p.add_argument("--export_dir", default=None,
                   help="write an exported folder instead (model, vocab.txt, config.json, labels.json, model card; "
                        "docs/export.md): needs --task; run it with run_predict.py --model_dir")
    p.add_argument("--vocab_file", default=None, help="--export_dir: the model's vocab.txt (default: vocab.txt "
                                                      "beside --ckpt_file, else bert-base-uncased)")
    p.add_argument("--max_seq_length", type=int, default=0,
                   help="--export_dir: the tokenizer's max_seq_length the model was trained with (0 = --seq_length)")
    p.add_argument("--do_lower_case", action=argparse.BooleanOptionalAction, default=True,
                   help="--export_dir: the tokenizer lower-cases (default; --no-do_lower_case for cased vocabs)")
    p.add_argument("--labels", default=None, help="--export_dir with --task csv: label names in id order, "
                                                  "comma-separated (as tools/prepare_data.py --labels)")
    p.add_argument("--regression", action="store_true", help="--export_dir with --task csv: a regression model")
    p.add_argument("--text_pair", default="auto", choices=["auto", "single", "pair"],
                   help="--export_dir: inputs are single texts or text pairs (auto: known for GLUE tasks and MR)")
    p.add_argument("--window_context", type=int, default=None,
                   help="--export_dir, token task: the --window_context the records were made with (default: "
                        "tools/prepare_data.py's, min(16, (max_seq_length - 3) // 2))")
    p.add_argument("--doc_stride", type=int, default=None,
                   help="--export_dir, span task: the --doc_stride the records were made with (default 128)")
    p.add_argument("--max_query_length", type=int, default=None,
                   help="--export_dir, span task: the --max_query_length the records were made with (default 64)")
    p.add_argument("--null_threshold", type=float, default=None,
                   help="--export_dir, SQuAD-v2 / CoNLL-MRC: run_predict answers \"no answer\" when the null score "
                        "minus the best span's score is above this (default 0.0)")
    p.add_argument("--include_tpack", action="store_true",
                   help="--export_dir with --ternary: copy the packed artefact (--ckpt_file) into the folder too")
    p.add_argument("--file_format", default="MINDIR", help="MINDIR | ONNX | AIR (AIR: Ascend only)")
    p.add_argument("--batch_size", type=int, default=32, help="fixed batch of the exported graph")
    p.add_argument("--seq_length", type=int, default=64, help="fixed sequence length of the exported graph")
    p.add_argument("--task", default="", help="task name (MR, SST-2, MNLI, ...): sets num_labels")
    p.add_argument("--num_labels", type=int, default=0, help="override num_labels (0 = from --task or config)")
    p.add_argument("--head_type", default="auto", choices=["auto", "dense", "relu_pooler"],
                   help="auto (default) = the head the checkpoint records (dense when it records none); an explicit "
                        "one must match the record")
    p.add_argument("--gelu", default="auto",
                   help="auto = exact: ONNX Erf | erf_poly: keep the polynomial | tanh (approximation)")
    p.add_argument("--width_mult", type=float, default=None, help="slice a width supernet checkpoint to this width")
    p.add_argument("--depth_mult", type=float, default=None, help="and to this depth (DynaBERT: round(L*d) layers)")
    p.add_argument("--ternary", action="store_true", help="export the ternary inference model of a TernaryBERT ckpt")
    p.add_argument("--int8", action="store_true", help="with --ternary and ONNX: int8 storage, int8 compute: the "
                                                       "ternary matmuls as MatMulInteger on int8 codes, 8-bit "
                                                       "activations as trained (with --nbits 2: see there)")
    p.add_argument("--nbits", type=int, default=0, help="2, with --ternary and ONNX. Alone: 2-bit storage, fp32 "
                                                        "compute: the ternary Dense as 2-bit MatMulNBits (onnxruntime "
                                                        "contrib op, unpacked to fp32 on every call), the word "
                                                        "embedding as 2-bit codes. With --int8: 2-bit storage, int8 "
                                                        "compute: the --int8 graph with its int8 codes stored as "
                                                        "2-bit codes, rebuilt once when the session starts (same "
                                                        "logits as --int8)")
    p.add_argument("--device_target", default="CPU", help="CPU | GPU | Ascend")
    p.add_argument("--no_verify", action="store_true", help="skip the reload-and-compare check (not recommended)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from src.export import check_format, check_nbits
    fmt = check_format(args.file_format, args.device_target)    # AIR off Ascend fails before any work
    check_nbits(args.nbits, args.int8, args.ternary, fmt)
    num_labels = args.num_labels or None
    if args.task and not num_labels and args.export_dir is None:
        from src.tasks import get_task
        try:
            num_labels = get_task(args.task).num_labels
        except ValueError as e:
            raise UserError(f"--task: {e}") from None
    folder_flags = {"--vocab_file": args.vocab_file, "--max_seq_length": args.max_seq_length,
                    "--labels": args.labels, "--regression": args.regression, "--text_pair": args.text_pair != "auto",
                    "--include_tpack": args.include_tpack, "--no-do_lower_case": not args.do_lower_case,
                    "--window_context": args.window_context is not None, "--doc_stride": args.doc_stride is not None,
                    "--max_query_length": args.max_query_length is not None,
                    "--null_threshold": args.null_threshold is not None}
    from src.export_folder import folder_task_from_flags
    task = folder_task_from_flags(args.export_dir, args.file_name, args.task, args.labels, args.regression,
                                  args.num_labels, [f for f, v in folder_flags.items() if v])
    from src import runtime
    runtime.init_context(args.device_target, "graph")
    kw = dict(head_type=args.head_type, gelu=args.gelu, width_mult=args.width_mult, ternary=args.ternary,
              device_target=args.device_target, verify=not args.no_verify, depth_mult=args.depth_mult,
              int8=args.int8, nbits=args.nbits)
    if args.export_dir is not None:
        from src.export_folder import export_to_folder
        return export_to_folder(args.export_dir, task, args.config_path, args.ckpt_file, args.vocab_file,
                                args.max_seq_length or None, args.do_lower_case, args.file_format, args.batch_size,
                                args.seq_length, include_tpack=args.include_tpack,
                                text_pair={"auto": None, "single": False, "pair": True}[args.text_pair],
                                settings={"window_context": args.window_context, "doc_stride": args.doc_stride,
                                          "max_query_length": args.max_query_length,
                                          "null_threshold": args.null_threshold}, **kw)
    from src.export import export_checkpoint
    return export_checkpoint(args.config_path, args.ckpt_file, args.file_name or "tinybert", args.file_format,
                             args.batch_size, args.seq_length, num_labels, **kw)


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
