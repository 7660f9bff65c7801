"""run_compress.py end to end on the tiny workspace (tests/tiny_run.py): depth -> width -> ternary -> vocab -> export,
each stage a child run; every stage's output reloads strictly; the 2-bit ONNX equals the packed model; the stage
table and `The best acc` line come from the final file; a second call skips the finished stages, from_stage reruns
one and the later ones; bad input is one ERROR line and leaves nothing of the failed stage."""
import json
import os

import numpy as np
import pytest

import tiny_run
from tiny_run import SEQ, compress_args, run_script

WORDS = [f"w{i:02d}" for i in range(5, tiny_run.VOCAB)]      # ids 5..29; 0-4 are the special tokens
TRAIN_MAX_ID = 20                                            # training text uses ids <= 20: 21..29 are pruned


def _rows(n, seed, max_id):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        length = int(rng.integers(5, SEQ + 1))
        ids = [2] + [int(t) for t in rng.integers(5, max_id + 1, length - 2)] + [3] + [0] * (SEQ - length)
        yield {"input_ids": ids, "input_mask": [1] * length + [0] * (SEQ - length), "segment_ids": [0] * SEQ,
               "label_ids": [int(ids[1] >= 13)]}


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    from src.records import write_records, write_schema
    root = tmp_path_factory.mktemp("compress")
    w = tiny_run.make_workspace(str(root))
    for split, n, seed, max_id in (("train", 64, 1, TRAIN_MAX_ID), ("dev", 16, 2, 29), ("test", 16, 3, 29)):
        path = os.path.join(w["data"], f"{split}.tf_record")
        k = write_records(path, _rows(n, seed, max_id), tiny_run.COLUMNS)
        write_schema(os.path.join(w["data"], f"{split}_schema.json"), tiny_run.COLUMNS, k)
    w["vocab"] = tiny_run.write_vocab(str(root / "vocab.txt"))
    w["teacher"] = tiny_run.classifier_teacher(w)
    return w


