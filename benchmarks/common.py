"""Shared by the benchmark scripts: machine description, nominal peak FLOP/s, BERT FLOP counts, markdown tables,
timing, result JSON (src/fileio.py writes it atomically), and writing a table between `<!-- bench:NAME:start -->`
/ `:end -->` markers (tools/marked_blocks.py)."""
import os
import statistics
import sys
import time
from typing import Callable, List, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from src.fileio import atomic_json  # noqa: E402
from tools.machine_info import cpu_model, cpuinfo  # noqa: E402
from tools.marked_blocks import add_results_arg, write_block  # noqa: E402


def machine(threads: int) -> dict:
    """CPU model, cores, threads used and the nominal fp32 peak of the threads used:
    threads x clock x FLOP/cycle (AVX-512 FMA: 2 units x 16 lanes x 2 = 64; AVX2 FMA: 2 x 8 x 2 = 32; else 16).
    The clock is /proc/cpuinfo's current MHz (no turbo model): a nominal figure, not a measured roofline."""
    info = cpuinfo()
    flags = set(info.get("flags", "").split())
    per_cycle = 64 if "avx512f" in flags else 32 if {"avx2", "fma"} <= flags else 16
    mhz = float(info.get("cpu MHz", 0) or 0)
    peak = threads * mhz / 1000.0 * per_cycle if mhz else 0.0
    return {"cpu": cpu_model(info), "cores": os.cpu_count(),
            "threads": threads, "mhz": mhz, "flop_per_cycle": per_cycle, "peak_gflops": peak,
            "isa": "AVX-512" if per_cycle == 64 else "AVX2+FMA" if per_cycle == 32 else "SSE"}


def machine_line(m: dict) -> str:
    return (f"Machine: {m['cpu']}, {m['cores']} cores, {m['threads']} threads used, {m['isa']} "
            f"{m['mhz']:.0f} MHz: nominal fp32 peak {m['peak_gflops']:.0f} GFLOP/s for the threads used")


def bert_flops(cfg, seq: int) -> float:
    """Forward FLOPs (2 x multiply-adds) of one sequence through a BertForSequenceClassification of `cfg`:
    Q/K/V/output projections, QK^T and PV, FFN, pooler and classifier. Embedding lookups, LayerNorm, softmax and
    GELU are not counted (< 2% at these sizes)."""
    h = cfg.hidden_size
    total = 0.0
    for i in range(cfg.num_hidden_layers):
        inner = cfg.heads(i) * cfg.head_size
        total += 2 * seq * (3 * h * inner + inner * h + 2 * h * cfg.ffn(i))
        total += 2 * 2 * seq * seq * inner
    return total + 2 * h * h + 2 * h * cfg.num_labels


def time_call(fn: Callable[[], object], min_reps: int = 3, budget_s: float = 2.0, warmup: int = 1) -> float:
    """Median seconds per call: `warmup` untimed calls, then at least `min_reps` timed calls and more while the
    budget lasts (at most 50)."""
    for _ in range(warmup):
        fn()
    times: List[float] = []
    start = time.perf_counter()
    while len(times) < min_reps or (time.perf_counter() - start < budget_s and len(times) < 50):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def add_timing_args(p, budget_help: str):
    """--quick, --threads, --rounds, --budget, --out_dir, --results: the flags every timing script shares."""
    p.add_argument("--quick", action="store_true", help="tiny shapes (tests); timings meaningless")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=None, help="timing rounds (median of their medians; default 3, "
                                                             "--quick 1)")
    p.add_argument("--budget", type=float, default=None, help=budget_help)
    p.add_argument("--out_dir", default="output/bench")
    add_results_arg(p)


def rounds_and_budget(args):
    """(rounds, budget seconds) from --rounds / --budget, defaulting to 3 / 1.0 (--quick: 1 / 0.05); UserError unless
    both are > 0."""
    from src.errors import UserError
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 3)
    budget = args.budget if args.budget is not None else (0.05 if args.quick else 1.0)
    if rounds < 1 or budget <= 0:
        raise UserError(f"--rounds {rounds} / --budget {budget}: both must be > 0")
    return rounds, budget


def fmt(v, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if isinstance(v, int):
        return f"{v:,}"
    if v != v:
        return "nan"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    cells = [[str(h) for h in headers]] + [[fmt(c) for c in r] for r in rows]
    lines = ["| " + " | ".join(cells[0]) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in cells[1:]]
    return "\n".join(lines)


def write_json(path: str, obj):
    atomic_json(path, obj, indent=2, sort_keys=True)


def read_result(path: str, render: Callable[[dict], str], what: str) -> dict:
    """A result JSON a script saved, checked by rendering it with `render`: UserError (naming --from_json) when the
    file is missing or is not `what`."""
    import json
    from src.errors import UserError
    from src.fileio import require_file
    require_file(path, "--from_json")
    try:
        with open(path, encoding="utf-8") as f:
            out = json.load(f)
        render(out)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"--from_json '{path}': not {what} written by this script ({e!r})") from None
    return out


def measured_or_saved(args, measure: Callable, render: Callable[[dict], str], json_name: str, what: str,
                      to_json: Callable = lambda out: out) -> dict:
    """The result a script's main works on: with --from_json the saved one (checked by `render`, `what` names it in
    the error), else `measure(args)`, saved as <out_dir>/<json_name> (through `to_json`)."""
    if args.from_json:
        return read_result(args.from_json, render, what)
    out = measure(args)
    write_json(os.path.join(args.out_dir, json_name), to_json(out))
    return out


def emit(name: str, text: str, results: Optional[str]):
    """Print `text`; with `results` (a markdown file) also write it there as the bench:NAME block."""
    print(text, flush=True)
    if results:
        write_block(results, name, text)
        print(f"(written into {results} between the bench:{name} markers)")
