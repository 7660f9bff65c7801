"""CoNLL-2003 NER results of the methods against their reference, read from the run folders (never typed): the
fine-tuned teacher, the TinyBERT student, TernaryBERT W2E2A8, width 0.5 and the compression pipeline's final file
(run_compress.py, configs/compress_conll.yaml), dev and test entity-level F1, the share of the reference each keeps
and the goal it is held to (met or not on dev and on test); plus the teacher's per-type table on dev.

    python benchmarks/bench_conll.py --teacher_run output/td_conll/teacher --student_run output/td_conll/td2 \\
        --ternary_run output/ternary_conll/w2e2a8 --width_run output/ofa_conll \\
        --test teacher=output/conll_test/teacher/eval --test student=output/conll_test/student/eval \\
        --data_dir data/conll --results docs/results.md

Dev F1: each run's best dev eval (metrics.jsonl; width: the "width" record of width 0.5; compressed: the last row
of its stages.json, export/model.onnx evaluated in onnxruntime). Test F1: --test ROW=PATH,
PATH an eval folder of `run_task_distill.py --phase eval --eval.split test` (its metrics.jsonl) or a text file holding
the output of `run_eval_onnx.py --split test` (its `eval f1 ...` line; the command on a first line starting with
`$ `). References: the teacher for the student and width 0.5; for TernaryBERT its own fp32 model (the run's
teacher_eval record on dev, else the best dev F1 beside the teacher checkpoint it quantized; the teacher's test F1 on
test). A row without a run is "-" (not run). The per-type table
(src/ner.py format_entity_table) runs the teacher checkpoint on --data_dir's dev split (MindSpore, CPU); without
--data_dir it is left out. Writes <out_dir>/conll.json; --from_json renders a saved one again. Block: bench:conll.
"""
import json
import os
import shlex
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("GLOG_v", "3")   # MindSpore's C++ log (the per-type table's eval): errors only unless set

from benchmarks.common import emit, machine, machine_line, markdown_table, read_result, write_json  # noqa: E402
from src.cli import doc_parser  # noqa: E402
from src.runlog import read_manifest, read_records  # noqa: E402
from tools.marked_blocks import add_results_arg  # noqa: E402

# row -> (label, reference row, goal: fraction of the reference)
ROWS = {"teacher": ("MiniLM-L6 teacher (fine-tuned)", None, None),
        "student": ("TinyBERT student", "teacher", 0.97),
        "ternary": ("TernaryBERT W2E2A8", "fp32", 0.98),
        "width": ("width 0.5 (DynaBERT)", "teacher", 0.98),
        "compound": ("compressed: depth -> width 0.5 -> W2E2A8 -> 2-bit ONNX", "teacher", None)}
SCHEDULE_KEY = {"teacher": "finetune", "student": "td2", "ternary": "train", "width": "train"}
COMPOUND_STEPS = (("td1", "depth/td1"), ("td2", "depth/td2"), ("width", "width"), ("ternary", "ternary/w2e2a8"))


def compound(run_dir: str) -> dict:
    """A run_compress.py folder: the final file's dev F1 (stages.json, last row: export/model.onnx in onnxruntime),
    its bytes against the teacher's ONNX, and each training stage's steps."""
    from src.errors import UserError
    path = os.path.join(run_dir, "stages.json")
    if not os.path.isfile(path):
        raise UserError(f"{path} missing: is '{run_dir}' a finished run_compress.py run?")
    with open(path, encoding="utf-8") as f:
        rows = json.load(f)
    final = rows[-1]
    steps = []
    for name, sub in COMPOUND_STEPS:
        done = [r["step"] for r in read_records(os.path.join(run_dir, sub), "train", missing_ok=True)]
        if done:
            steps.append(f"{name} {done[-1]}")
    schedule = ", ".join(steps) + (f" steps; {final['stage']} file {final['bytes']:,} bytes, "
                                   f"{final['x_smaller']:.1f}x smaller than the teacher's ONNX")
    return {"dev": final["metric"], "schedule": schedule}


def best_dev(row: str, run_dir: str, width: float = 0.5) -> float:
    """The run's best dev entity F1: the largest eval f1 (width: the width record of `width`)."""
    from src.errors import UserError
    recs = read_records(run_dir)
    if row == "width":
        got = [r["metric"] for r in recs if r["kind"] == "width" and abs(r["width"] - width) < 1e-6]
        if not got:
            raise UserError(f"{run_dir}/metrics.jsonl: no width record of width {width} (run not finished?)")
        return got[-1]
    got = [r["f1"] for r in recs if r["kind"] == "eval" and "f1" in r]
    if not got:
        raise UserError(f"{run_dir}/metrics.jsonl: no eval record with an entity f1 (a CoNLL run?)")
    return max(got)


