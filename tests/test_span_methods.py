"""Extractive QA (span task) through the methods, on a tiny SQuAD-format set (tests/tiny_run.py span_squad: the
answer is the word after "mark", half the contexts hold a distractor, long contexts span several windows),
prepared by tools/prepare_data.py --task squad: the span losses are the start / end rules; fine-tuning reports
SQuAD F1 / EM that the exported ONNX reproduces through the same decoding; TinyBERT phases 1 + 2, TernaryBERT and
the width supernet train a span head from that teacher."""
import json
import os

import numpy as np
import mindspore as ms
import pytest

import tiny_run
from tiny_run import SEQ

SQUAD = {"task.name": "SQuAD"}


def test_span_losses_are_start_and_end_rules_over_positions():
    from src import losses
    rng = np.random.default_rng(1)
    s, t = rng.normal(size=(3, 6, 2)).astype(np.float32), rng.normal(size=(3, 6, 2)).astype(np.float32)
    y = np.array([[2, 3], [0, 0], [5, 5]], np.int32)

    def logp(a):
        return a - np.log(np.exp(a).sum(-1, keepdims=True))
    want = (-logp(s[:, :, 0])[np.arange(3), y[:, 0]].mean() - logp(s[:, :, 1])[np.arange(3), y[:, 1]].mean()) / 2
    got = float(losses.label_loss(ms.Tensor(s), ms.Tensor(y), "span").asnumpy())
    assert got == pytest.approx(want, rel=1e-5)
    soft = np.mean([-(np.exp(logp(t[:, :, k])) * logp(s[:, :, k])).sum(-1).mean() for k in (0, 1)])
    got = float(losses.teacher_loss(ms.Tensor(s), ms.Tensor(t), ms.Tensor(y), "span", 1.0, "row_mean").asnumpy())
    assert got == pytest.approx(soft, rel=1e-5)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("span"))
    ws = tiny_run.make_workspace(root, n_train=16, n_dev=16)
    vocab = os.path.join(root, "vocab.txt")
    with open(vocab, "w", encoding="utf-8") as f:
        f.write("\n".join(tiny_run.SPAN_VOCAB) + "\n")
    args = []
    for split, n, seed in (("train", 200, 1), ("dev", 40, 2)):
        path = os.path.join(root, f"{split}.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(tiny_run.span_squad(n, seed), f)
        args += ["--input", f"{split}={path}"]
    data = os.path.join(root, "squad")
    res = tiny_run.run_script("tools/prepare_data.py", ["--task", "squad", *args, "--vocab_file", vocab,
                                                        "--max_seq_length", str(SEQ), "--doc_stride", "4",
                                                        "--max_query_length", "4", "--output_dir", data])
    assert res.returncode == 0, res.stderr[-3000:]
    out = os.path.join(root, "td")
    res = tiny_run.run_script("run_task_distill.py", tiny_run.finetune_args(
        ws, out, **SQUAD, **{"data.dir": data, "finetune.epochs": 6, "finetune.lr": 0.005,
                             "data.length_buckets": [10, SEQ]}))
    assert res.returncode == 0, (res.stdout[-2000:], res.stderr[-3000:])
    return {**ws, "squad": data, "out": out, "run": os.path.join(out, "teacher"),
            "ckpt": os.path.join(out, "teacher", "best.ckpt")}


def _best(run_dir):
    return tiny_run.best_acc(os.path.join(run_dir, "log.txt"))[-1]


def test_finetuned_span_head_f1_is_reproduced_by_the_exported_onnx(teacher, tmp_path):
    best = _best(teacher["run"])
    assert best >= 0.6, best                      # the distractor alone caps a model blind to "mark" near 0.75
    onnx = str(tmp_path / "qa")
    res = tiny_run.run_script("export.py", ["--config_path", os.path.join(teacher["run"], "config.json"),
                                            "--ckpt_file", teacher["ckpt"], "--num_labels", "2", "--file_format",
                                            "ONNX", "--batch_size", "8", "--seq_length", str(SEQ),
                                            "--file_name", onnx])
    assert res.returncode == 0, res.stderr[-3000:]
    with open(onnx + ".onnx.json", encoding="utf-8") as f:
        assert json.load(f)["output"]["shape"] == [8, SEQ, 2]
    res = tiny_run.run_script("run_eval_onnx.py", ["--model_file", onnx + ".onnx", "--task", "SQuAD",
                                                   "--data_dir", teacher["squad"], "--threads", "1"])
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"f1 is {best:.6f}" in res.stdout, (best, res.stdout)


def test_tinybert_ternary_and_width_train_a_span_head(teacher, tmp_path):
    base = _best(teacher["run"])
    over = {**SQUAD, "data.dir": teacher["squad"], "teacher.ckpt": teacher["ckpt"]}
    res = tiny_run.run_script("run_task_distill.py", tiny_run.td1_args(teacher, teacher["out"], epochs=1, **over))
    assert res.returncode == 0, res.stderr[-3000:]
    res = tiny_run.run_script("run_task_distill.py", tiny_run.td1_args(
        teacher, teacher["out"], **over, **{"phase": "td2", "td2.batch_size": 8, "td2.epochs": 4, "td2.lr": 0.005}))
    assert res.returncode == 0, res.stderr[-3000:]
    student = _best(os.path.join(teacher["out"], "td2"))
    res = tiny_run.run_script("run_ternary.py", tiny_run.ternary_args(teacher, str(tmp_path / "tern"), **over))
    assert res.returncode == 0, res.stderr[-3000:]
    tern = _best(str(tmp_path / "tern" / "w2e2a8"))
    res = tiny_run.run_script("run_ofa_width.py", tiny_run.ofa_args(teacher, str(tmp_path / "ofa"), **over))
    assert res.returncode == 0, res.stderr[-3000:]
    width = _best(str(tmp_path / "ofa"))
    for name, got in (("td2", student), ("ternary", tern), ("width", width)):
        assert got >= 0.6 * base, (name, got, base)
