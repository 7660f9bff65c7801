"""DynaBERT's width x depth grid on MR, staged (stage 1 width, then stage 2 depth from that supernet) against joint
(every width x depth pair trained together from the fine-tuned teacher), on one short schedule.

    python benchmarks/bench_width_grid.py --results docs/width.md             # train the three runs, then measure
    python benchmarks/bench_width_grid.py --reuse --runs_dir RUNS             # runs already in RUNS are not retrained
    python benchmarks/bench_width_grid.py --from_json output/bench/width_grid.json --results docs/width.md

Runs (run_ofa_width.py, configs/ofa_mr.yaml, widths 1.0 0.75 0.5 0.25, depths 1.0 0.75 0.5, one dev evaluation at the
last step, so each score is the last step's, no selection on dev):
  stage1  widths only, --steps1 steps, distilled from the fine-tuned teacher (importance rewiring first);
  stage2  train.distill_from supernet from stage1/supernet.ckpt, --steps2 steps, loss.lambda2 1.0 (DynaBERT's
          depth_lambda2);
  joint   the whole grid at once from the fine-tuned teacher, --steps1 + --steps2 steps (as many optimizer steps as
          the two stages together), loss.lambda2 0.1 (DynaBERT's width_lambda2, the run's default).
Per grid point: dev accuracy of both (each run's evaluation at its last step), % of the fine-tuned
teacher, parameters, and onnxruntime latency of the sliced sub-network (batch 1, seq 64, as bench_export's first
cell). Each staged sub-network is sliced from stage 2's supernet.ckpt, exported to ONNX and its logits compared with
the supernet's view (max |diff|); each joint one is sliced and compared in MindSpore. Writes
<out_dir>/width_grid.json; --from_json renders a saved one again.
"""
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import (ROOT, add_timing_args, emit, machine, machine_line, markdown_table,  # noqa: E402
                               measured_or_saved, rounds_and_budget, time_call, write_json)
from src.runlog import read_manifest, read_records  # noqa: E402
from src.cli import doc_parser  # noqa: E402

WIDTHS = (1.0, 0.75, 0.5, 0.25)
DEPTHS = (1.0, 0.75, 0.5)
GOAL = (0.5, 0.5, 98.0)             # width, depth, % of the teacher the staged sub-network should keep


def parse_args(argv=None):
    p = doc_parser(__doc__)
    add_timing_args(p, "seconds of timed onnxruntime calls per sub-network and round")
    p.add_argument("--runs_dir", default="output/bench/width_grid_runs", help="where the three training runs go")
    p.add_argument("--reuse", action="store_true", help="keep a run of --runs_dir that already finished, and wait "
                                                         "for one that was started there and is still training")
    p.add_argument("--steps1", type=int, default=80, help="stage-1 steps (joint: steps1 + steps2)")
    p.add_argument("--steps2", type=int, default=80, help="stage-2 steps")
    p.add_argument("--train_threads", type=int, default=2)
    p.add_argument("--config", default="configs/ofa_mr.yaml")
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--note", default="", help="how the runs shared the machine (written under the table)")
    p.add_argument("--from_json", default="", help="render a saved width_grid.json again, without training or timing")
    p.add_argument("--stage3", nargs=2, type=float, action="append", default=[], metavar=("WIDTH", "DEPTH"),
                   help="also run stage 3 for this grid point (repeatable): slice it from stage 2's supernet and "
                        "distil it alone from the fine-tuned teacher (run_task_distill.py --phase td2); with "
                        "--from_json the saved grid gets the stage-3 rows added (RUNS/stage2 must still exist)")
    p.add_argument("--stage3_config", default="configs/td_mr.yaml", help="stage 3's td2 settings")
    return p.parse_args(argv)


