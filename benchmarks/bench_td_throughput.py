"""Task-distillation training throughput: this project (MindSpore graph mode, length buckets, cached teacher logits)
vs the equivalent PyTorch + HF transformers loop (benchmarks/torch_td_loop.py), same shapes, losses, optimizer and
thread count, in one run.

    python benchmarks/bench_td_throughput.py                 # MiniLM-L6 teacher -> student, batch 32, MR lengths
    python benchmarks/bench_td_throughput.py --quick         # tiny shapes (tests); torch row skipped if absent
    python benchmarks/bench_td_throughput.py --results docs/results.md

Step rows are median seconds per step on identical fixed-shape batches. Epoch rows: one epoch of the MR train
split (row lengths from data/mr) as each side runs it - the project with the length buckets, batch sizes and
teacher-logit caching of --config (configs/td_mr.yaml: phase 2 caches the teacher logits once per run, bucketed,
at the eval batch size; timed and included); the PyTorch loop padded to max_seq_length with the teacher run live,
as a plain loop does. Epoch rows are steady state; the one-off graph compiles of the project (one per bucket and
graph) are a row of their own. Goal (the verdict line under the table): project epoch <= 0.5x the PyTorch loop's.
The torch side runs in --torch_python (default: this python if it has torch + transformers, else
.venv-bench/bin/python); without one the torch columns say "skipped". Writes output/bench/td_throughput.json.
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import ROOT, emit, machine, machine_line, markdown_table, measured_or_saved  # noqa: E402
from src.batching import bucket_of  # noqa: E402
from src.dataset import load_split  # noqa: E402
from src.tinybert_model import build_classifier, load_bert_config  # noqa: E402
from src.cli import doc_parser  # noqa: E402

TORCH_SKIPPED = "skipped: no python with torch + transformers (pip install -r requirements-bench.txt)"


def torch_python(arg: str):
    cands = [arg] if arg else [sys.executable, os.path.join(ROOT, ".venv-bench", "bin", "python")]
    for py in cands:
        if py and os.path.exists(py) and subprocess.run([py, "-c", "import torch, transformers"],
                                                        capture_output=True).returncode == 0:
            return py
    return None


def configs(args, fused: bool):
    """(teacher, student) BertConfig; `fused`: the fused CPU kernels, as the pipeline runs --config."""
    from src.tinybert_model import BertConfig
    if args.quick:
        t = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=64, max_position_embeddings=64, fused_cpu_kernels=fused)
        return t, t.replace(num_hidden_layers=1, hidden_size=16, intermediate_size=32)
    t = load_bert_config(args.teacher_config, "--teacher_config", fused_cpu_kernels=fused)
    if os.path.exists(args.student_config):
        s = load_bert_config(args.student_config, "--student_config", fused_cpu_kernels=fused)
    else:     # the GD student shape of configs/gd.yaml is not written yet: TinyBERT-4 shape with the teacher's vocab
        s = t.replace(num_hidden_layers=4, hidden_size=312, num_attention_heads=12, intermediate_size=1200)
    return t, s


def lengths(args, seq):
    """Token counts of the training rows (MR train), or a synthetic spread in quick mode / without data."""
    path = os.path.join(args.data_dir, "train.tf_record")
    if not args.quick and os.path.exists(path):
        a = load_split(args.data_dir, "train", "tfrecord", seq, None, columns=("input_ids", "input_mask"))
        return a["input_mask"].sum(axis=1)
    return np.random.default_rng(0).integers(3, seq + 1, size=args.rows)


def bucket_rows(lens, buckets):
    """Rows per bucket length (the batchers' rule, src/batching.py: each row goes to the shortest bucket that
    holds it)."""
    bs = sorted(set(buckets))
    idx = bucket_of(np.asarray(lens), bs)
    return {bs[b]: int((idx == b).sum()) for b in range(len(bs))}


def pipeline_settings(path: str):
    """(length buckets, phase-1 train batch, eval batch, seed) of a task-distillation config, so the epoch rows
    follow what run_task_distill.py does with it."""
    from src.config import load_config
    cfg = load_config(path, [])
    return list(cfg.data.length_buckets), int(cfg.td1.batch_size), int(cfg.eval.batch_size), int(cfg.seed)


def cache_batches(lens, seq, buckets, batch, seed, epochs=3):
    """(per epoch {bucket: (live batches, cached batches)} of a td1 run with cache_teacher_outputs, {bucket: rows in
    no batch of epoch 1}): ArrayBatcher's real order replayed (a batch reads the cache only when every row of it was
    in an earlier batch; the rows no epoch-1 batch holds are those phase 2 still runs the teacher for)."""
    from src.batching import ArrayBatcher
    mask = (np.arange(seq)[None, :] < np.asarray(lens)[:, None]).astype(np.int32)
    batcher = ArrayBatcher({"input_ids": mask, "input_mask": mask, "row": np.arange(len(lens))}, batch, seed=seed,
                           length_buckets=buckets)
    seen, out, unseen = np.zeros(len(lens), bool), [], {}
    for epoch in range(1, epochs + 1):
        counts = {L: [0, 0] for L in batcher.buckets}
        for bt in batcher.epoch(epoch):
            counts[bt["input_ids"].shape[1]][int(seen[bt["row"]].all())] += 1
            seen[bt["row"]] = True
        out.append(counts)
        if epoch == 1:
            unseen = {L: int(((batcher.bucket_of == i) & ~seen).sum()) for i, L in enumerate(batcher.buckets)}
    return out, unseen


def ms_side(args, tcfg, scfg, seqs, steps):
    import mindspore as ms
    from src import teacher_cache
    from src.distill import (CachedLogitsPhase2Loss, CachedTeacherPhase1Loss, DistillLossConfig, FitDense,
                             TaskDistillPhase1Loss, TaskDistillPhase2Loss)
    from src.train_step import TrainStep, WarmupLinearDecayLR, build_optimizer
    from src.export import sample_inputs
    from src.losses import resolve_layer_map
    from src.tinybert_model import LogitsOnly
    ms.set_seed(0)
    teacher = build_classifier(tcfg, "dense")
    student = build_classifier(scfg, "dense")
    fit = FitDense(scfg.hidden_size, tcfg.hidden_size)
    att, hid = resolve_layer_map(tcfg.num_hidden_layers, scfg.num_hidden_layers)
    lcfg = DistillLossConfig()
    b = args.batch

    def make_step(loss_net):
        lr = WarmupLinearDecayLR(1e-4, 1000, 100)
        step = TrainStep(loss_net, build_optimizer(loss_net.trainable_params(), lr, 1e-4, 1e-6), 1.0, "global")
        step.set_train(True)
        return step

    def data(seq):
        ids, types, mask = sample_inputs(b, seq, tcfg.vocab_size, seed=seq)
        labels = np.random.default_rng(seq).integers(0, 2, size=(b,)).astype(np.int32)
        return [ms.Tensor(ids), ms.Tensor(np.zeros_like(types)), ms.Tensor(mask), ms.Tensor(labels)]

    def timed(cell, inputs, n=steps):
        """(median seconds per call after the first, seconds of the first call = compile + one call)."""
        first = time.perf_counter()
        out = cell(*inputs)[0].asnumpy()
        compile_s = time.perf_counter() - first
        ts = []
        for _ in range(n):
            t0 = time.perf_counter()
            out = cell(*inputs)[0].asnumpy()
            ts.append(time.perf_counter() - t0)
        if not np.isfinite(out).all():
            raise FloatingPointError("MindSpore output is not finite")
        return statistics.median(ts), compile_s

    out = {"phase1": {}, "phase1_filling": {}, "phase1_cached": {}, "phase1_cache_bytes_per_row": {},
           "phase2_live": {}, "phase2_cached": {}, "teacher_fwd_per_row": {}, "compile_s": {}}
    p1 = make_step(TaskDistillPhase1Loss(student, teacher, fit, att, hid, lcfg))
    for seq in seqs:
        out["phase1"][seq], out["compile_s"][f"phase1_{seq}"] = timed(p1, data(seq))
    # td1.cache_teacher_outputs: the pipeline's own step (src/teacher_cache.py) on one batch of rows 0..b-1 per
    # bucket: "filling" = the live step returning the teacher tensors + storing them (the cache is emptied before
    # each call), "cached" = the student-only step fed from the cache
    live = make_step(TaskDistillPhase1Loss(student, teacher, fit, att, hid, lcfg, return_targets=True))
    cached = teacher_cache.cached_step(live, CachedTeacherPhase1Loss(student, fit, len(att), len(hid), lcfg))
    for seq in seqs:
        cache = teacher_cache.Phase1TeacherCache([seq], np.zeros(b, np.int64), len(hid), len(att),
                                                 tcfg.hidden_size, tcfg.num_attention_heads)
        caching = teacher_cache.Phase1Step(live, teacher_cache.TeacherLogits(b, seq), cached, cache)
        d = data(seq) + [ms.Tensor(np.arange(b, dtype=np.int32))]

        def filling(*inputs):
            cache.filled[:] = False
            return caching(*inputs)
        out["phase1_filling"][seq], out["compile_s"][f"phase1_filling_{seq}"] = timed(filling, d)
        out["phase1_cached"][seq], out["compile_s"][f"phase1_cached_{seq}"] = timed(caching, d)
        out["phase1_cache_bytes_per_row"][seq] = cache.nbytes // b
    p2 = make_step(TaskDistillPhase2Loss(student, teacher, lcfg, "classification"))
    out["phase2_live"][seqs[-1]], out["compile_s"]["phase2_live"] = timed(p2, data(seqs[-1]))
    p2c = make_step(CachedLogitsPhase2Loss(student, lcfg, "classification"))
    for seq in seqs:
        d = data(seq)
        logits = ms.Tensor(np.random.default_rng(1).standard_normal((b, tcfg.num_labels)).astype(np.float32))
        out["phase2_cached"][seq], out["compile_s"][f"phase2_cached_{seq}"] = timed(p2c, d + [logits])
    net = LogitsOnly(teacher)        # the phase-2 logit cache: teacher inference per bucket at the eval batch size
    net.set_train(False)
    eb = args.eval_batch
    for seq in seqs:
        ids, types, mask = sample_inputs(eb, seq, tcfg.vocab_size)
        t_in = [ms.Tensor(ids), ms.Tensor(types), ms.Tensor(mask)]
        per_batch, out["compile_s"][f"teacher_infer_{seq}"] = timed(net, t_in, max(1, steps // 2))
        out["teacher_fwd_per_row"][seq] = per_batch / eb
    return out


def torch_side(py, args, tcfg, scfg, seqs, steps):
    from src.losses import resolve_layer_map
    att, hid = resolve_layer_map(tcfg.num_hidden_layers, scfg.num_hidden_layers)
    keys = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
            "max_position_embeddings", "type_vocab_size", "layer_norm_eps", "hidden_dropout_prob",
            "attention_probs_dropout_prob")

    def hf(c):
        d = {k: getattr(c, k) for k in keys}
        d.update(hidden_act="gelu", num_labels=c.num_labels)
        return d
    spec = {"teacher": hf(tcfg), "student": hf(scfg), "attention_map": list(att), "hidden_map": list(hid),
            "batch": args.batch, "seqs": list(seqs), "steps": steps, "threads": args.threads}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
    try:
        r = subprocess.run([py, os.path.join(ROOT, "benchmarks", "torch_td_loop.py"), f.name], capture_output=True,
                           text=True, timeout=3600)
    finally:
        os.remove(f.name)
    if r.returncode != 0:
        raise RuntimeError(f"torch loop failed: {r.stderr.strip()[-800:]}")
    res = json.loads(r.stdout.strip().splitlines()[-1])
    for k in ("phase1", "phase2"):
        res[k] = {int(s): v for s, v in res[k].items()}
    return res


def parse_args(argv=None):
    p = doc_parser(__doc__)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--eval_batch", type=int, default=None)
    p.add_argument("--seq_length", type=int, default=None)
    p.add_argument("--config", default="configs/td_mr.yaml",
                   help="task-distillation config whose length buckets and batch sizes the epoch rows use")
    p.add_argument("--buckets", type=int, nargs="+", default=None, help="length buckets (default: --config's)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per measurement")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--torch_runs", type=int, default=3, help="torch loop processes (median of their medians)")
    p.add_argument("--rows", type=int, default=6824, help="rows per epoch when no data is read (quick)")
    p.add_argument("--teacher_config", default="output/minilm/config.json")
    p.add_argument("--student_config", default="output/gd/config.json")
    p.add_argument("--data_dir", default="data/mr")
    p.add_argument("--torch_python", default="")
    p.add_argument("--out_dir", default="output/bench")
    p.add_argument("--from_json", default="", help="print (and with --results write) the table of a saved "
                                                   "td_throughput.json again, without timing anything")
    from tools.marked_blocks import add_results_arg
    add_results_arg(p, what="the table")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    out = measured_or_saved(args, measure, render, "td_throughput.json", "a td_throughput.json", to_json=_jsonable)
    emit("td_throughput", render(out), args.results or None)
    return out


def measure(args) -> dict:
    """Both sides' step times and the epoch, cache and compile rows built from them: the dict td_throughput.json
    saves (render needs nothing else)."""
    q = args.quick
    cfg_buckets, cfg_batch, cfg_eval_batch, seed = pipeline_settings(args.config) if not q else ([8, 16], 4, 4, 0)
    args.batch = args.batch or cfg_batch
    args.eval_batch = args.eval_batch or cfg_eval_batch
    seq = args.seq_length or (16 if q else 64)
    buckets = sorted(set(args.buckets or cfg_buckets) | {seq})
    buckets = [x for x in buckets if x <= seq]
    steps = args.steps or (2 if q else 8)

    from src import runtime
    runtime.init_context("CPU", "graph", threads=args.threads)
    from src.config import load_config
    run_cfg = load_config(args.config, [])
    fused, kernels = runtime.kernel_choice(run_cfg)
    tcfg, scfg = configs(args, fused)
    lens = lengths(args, seq)
    if q:
        lens = lens[:args.rows]
    py = torch_python(args.torch_python)
    # the torch loop's step time moves 15-30 % between processes on this shared box (1.20-1.64 s for the same
    # phase-1 step): it runs --torch_runs times, one before the MindSpore side and the rest after, and each
    # measure is the median of the runs' medians (every run is kept in the JSON)
    runs = max(1, args.torch_runs)
    th_runs = [torch_side(py, args, tcfg, scfg, [seq], steps)] if py else []
    ms_res = ms_side(args, tcfg, scfg, buckets, steps)
    th_runs += [torch_side(py, args, tcfg, scfg, [seq], steps) for _ in range(runs - 1)] if py else []
    th = None
    if th_runs:
        th = dict(th_runs[0])
        for k in ("phase1", "phase2"):
            th[k] = {seq: statistics.median(r[k][seq] for r in th_runs)}
        th["runs"] = th_runs
    out = {"machine": machine(args.threads), "quick": q, "batch": args.batch, "eval_batch": args.eval_batch,
           "seq": seq, "buckets": buckets, "steps": steps, "config": args.config, "fused_cpu_kernels": fused,
           "kernels": kernels, "teacher": tcfg.to_dict(), "student": scfg.to_dict(), "mindspore": ms_res,
           "torch": th, "torch_python": py, "torch_processes": len(th_runs)}
    out.update(epoch_rows(ms_res, th, lens, seq, buckets, args.batch, seed))
    return out


def epoch_rows(ms_res, th, lens, seq, buckets, b, seed) -> dict:
    """The table rows (step, epoch, cache and compile rows) from the measured step times and the split's row
    lengths, with the totals the verdict lines quote."""
    rows_per = bucket_rows(lens, buckets)
    nb = {L: n // b for L, n in rows_per.items()}     # ArrayBatcher drops each bucket's remainder
    n_rows = int(len(lens))
    full_batches = n_rows // b
    trained = {"project": sum(nb.values()) * b, "torch": full_batches * b}   # rows an epoch trains
    ms_ep1 = sum(n * ms_res["phase1"][L] for L, n in nb.items())
    ms_cache = sum(n * ms_res["teacher_fwd_per_row"][L] for L, n in rows_per.items())
    ms_ep2 = ms_cache + sum(n * ms_res["phase2_cached"][L] for L, n in nb.items())
    c = ms_res["compile_s"]      # what one TD run compiles: a phase-1, a logit-cache and a phase-2 graph per bucket
    ms_compile = sum(c[f"phase1_{L}"] + c[f"teacher_infer_{L}"] + c[f"phase2_cached_{L}"] for L in buckets)
    # with td1.cache_teacher_outputs the phase-1 run compiles its live graph (with targets) and the cached one
    ms_compile_cached = ms_compile + sum(c[f"phase1_filling_{L}"] + c[f"phase1_cached_{L}"] - c[f"phase1_{L}"]
                                         for L in buckets)
    rows = []

    def add(name, ms_s, th_s, unit):
        if unit == "step":
            rows.append([name, b / ms_s, (b / th_s) if th_s else None, ms_s, th_s,
                         (ms_s / th_s) if th_s else None])
        else:                           # epochs: the rows each side trains (whole batches only) per second
            rows.append([name, trained["project"] / ms_s, (trained["torch"] / th_s) if th_s else None, ms_s, th_s,
                         (ms_s / th_s) if th_s else None])
    t1 = th["phase1"][seq] if th else None
    t2 = th["phase2"][seq] if th else None
    th_ep1 = t1 * full_batches if th else None          # the torch loop: every epoch padded to seq, teacher live
    th_ep2 = t2 * full_batches if th else None
    th_total = th_ep1 + th_ep2 if th else None
    add(f"TD phase 1 step (teacher fwd + student fwd/bwd), b{b} s{seq}", ms_res["phase1"][seq], t1, "step")
    add(f"TD phase 2 step, teacher live, b{b} s{seq}", ms_res["phase2_live"][seq], t2, "step")
    add(f"TD phase 2 step, cached teacher logits (torch: live), b{b} s{seq}", ms_res["phase2_cached"][seq], t2,
        "step")
    add(f"TD phase 1 step, filling the teacher cache (torch: live), b{b} s{seq}", ms_res["phase1_filling"][seq],
        t1, "step")
    add(f"TD phase 1 step, teacher outputs from the cache (torch: live), b{b} s{seq}", ms_res["phase1_cached"][seq],
        t1, "step")
    add(f"TD phase 1 epoch, {n_rows} rows, {trained['project']} trained in whole batches (project: buckets "
        f"{buckets}; torch: {trained['torch']})", ms_ep1, th_ep1, "epoch")
    hits, unseen = cache_batches(lens, seq, buckets, b, seed)
    ms_p1 = []
    for e, counts in enumerate(hits, 1):
        ms_p1.append(sum(nl * ms_res["phase1_filling"][L] + nc * ms_res["phase1_cached"][L]
                         for L, (nl, nc) in counts.items()))
        share = sum(nc for _, nc in counts.values()) / max(1, sum(nl + nc for nl, nc in counts.values()))
        add(f"TD phase 1 epoch {e} with td1.cache_teacher_outputs ({100 * share:.0f}% of batches from the cache)",
            ms_p1[-1], th_ep1, "epoch")
    cache_gb = sum(n * ms_res["phase1_cache_bytes_per_row"][L] for L, n in rows_per.items()) / 1e9
    ms_train2 = ms_ep2 - ms_cache
    # after a full phase-1 epoch, phase 2 takes phase 1's teacher logits and runs the teacher only over the rows
    # no phase-1 batch held, plus the check of 64 kept rows (src/teacher_cache.py logits_for_phase2)
    check = min(64, n_rows) * statistics.mean(ms_res["teacher_fwd_per_row"].values())
    ms_handoff = check + sum(n * ms_res["teacher_fwd_per_row"][L] for L, n in unseen.items())
    add(f"TD phase 2 epoch 1, {n_rows} rows, teacher logits of all rows computed here (buckets)", ms_ep2, th_ep2,
        "epoch")
    add(f"TD phase 2 epoch 1 after a phase-1 epoch (its logits reused, {sum(unseen.values())} rows computed)",
        ms_train2 + ms_handoff, th_ep2, "epoch")
    add("TD phase 2 epoch 2+ (logits already cached)", ms_train2, th_ep2, "epoch")
    ms_first = ms_ep1 + ms_train2 + ms_handoff
    add("TD phase 1 + phase 2, first epoch each (no phase-1 cache)", ms_first, th_total, "epoch")
    add("TD phase 1 + phase 2, third epoch each (phase-1 cache on)", ms_p1[-1] + ms_train2, th_total, "epoch")
    rows.append([f"project graph compiles, once per run ({3 * len(buckets)} graphs; torch: none)", None, None,
                 ms_compile, 0.0, None])
    rows.append([f"the same with td1.cache_teacher_outputs ({4 * len(buckets)} graphs)", None, None,
                 ms_compile_cached, 0.0, None])
    return {"bucket_batches": nb, "bucket_rows": rows_per, "teacher_cache_s": ms_cache,
            "phase2_logits_after_phase1_s": ms_handoff, "rows_in_no_phase1_batch": unseen, "compile_s": ms_compile,
            "rows": n_rows, "rows_trained_per_epoch": trained, "phase1_epoch_s": ms_ep1,
            "phase1_cached_epochs_s": ms_p1, "phase2_train_epoch_s": ms_train2, "first_epochs_s": ms_first,
            "torch_epochs_s": th_total, "phase1_cache_gb": cache_gb,
            "phase1_step_s": ms_res["phase1"][seq], "phase1_cached_step_s": ms_res["phase1_cached"][seq],
            "table": rows}


def render(out) -> str:
    """The markdown block of a measure() result, or of the td_throughput.json it was saved as."""
    th, b, seq, config = out["torch"], out["batch"], out["seq"], out["config"]
    tcfg, scfg = out["teacher"], out["student"]
    ms_first, th_total, ms_compile = out["first_epochs_s"], out["torch_epochs_s"], out["compile_s"]
    ms_ep1, ms_p1_last = out["phase1_epoch_s"], out["phase1_cached_epochs_s"][-1]
    heads = ["measure", "project seq/s", "PyTorch seq/s", "project s", "PyTorch s", "project / PyTorch time"]
    total = ms_first / th_total if th else None
    later = (ms_p1_last + out["phase2_train_epoch_s"]) / th_total if th else None
    verdict = ("PyTorch side " + TORCH_SKIPPED) if th is None else (
        f"TD epoch project / PyTorch: first epoch of each phase {total:.2f}x (goal <= 0.5x: "
        f"{'met' if total <= 0.5 else 'NOT met'}; with the project's one-off compiles counted in it: "
        f"{(ms_first + ms_compile) / th_total:.2f}x); third and later epochs with td1.cache_teacher_outputs "
        f"{later:.2f}x (goal {'met' if later <= 0.5 else 'NOT met'})")
    versions = f" torch {th['torch']}, transformers {th['transformers']}." if th else ""
    saved = 1.0 - ms_p1_last / ms_ep1
    cache_verdict = (f"Here it saves {100 * saved:.0f}% of a phase-1 epoch from the third epoch on." if saved > 0.03
                     else f"Here it does not pay: the third epoch with it takes {ms_p1_last:.0f} s against "
                          f"{ms_ep1:.0f} s without (a cached step at b{b}/s{seq} {out['phase1_cached_step_s']:.2f} s, "
                          f"a live one {out['phase1_step_s']:.2f} s): copying the kept tensors into a step costs as "
                          f"much as the teacher's forward"
                          f"{' on the fused CPU kernels' if out['fused_cpu_kernels'] else ''}.")
    return (f"### Task-distillation throughput: MindSpore project vs PyTorch + transformers\n\n"
            f"{machine_line(out['machine'])}. "
            f"Teacher {tcfg['num_hidden_layers']}L/{tcfg['hidden_size']}H, student {scfg['num_hidden_layers']}L/"
            f"{scfg['hidden_size']}H; median of {out['steps']} steps after warm-up (torch: median over "
            f"{out['torch_processes']} processes, one before the project side, the rest after); both sides "
            f"{out['machine']['threads']} threads."
            f"{versions} Project epochs use the buckets {out['buckets']} and batch {b} of {config}; phase 2's "
            f"teacher logits (all rows: {out['teacher_cache_s']:.0f} s at eval batch {out['eval_batch']}; after a "
            f"phase-1 epoch: {out['phase2_logits_after_phase1_s']:.0f} s) are inside its first epoch. Project "
            f"{out['kernels']} (fused_cpu_kernels of {config})."
            f"{' QUICK MODE: tiny shapes, timings meaningless.' if out['quick'] else ''}\n\n"
            + markdown_table(heads, out["table"]) + f"\n\n{verdict}\n\n"
            f"Phase-1 teacher cache (`td1.cache_teacher_outputs: true`, off in configs/td_mr.yaml): the first "
            f"epoch fills it from the live steps, later epochs skip the teacher for every batch whose rows are all "
            f"kept; {out['phase1_cache_gb']:.1f} GB of fp32 teacher tensors for this split (mapped attention scores "
            f"+ hidden states per row at its bucket width). {cache_verdict} It can only be used for data that is not "
            f"augmented (TinyBERT's own phase 1 trains on augmented data, which cannot be cached); the embedded "
            f"default runs phase 1 for less than one epoch and leaves it off.")


def _jsonable(o):
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    return o


if __name__ == "__main__":
    from src.errors import run_main
    run_main(main, sys.argv[1:])
