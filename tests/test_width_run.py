"""run_ofa_width.py end to end on a tiny model and tiny records: per-width best checkpoints (physically sliced,
reloadable, reproducing their logged metric), the full-width `The best acc` line, the table, the slicing tool,
and a bad width list -> exit code 2 with one line naming width_mult_list."""
import json
import re
import os
import subprocess
import sys

import numpy as np
import pytest
import mindspore as ms

from src.config import load_config, save_resolved
from src.errors import UserError
from src.records import write_records, write_schema
from src.tasks import get_task
from src.tinybert_model import BertConfig, BertForSequenceClassification, LogitsOnly, count_params
from src.evaluation import evaluate
from src.runs.width import run as run_ofa
from src.width import WidthView, width_spec
from src.checkpoint import load_into, save_cell
from src.dataset import load_split
from src.tinybert_model import build_classifier

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEQ = 12
TINY = BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=16,
                  max_position_embeddings=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
COLUMNS = {k: ("int64", SEQ) for k in ("input_ids", "input_mask", "segment_ids")}
COLUMNS["label_ids"] = ("int64", 1)


def _rows(n, seed):
    """Label 1 iff token 7 occurs: learnable by a tiny model."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        length = int(rng.integers(4, SEQ + 1))
        ids = rng.integers(8, 30, length)
        label = int(rng.integers(2))
        if label:
            ids[rng.integers(1, length)] = 7
        pad = SEQ - length
        yield {"input_ids": [int(i) for i in ids] + [0] * pad, "input_mask": [1] * length + [0] * pad,
               "segment_ids": [0] * SEQ, "label_ids": [label]}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("ofa")
    data = d / "data"
    data.mkdir()
    for split, n, seed in (("train", 96, 0), ("dev", 40, 1), ("test", 40, 2)):
        k = write_records(str(data / f"{split}.tf_record"), _rows(n, seed), COLUMNS)
        write_schema(str(data / f"{split}_schema.json"), COLUMNS, k)
    ms.set_seed(0)       # initializer_range 0.5: logits far from uniform, so a narrower width starts off the teacher
    teacher = BertForSequenceClassification(TINY.replace(initializer_range=0.5))
    save_cell(teacher, str(d / "teacher.ckpt"))
    TINY.to_json_file(str(d / "config.json"))
    return d


def _argv(d, out, extra=()):
    return ["--output_dir", str(out), "--data.dir", str(d / "data"), "--data.max_seq_length", str(SEQ),
            "--data.length_buckets", "[]", "--teacher.config", str(d / "config.json"),
            "--teacher.ckpt", str(d / "teacher.ckpt"), "--width_mult_list", "1.0", "0.75", "0.5",
            "--importance.max_batches", "2", "--importance.batch_size", "16", "--train.batch_size", "16",
            "--train.epochs", "2", "--train.lr", "0.002", "--eval.every", "3", "--eval.batch_size", "16",
            "--latency.runs", "2", "--latency.batch_size", "4", "--log_every", "2", *extra]


def test_ofa_end_to_end_keeps_best_per_width_and_slices(setup):
    d = setup
    out = d / "run"
    cfg = load_config(os.path.join(ROOT, "configs", "ofa_mr.yaml"), _argv(d, out))
    result = run_ofa(cfg, str(out), save_resolved)
    for name in ("log.txt", "metrics.jsonl", "importance.npz", "permutation.json", "supernet.ckpt", "best.ckpt",
                 "config.json", "width_table.md"):
        assert (out / name).is_file(), name
    evals = [json.loads(l) for l in open(out / "metrics.jsonl") if '"kind": "eval"' in l]
    assert len(evals) == 4                                  # 12 steps / every 3
    # the supernet learned: width 0.5 (half the heads of the teacher it starts as) ends much closer to the teacher
    train = [json.loads(l) for l in open(out / "metrics.jsonl") if '"kind": "train"' in l]
    assert len(train) == 6 and train[-1]["loss"] < train[0]["loss"]
    assert np.mean([r["w0.500"] for r in train[-2:]]) < 0.75 * train[0]["w0.500"], train
    task = get_task("MR")
    dev = load_split(str(d / "data"), "dev", "tfrecord", SEQ, task)
    # eval.teacher_baseline: the teacher's own score, recorded and shown by tools/readme_results.py
    teacher = build_classifier(TINY, "dense")
    load_into(teacher, str(d / "teacher.ckpt"), "teacher")
    t_acc = evaluate(LogitsOnly(teacher).set_train(False), {"dev": dev}, 16, task)["acc"]
    recorded = [json.loads(l) for l in open(out / "metrics.jsonl") if '"kind": "teacher_eval"' in l]
    assert len(recorded) == 1 and recorded[0]["acc"] == pytest.approx(t_acc)
    from tools.readme_results import width_block
    assert f"Teacher (full model before rewiring): acc {t_acc:.4f}" in width_block(str(out))
    rows = {r["width"]: r for r in result["rows"]}
    for w, heads, key in ((1.0, 4, "acc"), (0.75, 3, "acc_w0.750"), (0.5, 2, "acc_w0.500")):
        label = f"{w:.3f}"
        best = max(e[key] for e in evals)
        assert rows[w]["metric"] == pytest.approx(best)
        # the kept checkpoint is the physically smaller sub-model and reproduces its logged score
        conf = BertConfig.from_json_file(str(out / f"config_w{label}.json"))
        assert conf.layer_num_heads == [heads, heads]
        sub = build_classifier(conf, "dense")
        load_into(sub, str(out / f"best_w{label}.ckpt"), "best", strict=True)
        assert count_params(sub) == rows[w]["params"]
        net = LogitsOnly(sub)
        net.set_train(False)
        assert evaluate(net, {"dev": dev}, 16, task)["acc"] == pytest.approx(best)
        assert rows[w]["latency_ms"] > 0
    assert rows[1.0]["params"] > rows[0.75]["params"] > rows[0.5]["params"]
    log = open(out / "log.txt").read()
    best_lines = [l for l in log.splitlines() if l.startswith("The best acc is")]
    assert float(best_lines[-1].split()[-1]) == pytest.approx(rows[1.0]["metric"], abs=1e-6)
    assert "The best acc of width 0.500 is" in log and "| 0.500 | 2 | 8 |" in log
    table = open(out / "width_table.md").read().splitlines()
    assert len(table) == 5 and table[0].startswith("| width | heads | FFN | params |")

    # tools/slice_width.py on the last supernet = the supernet's view at that width
    _slice_tool_matches_view(out, d / "sliced", dev, 0.5)


def _slice_tool_matches_view(out, sliced, dev, width, depth=1.0):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "slice_width.py"), "--ckpt",
                           str(out / "supernet.ckpt"), "--width_mult", str(width), "--depth_mult", str(depth),
                           "--output_dir", str(sliced)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    supernet = build_classifier(TINY, "dense")
    load_into(supernet, str(out / "supernet.ckpt"), "supernet", strict=True)
    view = LogitsOnly(WidthView(supernet, width_spec(TINY, width, depth)))
    view.set_train(False)
    sub = build_classifier(BertConfig.from_json_file(str(sliced / "config.json")), "dense")
    load_into(sub, str(sliced / "model.ckpt"), "sliced", strict=True)
    net = LogitsOnly(sub)
    net.set_train(False)
    ins = [ms.Tensor(dev[k][:16]) for k in ("input_ids", "segment_ids", "input_mask")]
    np.testing.assert_allclose(net(*ins).asnumpy(), view(*ins).asnumpy(), atol=1e-5, rtol=0)
    return sub


def test_ofa_with_depth_keeps_shallower_best_submodels(setup):
    """depth_mult_list [1.0, 0.5] x widths [1.0, 0.5]: four sub-networks trained together; the depth-0.5 best
    checkpoints are 1-layer models that reproduce their logged scores; slice_width --depth_mult gives the
    supernet's view at that depth. `eval.split test`: the scores are those of the test split (the run once
    always read a split named "dev", so MNLI's dev_matched / dev_mismatched could not be used)."""
    d = setup
    out = d / "run_depth"
    argv = _argv(d, out, ["--depth_mult_list", "1.0", "0.5", "--train.epochs", "1", "--eval.every", "0",
                          "--eval.split", "test"])
    i = argv.index("--width_mult_list")
    argv = argv[:i + 1] + ["1.0", "0.5"] + argv[i + 4:]
    cfg = load_config(os.path.join(ROOT, "configs", "ofa_mr.yaml"), argv)
    result = run_ofa(cfg, str(out), save_resolved)
    rows = {(r["width"], r["depth"]): r for r in result["rows"]}
    assert sorted(rows) == [(0.5, 0.5), (0.5, 1.0), (1.0, 0.5), (1.0, 1.0)]
    evals = [json.loads(l) for l in open(out / "metrics.jsonl") if '"kind": "eval"' in l]
    task = get_task("MR")
    dev = load_split(str(d / "data"), "test", "tfrecord", SEQ, task)
    assert "test eval dataset size: 40" in open(out / "log.txt").read()
    for (w, dep), key in (((0.5, 0.5), "acc_w0.500_d0.500"), ((1.0, 0.5), "acc_w1.000_d0.500")):
        label = key[len("acc_w"):]
        conf = BertConfig.from_json_file(str(out / f"config_w{label}.json"))
        assert conf.num_hidden_layers == 1
        sub = build_classifier(conf, "dense")
        load_into(sub, str(out / f"best_w{label}.ckpt"), "best", strict=True)
        net = LogitsOnly(sub)
        net.set_train(False)
        assert evaluate(net, {"dev": dev}, 16, task)["acc"] == pytest.approx(max(e[key] for e in evals))
        assert rows[(w, dep)]["layers"] == 1 and rows[(w, dep)]["params"] == count_params(sub)
    assert rows[(1.0, 0.5)]["params"] < rows[(1.0, 1.0)]["params"]
    table = open(out / "width_table.md").read().splitlines()
    assert table[0].startswith("| width | depth | layers | heads |") and "| 0.500 | 0.500 | 1 | 2 |" in table[-1]

    sub = _slice_tool_matches_view(out, d / "sliced_depth", dev, 0.5, 0.5)
    assert sub.config.num_hidden_layers == 1