def schedule(row: str, run_dir: str) -> str:
    """'N steps x B' of the run (its last train record and its config's batch size)."""
    steps = [r["step"] for r in read_records(run_dir) if r["kind"] == "train"]
    cfg = read_manifest(run_dir, missing_ok=True).get("config", {})
    batch = cfg.get(SCHEDULE_KEY[row], {}).get("batch_size", "?")
    text = f"{steps[-1] if steps else '?'} steps x {batch}"
    if row == "width":
        text += " (widths " + ", ".join(f"{w:g}" for w in cfg.get("width_mult_list", [])) + ")"
    return text


def test_f1(path: str) -> tuple:
    """(test f1, command) from an eval folder (metrics.jsonl) or a saved run_eval_onnx.py output."""
    from src.errors import UserError
    if os.path.isdir(path):
        evals = [r for r in read_records(path) if r["kind"] == "eval"]
        if not evals:
            raise UserError(f"{path}/metrics.jsonl: no eval record")
        m = read_manifest(path, missing_ok=True)
        split = m.get("config", {}).get("eval", {}).get("split", "?")
        if split != "test":
            raise UserError(f"{path}: an eval of split '{split}', expected --eval.split test")
        return evals[-1]["f1"], m.get("command", "?")
    if not os.path.isfile(path):
        raise UserError(f"--test {path}: no such eval folder or file")
    command, f1 = "?", None
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("$ "):
                command = line[2:].strip()
            elif line.startswith("eval ") and " f1 " in line:
                f1 = float(line.split(" f1 ", 1)[1].split(",")[0].split()[0])
    if f1 is None:
        raise UserError(f"{path}: no 'eval ... f1 X' line of run_eval_onnx.py")
    if "--split test" not in command:
        raise UserError(f"{path}: expected the run_eval_onnx.py command with --split test on a '$ ' line")
    return f1, command


def per_type_table(teacher_run: str, data_dir: str, threads: int) -> str:
    """format_entity_table of the teacher checkpoint on the dev split of `data_dir`."""
    from src import runtime
    from src.checkpoint import load_into, resolve_head_type
    from src.dataset import load_split
    from src.evaluation import predict
    from src.ner import entity_scores, format_entity_table, sentence_tags
    from src.tasks import get_task
    from src.tinybert_model import LogitsOnly, build_classifier, load_bert_config
    runtime.init_context("CPU", "graph", threads=threads)
    task = get_task("CoNLL")
    ckpt = os.path.join(teacher_run, "best.ckpt")
    conf = load_bert_config(os.path.join(teacher_run, "config.json"), "teacher config", num_labels=task.num_labels)
    model = build_classifier(conf, resolve_head_type("auto", ckpt, "--teacher_run", "best.ckpt"), task.head)
    load_into(model, ckpt, "teacher checkpoint", strict=True)
    net = LogitsOnly(model)
    net.set_train(False)
    arrays = load_split(data_dir, "dev", "tfrecord", _seq_of(data_dir), task)
    logits = predict(net, arrays, 64, length_buckets=[16, 32, 64])
    gold, guess = sentence_tags(arrays["label_ids"], logits.argmax(-1), arrays["sentence_id"], task.labels)
    return format_entity_table(entity_scores(gold, guess))


def _seq_of(data_dir: str) -> int:
    with open(os.path.join(data_dir, "dev_schema.json"), encoding="utf-8") as f:
        schema = json.load(f)
    return int(schema["columns"]["input_ids"]["shape"][0])


BASE_LR = 5e-5                 # MindSpore TernaryBERT's learning rate (the PyTorch release: 2e-5), ternary_mr.yaml's


def ternary_variant(config: dict) -> str:
    """What a TernaryBERT run changed from the paper's recipe (TWN, per-tensor alphas, unit loss weights, the task's
    own training data) at MindSpore TernaryBERT's lr 5e-5, in words ('' for none): LAT weights, row-wise Dense
    alphas, a prediction-loss weight other than 1, another learning rate, training data with augmented copies (an
    augment.json of tools/augment_data.py in its data.dir)."""
    parts, quant = [], config.get("quant", {})
    method = quant.get("weight_method", "twn")
    if method != "twn":
        parts.append({"lat": "LAT weights", "lat_d1": "LAT weights with D = 1"}[method])
    if quant.get("weight_rowwise"):
        parts.append("row-wise Dense alphas")
    pred = config.get("loss", {}).get("pred_weight", 1.0)
    if pred != 1.0:
        parts.append(f"prediction loss x{pred:g}")
    lr = config.get("train", {}).get("lr", BASE_LR)
    if lr != BASE_LR:
        parts.append(f"lr {lr:g}")
    aug = os.path.join(config.get("data", {}).get("dir", ""), "augment.json")
    if os.path.isfile(aug):
        with open(aug, encoding="utf-8") as f:
            parts.append(f"train data + {json.load(f)['copies']} augmented copies")
    return ", ".join(parts)


