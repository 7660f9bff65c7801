"""Regression on the user's own CSV data, through the entry scripts as users run them (subprocesses):
tools/prepare_data.py --task csv --regression -> run_task_distill.py --phase finetune --task.name csv
--task.regression true, and the bad combinations of task.name / task.labels / task.regression (one ERROR line,
exit 2, no output folder)."""
import csv
import json
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_run  # noqa: E402
from tiny_run import SEQ, VOCAB  # noqa: E402

WORDS = [f"w{i:02d}" for i in range(5, VOCAB)]      # ids 5..29; 0-4 are the special tokens
HIGH = 17                                           # the score counts the words with id >= HIGH


def _csv_rows(n, seed):
    """(text, score): 3..12 words; score = 5 x the share of words with id >= HIGH, written with two decimals, so
    most scores are fractional (a cast to int would change them) and the relation is learnable by one layer."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        ids = rng.integers(5, VOCAB, int(rng.integers(3, 13)))
        yield " ".join(WORDS[i - 5] for i in ids), f"{5 * (ids >= HIGH).mean():.2f}"


def _write_csv(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "score"])
        w.writerows(rows)


def _records(path, kind):
    with open(path, encoding="utf-8") as f:
        return [r for r in map(json.loads, f) if r["kind"] == kind]


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("csvreg"))
    w = tiny_run.make_workspace(root, n_train=16, n_dev=16)     # the tiny teacher (its MR records are not used)
    w["vocab"] = os.path.join(root, "vocab.txt")
    with open(w["vocab"], "w", encoding="utf-8") as f:
        f.write("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS) + "\n")
    return w


@pytest.fixture(scope="module")
def finetuned(ws):
    root = ws["root"]
    _write_csv(os.path.join(root, "train.csv"), _csv_rows(128, 1))
    dev_rows = list(_csv_rows(32, 2))
    _write_csv(os.path.join(root, "dev.csv"), dev_rows)
    data = os.path.join(root, "scores")
    res = tiny_run.run_script("tools/prepare_data.py", [
        "--task", "csv", "--regression", "--input", f"train={os.path.join(root, 'train.csv')}",
        "--input", f"dev={os.path.join(root, 'dev.csv')}", "--text_column", "text", "--label_column", "score",
        "--vocab_file", ws["vocab"], "--max_seq_length", str(SEQ), "--output_dir", data])
    assert res.returncode == 0, res.stderr[-3000:]
    out = os.path.join(root, "td")
    res = tiny_run.run_script("run_task_distill.py", tiny_run.finetune_args(
        ws, out, epochs=6, **{"task.name": "csv", "task.regression": True, "data.dir": data, "finetune.lr": 0.001}))
    assert res.returncode == 0, (res.stdout[-2000:], res.stderr[-3000:])
    return {"data": data, "run": os.path.join(out, "teacher"), "dev_scores": [float(s) for _, s in dev_rows]}


def test_csv_regression_trains_on_the_float_scores(finetuned):
    """The records hold the CSV's scores as float32; the run builds one output, reports pearson / spearman (no
    acc) and keeps the best pearson; best.ckpt's predictions on the dev records give that pearson against the
    CSV's own scores, and it is well above chance on this learnable relation."""
    from src.batching import ArrayBatcher, to_tensors
    from src.checkpoint import load_into
    from src.dataset import load_split
    from src.tasks import get_task
    from src.tinybert_model import LogitsOnly, build_classifier, load_bert_config
    scores = np.array(finetuned["dev_scores"], np.float32)
    assert (scores != np.round(scores)).mean() > 0.5
    dev = load_split(finetuned["data"], "dev", "tfrecord", SEQ, get_task("csv", regression=True))
    assert dev["label_ids"].dtype == np.float32
    np.testing.assert_array_equal(dev["label_ids"][:, 0], scores)

    run = finetuned["run"]
    with open(os.path.join(run, "config_resolved.yaml"), encoding="utf-8") as f:
        assert "  regression: true\n" in f.read()
    evals = _records(os.path.join(run, "metrics.jsonl"), "eval")
    assert evals and all({"pearson", "spearman"} <= set(e) and "acc" not in e for e in evals)
    best = evals[-1]["best"]
    assert best == max(e["pearson"] for e in evals)
    assert best >= 0.6 and evals[0]["pearson"] < best

    cfg = load_bert_config(os.path.join(run, "config.json"), "teacher config")
    assert cfg.num_labels == 1
    model = build_classifier(cfg, "dense")
    load_into(model, os.path.join(run, "best.ckpt"), "best.ckpt")
    net = LogitsOnly(model)
    net.set_train(False)
    preds = np.concatenate([
        net(*to_tensors(b, ["input_ids", "segment_ids", "input_mask"])).asnumpy()
        for b in ArrayBatcher(dev, 16, shuffle=False).epoch(1)])
    assert preds.shape == (32, 1)
    assert np.corrcoef(preds[:, 0], scores)[0, 1] == pytest.approx(best, abs=1e-4)
    # against the scores cut to integers the number differs: the logged metric used the float labels
    assert abs(np.corrcoef(preds[:, 0], np.trunc(scores))[0, 1] - best) > 1e-3