@pytest.mark.parametrize("value", ["0", "1.5", "[]"])
def test_bad_width_list_stops_before_any_work(setup, value):
    """Values the config accepts (numbers, a list) that the width run refuses: run() raises before it writes."""
    d = setup
    out = d / f"bad_{abs(hash(value))}"
    argv = _argv(d, out)
    i = argv.index("--width_mult_list")
    argv = argv[:i + 1] + [value] + argv[i + 4:]
    cfg = load_config(os.path.join(ROOT, "configs", "ofa_mr.yaml"), argv)
    with pytest.raises(UserError, match="width_mult_list"):
        run_ofa(cfg, str(out), save_resolved)
    assert not out.exists()                                 # no partial outputs


def test_non_numeric_width_list_is_a_config_error():
    with pytest.raises(UserError, match=r"--width_mult_list\[0\]: expected float, got 'wide'"):
        load_config(os.path.join(ROOT, "configs", "ofa_mr.yaml"), ["--width_mult_list", "wide"])


def test_cli_bad_width_list_exit_code_2(setup):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "run_ofa_width.py"), "--width_mult_list", "0.5",
                           "1.2", "--teacher.config", str(setup / "config.json")],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("ERROR: width_mult_list: width 1.2") and "Traceback" not in proc.stderr


def test_optim_loss_scale_reaches_the_width_train_step(setup, tmp_path, monkeypatch):
    """optim.loss_scale is passed to the width run's TrainStep (it was left out: always 1.0) and, above 1, the
    Trainer skips overflowing steps instead of stopping, as in the other runs; loss.padding anchor is the loss
    cell's mask_padding False. Stand-ins stop before training."""
    import src.runs.width
    import src.train_step
    seen = {}

    class Stop(Exception):
        pass

    class FakeStep:
        def __init__(self, loss_net, opt, clip_norm, clip_mode, loss_scale=1.0, data_parallel=False):
            seen["loss_scale"], seen["mask_padding"] = loss_scale, loss_net.mask_padding

        def set_train(self, mode=True):
            return self

    def fake_trainer(*args, **kwargs):
        seen["skip_overflow_steps"] = kwargs["skip_overflow_steps"]
        raise Stop

    monkeypatch.setattr(src.train_step, "TrainStep", FakeStep)
    monkeypatch.setattr(src.runs.width, "Trainer", fake_trainer)
    out = tmp_path / "run"
    cfg = load_config(os.path.join(ROOT, "configs", "ofa_mr.yaml"),
                      _argv(setup, out, ["--optim.loss_scale", "128", "--importance.rewire", "false",
                                         "--eval.teacher_baseline", "false", "--loss.padding", "anchor"]))
    with pytest.raises(Stop):
        run_ofa(cfg, str(out), save_resolved)
    assert seen == {"loss_scale": 128.0, "mask_padding": False, "skip_overflow_steps": True}


