import fnmatch
import os
import subprocess
import sys
import textwrap

import pytest
import yaml

from src.config import Config, load_config, load_run_config, save_resolved
from src.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# shipped config -> its entry script and the sections holding a training schedule
SHIPPED = {"gd": ("run_general_distill.py", ["train"]), "td_mr": ("run_task_distill.py", ["finetune", "td1", "td2"]),
           "ternary_mr": ("run_ternary.py", ["train"]), "ofa_mr": ("run_ofa_width.py", ["train"]),
           "td_conll": ("run_task_distill.py", ["finetune", "td1", "td2"]),
           "ternary_conll": ("run_ternary.py", ["train"]), "ofa_conll": ("run_ofa_width.py", ["train"])}

BASE = """\
seed: 1                  # random seed
distributed: false
output_dir: out/run
train:
  batch_size: 32         # per device
  lr: 0.0001
  eps: 1e-6
  use_amp: false
  labels: []
  width_mult_list: [1.0, 0.75]
  buckets: [32, 64]
  deep:
    level: 3
layer_map: null
"""


@pytest.fixture
def base(tmp_path):
    p = tmp_path / "base.yaml"
    p.write_text(BASE)
    return str(p)


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return str(p)


def error(path, argv):
    with pytest.raises(UserError) as e:
        load_config(path, argv)
    return str(e.value)


def test_defaults_and_types(base):
    cfg = load_config(base, [])
    assert cfg.train.batch_size == 32 and cfg.train.deep.level == 3
    assert cfg.train.eps == 1e-6 and isinstance(cfg.train.eps, float)     # PyYAML alone reads '1e-6' as str
    assert cfg.distributed is False and cfg.layer_map is None


def test_nested_overrides_both_forms(base):
    cfg = load_config(base, ["--train.batch_size", "8", "--train.deep.level=5", "--seed", "7"])
    assert (cfg.train.batch_size, cfg.train.deep.level, cfg.seed) == (8, 5, 7)
    assert cfg.train.lr == 0.0001                                          # untouched keys keep the file value


def test_bool_strict(base):
    assert load_config(base, ["--train.use_amp", "true"]).train.use_amp is True
    assert load_config(base, ["--distributed=FALSE"]).distributed is False
    for bad in ("1", "yes", "on", "y", "0", "truee", "[true]"):
        msg = error(base, ["--train.use_amp", bad])
        assert "--train.use_amp" in msg and "bool" in msg and bad in msg


def test_int_and_float(base):
    assert "--train.batch_size: expected int, got 'abc'" in error(base, ["--train.batch_size", "abc"])
    assert "expected int" in error(base, ["--train.batch_size", "8.0"])
    assert "expected int" in error(base, ["--train.batch_size", "true"])
    cfg = load_config(base, ["--train.lr", "3", "--train.eps", "1e-8"])
    assert cfg.train.lr == 3.0 and isinstance(cfg.train.lr, float) and cfg.train.eps == 1e-8
    assert "expected float" in error(base, ["--train.lr", "fast"])


def test_str_accepts_scalars(base):
    cfg = load_config(base, ["--output_dir", "123"])
    assert cfg.output_dir == "123"
    assert "expected a string" in error(base, ["--output_dir", "[a, b]"])


def test_list_forms(base):
    flow = load_config(base, ["--train.width_mult_list", "[1.0, 0.8333333333333334, 0.5]"])
    spaced = load_config(base, ["--train.width_mult_list", "1.0", "0.8333333333333334", "0.5", "--seed", "3"])
    commas = load_config(base, ["--train.width_mult_list=1.0,0.8333333333333334,0.5"])
    assert flow.train.width_mult_list == spaced.train.width_mult_list == commas.train.width_mult_list \
        == [1.0, 0.8333333333333334, 0.5]
    assert spaced.seed == 3                                               # the list stopped at the next flag
    assert load_config(base, ["--train.buckets", "[]"]).train.buckets == []
    assert load_config(base, ["--train.width_mult_list", "1", "0.5"]).train.width_mult_list == [1.0, 0.5]
    msg = error(base, ["--train.buckets", "16", "x"])
    assert "--train.buckets[1]" in msg and "expected int" in msg
    assert "--seed: expected int, got '[1, 2]'" in error(base, ["--seed", "[1, 2]"])
    assert load_config(base, ["--train.labels", "neg", "pos"]).train.labels == ["neg", "pos"]


def test_null_accepts_anything(base):
    assert load_config(base, ["--layer_map", "[0, 2, 4]"]).layer_map == [0, 2, 4]
    assert load_config(base, ["--layer_map", "0", "2"]).layer_map == [0, 2]
    assert load_config(base, ["--layer_map", "uniform"]).layer_map == "uniform"


