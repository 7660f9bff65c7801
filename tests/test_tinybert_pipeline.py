"""End to end on a tiny model: teacher fine-tuning -> general distillation -> TD phase 1 -> TD phase 2 -> eval,
through the real entry points (run_task_distill.main / run_general_distill.main) and the real record files.

The task is synthetic but easy to learn: a sequence is positive when its first word is a "positive" token
(ids 10..34) rather than a "negative" one (35..59); the rest of the sequence is noise. The pipeline runs once per
module; each test checks one promise of it.
"""
import json
import os
import re
import shutil

import numpy as np
import pytest

import run_general_distill
import run_task_distill
from src import runtime
from src.batching import ArrayBatcher
from src.checkpoint import load_into, read_ms_checkpoint, save_cell
from src.dataset import load_split
from src.errors import UserError
from src.records import write_records, write_schema
from src.tinybert_model import BertConfig, BertModel, build_classifier

SEQ = 16
VOCAB = 64
TEACHER = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=SEQ, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
COLUMNS = {"input_ids": ("int64", SEQ), "input_mask": ("int64", SEQ), "segment_ids": ("int64", SEQ),
           "label_ids": ("int64", 1)}


def _rows(n, seed, labelled=True):
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        length = int(rng.integers(4, SEQ - 1))
        body = rng.integers(10, 60, length - 2)
        ids = np.zeros(SEQ, np.int64)
        ids[:length] = np.concatenate([[1], body, [2]])
        mask = (np.arange(SEQ) < length).astype(np.int64)
        row = {"input_ids": ids, "input_mask": mask, "segment_ids": np.zeros(SEQ, np.int64)}
        if labelled:
            row["label_ids"] = np.array([int(body[0] < 35)], np.int64)
        rows.append(row)
    return rows


def _write_split(d, split, rows, columns):
    os.makedirs(d, exist_ok=True)
    write_records(os.path.join(d, f"{split}.tf_record"), rows, columns)
    write_schema(os.path.join(d, f"{split}_schema.json"), columns, len(rows))


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    data, gd_data, out = str(root / "data"), str(root / "gd_data"), str(root / "out")
    _write_split(data, "train", _rows(512, 0), COLUMNS)
    _write_split(data, "dev", _rows(203, 1), COLUMNS)           # 203 = 3 eval batches of 64 + a tail of 11
    gd_cols = {k: v for k, v in COLUMNS.items() if k != "label_ids"}
    _write_split(gd_data, "train", _rows(256, 2, labelled=False), gd_cols)

    runtime.set_seed(0)
    pre = root / "pretrained"
    pre.mkdir()
    TEACHER.to_json_file(str(pre / "config.json"))
    save_cell(BertModel(TEACHER), str(pre / "bert.ckpt"))

    common = ["--data.dir", data, "--data.max_seq_length", str(SEQ), "--data.length_buckets", "8", str(SEQ),
              "--teacher.config", str(pre / "config.json"), "--teacher.init_ckpt", str(pre / "bert.ckpt"),
              "--student.config", f"{out}/gd/config.json", "--student.gd_ckpt", f"{out}/gd/student.ckpt",
              "--output_dir", f"{out}/td", "--log_every", "4", "--eval.batch_size", "64", "--seed", "7"]
    # teacher.ckpt and student.td1_ckpt left at "": td1/td2 read <output_dir>/teacher/best.ckpt and
    # <output_dir>/td1/student.ckpt (checked in the logs below), not another output folder's
    run_task_distill.main(["--phase", "finetune", "--finetune.epochs", "5", "--finetune.lr", "0.001",
                           "--finetune.batch_size", "32"] + common)
    run_general_distill.main([
        "--data.dir", gd_data, "--data.max_seq_length", str(SEQ), "--data.length_buckets", str(SEQ),
        "--teacher.config", str(pre / "config.json"), "--teacher.ckpt", str(pre / "bert.ckpt"),
        "--student.arch.num_hidden_layers", "2", "--student.arch.hidden_size", "32",
        "--student.arch.num_attention_heads", "2", "--student.arch.intermediate_size", "64",
        "--student.init", "random", "--train.lr", "0.002", "--train.epochs", "3", "--train.batch_size", "32",
        "--output_dir", f"{out}/gd", "--log_every", "4", "--seed", "7"])
    td1 = ["--phase", "td1", "--td1.epochs", "3", "--td1.lr", "0.002", "--td1.batch_size", "32"]
    run_task_distill.main(td1 + common)
    run_task_distill.main(["--phase", "td2", "--td2.epochs", "4", "--td2.lr", "0.002", "--td2.batch_size", "32",
                           "--eval.every", "16"] + common)
    metrics = run_task_distill.main(["--phase", "eval"] + common)
    return {"out": out, "eval": metrics, "td1_args": td1 + common}