def test_empty_teacher_ckpt_is_an_error_not_a_random_teacher(setup, tmp_path):
    """`--teacher.ckpt ""` (in td_mr.yaml it means the folder's own teacher) is refused here: the width run has no
    such default, and it must not distil from the freshly built, untrained teacher."""
    out = tmp_path / "run"
    cfg = load_config(os.path.join(ROOT, "configs", "ofa_mr.yaml"),
                      _argv(setup, out, ["--teacher.ckpt", "", "--supernet.init_ckpt", str(setup / "teacher.ckpt")]))
    with pytest.raises(UserError, match="teacher.ckpt: no path given"):
        run_ofa(cfg, str(out), save_resolved)
    assert not out.exists()


def test_error_in_the_final_table_keeps_the_trained_run(setup, tmp_path, monkeypatch):
    """An error after training (reloading sub-models for the table) keeps the run's checkpoints and log."""
    import src.runs.width

    def fail(*_, **__):
        raise UserError("disk full while writing the table")
    monkeypatch.setattr(src.runs.width, "_report", fail)
    out = tmp_path / "run"
    cfg = load_config(os.path.join(ROOT, "configs", "ofa_mr.yaml"),
                      _argv(setup, out, ["--train.epochs", "1", "--train.max_steps", "2", "--importance.rewire",
                                         "false", "--eval.teacher_baseline", "false"]))
    with pytest.raises(UserError, match="disk full"):
        run_ofa(cfg, str(out), save_resolved)
    for name in ("supernet.ckpt", "best.ckpt", "best_w0.500.ckpt", "config_w0.500.json", "log.txt"):
        assert (out / name).is_file(), name