def stage(out, name):
    with open(os.path.join(out, name, "stage.json"), encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def chain(ws, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("chain") / "run")
    res = run_script("run_compress.py", compress_args(ws, out), timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return out, res


def test_chain_reloads_every_stage_and_the_final_file_is_the_packed_model(ws, chain):
    out, res = chain
    from src.checkpoint import load_into
    from src.packing import build_ternary_inference_model
    from src.tinybert_model import build_classifier, load_bert_config
    from src.export_folder import read_export_folder
    from src.export import OnnxRunner
    import mindspore as ms
    for name in ("depth", "width"):                                  # fp32 stage outputs reload strictly
        m = stage(out, name)["model"]
        assert m["kind"] == "fp32"
        load_into(build_classifier(load_bert_config(m["config"], "c", num_labels=2), "dense"), m["ckpt"], "ckpt",
                  strict=True)
    width_cfg = load_bert_config(stage(out, "width")["model"]["config"], "c")
    assert width_cfg.layer_num_heads == [1]                          # 2 heads at width 0.5
    tern = stage(out, "ternary")["model"]
    assert tern["kind"] == "ternary" and os.path.isfile(tern["packed"])
    voc = stage(out, "vocab")["model"]
    with open(voc["vocab"], encoding="utf-8") as f:
        kept = f.read().split()
    assert kept == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS[:TRAIN_MAX_ID - 4]
    assert load_bert_config(voc["config"], "c").vocab_size == len(kept)
    folder = read_export_folder(os.path.join(out, "export"))          # every file of the exported folder
    assert folder.vocab_size == len(kept) and folder.batch_size == 1
    import onnx
    inits = onnx.load(folder.model_file).graph.initializer
    int8 = [i.name for i in inits if i.data_type == onnx.TensorProto.INT8 and np.prod(i.dims) > 1]
    assert int8 == ["int8nbits.sign_table"]                          # every weight stored as 2-bit codes
    packed = build_ternary_inference_model(os.path.join(out, "vocab", "model.tpack"))
    runner = OnnxRunner(folder.model_file)
    from src.dataset import load_split
    from src.tasks import get_task
    dev = load_split(os.path.join(out, "vocab", "data"), "dev", "tfrecord", SEQ, get_task("MR"))
    assert dev["input_ids"].max() < len(kept)                        # re-encoded with the pruned vocab
    diffs = []
    for r in range(len(dev["input_ids"])):
        x = [dev[k][r:r + 1].astype(np.int32) for k in ("input_ids", "segment_ids", "input_mask")]
        ref = packed(*[ms.Tensor(a) for a in x]).asnumpy()
        diffs.append(np.abs(runner(*x) - ref).max() / max(1.0, np.abs(ref).max()))
    assert max(diffs) < 0.05, max(diffs)                              # 8-bit activations: the export's tolerance
    rows = json.load(open(os.path.join(out, "stages.json")))
    assert [r["stage"] for r in rows] == ["teacher", "depth", "width", "ternary", "vocab", "export"]
    final = stage(out, "export")["metrics"]["acc"]
    assert rows[-1]["metric"] == final and rows[-1]["bytes"] == os.path.getsize(folder.model_file)
    assert f"The best acc is {final:.6f}" in open(os.path.join(out, "log.txt")).read()
    card = open(os.path.join(out, "export", "model_card.md")).read()
    assert f"{rows[-1]['bytes']:,}" in card and "## Stages" in card


def test_second_call_skips_and_from_stage_reruns_that_stage_and_later(ws, chain):
    out, _ = chain
    before = {n: stage(out, n) for n in ("depth", "width", "ternary", "vocab", "export")}
    res = run_script("run_compress.py", compress_args(ws, out), timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    for n in before:
        assert f"stage {n}: done" in res.stdout and stage(out, n) == before[n]
    res = run_script("run_compress.py", compress_args(ws, out, from_stage="vocab"), timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    for n in ("depth", "width", "ternary"):
        assert f"stage {n}: done (" in res.stdout and stage(out, n) == before[n]
    assert "stage vocab: done in" in res.stdout and "stage export: done in" in res.stdout
    assert stage(out, "export")["metrics"] == before["export"]["metrics"]          # the same model again


def test_a_stage_starts_from_another_runs_folder(ws, chain, tmp_path):
    """--stages ternary vocab export --input_dir <a width stage folder>: that folder's model goes on."""
    out, _ = chain
    new = str(tmp_path / "again")
    res = run_script("run_compress.py", compress_args(ws, new, stages=["vocab", "export"],
                                                      input_dir=os.path.join(out, "ternary")), timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert stage(new, "vocab")["input"] == stage(out, "ternary")["model"]
    assert not os.path.exists(os.path.join(new, "depth"))


@pytest.mark.parametrize("extra, expected", [
    ({"stages": ["width", "depth"]}, "stages ['width', 'depth']: expected each at most once, in the order"),
    ({"stages": ["depth", "prune"]}, "stages: ['prune'] unknown"),
    ({"from_stage": "width", "stages": ["vocab", "export"]}, "from_stage 'width': not in stages"),
    ({"width.target": 0.0}, "width.target is 0.0; expected in (0, 1)"),
    ({"ternary.distill_from": "supernet"}, 'ternary.distill_from is "supernet"; expected teacher or depth or width'),
    ({"report.latency_runs": -1}, "report.latency_runs is -1; expected >= 0"),
    ({"export.seq_length": 0}, "export.seq_length is 0; expected >= 1"),
    ({"depth.args.td1.max_stepz": 3}, "depth stage (configs/td_mr.yaml): --td1.max_stepz: unknown key"),
    ({"ternary.args.student.ckpt": "x.ckpt"}, "ternary.args.student.ckpt: set by the pipeline"),
    ({"vocab.single_chars": "some"}, "vocab.single_chars 'some': expected one of all, seen, none"),
    ({"export.format": "int4"}, "export.format 'int4': expected one of"),
    ({"teacher.ckpt": "/nonexistent/best.ckpt"}, "teacher.ckpt: '/nonexistent/best.ckpt' does not exist"),
    ({"stages": ["vocab", "export"], "input_dir": "/nonexistent/run"}, "input_dir: '/nonexistent/run' is not a folder"),
    # token tasks: the re-encoding moves word pieces but not their tags
    ({"task.name": "CoNLL"}, "stages: vocab is not possible for the token task CoNLL: the vocab stage re-encodes"),
    ({"task.name": "ner", "task.labels": ["O", "B-X", "I-X"], "stages": ["ternary", "vocab"]},
     "vocab is not possible for the token task ner: the vocab stage re-encodes the records from their word pieces "
     "(src/vocab_prune.py reencode), which re-splits a word whose pieces were dropped while the per-piece tags "
     "(label_ids) and sentence ids stay where they were; remove vocab from stages, e.g. stages: [ternary]"),
    ({"task.name": "SQuAD"}, "stages: vocab is not possible for the span task SQuAD: the vocab stage re-encodes"),
])
def test_bad_plan_is_one_error_line_before_any_work(ws, tmp_path, extra, expected):
    out = tmp_path / "run"
    res = run_script("run_compress.py", compress_args(ws, str(out), **extra), timeout=120)
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("ERROR:")]
    assert res.returncode == 2 and len(errors) == 1 and expected in errors[0], res.stderr[-2000:]
    assert "Traceback" not in res.stderr and not out.exists()


def test_a_failed_stage_leaves_nothing_of_itself_and_keeps_the_earlier_ones(ws, chain, tmp_path):
    """The export stage refuses an fp32 model for a 2-bit format: the vocab stage (run before it in the same call,
    on the width stage's fp32 model) is kept, nothing of export is left, one ERROR line."""
    out, _ = chain
    new = str(tmp_path / "fail")
    res = run_script("run_compress.py", compress_args(ws, new, stages=["vocab", "export"],
                                                      input_dir=os.path.join(out, "width")), timeout=300)
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("ERROR:")]
    assert res.returncode == 2 and len(errors) == 1 and "export.format nbits_int8: needs a TernaryBERT" in errors[0]
    assert stage(new, "vocab")["model"]["kind"] == "fp32"
    assert not os.path.exists(os.path.join(new, "export"))

    # a child run's own error (no length bucket holds a batch of 999): its ERROR line only, nothing of the stage
    res = run_script("run_compress.py", compress_args(ws, new, stages=["depth"],
                                                      **{"depth.args.td1.batch_size": 999}), timeout=300)
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("ERROR:")]
    assert res.returncode == 2 and len(errors) == 1 and "td1.batch_size" in errors[0], res.stderr[-2000:]
    assert not os.path.exists(os.path.join(new, "depth")) and os.path.exists(os.path.join(new, "vocab", "stage.json"))


def test_a_vocab_that_does_not_match_the_model_is_one_error(ws, chain, tmp_path):
    out, _ = chain
    short = tmp_path / "vocab.txt"
    short.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS[:10]) + "\n")
    new = tmp_path / "run"
    res = run_script("run_compress.py", compress_args(ws, str(new), stages=["vocab", "export"],
                                                      input_dir=os.path.join(out, "ternary"),
                                                      **{"teacher.vocab": str(short)}), timeout=300)
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("ERROR:")]
    assert res.returncode == 2 and len(errors) == 1 and "vocab" in errors[0] and "30" in errors[0], res.stderr[-999:]
    assert not (new / "vocab").exists() and "Traceback" not in res.stderr


