"""Token classification (NER) through the methods, on a tiny tagging task (tests/tiny_run.py token_rows: tags that
need the word before, sentences split over two rows, second word pieces unlabelled): the token losses count only
labelled positions; fine-tuning reports entity-level F1 that the exported ONNX reproduces on the same rows;
TinyBERT phases 1 + 2 train a token head from that teacher, and the compression pipeline chains the width
supernet, TernaryBERT and export on it."""
import json
import os

import numpy as np
import mindspore as ms
import pytest

import tiny_run
from tiny_run import SEQ, TOKEN_LABELS

NER = {"task.name": "ner", "task.labels": TOKEN_LABELS}


def test_token_losses_average_over_labelled_positions_only():
    """Hard and soft CE of [B, S, C] logits = the sentence-level rules over the labelled positions; logits at
    positions labelled -1 change nothing."""
    from src import losses
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(2, 5, 3)).astype(np.float32), rng.normal(size=(2, 5, 3)).astype(np.float32)
    y = np.array([[-1, 0, 2, -1, 1], [-1, 1, -1, -1, -1]], np.int32)
    keep = y >= 0

    def logp(a):
        return a - np.log(np.exp(a).sum(-1, keepdims=True))
    hard = -logp(s)[keep, y[keep]].mean()
    tp = np.exp(logp(t))
    soft_row = -(tp * logp(s)).sum(-1)[keep].mean()
    got = float(losses.token_hard_cross_entropy(ms.Tensor(s), ms.Tensor(y)).asnumpy())
    assert got == pytest.approx(hard, rel=1e-5)
    for reduction, want in (("row_mean", soft_row), ("element_mean", soft_row / 3)):
        got = float(losses.token_soft_cross_entropy(ms.Tensor(s), ms.Tensor(t), ms.Tensor(y), 1.0,
                                                    reduction).asnumpy())
        assert got == pytest.approx(want, rel=1e-5), reduction
    s2 = s.copy()
    s2[~keep] += 5.0
    assert float(losses.token_hard_cross_entropy(ms.Tensor(s2), ms.Tensor(y)).asnumpy()) == pytest.approx(hard,
                                                                                                          rel=1e-5)
    assert float(losses.label_loss(ms.Tensor(s2), ms.Tensor(y), "token").asnumpy()) == pytest.approx(hard, rel=1e-5)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("ner"))
    ws = tiny_run.make_workspace(root, n_train=16, n_dev=16)
    data = os.path.join(root, "ner")
    tiny_run.write_token_split(data, "train", 160, 1)
    dev_tags = tiny_run.write_token_split(data, "dev", 40, 2)
    out = os.path.join(root, "td")
    res = tiny_run.run_script("run_task_distill.py", tiny_run.finetune_args(
        ws, out, **NER, **{"data.dir": data, "finetune.epochs": 6, "finetune.lr": 0.005,
                           "data.length_buckets": [10, SEQ]}))     # two buckets: labels are trimmed with the inputs
    assert res.returncode == 0, (res.stdout[-2000:], res.stderr[-3000:])
    return {**ws, "ner": data, "out": out, "dev_tags": dev_tags, "run": os.path.join(out, "teacher"),
            "ckpt": os.path.join(out, "teacher", "best.ckpt")}


def _cfg_overrides(teacher):
    return {**NER, "data.dir": teacher["ner"], "teacher.ckpt": teacher["ckpt"]}


def test_finetuned_token_head_f1_is_reproduced_by_the_exported_onnx(teacher, tmp_path):
    best = tiny_run.best_acc(os.path.join(teacher["run"], "log.txt"))[-1]
    assert best > 0.3, best                      # all-O predictions score 0
    onnx = str(tmp_path / "ner")
    assert tiny_run.export_onnx(teacher["run"], teacher["ckpt"], 3, onnx) == [8, SEQ, 3]
    tiny_run.assert_onnx_f1(best, "--model_file", onnx + ".onnx", "--task", "ner", "--labels", ",".join(TOKEN_LABELS),
                            "--data_dir", teacher["ner"])


def test_tinybert_phases_distil_a_token_head(teacher):
    """td1 (attention + hidden states, unchanged) then td2 (soft CE over labelled tokens, teacher logits cached)."""
    base = tiny_run.best_acc(os.path.join(teacher["run"], "log.txt"))[-1]
    over = _cfg_overrides(teacher)
    res = tiny_run.run_script("run_task_distill.py", tiny_run.td1_args(teacher, teacher["out"], epochs=2, **over))
    assert res.returncode == 0, res.stderr[-3000:]
    res = tiny_run.run_script("run_task_distill.py", tiny_run.td1_args(
        teacher, teacher["out"], **over, **{"phase": "td2", "td2.batch_size": 8, "td2.epochs": 4, "td2.lr": 0.005}))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "td2.cache_teacher_logits" not in res.stderr
    student = tiny_run.best_acc(os.path.join(teacher["out"], "td2", "log.txt"))[-1]
    assert student >= 0.8 * base, (student, base)