# ---------------------------------------------------------------- stage 2 (train.distill_from supernet)

def _stage1(d):
    """A width supernet (stage 1, widths 1.0 0.75 0.5), trained once for the stage-2 tests."""
    out = d / "stage1"
    if not (out / "supernet.ckpt").is_file():
        cfg = load_config(os.path.join(ROOT, "configs", "ofa_mr.yaml"),
                          _argv(d, out, ["--train.epochs", "1", "--eval.every", "0", "--latency.runs", "0"]))
        run_ofa(cfg, str(out), save_resolved)
    return out / "supernet.ckpt"


def _stage2_argv(d, out, start, extra=()):
    return _argv(d, out, ["--train.distill_from", "supernet", "--supernet.init_ckpt", str(start),
                          "--depth_mult_list", "1.0", "0.5", "--train.epochs", "1", "--eval.every", "0",
                          "--latency.runs", "0", *extra])


def _stage2_loss_net(d, monkeypatch, out, extra=()):
    """Stage 2 built up to training: the loss cell it would train (a spy on MultiWidthDistillLoss), then stopped."""
    import src.runs.width
    made = []

    class Stop(Exception):
        pass

    def spy(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]

    def stop(*args, **kwargs):
        raise Stop

    real = src.runs.width.MultiWidthDistillLoss
    monkeypatch.setattr(src.runs.width, "MultiWidthDistillLoss", spy)
    monkeypatch.setattr(src.runs.width, "Trainer", stop)
    cfg = load_config(os.path.join(ROOT, "configs", "ofa_mr.yaml"), _stage2_argv(d, out, _stage1(d), extra))
    with pytest.raises(Stop):
        run_ofa(cfg, str(out), save_resolved)
    return made[0]