def _records(path, kind):
    with open(path, encoding="utf-8") as f:
        return [r for r in map(json.loads, f) if r["kind"] == kind]


def test_zoo_log_lines(pipeline):
    log = open(os.path.join(pipeline["out"], "td", "td2", "log.txt"), encoding="utf-8").read()
    steps = re.findall(r"^epoch: (\d+), step: (\d+), outputs are ([0-9.]+) \| soft", log, re.M)
    assert len(steps) >= 10 and steps[0][:2] == ("1", "4")
    best = re.findall(r"^The best acc is ([0-9.]+)$", log, re.M)
    assert best and float(best[-1]) == pytest.approx(max(r["acc"] for r in _records(
        os.path.join(pipeline["out"], "td", "td2", "metrics.jsonl"), "eval")), abs=1e-6)
    assert re.search(r"^eval epoch: \d+, step: 16, acc [0-9.]+, best acc", log, re.M)   # eval every 16 steps
    # configs/td_mr.yaml runs the fused CPU kernels (src/cpu_kernels.py) when g++ can build them, and says so
    kernels = ("kernels: fused CPU LayerNorm, GELU, masked loss sums (cpu_kernels-" if shutil.which("g++") else
               "kernels: MindSpore ops, fused_cpu_kernels unavailable: no C++ compiler")
    assert kernels in log
    out = pipeline["out"]                           # td_mr.yaml's "" paths follow --output_dir
    assert f"teacher {out}/td/teacher/best.ckpt" in log and f"student from phase 1: {out}/td/td1/student.ckpt" in log


def test_teacher_learns_the_task(pipeline):
    evals = _records(os.path.join(pipeline["out"], "td", "teacher", "metrics.jsonl"), "eval")
    assert len(evals) == 5 and evals[-1]["best"] >= 0.85


@pytest.mark.parametrize("phase", ["gd", "td/td1"])
def test_intermediate_distillation_lowers_the_loss(pipeline, phase):
    train = _records(os.path.join(pipeline["out"], phase, "metrics.jsonl"), "train")
    first, last = train[0], train[-1]
    assert last["loss"] < 0.6 * first["loss"]
    assert last["att"] < first["att"] and last["rep"] < first["rep"]


def test_student_reaches_the_teacher(pipeline):
    teacher = _records(os.path.join(pipeline["out"], "td", "teacher", "metrics.jsonl"), "eval")[-1]["best"]
    student = _records(os.path.join(pipeline["out"], "td", "td2", "metrics.jsonl"), "eval")[-1]["best"]
    assert student >= 0.9 * teacher


def test_best_checkpoint_is_the_best_eval(pipeline):
    """The standalone eval of td2/best.ckpt on the full dev set (203 rows, tail batch of 11) gives exactly the
    best metric the training loop logged, so the kept checkpoint is the best one, not the last."""
    td2 = os.path.join(pipeline["out"], "td", "td2")
    evals = _records(os.path.join(td2, "metrics.jsonl"), "eval")
    assert pipeline["eval"]["acc"] == pytest.approx(evals[-1]["best"], abs=1e-9)
    best_step = evals[-1]["best_step"]
    assert [e["acc"] for e in evals if e["step"] == best_step][0] == evals[-1]["best"]
    extra = read_ms_checkpoint(os.path.join(td2, "best.ckpt"))
    assert "classifier.weight" in extra and not any(k.startswith("fit_dense.") for k in extra)


def test_gd_student_carries_fit_dense_into_td1(pipeline):
    gd = read_ms_checkpoint(os.path.join(pipeline["out"], "gd", "student.ckpt"))
    assert gd["fit_dense.dense.weight"].shape == (32, 32)
    assert {k for k in gd if k.startswith("bert.encoder.")} and not any(k.startswith("classifier") for k in gd)
    td1 = read_ms_checkpoint(os.path.join(pipeline["out"], "td", "td1", "student.ckpt"))
    assert set(td1) == {k for k in td1 if k.startswith(("bert.", "classifier.", "fit_dense."))}
    assert not np.array_equal(gd["fit_dense.dense.weight"], td1["fit_dense.dense.weight"])   # trained further


