"""Task variants end to end on tiny records, through the entry scripts in subprocesses (tests/tiny_run.py):

- regression (STS-B, num_labels 1, float labels as tools/prepare_data.py writes them): teacher fine-tuning ->
  TD phase 1 -> TD phase 2 -> eval, TernaryBERT and the width run all train on MSE and learn (Pearson above a
  floor on the dev split);
- MNLI's two dev splits (dev_matched, dev_mismatched): every eval reports acc and mm_acc, each equal to that
  split evaluated on its own, and the kept checkpoint is the best matched acc.
"""
import json
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_run  # noqa: E402
from tiny_run import SEQ, VOCAB  # noqa: E402

from src.records import write_records, write_schema  # noqa: E402

pytestmark = pytest.mark.slow          # several tiny end-to-end runs

REGRESSION_COLUMNS = dict(tiny_run.COLUMNS, label_ids=("float32", 1))


def _regression_rows(n, seed):
    """Score in [0, 5] (STS-B's range) = 5 x the share of body tokens with id >= 17: learnable by a 1-layer model."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        length = int(rng.integers(5, SEQ + 1))
        body = rng.integers(4, VOCAB, length - 2)
        ids = [2] + [int(t) for t in body] + [3] + [0] * (SEQ - length)
        yield {"input_ids": ids, "input_mask": [1] * length + [0] * (SEQ - length), "segment_ids": [0] * SEQ,
               "label_ids": [float(5 * (body >= 17).mean())]}


def _mnli_rows(n, seed):
    """3 labels: the first body token's id mod 3."""
    for row in tiny_run.rows(n, seed):
        yield dict(row, label_ids=[row["input_ids"][1] % 3])


def _write(data, split, rows, columns):
    os.makedirs(data, exist_ok=True)
    count = write_records(os.path.join(data, f"{split}.tf_record"), rows, columns)
    write_schema(os.path.join(data, f"{split}_schema.json"), columns, count)


def _records(path, kind):
    with open(path, encoding="utf-8") as f:
        return [r for r in map(json.loads, f) if r["kind"] == kind]


def _run(script, args):
    res = tiny_run.run_script(script, args)
    assert res.returncode == 0, (res.stdout[-2000:], res.stderr[-2000:])
    return res


# ------------------------------------------------------------------ regression (STS-B)

@pytest.fixture(scope="module")
def sts(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("sts"))
    ws = tiny_run.make_workspace(root, n_train=16, n_dev=16)
    data = os.path.join(root, "sts")
    _write(data, "train", _regression_rows(128, 1), REGRESSION_COLUMNS)
    _write(data, "dev", _regression_rows(32, 2), REGRESSION_COLUMNS)
    out = os.path.join(root, "td")
    task = {"task.name": "STS-B", "data.dir": data}
    _run("run_task_distill.py", tiny_run.finetune_args(ws, out, epochs=6, **task, **{"finetune.lr": 0.001}))
    teacher = os.path.join(out, "teacher", "best.ckpt")
    td = {**task, "threads": 1, "output_dir": out, "data.max_seq_length": SEQ, "data.length_buckets": [SEQ],
          "teacher.config": ws["config"], "student.config": ws["config"], "eval.batch_size": 16, "log_every": 4,
          "checkpoint.every_steps": 0}
    _run("run_task_distill.py", tiny_run.cli({**td, "phase": "td1", "student.init": "random", "td1.epochs": 3,
                                              "td1.max_steps": 0, "td1.lr": 0.005, "td1.batch_size": 8}))
    _run("run_task_distill.py", tiny_run.cli({**td, "phase": "td2", "td2.epochs": 4, "td2.lr": 0.002,
                                              "td2.batch_size": 8}))
    evaluated = _run("run_task_distill.py", tiny_run.cli({**td, "phase": "eval"}))
    later = {**task, "teacher.ckpt": teacher, "train.epochs": 2, "train.lr": 0.002}
    _run("run_ternary.py", tiny_run.ternary_args(ws, os.path.join(root, "ternary"), batch=8, **later))
    _run("run_ofa_width.py", tiny_run.ofa_args(ws, os.path.join(root, "width"), batch=8, **later))
    return {"root": root, "out": out, "eval_stdout": evaluated.stdout}


def _best(path, metric="pearson"):
    evals = _records(path, "eval")
    assert evals and all(metric in e and "spearman" in e for e in evals)
    return evals[-1]["best"], evals


def test_regression_teacher_and_students_learn(sts):
    """Every method trains on STS-B-style float scores and ends well above chance (Pearson 0): the teacher, the
    TinyBERT student after phase 2, the ternary student and both widths of the width run."""
    root = sts["root"]
    teacher, evals = _best(os.path.join(sts["out"], "teacher", "metrics.jsonl"))
    assert teacher >= 0.7 and evals[0]["pearson"] < teacher
    train = _records(os.path.join(sts["out"], "teacher", "metrics.jsonl"), "train")
    assert np.mean([r["loss"] for r in train[-8:]]) < 0.5 * np.mean([r["loss"] for r in train[:2]])
    assert _best(os.path.join(sts["out"], "td2", "metrics.jsonl"))[0] >= 0.6
    assert _best(os.path.join(root, "ternary", "w2e2a8", "metrics.jsonl"))[0] >= 0.6
    widths = {r["width"]: r["metric"] for r in _records(os.path.join(root, "width", "metrics.jsonl"), "width")}
    assert set(widths) == {1.0, 0.5} and min(widths.values()) >= 0.6