def test_stage2_starts_from_the_supernet_unrewired_with_the_supernet_as_teacher(setup, tmp_path, monkeypatch):
    """Stage 2 from a width supernet: the student at step 0 IS the supernet (no importance, no reordering, although
    importance.rewire is true); the teacher of sub-network (w, d) is the supernet at width w and full depth (logits
    and hidden states equal to a fresh load's view), one teacher per width, the student's hidden states matched to
    the kept layers + the final state; at depth 1.0 the student equals its teacher, so its loss is exactly the
    entropy of its own prediction. importance.rewire_supernet true does reorder (the start then differs)."""
    from src.checkpoint import read_ms_checkpoint
    d = setup
    start = _stage1(d)
    saved = read_ms_checkpoint(str(start))
    loss_net = _stage2_loss_net(d, monkeypatch, tmp_path / "run")
    student = loss_net.views[0].model
    names = dict(student.parameters_and_names())
    assert sorted(names) == sorted(k for k in saved if not k.startswith("fit_dense."))
    for k, p in names.items():
        np.testing.assert_array_equal(p.asnumpy(), saved[k], err_msg=k)
    assert not (tmp_path / "run" / "permutation.json").exists()

    specs = [v.spec for v in loss_net.views]
    assert [(s.width, s.depth) for s in specs] == [(1.0, 1.0), (0.75, 1.0), (0.5, 1.0), (1.0, 0.5), (0.75, 0.5),
                                                   (0.5, 0.5)]
    assert len(loss_net.teachers) == 3                  # one per width, shared by its depths
    fresh = build_classifier(TINY, "dense")
    load_into(fresh, str(start), "supernet", strict=True)
    batch = _rows(16, 5)
    rows = list(batch)
    ins = [ms.Tensor(np.array([r[k] for r in rows], np.int32)) for k in ("input_ids", "segment_ids", "input_mask")]
    for i, s in enumerate(specs):
        teacher = loss_net.teachers[loss_net.teacher_index[i]]
        t_logits, t_hidden, _ = teacher(*ins)
        ref = WidthView(fresh, width_spec(TINY, s.width, 1.0))
        ref.set_train(False)
        r_logits, r_hidden, _ = ref(*ins)
        np.testing.assert_allclose(t_logits.asnumpy(), r_logits.asnumpy(), atol=1e-5, rtol=0)   # fused kernels
        assert len(t_hidden) == 3
        for a, b in zip(t_hidden, r_hidden):
            np.testing.assert_allclose(a.asnumpy(), b.asnumpy(), atol=1e-5, rtol=0)
        assert loss_net.hidden_maps[i] == ((0, 1, 2) if s.depth == 1.0 else (0, 2))
    loss_net.set_train(False)
    _, parts = loss_net(*ins, ms.Tensor(np.array([r["label_ids"] for r in rows], np.int32)))
    for s, part in zip(specs, parts):
        if s.depth == 1.0:
            logits = WidthView(fresh, width_spec(TINY, s.width)).set_train(False)(*ins)[0].asnumpy()
            p = np.exp(logits - logits.max(-1, keepdims=True))
            p = (p / p.sum(-1, keepdims=True)).astype(np.float64)
            assert float(part.asnumpy()) == pytest.approx(-(p * np.log(p)).sum(-1).mean(), rel=1e-5)
        else:                                           # a shallower student is off its teacher
            assert float(part.asnumpy()) > 1e-3

    rewired = _stage2_loss_net(d, monkeypatch, tmp_path / "rewired", ["--importance.rewire_supernet", "true"])
    q = dict(rewired.views[0].model.parameters_and_names())["bert.encoder.0.attention.query.weight"].asnumpy()
    assert not np.array_equal(q, saved["bert.encoder.0.attention.query.weight"])