def test_unknown_key_suggests(base):
    msg = error(base, ["--train.batch_sise", "8"])
    assert "--train.batch_sise" in msg and "unknown key" in msg and "--train.batch_size" in msg
    assert "--train.batch_size" in error(base, ["--batch_size", "8"])        # leaf name without its section
    assert "section" in error(base, ["--train", "3"])
    assert "unknown key" in error(base, ["--layer_map.x", "3"])


def test_bad_argv(base):
    assert "unexpected argument" in error(base, ["train.batch_size", "8"])
    assert "expected a value" in error(base, ["--seed"])
    assert "expected one value" in error(base, ["--seed", "1", "2"])


def test_string_boolean_in_yaml_rejected(tmp_path):
    path = write(tmp_path, "s.yaml", """\
        train:
          use_amp: "true"
        """)
    msg = error(path, [])
    assert "train.use_amp" in msg and "real boolean" in msg


def test_yaml_yes_no_are_strings_and_duplicates_rejected(tmp_path):
    cfg = load_config(write(tmp_path, "y.yaml", "labels: [yes, no]\nanswer: no\n"), [])
    assert cfg.labels == ["yes", "no"] and cfg.answer == "no"
    msg = error(write(tmp_path, "d.yaml", "seed: 1\nseed: 2\n"), [])
    assert "duplicate key 'seed'" in msg


def test_config_path_picks_other_file(base, tmp_path, monkeypatch):
    """--config_path reads another file, which must hold every key of the run's own file: a missing key is one
    error naming it and its shipped value (it once surfaced as an AttributeError deep in the run); extra keys
    are the other file's business."""
    other = open(base, encoding="utf-8").read().replace("seed: 1", "seed: 99") + "extra: 1\n"
    write(tmp_path, "other.yaml", other)
    monkeypatch.chdir(tmp_path)
    cfg = load_config(base, ["--config_path", "other.yaml", "--train.batch_size", "2"])
    assert cfg.seed == 99 and cfg.train.batch_size == 2 and cfg.extra == 1
    assert load_config(base, ["--config_path=other.yaml"]).seed == 99
    assert "not found" in error(base, ["--config_path", "missing.yaml"])
    write(tmp_path, "partial.yaml", "seed: 99\ntrain:\n  batch_size: 4\n")
    msg = error(base, ["--config_path", "partial.yaml"])
    assert msg.startswith("config file 'partial.yaml' lacks ") and "distributed (false)" in msg, msg


def test_immutable_and_mapping_api(base):
    cfg = load_config(base, [])
    with pytest.raises(AttributeError):
        cfg.seed = 3
    with pytest.raises(AttributeError):
        cfg.train.batch_size = 3
    cfg.train.buckets.append(128)                                         # a copy: the config is unchanged
    assert cfg.train.buckets == [32, 64]
    assert cfg["train"]["batch_size"] == 32 and "train" in cfg and "nope" not in cfg
    assert cfg.get("nope", 5) == 5 and cfg.train.get("lr") == 0.0001
    d = cfg.to_dict()
    assert isinstance(d["train"], dict) and not isinstance(d["train"], Config)
    d["train"]["batch_size"] = 1
    assert cfg.train.batch_size == 32
    with pytest.raises(AttributeError, match="batch_size"):
        cfg.train.batch_sise


def test_replace(base):
    cfg = load_config(base, [])
    new = cfg.replace(**{"train.batch_size": 2, "train.lr": 1, "layer_map": [1, 2]})
    assert new.train.batch_size == 2 and new.train.lr == 1.0 and new.layer_map == [1, 2]
    assert cfg.train.batch_size == 32                                     # the original is untouched
    with pytest.raises(UserError, match="train.use_amp"):
        cfg.replace(**{"train.use_amp": 1})
    with pytest.raises(UserError, match="unknown key"):
        cfg.replace(**{"train.nope": 1})


def test_save_resolved_round_trip(base, tmp_path):
    cfg = load_config(base, ["--train.batch_size", "8", "--layer_map", "[1, 2]", "--output_dir", "1e-5",
                             "--train.labels", "yes", "no"])
    path = save_resolved(cfg, str(tmp_path / "run"))
    assert path == str(tmp_path / "run" / "config_resolved.yaml")
    assert os.listdir(tmp_path / "run") == ["config_resolved.yaml"]       # no temp file left behind
    again = load_config(path, [])
    assert again == cfg and again.to_dict() == cfg.to_dict()
    assert again.output_dir == "1e-5" and again.train.labels == ["yes", "no"]
    assert yaml.safe_load(open(path))["train"]["labels"] == ["yes", "no"]  # readable by plain PyYAML too


