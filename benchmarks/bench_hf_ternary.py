"""A TernaryBERT model as a Hugging Face folder: accuracy of the HF model (ternary weights stored as fp32, fp32
activations) in `transformers` against the ternary model itself (8-bit activations) on MR dev.

    python benchmarks/bench_hf_ternary.py --run_dir output/ternary_mr/w2e2a8 --results docs/ternary.md

--run_dir is a run_ternary.py output (best_quant.ckpt + quant.json + config.json + config_resolved.yaml). The
script converts best_quant.ckpt with tools/convert_checkpoint.py's ms2hf (src/hf_checkpoint.py ms_to_hf_folder),
then evaluates on the dev split of --data_dir, every model in this run, with the same batches (--batch_size):
    ternary A8   the ternary model as run_ternary.py evaluates it: quantized weights, 8-bit activation fake-quant
                 (src/packing.py build_ternary_inference_model), MindSpore
    HF fp32 act  the HF folder in transformers (CPU torch, the benchmark venv --torch_python; subprocess)
    same, MS     the HF folder loaded back into the project's fp32 model (src/hf_checkpoint.py load_hf_into)
The table gives accuracy, the difference to the ternary A8 model, the share of dev rows where the prediction agrees
with it, and the largest logit difference between transformers and the project on the same folder.
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.common import emit, machine, machine_line, markdown_table  # noqa: E402
from src.cli import doc_parser  # noqa: E402
from tools.marked_blocks import add_results_arg  # noqa: E402

BLOCK = "hf_ternary"


def torch_logits(folder: str, arrays_npz: str, out_npy: str, batch_size: int):
    """(--torch_side) logits of the HF folder in transformers, in the same padded batches."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import torch
    from transformers import AutoModelForSequenceClassification
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    a = np.load(arrays_npz)
    outs = []
    with torch.no_grad():
        for i in range(0, len(a["input_ids"]), batch_size):
            sl = slice(i, i + batch_size)
            outs.append(model(input_ids=torch.from_numpy(a["input_ids"][sl].astype(np.int64)),
                              token_type_ids=torch.from_numpy(a["segment_ids"][sl].astype(np.int64)),
                              attention_mask=torch.from_numpy(a["input_mask"][sl].astype(np.int64))).logits.numpy())
    np.save(out_npy, np.concatenate(outs))
    print(json.dumps({"torch": torch.__version__, "transformers": __import__("transformers").__version__}))


def run_label(run_dir: str, cfg) -> str:
    """What the run was, from its config_resolved.yaml (no machine paths in the docs)."""
    from src.config import load_run_config
    rc = load_run_config(run_dir, "expected a run_ternary.py output folder as --run_dir")
    steps = rc.train.max_steps or f"{rc.train.epochs} epoch(s)"
    return (f"run_ternary.py, student.init {rc.student.init} ({cfg.num_hidden_layers} layers, hidden "
            f"{cfg.hidden_size}), {steps} steps of batch {rc.train.batch_size}, seed {rc.seed}")