BAD = {
    "labels_and_regression": ({"task.name": "csv", "task.labels": ["low", "high"], "task.regression": True},
                              "task csv with task.regression true takes no task.labels (got ['low', 'high'])"),
    "regression_on_a_classification_task": ({"task.name": "MR", "task.regression": True},
                                            "task.regression true: task MR is classification"),
    "csv_without_labels_or_regression": ({"task.name": "csv"},
                                         "task csv needs a label list (task.labels), e.g. ['neg', 'pos']; an "
                                         "empty list is only valid with task.regression true"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_task_keys_are_one_error_and_no_output(case, ws, tmp_path):
    keys, message = BAD[case]
    out = tmp_path / "out"
    res = tiny_run.run_script("run_task_distill.py", tiny_run.finetune_args(ws, str(out), **keys), timeout=240)
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("ERROR:")]
    assert res.returncode == 2 and "Traceback" not in res.stderr and len(errors) == 1, res.stderr[-3000:]
    assert errors[0].startswith(f"ERROR: {message}"), errors[0]
    assert not out.exists()


def test_the_pipeline_checks_the_task_keys_and_hands_regression_to_every_stage(tmp_path):
    """run_compress.py: a bad combination is one error before anything is written; task.regression reaches each
    training stage's command line like task.name and task.labels, and a stage's args may not set it."""
    from src.config import load_config
    from src.errors import UserError
    from src.runs.compress_stages import STAGES, TRAINING, argv_of, user_args, wired_common
    from src.tasks import task_from_config
    out = tmp_path / "out"
    res = tiny_run.run_script("run_compress.py", ["--task.name", "csv", "--task.labels", "a", "b",
                                                  "--task.regression", "true", "--output_dir", str(out)])
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("ERROR:")]
    assert res.returncode == 2 and len(errors) == 1, res.stderr[-3000:]
    assert errors[0].startswith("ERROR: task csv with task.regression true takes no task.labels"), errors[0]
    assert not out.exists()

    path = os.path.join(tiny_run.ROOT, "configs", "compress_mr.yaml")
    cfg = load_config(path, ["--task.name", "csv", "--task.regression", "true"], open_sections=(
        "depth.args", "width.args", "ternary.args"))
    for name in TRAINING:
        assert "task.regression" in STAGES[name].wired
        stage_yaml = os.path.join(tiny_run.ROOT, cfg[name].config)
        stage_cfg = load_config(stage_yaml, ["--config_path", stage_yaml]
                                + argv_of(wired_common(cfg, str(tmp_path / name))))
        task = task_from_config(stage_cfg)
        assert (task.name, task.regression, task.num_labels, task.main_metric) == ("csv", True, 1, "pearson"), name
    bad = load_config(path, ["--depth.args.task.regression", "true"], open_sections=(
        "depth.args", "width.args", "ternary.args"))
    with pytest.raises(UserError, match=r"depth.args.task.regression: set by the pipeline"):
        user_args(bad, "depth")