@pytest.mark.parametrize("task", [{"task.name": "CoNLL"}, {"task.name": "ner", "task.labels": ["O", "B-X", "I-X"]}])
def test_token_task_plan_without_vocab_passes_the_checks(ws, tmp_path, task):
    """CoNLL / ner with the vocab stage left out: the plan check (every stage's config as its run loads it, with the
    token task passed down) accepts it; each training stage's run sees the task."""
    from src.config import load_config
    from src.runs import compress
    from src.runs.compress_stages import argv_of, user_args, wired_common
    stages = ["depth", "width", "ternary", "export"]
    cfg = load_config(os.path.join(tiny_run.ROOT, "configs", "compress_mr.yaml"),
                      compress_args(ws, str(tmp_path / "run"), stages=stages, **task),
                      open_sections=compress.OPEN_SECTIONS)
    assert compress.check_plan(cfg) == (stages, "")
    for name in ("depth", "width", "ternary"):
        argv = argv_of({**wired_common(cfg, str(tmp_path / name)), **user_args(cfg, name)})
        child = load_config(cfg[name].config, ["--config_path", cfg[name].config] + argv)
        assert (child.task.name, list(child.task.labels)) == (task["task.name"], task.get("task.labels", []))
    assert not (tmp_path / "run").exists()


def test_a_ternary_stage_that_cannot_match_the_teachers_hidden_states_is_refused_before_any_stage(ws, tmp_path):
    """A depth student wider than the teacher (hidden 64 vs 16) with ternary.distill_from teacher: TernaryBERT's
    hidden loss has no fit_dense, so the plan check refuses it before the depth stage trains; distill_from depth
    passes the check."""
    from src.config import load_config
    from src.runs import compress
    wide = {"stages": ["depth", "ternary"], "depth.args.student.config": tiny_run.dropout_student_config(ws)}
    out = tmp_path / "run"
    res = run_script("run_compress.py", compress_args(ws, str(out), **wide), timeout=120)
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("ERROR:")]
    assert res.returncode == 2 and len(errors) == 1, res.stderr[-2000:]
    assert "ternary.distill_from teacher: the model entering the ternary stage" in errors[0], errors[0]
    assert "hidden_size 64, the teacher 16" in errors[0] and not out.exists(), errors[0]
    cfg = load_config(os.path.join(tiny_run.ROOT, "configs", "compress_mr.yaml"),
                      compress_args(ws, str(out), **wide, **{"ternary.distill_from": "depth"}),
                      open_sections=compress.OPEN_SECTIONS)
    assert compress.check_plan(cfg) == (["depth", "ternary"], "")
