"""Where a TernaryBERT model loses its accuracy: a finished run_ternary.py run evaluated again with one part of its
quantization switched off at a time, and its fp32 model with the 8-bit activations alone (no training).

    python benchmarks/bench_quant_ablation.py --run_dir output/ternary_conll/w2e2a8 --results docs/results.md

--run_dir is a run_ternary.py output folder (best.ckpt: the latent fp32 weights and activation-quantizer state the
best eval had; quant.json, config.json, config_resolved.yaml). Every row is the run's own eval (its eval split,
eval.batch_size and length buckets, from config_resolved.yaml; --data_dir replaces data.dir) of one model:
    fp32 model            the checkpoint the run quantized (teacher.ckpt, or student.ckpt with student.init ckpt)
    fp32 model, A8 only   the same with the run's 8-bit activation fake-quant and fp32 weights: the cost of 8-bit
                          activations without any training (only for per-batch scales, `sym` + `dynamic`: frozen
                          scales exist only after training)
    as trained            best.ckpt under the run's quant.json: the run's best eval, recomputed (a check)
    activations fp32      best.ckpt, activation fake-quant off (ternary weights and embedding kept)
    embedding fp32        best.ckpt, the word embedding's latent fp32 table instead of its quantized one
    Dense weights fp32    best.ckpt, every Dense layer's latent fp32 weight instead of its quantized one
    all fp32              best.ckpt's latent weights with no quantization at all
Each row: the run's main metric, its share of the fp32 model's, and its change against "as trained"; a part whose
row gains most is what the quantized model loses most to. A row can also lose: the latent weights were trained
through their quantizer (the straight-through gradient steers what they quantize to, not their own values), so they
need not be a good model unquantized; that part's cost is then what the other rows leave unexplained.
Writes <out_dir>/quant_ablation.json; --from_json renders a saved one again. Block: bench:BLOCK (--block, default
quant_ablation).
"""
import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("GLOG_v", "3")   # MindSpore's C++ log: errors only unless set

from benchmarks.common import emit, machine, machine_line, markdown_table, measured_or_saved  # noqa: E402
from src.cli import doc_parser  # noqa: E402
from tools.marked_blocks import add_results_arg  # noqa: E402

# key -> (label, source checkpoint, QuantConfig fields replaced; None = no quantization)
ROWS = (("fp32", "fp32 model", "fp32", None),
        ("fp32_a8", "fp32 model, A8 only (no training)", "fp32", {"weight_bits": 32, "embedding_bits": 32}),
        ("as_trained", "as trained", "latent", {}),
        ("a32", "activations fp32", "latent", {"activation_bits": 32}),
        ("e32", "embedding fp32", "latent", {"embedding_bits": 32}),
        ("w32", "Dense weights fp32", "latent", {"weight_bits": 32}),
        ("all32", "all fp32 (latent weights)", "latent", None))
ACT_STATE = ("amax", "ema_min", "ema_max")   # activation-quantizer state in best.ckpt (src/quant.ActQuantizer)


def _run_config(run_dir: str, data_dir: str):
    from src.config import load_run_config
    return load_run_config(run_dir, f"is '{run_dir}' a run_ternary.py output folder?",
                           ["--data.dir", data_dir] if data_dir else [])


def _fp32_ckpt(cfg) -> str:
    return cfg.teacher.ckpt if cfg.student.init == "teacher" else cfg.student.ckpt


def _best_recorded(run_dir: str, metric: str):
    from src.runlog import read_records
    got = [r[metric] for r in read_records(run_dir) if r["kind"] == "eval" and metric in r]
    return max(got) if got else None


def _model(cfg, task, bcfg, qcfg, ckpt: str, fields, ckpt_act_keys):
    """The run's classifier with `qcfg` (`fields` replaced; None: not quantized) applied and `ckpt` loaded.
    `ckpt_act_keys`: the checkpoint's activation-quantizer state keys, unused by a model without those quantizers;
    a fp32 checkpoint has none, and a TinyBERT student's fit_dense belongs to its distillation, not its model."""
    from src.checkpoint import load_into
    from src.quant import quantize_model
    from src.tinybert_model import build_classifier
    model = build_classifier(bcfg, cfg.student.head_type, task.head)
    if fields is not None:
        quantize_model(model, dataclasses.replace(qcfg, **fields))
    load_into(model, ckpt, "checkpoint", strict=True, allow_unexpected=tuple(ckpt_act_keys) + ("fit_dense.",))
    return model


