"""The stages of the compression pipeline as data: for each stage, the method's entry script and default YAML, the
keys the pipeline sets (its input model, teacher, data, output folder), the command(s) it runs and the model it
hands on. src/runs/compress.py runs them in order; a stage's `args` are keys of its method's YAML."""
import json
import os
import sys
from dataclasses import dataclass
from typing import Optional

from src.errors import UserError
from src.fileio import require_file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ORDER = ("depth", "width", "ternary", "vocab", "export")
TRAINING = ("depth", "width", "ternary")
SHARED_KEYS = ("output_dir", "seed", "threads", "resume", "distributed", "task.name", "task.labels",
               "task.regression", "data.dir", "data.dataset_type", "data.max_seq_length")


@dataclass(frozen=True)
class Model:
    """What a stage hands on: a config.json and a checkpoint (fp32), or a TernaryBERT folder (`kind` ternary:
    config.json, quant.json, best.ckpt, best_quant.ckpt) whose pruned / packed form the later stages write."""
    config: str
    ckpt: str
    kind: str = "fp32"             # fp32 | ternary
    packed: str = ""               # model.tpack of a ternary model, when written
    vocab: str = ""                # its vocab.txt ("" = the teacher's)

    @property
    def dir(self) -> str:
        return os.path.dirname(self.ckpt)

    def to_dict(self) -> dict:
        return dict(config=self.config, ckpt=self.ckpt, kind=self.kind, packed=self.packed, vocab=self.vocab)


@dataclass(frozen=True)
class StageDef:
    script: Optional[str]          # entry script run as a child process (None: run in this process)
    wired: tuple                   # keys of the method's YAML that the pipeline sets (refused in args)


STAGES = {
    "depth": StageDef("run_task_distill.py", SHARED_KEYS + ("phase", "teacher.config", "teacher.ckpt",
                                                            "teacher.head_type", "student.td1_ckpt")),
    "width": StageDef("run_ofa_width.py", SHARED_KEYS + ("teacher.config", "teacher.ckpt", "teacher.head_type",
                                                         "supernet.init_ckpt", "width_mult_list")),
    "ternary": StageDef("run_ternary.py", SHARED_KEYS + ("teacher.config", "teacher.ckpt", "teacher.head_type",
                                                         "student.init", "student.ckpt", "student.config",
                                                         "student.head_type", "loss.attention_heads",
                                                         "pack.after_train")),
    "vocab": StageDef(None, ()),
    "export": StageDef(None, ()),
}


def flatten(args, prefix: str = "") -> dict:
    """Nested `args` mapping -> {dotted key: value}."""
    out = {}
    for k, v in (args or {}).items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def argv_of(values: dict) -> list:
    """{dotted key: value} -> ["--key", "value", ...]; lists as several values, booleans true / false."""
    out = []
    for k, v in values.items():
        items = v if isinstance(v, list) else [v]
        text = [json.dumps(x) if isinstance(x, bool) or x is None else str(x) for x in items]
        out += [f"--{k}"] + (text if text else ["[]"])
    return out


def user_args(cfg, name: str) -> dict:
    """The stage's `args`, flattened; a key the pipeline sets is refused, naming it."""
    values = flatten(cfg[name].args.to_dict())
    for key in values:
        if key in STAGES[name].wired:
            raise UserError(f"{name}.args.{key}: set by the pipeline (from its input model, teacher, data or "
                            f"output_dir); remove it from {name}.args")
    return values


def wired_common(cfg, out_dir: str) -> dict:
    return {"output_dir": out_dir, "seed": cfg.seed, "threads": cfg.threads, "resume": cfg.resume,
            "task.name": cfg.task.name, "task.labels": list(cfg.task.labels), "task.regression": cfg.task.regression,
            "data.dir": cfg.data.dir, "data.dataset_type": cfg.data.dataset_type,
            "data.max_seq_length": cfg.data.max_seq_length}


def heads_per_layer(config_path: str) -> list:
    from src.tinybert_model import load_bert_config
    c = load_bert_config(config_path, "model config")
    return [c.heads(i) for i in range(c.num_hidden_layers)]


def width_label(config_path: str, target: float) -> str:
    from src.tinybert_model import load_bert_config
    from src.width import parse_width_list
    c = load_bert_config(config_path, "width input config")
    specs = parse_width_list([1.0, target], c, field="width.target")
    if len(specs) < 2:
        raise UserError(f"width.target {target}: keeps every head and FFN neuron of {config_path}; expected a "
                        f"width that removes some (e.g. 0.5)")
    return specs[-1].label


