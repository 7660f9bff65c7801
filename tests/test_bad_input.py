"""Bad-input sweep over the entry scripts (subprocesses, as users run them).

Every case must give: exit status 2, exactly one `ERROR:` line on stderr that names the file/field (the
expected fragment below), no Python traceback, and nothing new in the output directory (the run's output dir
does not exist afterwards, or holds no new file). Fixtures: tiny records (seq 16, vocab 30) and tiny models.
"""
import os
import shutil
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_run  # noqa: E402
from src.checkpoint import save_cell
from src.outputs import output_guard

ROOT = tiny_run.ROOT


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    import mindspore as ms
    from src.records import write_records, write_schema
    from src.tinybert_model import BertConfig, BertForSequenceClassification, BertModel
    root = str(tmp_path_factory.mktemp("bad_ws"))
    w = tiny_run.make_workspace(root)
    good = w["data"]

    def data_copy(name):
        d = os.path.join(root, name)
        shutil.copytree(good, d)
        return d

    ms.set_seed(1)
    cfg = BertConfig(**tiny_run.TINY).replace(num_labels=2)
    save_cell(BertForSequenceClassification(cfg), os.path.join(root, "ft_teacher.ckpt"))
    wide = cfg.replace(hidden_size=24, num_attention_heads=2)
    save_cell(BertForSequenceClassification(wide), os.path.join(root, "wide_teacher.ckpt"))
    cfg.replace(vocab_size=50).to_json_file(os.path.join(root, "vocab50.json"))
    deep = BertConfig(**tiny_run.TINY).replace(num_hidden_layers=3)  # a GD teacher 2 student layers do not divide
    deep.to_json_file(os.path.join(root, "teacher3.json"))
    ms.save_checkpoint(BertModel(deep), os.path.join(root, "teacher3.ckpt"))
    with open(os.path.join(root, "garbage.ckpt"), "wb") as f:
        f.write(b"not a checkpoint at all" * 10)
    os.makedirs(os.path.join(root, "a_directory"))
    os.makedirs(os.path.join(root, "no_records"))
    with open(os.path.join(root, "a_file"), "w") as f:
        f.write("x")

    d = data_copy("schema_mismatch")                      # schema says 32 tokens, records hold 16
    cols = dict(tiny_run.COLUMNS, input_ids=("int64", 32))
    write_schema(os.path.join(d, "dev_schema.json"), cols, 16)

    d = data_copy("bad_label")                            # MR labels are 0/1
    rows = list(tiny_run.rows(16, 2))
    rows[3]["label_ids"] = [2]
    write_records(os.path.join(d, "dev.tf_record"), rows, tiny_run.COLUMNS)

    d = data_copy("empty_train")
    write_records(os.path.join(d, "train.tf_record"), [], tiny_run.COLUMNS)
    write_schema(os.path.join(d, "train_schema.json"), tiny_run.COLUMNS, 0)

    d = data_copy("corrupt")                              # one flipped byte in the middle of the dev records
    path = os.path.join(d, "dev.tf_record")
    raw = bytearray(open(path, "rb").read())
    raw[len(raw) // 2] ^= 0xFF
    open(path, "wb").write(bytes(raw))

    w.update(root=root, ft=os.path.join(root, "ft_teacher.ckpt"))
    return w


def td(ws, phase, **over):
    """run_task_distill.py on the tiny workspace (valid unless overridden)."""
    args = {"phase": phase, "threads": 1, "data.dir": ws["data"], "data.max_seq_length": tiny_run.SEQ,
            "data.length_buckets": [tiny_run.SEQ], "teacher.config": ws["config"], "teacher.init_ckpt": ws["ckpt"],
            "teacher.ckpt": ws["ft"], "student.config": ws["config"], "student.init": "random",
            "td1.max_steps": 1, "finetune.max_steps": 1, "eval.batch_size": 16}
    args.update(over)
    return "run_task_distill.py", args


def gd(ws, **over):
    return "run_general_distill.py", tiny_run.gd_overrides(ws, **{"train.max_steps": 1, **over})


def ofa(ws, **over):
    args = {"threads": 1, "data.dir": ws["data"], "data.max_seq_length": tiny_run.SEQ,
            "data.length_buckets": [tiny_run.SEQ], "teacher.config": ws["config"], "teacher.ckpt": ws["ft"],
            "train.max_steps": 1}
    args.update(over)
    return "run_ofa_width.py", args


def p(ws, name):
    return os.path.join(ws["root"], name)


# name -> (builder(ws) -> (script, args dict or argv list), expected fragment of the ERROR line)
CASES = {
    "missing_teacher_ckpt": (lambda w: td(w, "td1", **{"teacher.ckpt": p(w, "nope.ckpt")}),
                             "teacher.ckpt: '{root}/nope.ckpt' does not exist"),
    "unreadable_ckpt": (lambda w: td(w, "td1", **{"teacher.ckpt": p(w, "garbage.ckpt")}),
                        "garbage.ckpt' cannot be read"),
    "config_is_directory": (lambda w: td(w, "finetune", **{"teacher.config": p(w, "a_directory")}),
                            "teacher.config '{root}/a_directory'"),
    "dir_without_records": (lambda w: td(w, "finetune", **{"data.dir": p(w, "no_records")}),
                            "no_records/dev.tf_record' does not exist"),
    "schema_mismatch": (lambda w: td(w, "finetune", **{"data.dir": p(w, "schema_mismatch")}),
                        "schema_mismatch/dev"),
    "wrong_seq_length": (lambda w: td(w, "finetune", **{"data.max_seq_length": 32}),
                         "data.max_seq_length is 32"),
    "label_outside_task": (lambda w: td(w, "finetune", **{"data.dir": p(w, "bad_label")}), "bad_label/dev"),
    "empty_train_set": (lambda w: td(w, "finetune", **{"data.dir": p(w, "empty_train")}), "empty_train/train"),
    "corrupted_tfrecord": (lambda w: td(w, "finetune", **{"data.dir": p(w, "corrupt")}), "corrupt/dev.tf_record"),
    "vocab_vs_checkpoint": (lambda w: td(w, "finetune", **{"teacher.config": p(w, "vocab50.json")}),
                            "teacher.init_ckpt"),
    "teacher_wrong_shape": (lambda w: td(w, "td1", **{"teacher.ckpt": p(w, "wide_teacher.ckpt")}),
                            "teacher.ckpt '{root}/wide_teacher.ckpt'"),
    "layer_map_out_of_range": (lambda w: td(w, "td1", **{"layer_map.attention": [3]}),
                               "layer_map.attention entries [3] out of range"),
    "unknown_task": (lambda w: td(w, "finetune", **{"task.name": "NOPE"}), "task.name"),
    "unknown_phase": (lambda w: td(w, "td3"), "phase 'td3'"),
    "missing_config_yaml": (lambda w: td(w, "finetune", config_path=p(w, "nope.yaml")), "nope.yaml"),
    "output_dir_is_file": (lambda w: td(w, "finetune", output_dir=p(w, "a_file")), "is a file"),
    "gd_missing_teacher": (lambda w: gd(w, **{"teacher.ckpt": p(w, "nope.ckpt")}), "teacher.ckpt"),
    "gd_wrong_seq_length": (lambda w: gd(w, **{"data.max_seq_length": 32}), "data.max_seq_length is 32"),
    "gd_layer_map_does_not_divide": (lambda w: gd(w, **{"teacher.config": p(w, "teacher3.json"),
                                                        "teacher.ckpt": p(w, "teacher3.ckpt"),
                                                        "student.arch.num_hidden_layers": 2}),
                                     "teacher's 3 layers are not a multiple of the student's 2"),
    "width_zero": (lambda w: ofa(w, width_mult_list=[0.0, 1.0]), "width_mult_list"),
    "width_above_one": (lambda w: ofa(w, width_mult_list=[1.0, 1.5]), "width_mult_list"),
    "ternary_unknown_task": (lambda w: ("run_ternary.py", {"threads": 1, "task.name": "NOPE"}), "task.name"),
    "prepare_missing_input": (lambda w: ("tools/prepare_data.py", ["--task", "csv", "--input", p(w, "nope.csv"),
                                                                 "--labels", "a,b"]), "nope.csv"),
    "convert_missing_input": (lambda w: ("tools/convert_checkpoint.py",
                                         ["--direction", "ms2hf", "--input", p(w, "nope.ckpt"),
                                          "--config", w["config"]]), "nope.ckpt"),
    "export_missing_ckpt": (lambda w: ("export.py", ["--config_path", w["config"], "--ckpt_file", p(w, "nope.ckpt"),
                                                     "--task", "MR"]), "nope.ckpt"),
}


def _snapshot(folder):
    out = set()
    for base, _, files in os.walk(folder):
        out.update(os.path.join(base, f) for f in files)
    return out


# One subprocess per entry script proves the real exit status and stderr; the other cases run the same
# `run_main(main, argv)` in this process (no 3 s MindSpore import per case; an unexpected exception fails the
# test just as a traceback would).
SUBPROCESS = {"missing_teacher_ckpt", "output_dir_is_file", "gd_missing_teacher", "gd_layer_map_does_not_divide",
              "width_zero", "ternary_unknown_task", "prepare_missing_input", "convert_missing_input",
              "export_missing_ckpt"}
_MODULES = {}


def _in_process(script, argv, capsys):
    import importlib.util
    from src.errors import run_main
    if script not in _MODULES:
        spec = importlib.util.spec_from_file_location("entry_" + script.replace("/", "_")[:-3],
                                                      os.path.join(ROOT, script))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        _MODULES[script] = mod
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_main(_MODULES[script].main, argv)
    return e.value.code, capsys.readouterr().err


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(case, ws, tmp_path, capsys):
    build, fragment = CASES[case]
    script, args = build(ws)
    out = str(tmp_path / "out")
    if isinstance(args, dict):
        args = dict({"output_dir": out}, **args)
        if case not in SUBPROCESS:
            args["threads"] = 0                    # this process already set MindSpore's thread count
        argv = tiny_run.cli(args)
    elif script.startswith("tools/prepare"):
        argv = args + ["--output_dir", out]
    elif script.startswith("tools/convert"):
        argv = args + ["--output", os.path.join(out, "model.safetensors")]
    else:
        argv = args + ["--file_name", os.path.join(out, "model")]
    before = _snapshot(ws["root"])
    if case in SUBPROCESS:
        res = tiny_run.run_script(script, argv, timeout=240)
        code, stderr = res.returncode, res.stderr
    else:
        code, stderr = _in_process(script, argv, capsys)
    errors = [ln for ln in stderr.splitlines() if ln.startswith("ERROR:")]
    assert code == 2, (code, stderr[-3000:])
    assert "Traceback" not in stderr, stderr[-3000:]
    assert len(errors) == 1, stderr[-3000:]
    assert fragment.format(root=ws["root"]) in errors[0], errors[0]
    assert not os.path.isdir(out) or _snapshot(out) == set(), sorted(_snapshot(out))
    assert _snapshot(ws["root"]) == before                   # no stray files beside the inputs either


def test_diverging_run_stops_naming_the_step_without_checkpoints(ws, tmp_path):
    """lr 1e30: Adam steps of ~1e30 overflow the weights; the run stops at the first non-finite loss or gradient
    norm with one ERROR line naming the step (exit 2, no traceback), keeps its log and writes no checkpoint."""
    out = str(tmp_path / "out")
    script, args = td(ws, "finetune", output_dir=out, **{"finetune.lr": 1e30, "finetune.warmup_ratio": 0.0,
                                                        "finetune.max_steps": 0, "finetune.epochs": 1,
                                                        "checkpoint.every_steps": 1})
    res = tiny_run.run_script(script, tiny_run.cli(args), timeout=300)
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("ERROR:")]
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert len(errors) == 1 and " at epoch 1, step " in errors[0] and "stopped before any checkpoint" in errors[0]
    step = int(errors[0].split(" at epoch 1, step ")[1].split(":")[0])
    assert 1 <= step < 16                                       # stopped in the first epoch, not at its end
    files = _snapshot(out)
    assert not any(f.endswith(("best.ckpt", "last.ckpt")) for f in files)
    states = sorted(f for f in files if "state_step" in f)
    assert [int(os.path.basename(f)[10:19]) for f in states] == ([step - 1] if step > 1 else [])
    with open(os.path.join(out, "teacher", "log.txt")) as f:
        assert "phase finetune" in f.read()


