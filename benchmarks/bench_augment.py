"""TinyBERT task-data augmentation (tools/augment_data.py) on MR: rows per second, and the MR student with and
without it.

    python benchmarks/bench_augment.py --results docs/augmentation.md            # rows/s at --copies 4 and 20
    python benchmarks/bench_augment.py --student --results docs/augmentation.md  # + TD phase 1 + 2, plain vs augmented
    python benchmarks/bench_augment.py --from_json output/bench/augment/augment.json --results docs/augmentation.md

Rows/s: the MR train split (6824 sentences) augmented with the GloVe path (no masked LM ships with the packages)
and written as TFRecords, everything the tool does after reading the text (GloVe load, candidates, draws,
encoding, writing); the reference is tools/prepare_data.py's encoding + writing of the same split in the same run.

--student: TinyBERT task distillation of the demo's student (configs/td_mr.yaml: the general-distillation student,
the fine-tuned teacher output/td_mr/teacher/best.ckpt) on MR and on MR augmented with --student_copies copies,
phase 1 for --td1_steps steps and phase 2 for --td2_steps steps in both (a short schedule: the machine has 2 cores),
dev accuracy of phase 2's best checkpoint. Runs go under --work_dir. Writes <out_dir>/augment.json; --from_json
renders a saved one again.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import ROOT, emit, machine, machine_line, markdown_table, measured_or_saved, write_json  # noqa
from src.runlog import read_records  # noqa: E402
from tools.marked_blocks import add_results_arg  # noqa: E402

GOAL_ROWS_PER_S = 100
TEACHER_CKPT = "output/td_mr/teacher/best.ckpt"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--copies", type=int, nargs="+", default=None, help="N of the rows/s rows (default 4 20)")
    p.add_argument("--max_examples", type=int, default=None, help="first N train sentences (default all; --quick 20)")
    p.add_argument("--p_replace", type=float, default=0.4)
    p.add_argument("--candidates", type=int, default=15)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--quick", action="store_true", help="20 sentences, N 1 and 2 (tests); timings meaningless")
    p.add_argument("--student", action="store_true", help="also distil the MR student with and without augmentation")
    p.add_argument("--student_copies", type=int, default=2)
    p.add_argument("--td1_steps", type=int, default=150)
    p.add_argument("--td2_steps", type=int, default=210)
    p.add_argument("--work_dir", default="output/bench/augment/runs", help="augmented data and TD runs")
    p.add_argument("--out_dir", default="output/bench/augment")
    p.add_argument("--from_json", default=None, help="render a saved augment.json instead of measuring")
    add_results_arg(p)
    return p.parse_args(argv)


def _rows_per_s(args):
    """Timed runs of prepare_data's encoding + writing (the reference) and of the augmentation at each N."""
    from src.augment import Augmenter, default_glove, read_glove
    from src.records import write_records
    from src.tasks import get_task
    from src.tokenization import BertTokenizer, default_vocab_file
    from tools.augment_data import augmented_examples
    from tools.prepare_data import labelled_rows, mr_splits, text_columns

    n = args.max_examples or (20 if args.quick else None)
    examples = mr_splits(None, 1234)["train"][:n]
    task, tok, L = get_task("MR"), BertTokenizer(default_vocab_file()), 64
    columns = dict(text_columns(L), label_ids=("int64", 1))
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        rows = write_records(os.path.join(tmp, "plain.tf_record"), labelled_rows(examples, task, tok, L), columns)
        ref_s = time.perf_counter() - t
        out.append({"setting": "prepare_data (no augmentation)", "copies": 0, "rows": rows, "seconds": ref_s})
        for copies in args.copies or ([1, 2] if args.quick else [4, 20]):
            t = time.perf_counter()
            glove = read_glove(*default_glove(), args.candidates)
            aug = Augmenter(tok, glove, None, args.p_replace, copies, args.seed)
            stream = (r for chunk in augmented_examples(examples, aug) for r in labelled_rows(chunk, task, tok, L))
            rows = write_records(os.path.join(tmp, f"aug{copies}.tf_record"), stream, columns)
            st = aug.stats
            out.append({"setting": f"GloVe, N {copies}", "copies": copies, "rows": rows,
                        "seconds": time.perf_counter() - t, "replaced": st.replaced / st.draws,
                        "glove_words": len(glove.cache), "products": st.glove_products})
    for r in out:
        r["rows_per_s"] = r["rows"] / r["seconds"]
    return {"examples": len(examples), "rows": out}


def _run(cmd, log):
    with open(log, "w") as f:
        r = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if r.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {r.returncode}); see {log}")