def test_load_run_config(base, tmp_path):
    """A finished run's resolved config: read as written (a value today's rules reject still loads: it was checked
    when the run started), overrides applied, a missing file one error naming it and what was expected."""
    run = tmp_path / "run"
    save_resolved(load_config(base, ["--train.batch_size", "8"]), str(run))
    text = (run / "config_resolved.yaml").read_text()
    (run / "config_resolved.yaml").write_text(text.replace("batch_size: 8", "batch_size: 0"))
    with pytest.raises(UserError, match="batch_size"):
        load_config(str(run / "config_resolved.yaml"), [])
    cfg = load_run_config(str(run), "unused", ["--train.lr", "0.5"])
    assert cfg.train.batch_size == 0 and cfg.train.lr == 0.5
    with pytest.raises(UserError, match=r"^.*other[/\\]config_resolved\.yaml missing: expected a run folder$"):
        load_run_config(str(tmp_path / "other"), "expected a run folder")


def test_help_lists_keys(base, capsys):
    with pytest.raises(SystemExit) as e:
        load_config(base, ["--train.batch_size", "8", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--train.batch_size = 8  # per device" in out
    assert "--train.deep.level = 3" in out and "--layer_map = null" in out


def _lookup_dotted(data, key):
    for part in key.split("."):
        data = data[part]
    return data


def shipped(name):
    return os.path.join(ROOT, "configs", f"{name}.yaml")


def run_entry(script, args, env=None):
    """An entry script as users run it (config errors come before MindSpore is imported: fast)."""
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env=env)


def one_error(res):
    """The single ERROR line of a failed entry script (exit 2, no traceback)."""
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("ERROR:")]
    assert res.returncode == 2 and "Traceback" not in res.stderr and len(errors) == 1, res.stderr[-3000:]
    return errors[0]


def test_one_schedule_schema_and_optimizer_keys():
    """Every config: epochs, batch_size, lr, warmup_ratio, max_steps under each phase key; optim: the same
    optimizer keys everywhere, no schedule keys."""
    optim = None
    for name, (_, phases) in SHIPPED.items():
        cfg = load_config(shipped(name), [])
        for phase in phases:
            assert {"epochs", "batch_size", "lr", "warmup_ratio", "max_steps"} <= set(cfg[phase]), (name, phase)
        assert set(cfg.optim) == {"weight_decay", "eps", "end_lr", "clip_norm", "clip_mode", "loss_scale"}, name
        optim = optim or set(cfg.optim)
        assert set(cfg.optim) == optim



def _leaf_keys(data, prefix=""):
    for k, v in data.items():
        if isinstance(v, dict):
            yield from _leaf_keys(v, f"{prefix}{k}.")
        else:
            yield prefix + k


# keys a CoNLL config may set apart from its MR counterpart; every other value is the MR config's
CONLL_CHANGES = {"output_dir", "task.name", "data.dir", "data.max_seq_length", "data.length_buckets", "teacher.config",
                 "teacher.ckpt", "checkpoint.every_steps", "eval.every", "eval.length_buckets", "pack.after_train"} | {
                     f"{s}.{k}" for s in ("finetune", "td1", "td2") for k in ("epochs", "lr", "max_steps")}
# TernaryBERT on CoNLL trains the best measured recipe, not the paper's (docs/results.md#conll-2003-ner)
TERNARY_CONLL_RECIPE = {"quant.weight_rowwise": True, "loss.pred_weight": 10.0, "train.epochs": 3, "train.lr": 1e-4,
                        "eval.batch_size": 32}