def measure(args, argv) -> dict:
    from src.runlog import git_hash
    runs = {"teacher": args.teacher_run, "student": args.student_run, "ternary": args.ternary_run,
            "width": args.width_run, "compound": args.compound_run}
    tests = dict(t.split("=", 1) for t in args.test)
    out_rows = []
    for row, run_dir in runs.items():
        r = {"row": row, "run": run_dir or None, "dev": None, "test": None, "schedule": None, "command": None,
             "git": None, "test_command": None, "fp32_dev": None}
        if run_dir:
            m = read_manifest(run_dir, missing_ok=True)
            got = compound(run_dir) if row == "compound" else {"dev": best_dev(row, run_dir),
                                                               "schedule": schedule(row, run_dir)}
            r.update(**got, command=m.get("command"), git=m.get("git"))
            if row == "student":
                td1 = os.path.join(os.path.dirname(os.path.normpath(run_dir)), "td1")
                if os.path.isdir(td1):
                    steps = [x["step"] for x in read_records(td1) if x["kind"] == "train"]
                    cfg = read_manifest(td1, missing_ok=True).get("config", {})
                    r["schedule"] = (f"td1 {steps[-1] if steps else '?'} steps x "
                                     f"{cfg.get('td1', {}).get('batch_size', '?')}, td2 {r['schedule']}")
                    r["td1_command"] = read_manifest(td1, missing_ok=True).get("command")
            if row == "ternary":
                variant = ternary_variant(m.get("config", {}))
                if variant:
                    r["variant"] = variant                              # named in its label
                # its fp32 model: the teacher_eval record, else (eval.teacher_baseline false) the dev F1 recorded
                # beside the teacher checkpoint it quantized (student.init teacher: the same model)
                base = [x for x in read_records(run_dir) if x["kind"] == "teacher_eval"]
                if base:
                    r["fp32_dev"], r["fp32_from"] = base[-1]["f1"], "teacher_eval record"
                else:
                    ckpt = read_manifest(run_dir, missing_ok=True).get("config", {}).get("teacher", {}).get("ckpt", "")
                    if ckpt and os.path.isfile(os.path.join(os.path.dirname(ckpt), "metrics.jsonl")):
                        r["fp32_dev"] = best_dev("teacher", os.path.dirname(ckpt))
                        r["fp32_from"] = f"best dev eval of {os.path.dirname(ckpt)}"
        if row in tests:
            r["test"], r["test_command"] = test_f1(tests[row])
        out_rows.append(r)
    table = per_type_table(args.teacher_run, args.data_dir, args.threads) if args.data_dir and args.teacher_run \
        else None
    return {"machine": machine(args.threads), "rows": out_rows, "per_type_dev": table,
            "load": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            "command": "python benchmarks/bench_conll.py" + (" " + shlex.join(argv) if argv else ""),
            "runs_root": os.path.abspath(args.runs_root) if args.runs_root else "",
            "commit": git_hash()}


def _pct(v, ref):
    return f"{100 * v / ref:.1f}%" if v is not None and ref else "-"


def _shown(text, root: str):
    """`text` with the runs' folder --runs_root written as <runs> (the table names the runs, not this machine's
    folders)."""
    if not root or not isinstance(text, str):
        return text
    return text.replace(root.rstrip("/") + "/", "<runs>/").replace(root.rstrip("/"), "<runs>")


