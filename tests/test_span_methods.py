"""Extractive QA (span task) through the methods, on a tiny SQuAD-format set (tests/tiny_run.py span_squad: the
answer is the word after "mark", half the contexts hold a distractor, long contexts span several windows),
prepared by tools/prepare_data.py --task squad: the span losses are the start / end rules; fine-tuning reports
SQuAD F1 / EM that the exported ONNX reproduces through the same decoding; the compression pipeline chains
TinyBERT phases 1 + 2, the width supernet, TernaryBERT and export on that teacher."""
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
    assert tiny_run.export_onnx(teacher["run"], teacher["ckpt"], 2, onnx) == [8, SEQ, 2]
    tiny_run.assert_onnx_f1(best, "--model_file", onnx + ".onnx", "--task", "SQuAD", "--data_dir", teacher["squad"])


def test_the_compression_pipeline_chains_every_method_on_a_span_task(teacher, tmp_path):
    """run_compress.py depth (TinyBERT td1 + td2) -> width -> ternary -> export on the span task: every stage keeps
    most of the teacher's F1, and run_eval_onnx.py on the final ONNX reproduces the pipeline's `The best acc`."""
    base = _best(teacher["run"])
    out = str(tmp_path / "chain")
    ws = {"data": teacher["squad"], "config": os.path.join(teacher["run"], "config.json"), "teacher": teacher["ckpt"],
          "vocab": os.path.join(os.path.dirname(teacher["out"]), "vocab.txt")}
    res = tiny_run.run_script("run_compress.py", tiny_run.compress_args(
        ws, out, stages=["depth", "width", "ternary", "export"], **SQUAD,
        **{"depth.args.student.config": tiny_run.dropout_student_config(teacher), "depth.args.td1.max_steps": 0,
           "depth.args.td1.epochs": 1, "depth.args.td1.lr": 0.002, "depth.args.td2.max_steps": 0,
           "depth.args.td2.epochs": 4, "depth.args.td2.lr": 0.005, "width.args.train.max_steps": 40,
           "ternary.args.train.max_steps": 40, "ternary.distill_from": "depth"}), timeout=900)
    assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-3000:])
    for name, run in (("depth", "depth/td2"), ("width", "width"), ("ternary", "ternary/w2e2a8")):
        got = _best(os.path.join(out, run))
        assert got >= 0.6 * base, (name, got, base)
    final = _best(out)
    tiny_run.assert_onnx_f1(final, "--model_file", os.path.join(out, "export", "model.onnx"), "--task", "SQuAD",
                            "--data_dir", teacher["squad"])
