"""Data-parallel throughput and parity on this machine: 1 process at global batch 2b vs 2 msrun workers at b.

    python benchmarks/bench_distributed.py [--layers 4 --hidden 312 --seq 64 --batch 16 --steps 30]

Builds a synthetic MR-style workspace (random token ids, no dropout) and a random BERT of the given shape,
runs run_task_distill.py --phase finetune (a) as one process with --threads THREADS_SINGLE at batch 2b and
(b) through msrun with 2 workers x THREADS_PER_WORKER threads at batch b, then prints steady-state seq/s
(median of the logging windows after the first, i.e. without graph compilation) and the largest weight
difference between the two final checkpoints. Results also go to <out>/bench.json; with --results FILE.md the table is
written into that file between the bench:distributed markers (its block is in docs/distributed.md).
seq/s counts every worker's rows (the run's global throughput, as the Trainer logs it).
Timings on a shared machine are noisy: run it on an otherwise idle host for numbers you quote.
"""
import json
import os
import socket
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

import numpy as np  # noqa: E402

from src.cli import doc_parser  # noqa: E402
import tiny_run  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def workspace(root: str, layers: int, hidden: int, seq: int, vocab: int, rows: int) -> dict:
    import mindspore as ms
    from src.records import write_records, write_schema
    from src.tinybert_model import BertConfig, BertModel
    cols = {"input_ids": ("int64", seq), "input_mask": ("int64", seq), "segment_ids": ("int64", seq),
            "label_ids": ("int64", 1)}
    rng = np.random.default_rng(0)
    data = os.path.join(root, "data")
    os.makedirs(data, exist_ok=True)
    for split, n in (("train", rows), ("dev", 64)):
        ids = rng.integers(4, vocab, (n, seq))
        items = [{"input_ids": r.tolist(), "input_mask": [1] * seq, "segment_ids": [0] * seq,
                  "label_ids": [int(r[1] % 2)]} for r in ids]
        write_records(os.path.join(data, f"{split}.tf_record"), items, cols)
        write_schema(os.path.join(data, f"{split}_schema.json"), cols, n)
    cfg = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                     num_attention_heads=max(1, hidden // 64), intermediate_size=4 * hidden,
                     max_position_embeddings=max(seq, 64), hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    cfg.to_json_file(os.path.join(root, "config.json"))
    ms.set_seed(0)
    ms.save_checkpoint(BertModel(cfg), os.path.join(root, "bert.ckpt"))
    return {"data": data, "config": os.path.join(root, "config.json"), "ckpt": os.path.join(root, "bert.ckpt")}


def steady_rate(metrics_path: str) -> float:
    rates = []
    with open(metrics_path) as f:
        for line in f:
            rec = json.loads(line)
            if rec.get("kind") == "train":
                rates.append(rec["seq_per_s"])
    return statistics.median(rates[1:]) if len(rates) > 1 else float("nan")


def main(argv=None):
    ap = doc_parser(__doc__)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=312)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=16, help="per-worker batch b (single process: 2b)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (AdamWeightDecay, 10%% warmup)")
    ap.add_argument("--threads_single", type=int, default=2)
    ap.add_argument("--threads_per_worker", type=int, default=1)
    ap.add_argument("--out", default=os.path.join(ROOT, "output", "distributed", "bench"))
    from tools.marked_blocks import add_results_arg
    add_results_arg(ap, what="the table")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    ws = workspace(os.path.join(args.out, "ws"), args.layers, args.hidden, args.seq, args.vocab,
                   rows=2 * args.batch * (args.steps + 2))
    common = {"finetune.max_steps": args.steps, "finetune.lr": args.lr, "finetune.epochs": 1, "log_every": 5,
              "eval.every": 0, "eval.batch_size": 64, "data.max_seq_length": args.seq,
              "data.length_buckets": [args.seq]}
    results = {}
    for name, workers in (("1_worker", 1), ("2_workers", 2)):
        out = os.path.join(args.out, name)
        batch = args.batch * (2 // workers)
        threads = args.threads_single if workers == 1 else args.threads_per_worker
        cli = tiny_run.finetune_args(ws, out, batch=batch, distributed=workers > 1, threads=threads, **common)
        t0 = time.time()
        if workers == 1:
            res = tiny_run.run_script("run_task_distill.py", cli, timeout=3600)
        else:
            cmd = [os.path.join(os.path.dirname(sys.executable), "msrun"), "--worker_num=2",
                   "--local_worker_num=2", "--master_addr=127.0.0.1", f"--master_port={free_port()}",
                   f"--log_dir={os.path.join(out, 'msrun_log')}", "--join=True", "--cluster_time_out=600",
                   os.path.join(ROOT, "run_task_distill.py")] + cli
            res = subprocess.run(cmd, cwd=ROOT, env=tiny_run.env(), capture_output=True, text=True, timeout=3600)
        if res.returncode != 0:
            sys.exit(f"{name} failed (rc {res.returncode}): {res.stderr[-2000:]}")
        rate = steady_rate(os.path.join(out, "teacher", "metrics.jsonl"))
        results[name] = {"seq_per_s": rate, "wall_s": time.time() - t0, "batch_per_worker": batch,
                         "threads_per_process": threads}
        print(f"{name}: {rate:.1f} seq/s steady (global batch {2 * args.batch}), wall {time.time() - t0:.1f}s "
              f"incl. start and compile", flush=True)
    a = tiny_run.read_ckpt(os.path.join(args.out, "1_worker", "teacher", "last.ckpt"))[0]
    b = tiny_run.read_ckpt(os.path.join(args.out, "2_workers", "teacher", "last.ckpt"))[0]
    diff = max(float(np.abs(a[k] - b[k]).max()) for k in a)
    results["max_abs_weight_diff"] = diff
    results["shape"] = {k: getattr(args, k) for k in ("layers", "hidden", "seq", "vocab", "batch", "steps", "lr")}
    print(f"speedup 2 workers / 1: {results['2_workers']['seq_per_s'] / results['1_worker']['seq_per_s']:.2f}x; "
          f"max |w1 - w2| after {args.steps} steps: {diff:.2e}")
    from src.fileio import atomic_json
    atomic_json(os.path.join(args.out, "bench.json"), results)
    from benchmarks.common import emit
    emit("distributed", table(results, args), args.results or None)


def table(results: dict, args) -> str:
    """Markdown block: the two runs' global seq/s and wall time, the speed-up and the weight difference."""
    from benchmarks.common import machine, machine_line, markdown_table
    one, two = results["1_worker"], results["2_workers"]
    rows = [[f"1 process, {one['threads_per_process']} threads, batch {one['batch_per_worker']}",
             one["seq_per_s"], one["wall_s"], 1.0],
            [f"2 msrun workers, {two['threads_per_process']} thread(s) each, batch {two['batch_per_worker']} each",
             two["seq_per_s"], two["wall_s"], two["seq_per_s"] / one["seq_per_s"]]]
    shape = results["shape"]
    return (f"### Data parallel on this machine (benchmarks/bench_distributed.py)\n\n"
            f"{machine_line(machine(os.cpu_count() or 1))}. run_task_distill.py --phase finetune on a random "
            f"{shape['layers']}-layer / {shape['hidden']}-hidden BERT (vocab {shape['vocab']}), seq {shape['seq']}, "
            f"global batch {2 * shape['batch']}, lr {shape['lr']:g}, {shape['steps']} steps; steady seq/s = median "
            f"of the logging windows after the first (no compilation), all workers' rows counted.\n\n"
            + markdown_table(["run", "steady seq/s (global)", "wall s incl. start + compile", "x vs 1 process"], rows)
            + f"\n\nmax |w(1 process) - w(2 workers)| after {shape['steps']} steps: "
              f"{results['max_abs_weight_diff']:.1e}")


if __name__ == "__main__":
    main()
