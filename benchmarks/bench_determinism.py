"""Cost of `deterministic: true`: seconds per TD phase-1 train step (MiniLM-L6-shaped teacher -> the 3 x 384 student
of configs/gd.yaml, random weights, batch 32 x seq 64, dropout 0.1, fused kernels) with the setting on
(src/cpu_kernels.DeterministicDropout) and off (MindSpore's Dropout), and without dropout for reference.

Each process builds one train step per mode (same initial weights) and alternates them step by step, so the modes
share the machine's load (it is shared and noisy); the step times are medians per process, the cost the median
over processes of on / off. Each process also reports a digest of each mode's weights after its steps: across
processes the "on" (and "nodropout") digests must agree, the "off" ones usually differ.

    python benchmarks/bench_determinism.py                      # 3 processes x 30 steps per mode, 2 threads
    python benchmarks/bench_determinism.py --processes 5 --modes on off

Writes output/bench/determinism.json.
"""
import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import ROOT, write_json  # noqa: E402
from src.cli import doc_parser  # noqa: E402

MODES = ("on", "off", "nodropout")


def _train_step(mode: str):
    from src import cpu_kernels, runtime
    from src.distill import DistillLossConfig, FitDense, TaskDistillPhase1Loss
    from src.losses import resolve_layer_map
    from src.tinybert_model import BertConfig, build_classifier
    from src.train_step import TrainStep, WarmupLinearDecayLR, build_optimizer
    cpu_kernels.set_deterministic(mode == "on")      # read as the dropout cells are built
    runtime.set_seed(1234)
    p = 0.0 if mode == "nodropout" else 0.1
    tcfg = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                      intermediate_size=1536, fused_cpu_kernels=True, hidden_dropout_prob=p,
                      attention_probs_dropout_prob=p)
    scfg = tcfg.replace(num_hidden_layers=3)
    teacher, student = build_classifier(tcfg, "dense"), build_classifier(scfg, "dense")
    att, hid = resolve_layer_map(tcfg.num_hidden_layers, scfg.num_hidden_layers)
    loss = TaskDistillPhase1Loss(student, teacher, FitDense(384, 384), att, hid, DistillLossConfig())
    lr = WarmupLinearDecayLR(1e-4, 1000, 10)
    step = TrainStep(loss, build_optimizer(loss.trainable_params(), lr, 1e-4, 1e-6), 1.0, "global")
    step.set_train(True)
    return step


def worker(modes, threads: int, steps: int, warmup: int) -> dict:
    """One process: a train step per mode, warmed up, then `steps` steps of each, alternating; the median seconds
    per step and the weights' digest of each mode."""
    import numpy as np
    import mindspore as ms
    from src import cpu_kernels, runtime
    from src.export import sample_inputs
    runtime.init_context("CPU", "graph", threads)
    cells = {m: _train_step(m) for m in modes}
    ids, types, mask = sample_inputs(32, 64, 30522, seed=0)
    batch = [ms.Tensor(ids), ms.Tensor(types), ms.Tensor(mask), ms.Tensor(np.zeros(32, np.int32))]
    times = {m: [] for m in modes}
    for k in range(warmup + steps):
        for m in (modes if k % 2 == 0 else modes[::-1]):
            cpu_kernels.set_dropout_step(k)
            t0 = time.perf_counter()
            cells[m](*batch)[0].asnumpy()
            times[m].append(time.perf_counter() - t0)
    out = {}
    for m, cell in cells.items():
        digest = hashlib.sha256()
        for _, prm in sorted(cell.parameters_and_names(), key=lambda kv: kv[0]):
            if prm.requires_grad:
                digest.update(prm.asnumpy().tobytes())
        out[m] = {"step_s": statistics.median(times[m][warmup:]), "digest": digest.hexdigest()[:16]}
    return out


def measure(args) -> dict:
    runs = []
    for r in range(args.processes):
        modes = args.modes if r % 2 == 0 else list(reversed(args.modes))
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--modes", *modes, "--threads",
               str(args.threads), "--steps", str(args.steps), "--warmup", str(args.warmup)]
        env = {**os.environ, "GLOG_v": os.environ.get("GLOG_v", "3")}
        res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
        if res.returncode != 0:
            raise RuntimeError(f"worker failed: {res.stderr.strip()[-800:]}")
        runs.append(json.loads(res.stdout.strip().splitlines()[-1]))
        print(f"process {r}: " + ", ".join(f"{m} {v['step_s'] * 1000:.1f} ms/step (weights {v['digest']})"
                                           for m, v in runs[-1].items()), flush=True)
    summary = {}
    for m in args.modes:
        med = statistics.median(run[m]["step_s"] for run in runs)
        summary[m] = {"median_step_s": med, "steps_per_s": 1.0 / med, "runs": len(runs),
                      "distinct_weights": len({run[m]["digest"] for run in runs})}
    if "on" in args.modes and "off" in args.modes:
        ratios = [run["on"]["step_s"] / run["off"]["step_s"] for run in runs]
        summary["on_vs_off"] = {"median_ratio": statistics.median(ratios), "ratios": ratios}
    return {"threads": args.threads, "steps": args.steps, "warmup": args.warmup, "runs": runs, "summary": summary}


def render(out: dict) -> str:
    lines = [f"td1 step, teacher 6x384 -> student 3x384, batch 32 x 64, {out['threads']} threads, "
             f"{out['steps']} steps per mode and process, modes alternating:"]
    for m, s in out["summary"].items():
        if m == "on_vs_off":
            lines.append(f"  on / off step time: median {s['median_ratio']:.3f} (per process "
                         f"{', '.join(f'{r:.3f}' for r in s['ratios'])})")
        else:
            lines.append(f"  {m:9s} {s['median_step_s'] * 1000:7.1f} ms/step ({s['steps_per_s']:.2f} steps/s), "
                         f"{s['distinct_weights']} distinct final weights in {s['runs']} processes")
    return "\n".join(lines)


def parse_args(argv=None):
    p = doc_parser(__doc__)
    p.add_argument("--processes", type=int, default=3)
    p.add_argument("--steps", type=int, default=30, help="timed steps per mode and process")
    p.add_argument("--warmup", type=int, default=8, help="untimed steps first (compile, MindSpore's kernel tuning)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--modes", nargs="+", default=["on", "off", "nodropout"], choices=MODES)
    p.add_argument("--out_dir", default="output/bench")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.modes, args.threads, args.steps, args.warmup)))
        return None
    out = measure(args)
    write_json(os.path.join(args.out_dir, "determinism.json"), out)
    print(render(out))
    return out


if __name__ == "__main__":
    main()