def test_regression_phases_pass_one_output_per_row(sts):
    """The float scores reach the model as float32 (B, 1) labels, as written. Phase 1 keeps one teacher output
    per training row for phase 2 (logits (128, 1), all rows seen, on the scale of the scores); phase 2 distils them
    with MSE (the soft term is the logged loss at pred_weight 1, hard weight 0) and shrinks it; the standalone eval
    of td2/best.ckpt reproduces the best Pearson the training loop logged."""
    from src.batching import ArrayBatcher, to_tensors
    from src.dataset import load_split
    from src.tasks import get_task
    dev = load_split(os.path.join(sts["root"], "sts"), "dev", "tfrecord", SEQ, get_task("STS-B"))
    want = np.array([r["label_ids"] for r in _regression_rows(32, 2)], np.float32)
    assert dev["label_ids"].dtype == np.float32 and dev["label_ids"].shape == (32, 1)
    np.testing.assert_array_equal(dev["label_ids"], want)
    assert (want != np.round(want)).any()                      # fractional scores: a cast to int would show
    labels = to_tensors(next(iter(ArrayBatcher(dev, 8, shuffle=False).epoch(1))), ["label_ids"])[0]
    assert str(labels.dtype) == "Float32" and labels.shape == (8, 1)
    np.testing.assert_array_equal(labels.asnumpy(), want[:8])
    with np.load(os.path.join(sts["out"], "td1", "teacher_logits.npz")) as f:
        logits, seen = f["logits"], f["seen"]
    assert logits.shape == (128, 1) and seen.all()
    assert 0.5 < logits.mean() < 4.5 and logits.std() > 0.3
    train = _records(os.path.join(sts["out"], "td2", "metrics.jsonl"), "train")
    assert all(r["loss"] == pytest.approx(r["soft"], rel=1e-6) for r in train)
    assert train[-1]["soft"] < 0.5 * train[0]["soft"]
    # per-row MSE can go to 0; the mean over all B x B pairs (a broadcast) never falls below the logits' variance
    assert np.mean([r["soft"] for r in train[-4:]]) < 0.5 * logits.var()
    best, _ = _best(os.path.join(sts["out"], "td2", "metrics.jsonl"))
    line = [ln for ln in sts["eval_stdout"].splitlines() if ln.startswith("============== pearson is ")]
    assert len(line) == 1 and float(line[0].split()[-1]) == pytest.approx(best, abs=1e-6)


# ------------------------------------------------------------------ MNLI: matched and mismatched dev splits

@pytest.fixture(scope="module")
def mnli(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("mnli"))
    ws = tiny_run.make_workspace(root, n_train=16, n_dev=16)
    data = os.path.join(root, "mnli")
    _write(data, "train", _mnli_rows(96, 1), tiny_run.COLUMNS)
    _write(data, "dev_matched", _mnli_rows(24, 2), tiny_run.COLUMNS)
    _write(data, "dev_mismatched", _mnli_rows(20, 3), tiny_run.COLUMNS)
    out = os.path.join(root, "td")
    task = {"task.name": "MNLI", "data.dir": data}
    res = _run("run_task_distill.py", tiny_run.finetune_args(ws, out, epochs=2, **task, **{"eval.every": 4}))
    evals = {}
    for split in ("dev_matched", "dev_mismatched"):
        ev = _run("run_task_distill.py", tiny_run.cli({
            **task, "phase": "eval", "threads": 1, "output_dir": out, "data.max_seq_length": SEQ,
            "data.length_buckets": [SEQ], "teacher.config": ws["config"], "eval.split": split, "eval.batch_size": 16,
            "eval.ckpt": os.path.join(out, "teacher", "best.ckpt")}))
        evals[split] = ev.stdout
    return {"out": out, "stdout": res.stdout, "evals": evals}


def test_mnli_reports_both_splits_and_keeps_the_best_matched_acc(mnli):
    """Each eval of the fine-tuning run reports acc and mm_acc; 'The best acc is' follows the running best of acc
    (the matched split); and best.ckpt evaluated on each split alone gives the acc and mm_acc logged at the best
    step, so acc is the matched split's and mm_acc the mismatched split's."""
    assert "dev_matched eval dataset size: 24" in mnli["stdout"]
    assert "dev_mismatched eval dataset size: 20" in mnli["stdout"]
    evals = _records(os.path.join(mnli["out"], "teacher", "metrics.jsonl"), "eval")
    assert len(evals) == 12 and all({"acc", "mm_acc"} <= set(e) for e in evals)
    assert not any(k.startswith(("dev", "mm_mm")) for e in evals for k in e)
    running = np.maximum.accumulate([e["acc"] for e in evals])
    assert [e["best"] for e in evals] == pytest.approx(list(running), abs=1e-12)
    best = next(e for e in evals if e["step"] == evals[-1]["best_step"])
    assert best["acc"] == evals[-1]["best"]
    alone = {s: float([ln for ln in out.splitlines() if ln.startswith("============== acc is ")][0].split()[-1])
             for s, out in mnli["evals"].items()}
    assert alone["dev_matched"] == pytest.approx(best["acc"], abs=1e-6)
    assert alone["dev_mismatched"] == pytest.approx(best["mm_acc"], abs=1e-6)
    assert any(e["acc"] != e["mm_acc"] for e in evals)          # the two splits really give different numbers