def render(out: dict) -> str:
    root = out.get("runs_root", "")
    rows = {r["row"]: {k: _shown(v, root) for k, v in r.items()} for r in out["rows"]}
    teacher = rows["teacher"]
    given_only = out.get("block", "conll") != "conll"
    lines, body = [], []
    labels = {key: label + (f" ({rows[key]['variant']})" if rows[key].get("variant") else "")
              for key, (label, _, _) in ROWS.items()}
    for key, (_, ref_key, goal) in ROWS.items():
        r, label = rows[key], labels[key]
        if r["run"] is None and given_only:
            continue
        if r["run"] is None:
            body.append([label, "-", "-", "-", "-", "-", f">= {100 * goal:.0f}%" if goal else "-", "not run",
                         "-"])
            continue
        ref_dev = r["fp32_dev"] if ref_key == "fp32" else teacher["dev"] if ref_key else None
        ref_test = teacher["test"] if ref_key else None
        met = "-"
        if goal and ref_dev:
            met = "met" if r["dev"] >= goal * ref_dev else "not met"
            if r["test"] is not None and ref_test:
                met += " / " + ("met" if r["test"] >= goal * ref_test else "not met")
        body.append([label, f"{r['dev']:.4f}", "-" if r["test"] is None else f"{r['test']:.4f}",
                     {"fp32": "its fp32 model", "teacher": "teacher", None: "-"}[ref_key],
                     _pct(r["dev"], ref_dev), _pct(r["test"], ref_test), f">= {100 * goal:.0f}%" if goal else "-",
                     met, r["schedule"]])
    lines.append(markdown_table(["model", "dev entity F1", "test entity F1", "reference", "% of reference (dev)",
                                 "% of reference (test)", "goal", "met (dev / test)", "schedule"], body))
    lines.append("")
    lines.append(f"{machine_line(out['machine'])} (1-minute load average {out['load']:.1f} when the table was "
                 f"written; the runs shared the machine with other jobs). Written by `{_shown(out['command'], root)}` "
                 f"at commit {out['commit'][:12]}" + (" (<runs> = the folder of the runs)." if root else "."))
    lines.append("")
    for key, label in labels.items():
        r = rows[key]
        if r["run"] is None:
            continue
        cmds = ([f"`{r['td1_command']}`"] if r.get("td1_command") else []) + [f"`{r['command']}`"]
        lines.append(f"- {label}: {', then '.join(cmds)} (git {(r['git'] or '?')[:12]})"
                     + (f"; test: `{r['test_command']}`" if r["test_command"] else "")
                     + (f"; fp32 model's dev F1 {r['fp32_dev']:.4f} ({r['fp32_from']})" if r.get("fp32_from") else ""))
    if out["per_type_dev"]:
        lines += ["", "Teacher per entity type on dev (conlleval, %):", "", "```", out["per_type_dev"], "```"]
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    p = doc_parser(__doc__)
    p.add_argument("--teacher_run", default="", help="run_task_distill.py --phase finetune folder (<out>/teacher)")
    p.add_argument("--student_run", default="", help="phase td2 folder (<out>/td2; td1 beside it)")
    p.add_argument("--ternary_run", default="", help="run_ternary.py folder (<out>/w2e2a8)")
    p.add_argument("--width_run", default="", help="run_ofa_width.py folder (width 0.5 among its widths)")
    p.add_argument("--compound_run", default="", help="run_compress.py folder (configs/compress_conll.yaml)")
    p.add_argument("--test", action="append", default=[], metavar="ROW=PATH",
                   help=f"test-split eval of a row ({', '.join(ROWS)}): eval folder or run_eval_onnx.py output")
    p.add_argument("--data_dir", default="", help="CoNLL records: the teacher's per-type table on their dev split")
    p.add_argument("--runs_root", default="", help="a folder holding the runs: written as <runs> in the commands")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out_dir", default="output/bench/conll", help="where conll.json is written")
    p.add_argument("--from_json", default="", help="render a saved conll.json instead of reading the runs")
    p.add_argument("--block", default="conll", help="the bench:NAME block and NAME.json written; another name than "
                                                    "conll: a second table of only the rows given")
    add_results_arg(p)
    args = p.parse_args(argv)
    from src.errors import UserError
    if args.from_json:
        out = read_result(args.from_json, render, "a conll.json")
    else:
        bad = [t for t in args.test if "=" not in t or t.split("=", 1)[0] not in ROWS]
        if bad:
            raise UserError(f"--test {bad[0]}: expected ROW=PATH with ROW one of {', '.join(ROWS)}")
        if not args.teacher_run:
            raise UserError("--teacher_run: the fine-tuned teacher's folder is needed (the reference of every row)")
        out = {**measure(args, argv), "block": args.block}
        os.makedirs(args.out_dir, exist_ok=True)
        write_json(os.path.join(args.out_dir, f"{args.block}.json"), out)
    emit(out.get("block", "conll"), render(out), args.results or None)
    return out


if __name__ == "__main__":
    from src.errors import run_main
    run_main(main)