@pytest.mark.parametrize("method", ["td", "ternary", "ofa"])
def test_conll_configs_are_their_mr_configs_for_the_token_task(method):
    """configs/*_conll.yaml: the MR config's keys (the schema) and values except the task, data and schedule keys;
    task CoNLL (token level) on 128-piece records; ternary and width start from the teacher td_conll fine-tunes."""
    from src.tasks import get_task
    conll = load_config(shipped(f"{method}_conll"), []).to_dict()      # the RULES ran on every value
    mr = load_config(shipped(f"{method}_mr"), []).to_dict()
    assert sorted(_leaf_keys(conll)) == sorted(_leaf_keys(mr))
    flat_conll, flat_mr = ({k: _lookup_dotted(d, k) for k in _leaf_keys(d)} for d in (conll, mr))
    changed = {k for k in flat_mr if flat_conll[k] != flat_mr[k]}
    recipe = TERNARY_CONLL_RECIPE if method == "ternary" else {}
    assert changed <= CONLL_CHANGES | set(recipe), changed - CONLL_CHANGES - set(recipe)
    assert {k: flat_conll[k] for k in recipe} == recipe
    task = get_task(conll["task"]["name"], conll["task"]["labels"], conll["task"]["regression"])
    assert task.name == "CoNLL" and task.token_level and task.main_metric == "f1"
    assert conll["data"]["dir"] == "data/conll" and conll["data"]["max_seq_length"] == 128
    assert conll["data"]["length_buckets"][-1] == 128 and conll["output_dir"] == f"output/{method}_conll"
    td = load_config(shipped("td_conll"), [])
    if method == "td":
        assert td.teacher.init_ckpt == "output/minilm/minilm.ckpt" and td.teacher.ckpt == ""
        assert all(td[p].epochs == 3 and td[p].max_steps == 0 for p in ("finetune", "td1", "td2"))
        assert 5e-5 <= td.finetune.lr <= 1e-4
        assert (td.loss.hard_label_weight, td.loss.pred_weight) == (0.0, 1.0)
    else:
        assert conll["teacher"]["ckpt"] == f"{td.output_dir}/teacher/best.ckpt"


def test_compress_conll_is_compress_mr_for_the_token_task(tmp_path):
    """configs/compress_conll.yaml: compress_mr's keys outside the stages' args, its values except the task, data,
    teacher, stage configs, schedules and export shape; no vocab stage (refused for token tasks); each stage runs
    its method's CoNLL config, and the plan check accepts the whole chain for the token task."""
    from src.runs import compress
    open_ = compress.OPEN_SECTIONS
    conll, mr = (load_config(shipped(n), [], open_sections=open_).to_dict() for n in ("compress_conll", "compress_mr"))
    for d in (conll, mr):
        for s in ("depth", "width", "ternary"):
            d[s].pop("args")
    assert sorted(_leaf_keys(conll)) == sorted(_leaf_keys(mr))
    flat_conll, flat_mr = ({k: _lookup_dotted(d, k) for k in _leaf_keys(d)} for d in (conll, mr))
    changed = {k for k in flat_mr if flat_conll[k] != flat_mr[k]}
    assert changed == {"output_dir", "stages", "task.name", "data.dir", "data.max_seq_length", "teacher.config",
                       "teacher.ckpt", "depth.config", "width.config", "ternary.config", "export.seq_length"}
    assert conll["stages"] == ["depth", "width", "ternary", "export"]
    assert {conll[s]["config"] for s in ("depth", "width", "ternary")} == {
        "configs/td_conll.yaml", "configs/ofa_conll.yaml", "configs/ternary_conll.yaml"}
    assert conll["teacher"]["ckpt"] == "output/td_conll/teacher/best.ckpt"
    files = {"config": tmp_path / "config.json", "ckpt": tmp_path / "best.ckpt"}
    files["config"].write_text('{"hidden_size": 384}')              # the MiniLM teacher's width, as the GD student's
    files["ckpt"].write_text("")
    cfg = load_config(shipped("compress_conll"), ["--teacher.config", str(files["config"]), "--teacher.ckpt",
                                                  str(files["ckpt"]), "--output_dir", str(tmp_path / "run")],
                      open_sections=open_)
    assert compress.check_plan(cfg) == (["depth", "width", "ternary", "export"], "")


def test_moved_key_is_one_error_naming_the_new_key(tmp_path):
    gd = shipped("gd")
    assert load_config(gd, ["--train.lr", "1e-4"]).train.lr == 1e-4
    assert error(gd, ["--optim.lr", "1e-4"]) == "optim.lr moved to train.lr: pass --train.lr instead of --optim.lr"
    assert error(gd, ["--optim.warmup_ratio=0"]).startswith("optim.warmup_ratio moved to train.warmup_ratio")
    assert error(shipped("td_mr"), ["--optim.lr", "1e-4"]).startswith(
        "optim.lr moved to finetune.lr, td1.lr, td2.lr")                   # one schedule per phase there
    old = tmp_path / "old_gd.yaml"                                         # a config written before the move
    old.write_text(open(gd).read().replace("optim:\n", "optim:\n  lr: 0.0001\n"))
    assert error(gd, ["--config_path", str(old)]) == f"optim.lr moved to train.lr: rename it in config file '{old}'"