def test_td1_with_cached_teacher_outputs_trains_the_same_student(pipeline):
    """td1.cache_teacher_outputs: a batch with a row never seen runs the live step and keeps its teacher tensors;
    a batch whose rows are all kept runs the student-only step. 3 epochs give the same losses and student as the
    live-teacher run of the fixture (no dropout: the runs are deterministic), and the cache is used exactly for
    the batches ArrayBatcher's order allows (replayed here)."""
    out = pipeline["out"]
    run_task_distill.main(pipeline["td1_args"] + ["--td1.cache_teacher_outputs", "true",
                                                  "--output_dir", f"{out}/td_cached",
                                                  "--teacher.ckpt", f"{out}/td/teacher/best.ckpt"])
    live, cached = (os.path.join(out, d, "td1") for d in ("td", "td_cached"))
    a, b = (_records(os.path.join(d, "metrics.jsonl"), "train") for d in (live, cached))
    assert [r["step"] for r in a] == [r["step"] for r in b] and len(a) >= 8
    for ra, rb in zip(a, b):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-5) and rb["att"] == pytest.approx(ra["att"], rel=1e-5)
    wa, wb = (read_ms_checkpoint(os.path.join(d, "student.ckpt")) for d in (live, cached))
    assert sorted(wa) == sorted(wb)
    for k in wa:
        np.testing.assert_allclose(wb[k], wa[k], rtol=0, atol=1e-5, err_msg=k)

    mask = np.array([r["input_mask"] for r in _rows(512, 0)], np.int32)
    batcher = ArrayBatcher({"input_mask": mask, "input_ids": mask, "row_id": np.arange(512)}, 32, seed=7,
                           length_buckets=[8, SEQ])
    seen, n_live, n_cached = np.zeros(512, bool), 0, 0
    for epoch in (1, 2, 3):
        for batch in batcher.epoch(epoch):
            hit = seen[batch["row_id"]].all()
            n_cached, n_live = n_cached + hit, n_live + (not hit)
            seen[batch["row_id"]] = True
    assert n_cached >= 10 and n_live + n_cached == b[-1]["step"]
    short = int((mask.sum(axis=1) <= 8).sum())       # rows of width 8 / 16; hidden 3 x [L, 32], scores 2 x [2, L, L]
    mb = sum(n * (3 * L * 32 + 2 * 2 * L * L) * 4 for n, L in ((short, 8), (512 - short, SEQ))) / 1e6
    log = open(os.path.join(cached, "log.txt"), encoding="utf-8").read()
    assert (f"phase-1 teacher outputs: {n_live} batches ran the teacher, {n_cached} read it from the cache "
            f"({int(seen.sum())} rows, {mb:.1f} MB)") in log


class _Lines:
    def __init__(self):
        self.lines = []

    def info(self, line):
        self.lines.append(line)


def test_phase2_takes_the_teacher_logits_phase1_computed(pipeline, tmp_path):
    """TD phase 1 keeps the teacher logits of every row its live steps saw (td1/teacher_logits.npz); phase 2 takes
    them after recomputing 64 of them and runs the teacher only over the rest. The kept logits are the teacher's
    own (every kept row recomputed here, so a row-order slip would show); a file from another teacher or another
    split is not used and every row is recomputed."""
    from src.teacher_cache import logits_for_phase2
    from src.tinybert_model import LogitsOnly
    from src.evaluation import predict
    out = pipeline["out"]
    td1 = os.path.join(out, "td", "td1")
    with np.load(os.path.join(td1, "teacher_logits.npz")) as f:
        kept, seen = f["logits"], f["seen"]
    assert kept.shape == (512, 2) and 500 <= seen.sum() <= 512
    log2 = open(os.path.join(out, "td", "td2", "log.txt"), encoding="utf-8").read()
    assert (f"teacher logits for phase 2: {int(seen.sum())} rows from {td1}/teacher_logits.npz (checked on 64 rows, "
            in log2 and f"; {512 - int(seen.sum())} rows computed" in log2)

    teacher = build_classifier(TEACHER, "dense")
    load_into(teacher, f"{out}/td/teacher/best.ckpt", "teacher", strict=True)
    net = LogitsOnly(teacher)
    net.set_train(False)
    train = load_split(os.path.join(os.path.dirname(out), "data"), "train", "tfrecord", SEQ)
    fresh = predict(net, train, 64, [8, SEQ])
    np.testing.assert_allclose(kept[seen], fresh[seen], rtol=0, atol=1e-5)

    for name, logits, flags, expect in (("other_teacher", kept + 0.5, seen, "does not match this teacher and data"),
                                        ("other_split", kept[:500], seen[:500], "holds 500 rows, this split 512")):
        d = tmp_path / name
        d.mkdir()
        np.savez(d / "teacher_logits.npz", logits=logits, seen=flags)
        log = _Lines()
        got = logits_for_phase2(net, train, 64, [8, SEQ], str(d), log)
        assert expect in log.lines[0] and log.lines[0].endswith("; 512 rows computed")
        np.testing.assert_allclose(got, fresh, rtol=0, atol=1e-6)