def run_args(args, name: str) -> list:
    """run_ofa_width.py flags of one of the three runs."""
    grid = ["--width_mult_list", *map(str, WIDTHS)]
    common = ["--config_path", args.config, "--threads", str(args.train_threads), "--latency.runs", "0",
              "--log_every", "10", "--output_dir", os.path.join(args.runs_dir, name)]
    if name == "stage1":
        steps, extra = args.steps1, ["--depth_mult_list", "1.0"]
    elif name == "stage2":
        steps = args.steps2
        extra = ["--depth_mult_list", *map(str, DEPTHS), "--train.distill_from", "supernet", "--supernet.init_ckpt",
                 os.path.join(args.runs_dir, "stage1", "supernet.ckpt"), "--loss.lambda2", "1.0"]
    else:
        steps, extra = args.steps1 + args.steps2, ["--depth_mult_list", *map(str, DEPTHS)]
    return grid + extra + ["--train.max_steps", str(steps), "--eval.every", str(steps)] + common


def _trained(run_dir: str) -> bool:
    """The run finished training: its last evaluation (at train.max_steps) is recorded and the last supernet saved
    (the table the run writes after that is not needed here: the scores are the last eval record's)."""
    try:
        steps = read_manifest(run_dir, missing_ok=True)["config"]["train"]["max_steps"]
        last = read_records(run_dir, "eval", missing_ok=True)
    except (OSError, ValueError, KeyError):
        return False
    state = os.path.join(run_dir, "state")
    return bool(last) and last[-1]["step"] == steps and os.path.isfile(os.path.join(run_dir, "supernet.ckpt")) \
        and not (os.path.isdir(state) and os.listdir(state))


def _teacher_ckpt(run_dir: str) -> str:
    """The fine-tuned teacher a width run distilled from (its manifest's teacher.ckpt)."""
    return read_manifest(run_dir)["config"]["teacher"]["ckpt"]


def _label(w: float, d: float) -> str:
    return f"{w:.3f}" if d == 1.0 else f"{w:.3f}_d{d:.3f}"


def train(args, name: str) -> dict:
    """One run (skipped with --reuse when it finished training): its dev scores by (width, depth) from its last
    evaluation, teacher score, command, training wall time (first to last record)."""
    run_dir = os.path.join(args.runs_dir, name)
    while args.reuse and os.path.isfile(os.path.join(run_dir, "manifest.json")) and not _trained(run_dir):
        time.sleep(30)                              # started elsewhere, still training
    if not (args.reuse and _trained(run_dir)):
        cmd = [sys.executable, os.path.join(ROOT, "run_ofa_width.py")] + run_args(args, name)
        print("training:", " ".join(cmd[1:]), flush=True)
        if subprocess.run(cmd, cwd=ROOT).returncode != 0:
            from src.errors import UserError
            raise UserError(f"the {name} run failed (its log: {run_dir}/log.txt)")
    manifest = read_manifest(run_dir)
    times = [r["time"] for kind in ("teacher_eval", "train", "eval") for r in read_records(run_dir, kind)]
    last = read_records(run_dir, "eval")[-1]
    depths = DEPTHS if name != "stage1" else (1.0,)
    rows = {f"{w:.3f}_{d:.3f}": {"width": w, "depth": d, "step": last["step"],
                                 "metric": last["acc" if (w, d) == (1.0, 1.0) else f"acc_w{_label(w, d)}"]}
            for d in depths for w in WIDTHS}
    teacher = read_records(run_dir, "teacher_eval")[-1]["acc"]
    return {"rows": rows, "teacher_acc": teacher, "command": manifest["command"], "git": manifest["git"][:12],
            "train_s": max(times) - min(times), "dir": run_dir}


def measure(args) -> dict:
    rounds, budget = rounds_and_budget(args)
    runs = {name: train(args, name) for name in ("stage1", "stage2")}
    from src import runtime
    runtime.init_context("CPU", "graph", threads=args.threads)
    points = []
    work = os.path.join(args.out_dir, "width_grid_onnx")
    os.makedirs(work, exist_ok=True)
    for d in DEPTHS:
        for w in WIDTHS:
            point = {"width": w, "depth": d}
            point.update(_staged_onnx(runs["stage2"]["dir"], w, d, args.seq, work, rounds, budget, args.threads))
            points.append(point)
            print(f"w {w} d {d}: params {point['params']:,} ort {point['ort_ms']:.2f} ms, parity staged "
                  f"{point['staged_parity']:.1e}", flush=True)
    runs["joint"] = train(args, "joint")
    for point in points:
        point["joint_parity"] = _joint_parity(runs["joint"]["dir"], point["width"], point["depth"], args.seq)
    return {"machine": machine(args.threads), "steps1": args.steps1, "steps2": args.steps2, "seq": args.seq,
            "rounds": rounds, "note": args.note,
            "runs": {k: {x: v for x, v in r.items() if x != "dir"} for k, r in runs.items()},
            "points": points}