def test_failed_rerun_leaves_the_earlier_runs_description(tmp_path):
    """A rerun into a folder holding an earlier run rewrites config_resolved.yaml / manifest.json as it starts; if
    it then fails (e.g. a missing data dir), those files get their earlier content back, so they still describe
    the checkpoints beside them (pack_ternary.py reads student.head_type there); new files are removed."""
    from src.errors import UserError
    
    run = tmp_path / "run"
    run.mkdir()
    (run / "config_resolved.yaml").write_text("student:\n  head_type: dense\n")
    (run / "best.ckpt").write_bytes(b"earlier checkpoint")
    with pytest.raises(UserError, match="data.dir"):
        with output_guard(str(run)):
            (run / "config_resolved.yaml").write_text("student:\n  head_type: relu_pooler\n")
            (run / "manifest.json").write_text("{}")
            raise UserError("data.dir: 'missing' does not exist")
    assert (run / "config_resolved.yaml").read_text() == "student:\n  head_type: dense\n"
    assert sorted(p.name for p in run.iterdir()) == ["best.ckpt", "config_resolved.yaml"]
    assert (run / "best.ckpt").read_bytes() == b"earlier checkpoint"
    # a rerun that got as far as replacing the checkpoint: the new description stays with the new checkpoint
    with pytest.raises(UserError, match="late"):
        with output_guard(str(run)):
            (run / "config_resolved.yaml").write_text("student:\n  head_type: relu_pooler\n")
            (run / "best.ckpt").write_bytes(b"the rerun's checkpoint")
            raise UserError("late failure")
    assert (run / "config_resolved.yaml").read_text() == "student:\n  head_type: relu_pooler\n"