def test_every_run_dir_has_its_manifest_and_resolved_config(pipeline):
    for d in ("gd", "td/teacher", "td/td1", "td/td2"):
        run = os.path.join(pipeline["out"], d)
        manifest = json.load(open(os.path.join(run, "manifest.json"), encoding="utf-8"))
        assert manifest["seed"] == 7 and manifest["packages"]["mindspore"] == "2.10.0"
        assert manifest["config"]["output_dir"].endswith(("gd", "td"))
        assert os.path.exists(os.path.join(run, "config_resolved.yaml"))
        assert BertConfig.from_json_file(os.path.join(run, "config.json")).vocab_size == VOCAB


# ------------------------------------------------------------------ bad configurations: one clear error

def _td(pipeline, *extra):
    out = pipeline["out"]
    base = ["--data.dir", os.path.join(os.path.dirname(out), "data"), "--data.max_seq_length", str(SEQ),
            "--data.length_buckets", str(SEQ),
            "--teacher.config", os.path.join(os.path.dirname(out), "pretrained", "config.json"),
            "--teacher.ckpt", f"{out}/td/teacher/best.ckpt", "--student.config", f"{out}/gd/config.json",
            "--student.gd_ckpt", f"{out}/gd/student.ckpt", "--output_dir", f"{out}/bad"]
    return run_task_distill.main(base + list(extra))


@pytest.mark.parametrize("extra, message", [
    (["--task.name", "SST-3"], "task.name: unknown task 'SST-3'"),
    (["--phase", "td3"], "phase 'td3': expected one of finetune, td1, td2, eval"),
    (["--layer_map.attention", "0", "9"], "layer_map.attention entries [9] out of range"),
    (["--layer_map.hidden", "0", "1"], "layer_map.hidden has 2 entries, expected student layers + 1"),
    (["--student.init", "teacher"], "student.init 'teacher': expected gd, teacher_layers or random"),
    (["--loss.soft_ce_reduction", "sum"], 'loss.soft_ce_reduction is "sum"; expected row_mean or element_mean'),
    (["--td1.cache_teacher_outputs", "true", "--td1.teacher_cache_max_gb", "0.001"],
     "td1.cache_teacher_outputs: the phase-1 teacher cache for 512 training rows needs 5.2 MB, more than td1"),
])
def test_bad_config_is_one_clear_error(pipeline, extra, message):
    with pytest.raises(UserError) as e:
        _td(pipeline, "--phase", "td1", *extra)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_teacher_checkpoint_for_another_head_is_rejected(pipeline, tmp_path):
    """A 3-label teacher checkpoint against a 2-label task: strict loading names the classifier shapes."""
    cfg = TEACHER.replace(num_labels=3)
    bad = tmp_path / "teacher3.ckpt"
    save_cell(build_classifier(cfg, "dense"), str(bad))
    with pytest.raises(UserError) as e:
        _td(pipeline, "--phase", "td1", "--teacher.ckpt", str(bad))
    assert "classifier.weight" in str(e.value) and "(3, 32)" in str(e.value)


def test_demo_report_names_the_tasks_main_metric(pipeline, tmp_path, capsys):
    """tools/demo_report.py labels the column with the metric its numbers are (the run's `best`, its task's main
    metric): acc for MR, mcc for a CoLA run (it once took the first key of the eval record, always acc)."""
    from tools import demo_report
    td = tmp_path / "td"
    shutil.copytree(os.path.join(pipeline["out"], "td"), td)
    demo_report.main(["--td_dir", str(td), "--gd_dir", os.path.join(pipeline["out"], "gd")])
    out = capsys.readouterr().out
    best = max(r["acc"] for r in _records(td / "td2" / "metrics.jsonl", "eval"))
    assert "| dev acc | % of teacher |" in out and f"| {best:.4f} |" in out
    resolved = td / "td2" / "config_resolved.yaml"
    resolved.write_text(resolved.read_text().replace("name: MR", "name: CoLA", 1))
    with open(td / "td2" / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"acc": 0.9, "best": 0.25, "best_step": 1, "epoch": 9, "kind": "eval", "mcc": 0.25,
                            "step": 99, "time": 0}, sort_keys=True) + "\n")
    demo_report.main(["--td_dir", str(td), "--gd_dir", os.path.join(pipeline["out"], "gd")])
    out = capsys.readouterr().out
    assert "| dev mcc | % of teacher |" in out and "| 0.2500 |" in out