def _sample(seq: int, vocab: int):
    import numpy as np
    rng = np.random.default_rng(0)
    return (rng.integers(1, vocab, (1, seq)).astype(np.int32), np.zeros((1, seq), np.int32),
            np.ones((1, seq), np.int32))


def _view_logits(run_dir, w, d, inputs):
    """(supernet config, logits of the run's last supernet at width w and depth d)."""
    import mindspore as ms
    from src.checkpoint import load_into
    from src.tinybert_model import LogitsOnly, build_classifier, load_bert_config
    from src.width import WidthView, width_spec
    cfg = load_bert_config(os.path.join(run_dir, "config.json"), "supernet config")
    supernet = build_classifier(cfg, "dense")
    load_into(supernet, os.path.join(run_dir, "supernet.ckpt"), "supernet", strict=True)
    view = LogitsOnly(WidthView(supernet, width_spec(cfg, w, d)))
    view.set_train(False)
    return cfg, view(*[ms.Tensor(x) for x in inputs]).asnumpy()


def _staged_onnx(run_dir, w, d, seq, work, rounds, budget, threads) -> dict:
    """The staged sub-network at (w, d): sliced from stage 2's supernet.ckpt to files, rebuilt by the export path,
    exported to ONNX, timed in onnxruntime (batch 1), its logits against the supernet's view."""
    import numpy as np
    from benchmarks.bench_export import _spec, build, export_file
    from src.export import OnnxRunner
    from src.tinybert_model import count_params, load_bert_config
    from src.width import slice_checkpoint
    folder = os.path.join(work, f"w{w:.3f}_d{d:.3f}")
    ckpt, conf = slice_checkpoint(os.path.join(run_dir, "supernet.ckpt"), os.path.join(run_dir, "config.json"), w,
                                  folder, depth_mult=d)
    sub_cfg = load_bert_config(conf, "sub-model config")
    model = build(_spec("sub", sub_cfg, ckpt, conf), "gelu_erf_poly")
    path, _ = export_file(model, os.path.join(folder, "model"), "ONNX", 1, seq, sub_cfg.vocab_size)
    inputs = _sample(seq, sub_cfg.vocab_size)
    runner = OnnxRunner(path, threads)
    got = runner(*inputs)
    _, ref = _view_logits(run_dir, w, d, inputs)
    ms_rounds = [time_call(lambda: runner(*inputs), budget_s=budget) for _ in range(rounds)]
    return {"params": count_params(model), "layers": sub_cfg.num_hidden_layers, "heads": sub_cfg.heads(0),
            "ffn": sub_cfg.ffn(0), "ort_ms": 1e3 * float(np.median(ms_rounds)),
            "staged_parity": float(np.abs(got - ref).max())}


def _joint_parity(run_dir, w, d, seq) -> float:
    """Max |logit diff| of the joint run's sub-network sliced in memory (slice_to_width) and its supernet view."""
    import mindspore as ms
    import numpy as np
    from src.checkpoint import load_into
    from src.tinybert_model import LogitsOnly, build_classifier, load_bert_config
    from src.width import slice_to_width
    inputs = _sample(seq, load_bert_config(os.path.join(run_dir, "config.json"), "supernet config").vocab_size)
    cfg, ref = _view_logits(run_dir, w, d, inputs)
    supernet = build_classifier(cfg, "dense")
    load_into(supernet, os.path.join(run_dir, "supernet.ckpt"), "supernet", strict=True)
    sub = LogitsOnly(slice_to_width(supernet, w, d))
    sub.set_train(False)
    return float(np.abs(sub(*[ms.Tensor(x) for x in inputs]).asnumpy() - ref).max())