def test_the_compression_pipeline_chains_width_ternary_and_export_on_a_token_task(teacher, tmp_path):
    """run_compress.py width -> ternary -> export on the token task: the width-0.5 sub-model, sliced and reloaded
    strictly, scores what its training logged; the packed TernaryBERT file rebuilds a per-token model scoring as
    trained; run_eval_onnx.py on the final ONNX reproduces the pipeline's `The best acc` exactly."""
    base = tiny_run.best_acc(os.path.join(teacher["run"], "log.txt"))[-1]
    out = str(tmp_path / "chain")
    ws = {"data": teacher["ner"], "config": os.path.join(teacher["run"], "config.json"), "teacher": teacher["ckpt"],
          "vocab": tiny_run.write_vocab(str(tmp_path / "vocab.txt"))}
    res = tiny_run.run_script("run_compress.py", tiny_run.compress_args(
        ws, out, stages=["width", "ternary", "export"], **NER, **{"width.config": "configs/ofa_conll.yaml",
                                                                   "ternary.config": "configs/ternary_conll.yaml",
                                                                   "width.args.train.max_steps": 40,
                                                                   "ternary.args.train.max_steps": 16}), timeout=600)
    assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-3000:])
    from src.dataset import load_split
    from src.evaluation import evaluate
    from src.tasks import get_task
    from src.tinybert_model import LogitsOnly, build_classifier, load_bert_config
    from src.checkpoint import load_into
    task = get_task("ner", TOKEN_LABELS)
    run = os.path.join(out, "width")
    logged = [line for line in open(os.path.join(run, "log.txt"), encoding="utf-8")
              if line.startswith("The best f1 of width 0.500 is")]
    sub = build_classifier(load_bert_config(os.path.join(run, "config_w0.500.json"), "sub", num_labels=3), "dense",
                           "token")
    load_into(sub, os.path.join(run, "best_w0.500.ckpt"), "sub-model", strict=True)
    net = LogitsOnly(sub)
    net.set_train(False)
    dev = {"dev": load_split(teacher["ner"], "dev", "tfrecord", SEQ, task)}
    width = evaluate(net, dev, 16, task)["f1"]
    assert f"is {width:.6f}" in logged[-1], logged
    assert width >= 0.8 * base, (width, base)
    tern_log = open(os.path.join(out, "ternary", "w2e2a8", "log.txt"), encoding="utf-8").read()
    tern = tiny_run.best_acc(os.path.join(out, "ternary", "w2e2a8", "log.txt"))[-1]
    assert tern >= 0.7 * base, (tern, base)
    packed = [line for line in tern_log.splitlines() if line.startswith("packed model eval")]
    assert packed and abs(float(packed[0].split()[4].rstrip(",")) - tern) <= 0.02, (packed, tern)
    final = tiny_run.best_acc(os.path.join(out, "log.txt"))[-1]
    tiny_run.assert_onnx_f1(final, "--model_file", os.path.join(out, "export", "model.onnx"), "--task", "ner",
                            "--labels", ",".join(TOKEN_LABELS), "--data_dir", teacher["ner"])


def test_an_exported_folder_of_a_token_task_scores_as_trained(teacher, tmp_path):
    """export.py --export_dir with a token task writes a folder (labels.json: task ner, its tags, window_context)
    that run_eval_onnx.py --model_dir scores at the F1 training logged."""
    best = tiny_run.best_acc(os.path.join(teacher["run"], "log.txt"))[-1]
    vocab = tiny_run.write_vocab(str(tmp_path / "vocab.txt"))
    out = tmp_path / "folder"
    res = tiny_run.run_script("export.py", ["--config_path", os.path.join(teacher["run"], "config.json"),
                                            "--ckpt_file", teacher["ckpt"], "--export_dir", str(out), "--task",
                                            "ner", "--labels", ",".join(TOKEN_LABELS), "--vocab_file", str(vocab),
                                            "--file_format", "ONNX", "--batch_size", "8", "--seq_length", str(SEQ)])
    assert res.returncode == 0, res.stderr[-3000:]
    labels = json.loads((out / "labels.json").read_text(encoding="utf-8"))
    assert (labels["task"], labels["labels"], labels["text_pair"]) == ("ner", TOKEN_LABELS, False)
    assert labels["window_context"] == (SEQ - 3) // 2
    tiny_run.assert_onnx_f1(best, "--model_dir", str(out), "--data_dir", teacher["ner"])