def test_moved_key_from_the_entry_script(tmp_path):
    res = run_entry("run_general_distill.py", ["--optim.lr", "1e-4", "--output_dir", tmp_path / "out"])
    assert one_error(res).startswith("ERROR: optim.lr moved to train.lr")
    assert not (tmp_path / "out").exists()


def test_yaml_is_the_only_list_of_defaults():
    """No `.get(key, default)` on a config in src/ (a second default beside the YAML's), and the dataclasses the
    runs fill from a config section default to the shipped YAML's values (QuantConfig.activation_clip was 2.5,
    ternary_mr.yaml says 0.0)."""
    import glob
    import inspect
    import re
    from dataclasses import asdict
    for path in set(glob.glob(os.path.join(ROOT, "src", "**", "*.py"), recursive=True)) - {
            os.path.join(ROOT, "src", "config.py")}:
        for n, line in enumerate(open(path, encoding="utf-8"), 1):
            assert not re.search(r"\bcfg(\.\w+)*\.get\(", line), f"{path}:{n}: {line.strip()}"
    from src import ternary
    from src.distill import DistillLossConfig, loss_config
    from src.quant import QuantConfig
    from src.width import MultiWidthDistillLoss
    ternary_cfg = load_config(shipped("ternary_mr"), [])
    assert ternary.quant_config(ternary_cfg) == QuantConfig()
    for name in ("td_mr", "ternary_mr"):
        assert asdict(loss_config(load_config(shipped(name), []))) == asdict(DistillLossConfig()), name
    gd_loss = load_config(shipped("gd"), []).loss.to_dict()
    assert {k: asdict(DistillLossConfig())[k] for k in gd_loss} == gd_loss
    params = inspect.signature(MultiWidthDistillLoss).parameters
    ofa_loss = load_config(shipped("ofa_mr"), []).loss.to_dict()
    ofa_loss["mask_padding"] = ofa_loss.pop("padding") == "valid"          # the loss cell takes the boolean
    assert {k: params[k].default for k in ofa_loss} == ofa_loss


OLD_TD_LOSS = """\
loss:
  temperature: 1.0
  soft_ce_reduction: mean
  mask_padding: false
  pred_weight: 1.0
"""


def warnings_of(capsys):
    return [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("WARNING:")]


def test_deprecated_flags_are_translated_with_one_warning(capsys):
    td = shipped("td_mr")
    cfg = load_config(td, ["--loss.mask_padding", "false", "--loss.soft_ce_reduction=ce"])
    assert (cfg.loss.padding, cfg.loss.soft_ce_reduction) == ("anchor", "row_mean") and "mask_padding" not in cfg.loss
    assert warnings_of(capsys) == ["WARNING: --loss.mask_padding false is deprecated; use --loss.padding anchor",
                                   "WARNING: --loss.soft_ce_reduction ce is deprecated; use --loss.soft_ce_reduction "
                                   "row_mean"]
    assert load_config(td, ["--loss.mask_padding", "true", "--loss.soft_ce_reduction", "mean"]).loss.to_dict() \
        == load_config(td, ["--loss.padding", "valid", "--loss.soft_ce_reduction", "element_mean"]).loss.to_dict()
    capsys.readouterr()
    cfg = load_config(shipped("ofa_mr"), ["--loss.padding", "anchor", "--loss.soft_ce_reduction", "element_mean"])
    assert (cfg.loss.padding, cfg.loss.soft_ce_reduction) == ("anchor", "element_mean")
    assert warnings_of(capsys) == []                                      # the new spelling: no warning


def test_deprecated_spellings_in_a_file_are_translated_in_place(tmp_path, capsys):
    old = tmp_path / "old.yaml"
    old.write_text(OLD_TD_LOSS)
    cfg = load_config(str(old), [])
    assert cfg.loss.to_dict() == {"temperature": 1.0, "soft_ce_reduction": "element_mean", "padding": "anchor",
                                  "pred_weight": 1.0}                     # same place in the section
    assert list(cfg.loss) == ["temperature", "soft_ce_reduction", "padding", "pred_weight"]
    assert warnings_of(capsys) == [
        f"WARNING: loss.mask_padding is deprecated; use loss.padding: anchor (config file '{old}')",
        f"WARNING: loss.soft_ce_reduction: mean is deprecated; use loss.soft_ce_reduction: element_mean "
        f"(config file '{old}')"]
    again = load_config(save_resolved(cfg, str(tmp_path / "run")), [])  # the resolved file has the new names
    assert again == cfg and warnings_of(capsys) == []
    assert load_config(str(old), ["--loss.padding", "valid"]).loss.padding == "valid"


