"""Write the TernaryBERT and width-adaptation result tables into docs/results.md from the runs' own outputs (never by
hand): the `tools/pack_ternary.py --report` table of every run under --ternary_dir, and the width table
(`width_table.md`) of the run in --width_dir, each with the command line and teacher it came from.

    python tools/readme_results.py --ternary_dir output/ternary_mr --width_dir output/ofa_mr --results docs/results.md

Blocks: <!-- bench:ternary:start --> ... <!-- bench:ternary:end --> and the same with `width`.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from src.cli import doc_parser  # noqa: E402
from src.errors import UserError, run_main  # noqa: E402
from tools.marked_blocks import RESULTS, add_results_arg, write_block  # noqa: E402


def _manifest(run_dir: str) -> dict:
    path = os.path.join(run_dir, "manifest.json")
    if not os.path.isfile(path):
        raise UserError(f"{path} missing: is '{run_dir}' a finished run?")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _provenance(run_dir: str) -> str:
    m = _manifest(run_dir)
    teacher = m["config"].get("teacher", {}).get("ckpt", "?")
    return (f"`{run_dir}`: `{m['command']}` (teacher `{teacher}`, git {m['git'][:12]}, "
            f"{m['machine']['cpus']} CPUs, started {m['started']})")


def ternary_block(folder: str) -> str:
    from tools.pack_ternary import report
    table = report(folder)
    runs = sorted(d for d in os.listdir(folder) if os.path.isfile(os.path.join(folder, d, "quant.json")))
    return table + "\n\n" + "\n".join("- " + _provenance(os.path.join(folder, d)) for d in runs)


def width_block(run_dir: str) -> str:
    path = os.path.join(run_dir, "width_table.md")
    if not os.path.isfile(path):
        raise UserError(f"{path} missing: run run_ofa_width.py first")
    with open(path, encoding="utf-8") as f:
        table = f.read().strip()
    from src.runlog import read_records
    teacher = [r for r in read_records(run_dir) if r["kind"].startswith("teacher")]
    note = ""
    if teacher:
        acc = {k: v for k, v in teacher[-1].items() if k not in ("kind", "time")}
        note = "\n\nTeacher (full model before rewiring): " + ", ".join(f"{k} {v:.4f}" for k, v in acc.items())
    return table + note + "\n\n- " + _provenance(run_dir)


def main(argv=None):
    p = doc_parser(__doc__)
    p.add_argument("--ternary_dir", default="output/ternary_mr")
    p.add_argument("--width_dir", default="output/ofa_mr")
    add_results_arg(p, default=RESULTS)
    p.add_argument("--only", choices=["ternary", "width"], default=None, help="write one of the two blocks")
    args = p.parse_args(argv)
    blocks = {}
    if args.only in (None, "ternary"):
        blocks["ternary"] = ternary_block(args.ternary_dir)
    if args.only in (None, "width"):
        blocks["width"] = width_block(args.width_dir)
    for name, text in blocks.items():
        print(text + "\n")
        write_block(args.results, name, text)
    return 0


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