def _student(args):
    """TD phase 1 + 2 of the demo's student on plain and augmented MR; dev accuracy and phase 2's teacher logits."""
    work = os.path.abspath(args.work_dir)
    os.makedirs(work, exist_ok=True)
    aug_dir = os.path.join(work, f"mr_aug{args.student_copies}")
    if not os.path.isfile(os.path.join(aug_dir, "train_schema.json")):
        _run([sys.executable, "tools/augment_data.py", "--task", "MR", "--max_seq_length", "64",
              "--copies", str(args.student_copies), "--seed", str(args.seed), "--output_dir", aug_dir],
             os.path.join(work, "augment_data.log"))
    out = []
    for name, data in (("MR", "data/mr"), (f"MR + augmented, N {args.student_copies}", aug_dir)):
        run_dir = os.path.join(work, "td_aug" if data == aug_dir else "td_plain")
        common = ["--config_path", "configs/td_mr.yaml", "--output_dir", run_dir, "--data.dir", data,
                  "--teacher.ckpt", TEACHER_CKPT]
        t = time.perf_counter()
        _run([sys.executable, "run_task_distill.py", *common, "--phase", "td1", "--td1.max_steps",
              str(args.td1_steps)], os.path.join(work, os.path.basename(run_dir) + "_td1.log"))
        _run([sys.executable, "run_task_distill.py", *common, "--phase", "td2", "--td2.max_steps",
              str(args.td2_steps)], os.path.join(work, os.path.basename(run_dir) + "_td2.log"))
        seconds = time.perf_counter() - t
        evals = read_records(os.path.join(run_dir, "td2"), "eval")
        with open(os.path.join(run_dir, "td2", "log.txt")) as f:
            cache = [line.strip() for line in f if line.startswith("teacher logits for phase 2")]
        with open(os.path.join(data, "train_schema.json")) as f:
            rows = json.load(f)["numRows"]
        out.append({"data": name, "train_rows": rows, "td1_steps": args.td1_steps, "td2_steps": args.td2_steps,
                    "dev_acc": evals[-1]["best"], "seconds": seconds, "teacher_logits": cache[0] if cache else ""})
    return out


def measure(args) -> dict:
    out = {"machine": machine(2), "p_replace": args.p_replace, "candidates": args.candidates,
           "rate": _rows_per_s(args)}
    if args.student:
        write_json(os.path.join(args.out_dir, "augment.json"), out)            # the rates survive a failed run
        out["student"] = _student(args)
    return out


def rate_table(out: dict) -> str:
    rate = out["rate"]
    ref = rate["rows"][0]
    rows = [[r["setting"], r["rows"], r["seconds"], r["rows_per_s"], r["rows_per_s"] / ref["rows_per_s"],
             "-" if not r["copies"] else f"{r['replaced']:.3f}",
             "-" if not r["copies"] else ("yes" if r["rows_per_s"] >= GOAL_ROWS_PER_S else "no")]
            for r in rate["rows"]]
    head = (f"MR train ({rate['examples']} sentences), max_seq_length 64, p {out['p_replace']}, K "
            f"{out['candidates']}, GloVe 6B 50d over all 400,000 words, written as TFRecords; rows = originals + "
            f"copies. {machine_line(out['machine'])}.")
    return head + "\n\n" + markdown_table(
        ["setting", "rows", "seconds", "rows/s", "x prepare_data", "replaced", f">= {GOAL_ROWS_PER_S} rows/s"], rows)


def student_table(out: dict) -> str:
    runs = out.get("student")
    if not runs:
        return "(not measured: run with --student)"
    base = runs[0]["dev_acc"]
    rows = [[r["data"], r["train_rows"], r["td1_steps"], r["td2_steps"], f"{r['dev_acc']:.4f}",
             f"{r['dev_acc'] - base:+.4f}", r["seconds"] / 60] for r in runs]
    notes = "\n".join(f"- {r['data']}: {_logits_note(r['teacher_logits'])}" for r in runs if r["teacher_logits"])
    head = (f"Short schedule on 2 cores (phase 1 {runs[0]['td1_steps']} steps, phase 2 {runs[0]['td2_steps']} steps "
            f"of batch 32 in both runs; the paper uses N 20 and several epochs), configs/td_mr.yaml otherwise. "
            f"{machine_line(out['machine'])}.")
    return head + "\n\n" + markdown_table(["train data", "train rows", "phase-1 steps", "phase-2 steps",
                                           "dev acc", "vs MR", "minutes"], rows) + "\n\nPhase 2's teacher logits:\n" \
        + notes


def _logits_note(line: str) -> str:
    """phase 2's log line on its teacher logits, without the run's folder."""
    m = re.search(r"(\d+) rows from .*teacher_logits\.npz \((checked on [^)]*)\); (\d+) rows computed", line)
    if not m:
        return line
    return (f"{m.group(1)} rows taken from phase 1's teacher_logits.npz ({m.group(2)}), {m.group(3)} computed once "
            f"before training")


def render(out: dict) -> str:
    return rate_table(out) + "\n\n" + student_table(out)


def main(argv=None):
    args = parse_args(argv)
    out = measured_or_saved(args, measure, render, "augment.json", "an augment.json")
    emit("augment_rate", rate_table(out), args.results or None)
    if out.get("student"):
        emit("augment_student", student_table(out), args.results or None)
    return out


if __name__ == "__main__":
    from src.errors import run_main
    run_main(main)
