"""Predict with an exported folder (export.py --export_dir) on raw text: labels, NER tags or QA answers per input.

    python run_predict.py --model_dir output/export/td_mr "a gripping, funny film" "flat and dull"
    python run_predict.py --model_dir output/export/td_mr --text_file texts.txt        # one text per line
    python run_predict.py --model_dir output/export/mrpc --text_file pairs.txt         # text_a<TAB>text_b
    python run_predict.py --model_dir output/export/td_mr --csv reviews.csv --text_column text --output out.jsonl
    python run_predict.py --model_dir output/export/conll "John Smith lives in Paris."  # token task (NER)
    python run_predict.py --model_dir output/export/squad --text_file qa.txt           # question<TAB>context

Tokenized with the folder's vocab.txt and settings exactly as tools/prepare_data.py makes records, run in the
exported fixed batch (tail padded and sliced off). Prints per input `label<TAB>label=p ...<TAB>text` (regression:
the value), for a token task `word/TAG ...<TAB>entities: PER "John Smith", LOC "Paris"`, for a span task
`answer<TAB>score<TAB>question`; --output writes .jsonl or .csv (src/predict.py, docs/export.md). Bad input: one
ERROR line, exit 2, nothing written.
"""
import os
import sys

from src.cli import doc_parser
from src.errors import run_main

os.environ.setdefault("GLOG_v", "3")   # MindSpore's C++ log: errors only, unless GLOG_v is set (GLOG_v=2: warnings)


def parse_args(argv):
    p = doc_parser(__doc__)
    p.add_argument("texts", nargs="*", help="texts to classify or tag (a pair: 'text_a<TAB>text_b'; QA: "
                                                  "'question<TAB>context')")
    p.add_argument("--model_dir", required=True, help="exported folder written by export.py --export_dir")
    p.add_argument("--text_file", default=None, help="one text per line (pairs: text_a<TAB>text_b; QA: "
                                                         "question<TAB>context)")
    p.add_argument("--csv", default=None, help="CSV (or .tsv) file with a header line")
    p.add_argument("--text_column", default="text", help="--csv: the column with the texts")
    p.add_argument("--text_b_column", default=None, help="--csv: the column with the second texts of pairs "
                                                                "(QA: the contexts)")
    p.add_argument("--output", default=None, help="also write the predictions to this .jsonl or .csv file")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (onnxruntime intra-op / MindSpore)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from src import runtime
    from src.predict import predict_folder
    runtime.init_context("CPU", "graph", threads=args.threads)
    return predict_folder(args.model_dir, args.texts, args.text_file, args.csv, args.text_column,
                          args.text_b_column, args.output, args.threads)


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