def test_wrong_values_of_renamed_keys_are_one_error(tmp_path):
    td = shipped("td_mr")
    assert error(td, ["--loss.mask_padding", "maybe"]) == "--loss.mask_padding: expected true or false, got 'maybe'"
    assert error(td, ["--loss.padding", "all"]) == 'loss.padding is "all"; expected valid or anchor'
    assert error(td, ["--loss.soft_ce_reduction", "sum"]) == \
        'loss.soft_ce_reduction is "sum"; expected row_mean or element_mean'
    bad = write(tmp_path, "bad.yaml", "loss:\n  mask_padding: 3\n")
    assert error(bad, []) == f"config file '{bad}': loss.mask_padding: expected true or false, got 3"
    both = write(tmp_path, "both.yaml", "loss:\n  mask_padding: true\n  padding: valid\n")
    assert "both loss.mask_padding (deprecated) and loss.padding" in error(both, [])


def test_renamed_loss_keys_reach_the_loss_cells():
    """loss.padding valid/anchor is the loss cells' mask_padding True/False; soft CE reductions keep their math."""
    from src.distill import DistillLossConfig
    from src.distill import loss_config
    td = shipped("td_mr")
    assert loss_config(load_config(td, [])).mask_padding is True
    assert loss_config(load_config(td, ["--loss.padding", "anchor"])).mask_padding is False
    with pytest.raises(ValueError, match="loss.padding"):
        DistillLossConfig(padding="all")


def test_wrong_value_from_the_entry_script(tmp_path):
    res = run_entry("run_ofa_width.py", ["--loss.soft_ce_reduction", "sum", "--output_dir", tmp_path / "out"])
    assert one_error(res) == 'ERROR: loss.soft_ce_reduction is "sum"; expected row_mean or element_mean'
    assert not (tmp_path / "out").exists()


# Every key a config.RULES entry checks in a shipped config -> a value out of its range. Each runs through the entry
# script of the first shipped config holding the key (SHIPPED order).
BAD_VALUES = {
    "threads": -1, "checkpoint.every_steps": -1, "checkpoint.keep_last": 0, "data.max_seq_length": 0,
    "data.shuffle_buffer": 0,
    "data.length_buckets": [0, 64], "loss.attention_weight": -1, "loss.hidden_weight": -0.5, "loss.padding": "all",
    "loss.attention_heads": "mean",
    "optim.weight_decay": -0.1, "optim.eps": 0, "optim.end_lr": -1e-5, "optim.clip_norm": 0,
    "optim.clip_mode": "norm", "optim.loss_scale": 0.5, "train.epochs": 0, "train.batch_size": 0, "train.lr": -1,
    "train.warmup_ratio": 1.5, "train.max_steps": -1, "log_every": -1,
    "loss.pred_weight": -1, "loss.hard_label_weight": -1, "loss.temperature": 0, "loss.soft_ce_reduction": "sum",
    "finetune.epochs": 0, "finetune.batch_size": -2, "finetune.lr": 0, "finetune.warmup_ratio": -0.1,
    "finetune.max_steps": -5, "td1.epochs": -1, "td1.batch_size": 0, "td1.lr": -1e-4, "td1.warmup_ratio": 2,
    "td1.max_steps": -1, "td1.teacher_cache_max_gb": 0, "td2.epochs": 0, "td2.batch_size": 0, "td2.lr": 0,
    "td2.warmup_ratio": 1.01, "td2.max_steps": -1, "eval.batch_size": 0, "eval.every": -1,
    "quant.weight_clip": -1, "quant.activation_clip": -0.5, "quant.ema_decay": 1.0, "quant.lat_iters": 0,
    "pack.max_positions": -1, "importance.max_batches": -1, "importance.batch_size": 0, "train.sample_widths": -1,
    "train.distill_from": "paper",
    "loss.lambda1": -1, "loss.lambda2": -0.1, "latency.batch_size": 0, "latency.runs": -1,
}


def validated_keys():
    """(key, shipped config name) for every key of a shipped config that a RULES entry checks, first holder."""
    from src.config import RULES
    seen = {}
    for name in SHIPPED:
        data = load_config(shipped(name), []).to_dict()
        stack = [("", data)]
        while stack:
            prefix, node = stack.pop()
            for k, v in node.items():
                if isinstance(v, dict):
                    stack.append((f"{prefix}{k}.", v))
                elif any(fnmatch.fnmatchcase(prefix + k, p) for r in RULES for p in r[0]):
                    seen.setdefault(prefix + k, name)
    return seen


def test_every_validated_key_has_a_bad_value_case():
    assert sorted(validated_keys()) == sorted(BAD_VALUES)