def stage3(args, w: float, d: float, teacher_ckpt: str) -> dict:
    """Stage 3 of one grid point: slice (tools/slice_width.py) from RUNS/stage2/supernet.ckpt, then td2 from the
    fine-tuned teacher (soft CE to its logits, --stage3_config's td2 schedule); skipped when RUNS/stage3_<label>
    already holds a finished td2. Its best dev acc (one evaluation per epoch), steps and commands."""
    from src.errors import UserError
    out = os.path.join(args.runs_dir, f"stage3_{_label(w, d)}")
    sub, td2 = os.path.join(out, "sub"), os.path.join(out, "td2")
    cmds = [["tools/slice_width.py", "--ckpt", os.path.join(args.runs_dir, "stage2", "supernet.ckpt"),
             "--width_mult", str(w), "--depth_mult", str(d), "--output_dir", sub],
            ["run_task_distill.py", "--config_path", args.stage3_config, "--phase", "td2", "--threads",
             str(args.train_threads), "--teacher.ckpt", teacher_ckpt, "--student.config",
             os.path.join(sub, "config.json"), "--student.td1_ckpt", os.path.join(sub, "model.ckpt"),
             "--log_every", "20", "--output_dir", out]]
    if not (args.reuse and any(r["kind"] == "train" for r in read_records(td2, missing_ok=True))
            and os.path.isfile(os.path.join(td2, "best.ckpt"))):
        for cmd in cmds:
            print("stage 3:", " ".join(cmd), flush=True)
            if subprocess.run([sys.executable, os.path.join(ROOT, cmd[0])] + cmd[1:], cwd=ROOT).returncode != 0:
                raise UserError(f"stage 3 of w {w:g} x d {d:g} failed ({cmd[0]}; its output: {out})")
    evals = read_records(td2, "eval")
    steps = [r["step"] for r in read_records(td2, "train")]
    git = read_manifest(td2)["git"][:12]
    return {"width": w, "depth": d, "acc": max(e["acc"] for e in evals), "evals": len(evals),
            "steps": steps[-1] if steps else 0, "commands": [" ".join(c) for c in cmds], "git": git}