def measure(args) -> dict:
    from src.checkpoint import read_ms_checkpoint
    from src.dataset import load_eval_sets
    from src.runs.common import classifier_config, eval_buckets, logits_eval
    from src.runtime import init_context, release_compiled_graphs
    from src.tasks import task_from_config
    from src.ternary import read_quant_json
    cfg = _run_config(args.run_dir, args.data_dir)
    init_context(cfg.device_target, cfg.mode, args.threads, False)
    task = task_from_config(cfg)
    qcfg = read_quant_json(os.path.join(args.run_dir, "quant.json"))
    bcfg = classifier_config(cfg, os.path.join(args.run_dir, "config.json"), "run config.json", task)
    latent = os.path.join(args.run_dir, "best.ckpt")
    act_keys = [k for k in read_ms_checkpoint(latent) if k.rsplit(".", 1)[-1] in ACT_STATE]
    eval_sets = load_eval_sets(cfg, task)
    buckets = eval_buckets(cfg)
    dynamic = qcfg.activation_mode == "sym" and qcfg.activation_scale == "dynamic"
    metric = task.main_metric
    rows = []
    for key, label, source, fields in ROWS:
        if key == "fp32_a8" and (not dynamic or qcfg.activation_bits == 32):
            rows.append({"key": key, "label": label, "value": None})
            continue
        ckpt, keys = (latent, act_keys) if source == "latent" else (_fp32_ckpt(cfg), ())
        model = _model(cfg, task, bcfg, qcfg, ckpt, fields, keys)
        value = logits_eval(model, eval_sets, cfg.eval.batch_size, task, (), buckets)()[metric]
        del model
        release_compiled_graphs()      # each model compiles one graph per length bucket: several GB on CoNLL
        print(f"{label}: {metric} {value:.6f}", flush=True)
        rows.append({"key": key, "label": label, "value": float(value)})
    split = cfg.eval.split
    return {"rows": rows, "metric": metric, "task": task.name, "split": split,
            "describe": qcfg.describe(), "recorded_best": _best_recorded(args.run_dir, metric),
            "eval_rows": int(sum(len(a["input_ids"]) for a in eval_sets.values())),
            "eval_batch": cfg.eval.batch_size, "buckets": buckets,
            "schedule": _schedule(cfg), "machine": machine(args.threads)}


def _schedule(cfg) -> str:
    steps = f"{cfg.train.max_steps} steps" if cfg.train.max_steps else f"{cfg.train.epochs} epoch(s)"
    return f"student.init {cfg.student.init}, {steps} of batch {cfg.train.batch_size}, seed {cfg.seed}"


def render(out: dict, block: str = "quant_ablation") -> str:
    by = {r["key"]: r["value"] for r in out["rows"]}
    ref, run = by["fp32"], by["as_trained"]
    body = []
    for r in out["rows"]:
        v = r["value"]
        if v is None:
            body.append([r["label"], "-", "-", "-"])
            continue
        share = f"{100 * v / ref:.1f}%" if ref else "-"
        change = "-" if r["key"] in ("fp32", "fp32_a8", "as_trained") else f"{v - run:+.4f}"
        body.append([r["label"], f"{v:.4f}", share, change])
    m = out["metric"]
    table = markdown_table(["model", f"{out['split']} {m}", "% of the fp32 model", "change against as trained"],
                           body)
    recorded = out["recorded_best"]
    check = ("" if recorded is None else
             f" The run's own best eval recorded {m} {recorded:.4f} (metrics.jsonl); \"as trained\" recomputes it.")
    return "\n".join([
        f"{out['task']} {out['split']} ({out['eval_rows']} rows, batch {out['eval_batch']}, length buckets "
        f"{out['buckets'] or 'off'}); TernaryBERT {out['describe']}; {out['schedule']}.{check}",
        "", table, "", machine_line(out["machine"]) + ".",
        "Command: `python benchmarks/bench_quant_ablation.py --run_dir <run_ternary.py output> "
        f"--block {block} --results <file.md>`"])


def main(argv=None):
    p = doc_parser(__doc__)
    p.add_argument("--run_dir", default="", help="run_ternary.py output folder (best.ckpt, quant.json)")
    p.add_argument("--data_dir", default="", help="the run's records, if not at its data.dir")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--block", default="quant_ablation", help="name of the bench block written into --results")
    p.add_argument("--out_dir", default="output/bench", help="where quant_ablation.json is written")
    p.add_argument("--from_json", default="", help="render a saved quant_ablation.json instead of measuring")
    add_results_arg(p, what="the table")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if not args.from_json and not args.run_dir:
        from src.errors import UserError
        raise UserError("--run_dir: required (a run_ternary.py output folder), or give --from_json")
    out = measured_or_saved(args, measure, render, "quant_ablation.json", "a quant ablation result")
    emit(args.block, render(out, args.block), args.results)
    return out


if __name__ == "__main__":
    from src.errors import run_main
    run_main(main, sys.argv[1:])