@pytest.mark.parametrize("key", sorted(BAD_VALUES))
def test_out_of_range_value_is_one_error_before_any_output(key, tmp_path):
    """The real entry script: exit 2, one ERROR line naming the key and its range, no traceback, no output dir."""
    config = validated_keys()[key]
    value = BAD_VALUES[key]
    out = tmp_path / "out"
    res = run_entry(SHIPPED[config][0], [f"--{key}", *(value if isinstance(value, list) else [value]),
                                         "--output_dir", out])
    line = one_error(res)
    assert line.startswith(f"ERROR: {key} is ") and "; expected " in line, line
    assert not out.exists()


@pytest.mark.parametrize("name, argv, message", [
    ("ternary_mr", ["--train.batch_size", "0"], "train.batch_size is 0; expected >= 1"),
    ("ternary_mr", ["--train.lr", "-1"], "train.lr is -1.0; expected > 0"),
    ("ternary_mr", ["--train.warmup_ratio", "1.5"], "train.warmup_ratio is 1.5; expected in [0, 1]"),
    ("ternary_mr", ["--data.length_buckets", "32", "128"],
     "data.length_buckets is [32, 128]; expected each bucket in [1, data.max_seq_length = 64]"),
    ("td_mr", ["--data.max_seq_length", "16"],                            # its buckets go up to 64
     "data.length_buckets is [24, 32, 48, 64]; expected each bucket in [1, data.max_seq_length = 16]"),
    ("ternary_mr", ["--optim.clip_norm", "0"],
     "optim.clip_norm is 0.0; expected > 0 (optim.clip_mode none turns clipping off)"),
    ("ternary_mr", ["--quant.ema_decay", "0"], "quant.ema_decay is 0.0; expected in (0, 1)"),
])
def test_range_messages(name, argv, message):
    assert error(shipped(name), argv) == message


def test_values_at_the_edges_of_their_ranges_load():
    cfg = load_config(shipped("ternary_mr"), [
        "--train.warmup_ratio", "0", "--train.max_steps", "0", "--threads", "0", "--eval.every", "0",
        "--checkpoint.every_steps", "0", "--optim.weight_decay", "0", "--optim.loss_scale", "1",
        "--optim.clip_mode", "none", "--optim.clip_norm", "0", "--loss.hard_label_weight", "0",
        "--data.length_buckets", "[]", "--quant.activation_clip", "0", "--pack.max_positions", "0"])
    assert cfg.optim.clip_norm == 0.0 and cfg.data.length_buckets == []
    assert load_config(shipped("ternary_mr"), ["--train.warmup_ratio", "1", "--data.length_buckets", "1", "64"])
    assert load_config(shipped("td_mr"), ["--data.max_seq_length", "16", "--data.length_buckets", "8", "16"])
    assert load_config(shipped("td_mr"), ["--td1.epochs", "0"]).td1.epochs == 0       # td1.max_steps 150 decides
    assert error(shipped("td_mr"), ["--td1.epochs", "0", "--td1.max_steps", "0"]) == (
        "td1.epochs is 0; expected >= 1 (or 0 with max_steps > 0: train max_steps steps)")


def test_rule_choices_are_the_codes_choices():
    from src import losses
    from src.config import RULES
    from src.train_step import TrainStep

    def choices(key):
        rule = next(r for r in RULES if key in r[0])
        return set(rule[2].split(" or "))
    assert choices("loss.soft_ce_reduction") == set(losses.SOFT_CE_REDUCTIONS)
    assert choices("loss.padding") == set(losses.PADDINGS)
    assert choices("optim.clip_mode") == set(TrainStep.CLIP_MODES)


def test_rules_apply_to_any_config_file(base):
    assert load_config(base, ["--train.batch_size", "1"]).train.batch_size == 1
    assert error(base, ["--train.batch_size", "0"]) == "train.batch_size is 0; expected >= 1"
    assert error(base, ["--train.lr", "0"]) == "train.lr is 0.0; expected > 0"


def test_file_from_before_an_added_key_loads_with_a_warning_and_types_are_checked(tmp_path, capsys):
    """A copy of configs/ofa_mr.yaml made before optim.loss_scale existed loads with the shipped value and one
    WARNING; a value of another type than the shipped file's (batch_size 16.0) is one error naming key and file."""
    shipped_ofa = shipped("ofa_mr")
    text = open(shipped_ofa, encoding="utf-8").read()
    old = tmp_path / "old_ofa.yaml"
    old.write_text("".join(ln for ln in text.splitlines(keepends=True) if not ln.strip().startswith("loss_scale:")))
    cfg = load_config(shipped_ofa, ["--config_path", str(old)])
    assert cfg.optim.loss_scale == 1.0
    assert warnings_of(capsys) == [f"WARNING: config file '{old}' has no optim.loss_scale; using 1.0 from "
                                   f"{shipped_ofa}"]
    bad = tmp_path / "float_batch.yaml"
    bad.write_text(text.replace("  batch_size: 16\n", "  batch_size: 16.0\n", 1))
    assert error(shipped_ofa, ["--config_path", str(bad)]) == (
        f"importance.batch_size (config file '{bad}'): expected int, got 16.0")