def render(out) -> str:
    runs, pts = out["runs"], out["points"]
    t = runs["stage1"]["teacher_acc"]
    full = next(p["ort_ms"] for p in pts if p["width"] == 1.0 and p["depth"] == 1.0)
    rows, worse = [], []
    for p in pts:
        key = f"{p['width']:.3f}_{p['depth']:.3f}"
        s, j = runs["stage2"]["rows"][key]["metric"], runs["joint"]["rows"][key]["metric"]
        s1 = runs["stage1"]["rows"].get(key, {}).get("metric")
        if s < j:
            worse.append(f"w {p['width']:g} x d {p['depth']:g} ({100 * (s - j) / t:+.2f} pts of teacher)")
        rows.append([f"{p['width']:.2f}", f"{p['depth']:.2f}", p["layers"], p["heads"], p["ffn"], p["params"],
                     f"{s1:.4f}" if s1 is not None else "-", f"{s:.4f}", f"{100 * s / t:.1f} %", f"{j:.4f}",
                     f"{100 * j / t:.1f} %", f"{100 * (s - j) / t:+.2f}", f"{p['ort_ms']:.2f}",
                     f"{full / p['ort_ms']:.2f}x", f"{max(p['staged_parity'], p['joint_parity']):.0e}"])
    gw, gd, gp = GOAL
    goal = next(r for r, p in zip(rows, pts) if p["width"] == gw and p["depth"] == gd)
    g_pct = float(goal[8].rstrip(" %"))
    mins = {k: r["train_s"] / 60 for k, r in runs.items()}
    head = (f"Schedule: stage 1 {out['steps1']} steps (widths only), stage 2 {out['steps2']} steps from it; joint "
            f"{out['steps1'] + out['steps2']} steps; batch 16, seq {out['seq']}, lr 5e-5, one dev evaluation at the "
            f"last step (no selection). Training wall time: stage 1 {mins['stage1']:.1f} min, stage 2 "
            f"{mins['stage2']:.1f} min, joint {mins['joint']:.1f} min. Fine-tuned teacher dev acc {t:.4f}.")
    table = markdown_table(["width", "depth", "layers", "heads", "FFN", "params", "after stage 1", "staged acc",
                            "staged % teacher", "joint acc", "joint % teacher", "staged - joint (pts)",
                            f"ORT ms (b1, s{out['seq']})", "speed-up", "slice parity"], rows)
    verdict = (f"Goal width {gw:g} x depth {gd:g} staged >= {gp:g} % of the teacher: {g_pct:.1f} %, "
               f"{'met' if g_pct >= gp else 'NOT met'}. Staged >= joint at every grid point: "
               + ("yes." if not worse else "no, lower at " + ", ".join(worse) + "."))
    cmds = "\n".join(f"- {k}: `{_runs_dir_named(r['command'])}` (git {r['git']})" for k, r in runs.items())
    s3_lines = []
    for r in out.get("stage3", []):
        key = f"{r['width']:.3f}_{r['depth']:.3f}"
        before = runs["stage2"]["rows"][key]["metric"]
        pct = 100 * r["acc"] / t
        goal_note = "" if (r["width"], r["depth"]) != (gw, gd) else \
            f"; goal >= {gp:g} % {'met' if pct >= gp else 'NOT met'}"
        s3_lines.append(f"- w {r['width']:g} x d {r['depth']:g}: stage 3 acc {r['acc']:.4f} = {pct:.1f} % of the "
                        f"teacher (staged before it {100 * before / t:.1f} %, {pct - 100 * before / t:+.1f} pts), "
                        f"{r['steps']} td2 steps, best of {r['evals']} dev evaluation(s){goal_note}")
        cmds += "".join(f"\n- stage 3 w {r['width']:g} x d {r['depth']:g}: `{_runs_dir_named(c)}` (git {r['git']})"
                        for c in r["commands"])
    cmds = "Runs (RUNS = --runs_dir):\n" + cmds
    if s3_lines:
        verdict += ("\n\nStage 3 (the chosen sub-network sliced from stage 2 and distilled alone from the fine-tuned "
                    "teacher: td2 soft CE to its logits; DynaBERT's final fine-tuning uses the labels only). It gives "
                    "up the other sub-networks:\n" + "\n".join(s3_lines))
    return "\n\n".join([head, table, verdict, machine_line(out["machine"]) + "; onnxruntime median of "
                        f"{out['rounds']} rounds; slice parity = max |logit diff| of the sliced plain model (staged: "
                        f"its ONNX export) against the supernet's view." + (f" {out['note']}" if out.get("note")
                                                                             else ""), cmds])


def _runs_dir_named(command: str) -> str:
    """A run's command line with the machine's --runs_dir folder written as RUNS (the table names no local paths)."""
    import re
    return re.sub(r"\S*/(stage1|stage2|joint|stage3_[0-9._d]+)\b", r"RUNS/\1", command)


def main(argv=None):
    args = parse_args(argv)
    t0 = time.time()
    out = measured_or_saved(args, measure, render, "width_grid.json", "a width_grid.json")
    if args.stage3:
        teacher = _teacher_ckpt(os.path.join(args.runs_dir, "stage1"))
        done = {(r["width"], r["depth"]): r for r in out.get("stage3", [])}
        for w, d in args.stage3:
            done[(w, d)] = stage3(args, w, d, teacher)
        out["stage3"] = list(done.values())
        write_json(os.path.join(args.out_dir, "width_grid.json"), out)
    emit("width_grid", render(out), args.results or None)
    print(f"({time.time() - t0:.0f} s)")
    return out


if __name__ == "__main__":
    from src.errors import run_main
    run_main(main, sys.argv[1:])