def measure(args) -> dict:
    os.environ.setdefault("GLOG_v", "3")
    import mindspore as ms
    ms.set_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.device_context.cpu.op_tuning.threads_num(args.threads)
    from src.checkpoint import read_ms_checkpoint
    from src.dataset import load_split
    from src.evaluation import predict
    from src.hf_checkpoint import load_hf_into, ms_to_hf_folder
    from src.packing import build_ternary_inference_model
    from src.tasks import get_task
    from src.ternary import read_quant_json
    from src.tinybert_model import BertConfig, BertForSequenceClassification, LogitsOnly

    qckpt = os.path.join(args.run_dir, "best_quant.ckpt")
    qcfg = read_quant_json(os.path.join(args.run_dir, "quant.json"))
    cfg = BertConfig.from_json_file(os.path.join(args.run_dir, "config.json"))
    task = get_task("MR")
    dev = load_split(args.data_dir, "dev", "tfrecord", args.seq, task)
    labels = dev["label_ids"].reshape(-1)
    with tempfile.TemporaryDirectory(prefix="hf_ternary_") as work:
        folder = os.path.join(work, "hf")
        res = ms_to_hf_folder(qckpt, folder, task=task)
        state, meta = read_ms_checkpoint(qckpt, with_extra=True)
        ternary = build_ternary_inference_model(state, cfg, qcfg, meta.get("head_type", "dense"))
        ternary.set_train(False)
        logits = {"ternary": predict(ternary, dev, args.batch_size)}
        fp32 = BertForSequenceClassification(BertConfig.from_json_file(os.path.join(folder, "config.json")))
        load_hf_into(fp32, folder)
        fp32.set_train(False)
        logits["hf_ms"] = predict(LogitsOnly(fp32), dev, args.batch_size)
        npz = os.path.join(work, "dev.npz")
        np.savez(npz, **{k: dev[k] for k in ("input_ids", "segment_ids", "input_mask")})
        run = subprocess.run([args.torch_python, os.path.abspath(__file__), "--torch_side", folder, npz,
                              os.path.join(work, "hf.npy"), str(args.batch_size)],
                             capture_output=True, text=True, timeout=1200,
                             env={**os.environ, "BENCH_THREADS": str(args.threads)})
        if run.returncode != 0:
            raise RuntimeError(f"transformers side failed:\n{run.stdout}{run.stderr}")
        versions = json.loads(run.stdout.strip().splitlines()[-1])
        logits["hf_torch"] = np.load(os.path.join(work, "hf.npy"))
    pred = {k: v.argmax(-1) for k, v in logits.items()}
    acc = {k: float((p == labels).mean()) for k, p in pred.items()}
    return {"rows": int(len(labels)), "acc": acc,
            "agree": {k: float((p == pred["ternary"]).mean()) for k, p in pred.items()},
            "max_diff_torch_vs_ms": float(np.abs(logits["hf_torch"] - logits["hf_ms"]).max()),
            "notation": qcfg.notation, "describe": qcfg.describe(), "versions": versions,
            "quantized_tensors": len(res["quant"]["quantized_tensors"]), "run": run_label(args.run_dir, cfg),
            "batch_size": args.batch_size, "machine": machine(args.threads)}


def render(out: dict) -> str:
    a, g = out["acc"], out["agree"]
    rows = [
        [f"TernaryBERT {out['notation']} (best_quant.ckpt)", "ternary", "8-bit fake-quant", "MindSpore",
         a["ternary"], 0.0, 1.0],
        ["its HF folder (ms2hf)", "ternary values as fp32", "fp32", f"transformers {out['versions']['transformers']}",
         a["hf_torch"], a["hf_torch"] - a["ternary"], g["hf_torch"]],
        ["its HF folder, loaded back", "ternary values as fp32", "fp32", "MindSpore fp32 model", a["hf_ms"],
         a["hf_ms"] - a["ternary"], g["hf_ms"]],
    ]
    table = markdown_table(["model", "weights", "activations", "runtime", "MR dev acc", "acc - ternary A8",
                            "same prediction as ternary A8"], [[r[0], r[1], r[2], r[3], f"{r[4]:.4f}",
                                                                f"{r[5]:+.4f}", f"{r[6]:.4f}"] for r in rows])
    return "\n".join([
        f"MR dev ({out['rows']} rows, batch {out['batch_size']}); {out['describe']}; "
        f"{out['quantized_tensors']} quantized tensors; {out['run']}.", "", table, "",
        f"transformers vs the project on the same HF folder: max |logit diff| {out['max_diff_torch_vs_ms']:.2e} "
        f"(torch {out['versions']['torch']}).",
        machine_line(out["machine"]) + ".",
        "Command: `python benchmarks/bench_hf_ternary.py --run_dir <run_ternary.py output> --results docs/ternary.md`"])


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--torch_side"]:
        torch_logits(argv[1], argv[2], argv[3], int(argv[4]))
        return 0
    p = doc_parser(__doc__)
    p.add_argument("--run_dir", required=True, help="run_ternary.py output (best_quant.ckpt, quant.json)")
    p.add_argument("--data_dir", default="data/mr", help="MR records (tools/prepare_data.py)")
    p.add_argument("--seq", type=int, default=64, help="the records' sequence length")
    p.add_argument("--batch_size", type=int, default=64, help="eval batch (run_ternary.py's eval.batch_size)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--torch_python", default=os.path.join(ROOT, ".venv-bench", "bin", "python"))
    add_results_arg(p, what="the table")
    args = p.parse_args(argv)
    out = measure(args)
    emit(BLOCK, render(out), args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