def test_stage2_run_slices_every_grid_point(setup):
    """A short stage-2 run end to end: every (width, depth) best sub-model reloads strictly as a plain model and
    reproduces its logged dev score; slice_width.py on its supernet.ckpt gives the supernet view's logits."""
    d = setup
    out = d / "stage2"
    cfg = load_config(os.path.join(ROOT, "configs", "ofa_mr.yaml"), _stage2_argv(d, out, _stage1(d)))
    result = run_ofa(cfg, str(out), save_resolved)
    rows = {(r["width"], r["depth"]): r for r in result["rows"]}
    assert sorted(rows) == [(w, dep) for w in (0.5, 0.75, 1.0) for dep in (0.5, 1.0)]
    log = open(out / "log.txt").read()
    assert "no rewiring: supernet.init_ckpt is a width supernet" in log and "teacher: the width supernet" in log
    task = get_task("MR")
    dev = load_split(str(d / "data"), "dev", "tfrecord", SEQ, task)
    for (w, dep), r in rows.items():
        label = f"{w:.3f}" + ("" if dep == 1.0 else f"_d{dep:.3f}")
        conf = BertConfig.from_json_file(str(out / f"config_w{label}.json"))
        assert conf.num_hidden_layers == (2 if dep == 1.0 else 1)
        sub = build_classifier(conf, "dense")
        load_into(sub, str(out / f"best_w{label}.ckpt"), "best", strict=True)
        assert evaluate(LogitsOnly(sub).set_train(False), {"dev": dev}, 16, task)["acc"] == pytest.approx(r["metric"])
    from src.width import supernet_record
    assert supernet_record(str(out / "supernet.ckpt")) == {"widths": [1.0, 0.75, 0.5], "depths": [1.0, 0.5]}
    for w, dep in ((0.75, 0.5), (0.5, 0.5)):
        _slice_tool_matches_view(out, d / f"sliced2_{w}_{dep}", dev, w, dep)


def _cli(argv):
    return subprocess.run([sys.executable, os.path.join(ROOT, "run_ofa_width.py"), *argv], capture_output=True,
                          text=True, timeout=300, cwd=ROOT)


def test_stage2_bad_start_is_one_error_line(setup, tmp_path):
    """Stage 2 pointed at the fine-tuned teacher (not a supernet), at a supernet of another shape than
    teacher.config, or asked for a width the supernet never trained: exit 2, one ERROR line naming the key,
    nothing written."""
    from src.width import parse_width_list, supernet_mark
    d = setup
    other = TINY.replace(hidden_size=8, intermediate_size=8)
    ms.set_seed(1)
    wrong = BertForSequenceClassification(other)
    mark = supernet_mark(parse_width_list([1.0, 0.75, 0.5], other))
    save_cell(wrong, str(tmp_path / "other_supernet.ckpt"), extra=mark)
    cases = ((d / "teacher.ckpt", [], "ERROR: supernet.init_ckpt '.*': not a width supernet"),
             (tmp_path / "other_supernet.ckpt", [], "ERROR: supernet.init_ckpt '.*'.*shape"),
             (_stage1(d), ["--width_mult_list", "1.0", "0.25"],
              "ERROR: width_mult_list: width 0.25 was not trained in supernet.init_ckpt"))
    for i, (start, extra, message) in enumerate(cases):
        out = tmp_path / f"run{i}"
        argv = _stage2_argv(d, out, start)
        if extra:
            j = argv.index("--width_mult_list")
            argv = argv[:j] + argv[j + 4:] + extra
        proc = _cli(argv)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert re.match(message, lines[0]), lines[0]
        assert not out.exists()


def test_width_matched_teacher_spelling_still_reads():
    """train.width_matched_teacher (old spelling) -> train.distill_from: true = narrowed_teacher."""
    cfg = load_config(os.path.join(ROOT, "configs", "ofa_mr.yaml"), ["--train.width_matched_teacher", "true"])
    assert cfg.train.distill_from == "narrowed_teacher"
    with pytest.raises(UserError, match="train.distill_from"):
        load_config(os.path.join(ROOT, "configs", "ofa_mr.yaml"), ["--train.distill_from", "paper"])