def commands(cfg, name: str, model: Model, stage_dir: str, teacher: Model, depth_out: Optional[Model]):
    """(argv lists run for the stage, the Model it hands on). Every argv is `python <entry script> --config_path
    <the method's YAML> <wired keys> <args>`: the same command a user would type."""
    d = STAGES[name]
    args = user_args(cfg, name)
    common = wired_common(cfg, stage_dir)
    head = [sys.executable, os.path.join(ROOT, d.script), "--config_path", cfg[name].config]
    if name == "depth":
        wired = {**common, "teacher.config": teacher.config, "teacher.ckpt": teacher.ckpt,
                 "teacher.head_type": cfg.teacher.head_type, "student.td1_ckpt": ""}
        argvs = [head + argv_of({"phase": p, **wired, **args}) for p in ("td1", "td2")]
        out = os.path.join(stage_dir, "td2")
        return argvs, Model(os.path.join(out, "config.json"), os.path.join(out, "best.ckpt"))
    if name == "width":
        label = width_label(model.config, cfg.width.target)
        wired = {**common, "teacher.config": model.config, "teacher.ckpt": model.ckpt,
                 "teacher.head_type": cfg.teacher.head_type, "supernet.init_ckpt": "",
                 "width_mult_list": [1.0, cfg.width.target]}
        return [head + argv_of({**wired, **args})], Model(os.path.join(stage_dir, f"config_w{label}.json"),
                                                          os.path.join(stage_dir, f"best_w{label}.ckpt"))
    if name == "ternary":
        t = {"width": model, "depth": depth_out, "teacher": teacher}[cfg.ternary.distill_from]
        if t is None:
            raise UserError("ternary.distill_from depth: no depth stage output (run the depth stage, or pick "
                            "width / teacher)")
        same = heads_per_layer(t.config) == heads_per_layer(model.config)
        wired = {**common, "teacher.config": t.config, "teacher.ckpt": t.ckpt,
                 "teacher.head_type": cfg.teacher.head_type, "student.init": "ckpt", "student.ckpt": model.ckpt,
                 "student.config": model.config, "student.head_type": cfg.teacher.head_type,
                 "loss.attention_heads": "each" if same else "average", "pack.after_train": True}
        out = os.path.join(stage_dir, notation(cfg, args))
        return [head + argv_of({**wired, **args})], Model(os.path.join(out, "config.json"),
                                                          os.path.join(out, "best.ckpt"), "ternary",
                                                          os.path.join(out, "model.tpack"))
    raise ValueError(name)


def notation(cfg, args: dict) -> str:
    """The TernaryBERT run folder name (w2e2a8, ...) of the ternary stage's bits."""
    from src.config import load_config
    from src.ternary import quant_config
    bits = {k: v for k, v in args.items() if k.startswith("quant.bits.")}
    return quant_config(load_config(cfg.ternary.config, argv_of(bits))).notation.lower()


def read_stage(stage_dir: str) -> Optional[dict]:
    """The stage.json of a finished stage, or None."""
    path = os.path.join(stage_dir, "stage.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def input_model(path: str, what: str = "input_dir") -> Model:
    """The model in a folder: a stage folder (its stage.json), a TernaryBERT run folder (quant.json), or a run
    folder with config.json + best.ckpt."""
    st = read_stage(path) if os.path.isdir(path) else None
    if st is not None:
        return Model(**st["model"])
    if not os.path.isdir(path):
        raise UserError(f"{what}: '{path}' is not a folder (expected a stage folder or a run folder with "
                        f"config.json and best.ckpt)")
    config = require_file(os.path.join(path, "config.json"), f"{what} config.json")
    ckpt = require_file(os.path.join(path, "best.ckpt"), f"{what} best.ckpt")
    if os.path.isfile(os.path.join(path, "quant.json")):
        packed = os.path.join(path, "model.tpack")
        return Model(config, ckpt, "ternary", packed if os.path.isfile(packed) else "")
    return Model(config, ckpt)


def stage_metrics(out: Model) -> dict:
    """The dev metrics of a training stage's output: a ternary run's packed-model eval (what deploys), else the
    metrics its keep-best checkpoint records."""
    from src.checkpoint import read_ms_checkpoint
    from src.runlog import read_records
    if out.kind == "ternary":
        packed = read_records(out.dir, "packed_eval", missing_ok=True)
        if packed:
            return {k: v for k, v in packed[-1].items() if isinstance(v, float) and k not in ("ratio", "time")}
    _, meta = read_ms_checkpoint(out.ckpt, with_extra=True)
    return {k: float(v) for k, v in meta.items() if isinstance(v, float) and k not in ("width_mult", "depth_mult")}