@pytest.mark.parametrize("name", ["td_mr", "ternary_mr", "ofa_mr", "compress_mr"])
def test_file_from_before_task_regression_loads_with_a_warning(name, tmp_path, capsys):
    """A copy of a shipped config made before task.regression existed loads with regression false and one WARNING
    naming the key, the file and the shipped config; the flag still overrides it, type-checked."""
    from src.runs.compress import OPEN_SECTIONS
    from src.tasks import task_from_config
    path = shipped(name)
    lines = open(path, encoding="utf-8").read().splitlines(keepends=True)
    at = next(i for i, ln in enumerate(lines) if ln.startswith("  regression:"))
    assert lines[at - 3] == "task:\n" and lines[at + 1].strip().startswith("#")   # the key and its comment line
    old = tmp_path / f"old_{name}.yaml"
    old.write_text("".join(lines[:at] + lines[at + 2:]))
    opened = OPEN_SECTIONS if name == "compress_mr" else ()
    cfg = load_config(path, ["--config_path", str(old)], open_sections=opened)
    assert cfg.task.regression is False and task_from_config(cfg).name == "MR"
    assert warnings_of(capsys) == [f"WARNING: config file '{old}' has no task.regression; using false from {path}"]
    cfg = load_config(path, ["--config_path", str(old), "--task.name", "csv", "--task.regression", "true"],
                      open_sections=opened)
    assert task_from_config(cfg).regression and len(warnings_of(capsys)) == 1
    assert error(path, ["--config_path", str(old), "--task.regression", "1"]) == (
        "--task.regression: expected bool (true or false), got '1'")
    quoted = tmp_path / f"quoted_{name}.yaml"
    quoted.write_text("".join(lines).replace("  regression: false", '  regression: "true"', 1))
    assert error(path, ["--config_path", str(quoted)]) == (
        f"config file '{quoted}': task.regression is the string 'true'; write a real boolean: true (unquoted)")


def test_open_sections_hold_another_configs_keys(tmp_path):
    """The compression pipeline's `<stage>.args` sections: any key may be set there from the command line (new
    keys created, existing ones typed like their value), a user's file needs none of the shipped args keys, and
    the value RULES leave them to the stage's own config; everywhere else the usual checks hold."""
    path = os.path.join(ROOT, "configs", "compress_mr.yaml")
    open_ = ("depth.args", "width.args", "ternary.args")
    cfg = load_config(path, ["--depth.args.td1.max_steps", "7", "--width.args.train.lr", "1e-4",
                             "--ternary.args.quant.bits.embedding", "8"], open_sections=open_)
    assert cfg.depth.args.td1.max_steps == 7 and cfg.width.args.train.lr == 1e-4
    assert cfg.ternary.args.quant.bits.embedding == 8
    assert cfg.depth.args.student.gd_ckpt == "output/gd/student.ckpt"          # the shipped args stay
    with pytest.raises(UserError, match=r"--depth.args.td1.max_steps: expected int"):
        load_config(path, ["--depth.args.td1.max_steps", "x"], open_sections=open_)
    with pytest.raises(UserError, match=r"--depth.args.td1: is a section"):
        load_config(path, ["--depth.args.td1", "3"], open_sections=open_)
    with pytest.raises(UserError, match=r"--vocab.top_x: unknown key"):                # not an open section
        load_config(path, ["--vocab.top_x", "3"], open_sections=open_)
    assert load_config(path, ["--width.args.train.max_steps", "-5"], open_sections=open_)  # the stage checks it
    own = yaml.safe_load(open(path))
    own["depth"]["args"] = {"td2": {"epochs": 2}}
    mine = tmp_path / "mine.yaml"
    mine.write_text(yaml.safe_dump(own))
    cfg = load_config(path, ["--config_path", str(mine)], open_sections=open_)
    assert cfg.depth.args.to_dict() == {"td2": {"epochs": 2}}
    with pytest.raises(UserError, match="lacks 4 key"):                          # without open sections: refused
        load_config(path, ["--config_path", str(mine)])
