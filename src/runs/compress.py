"""The compression pipeline: a fine-tuned teacher -> one small deployable model, in stages (depth, width, ternary,
vocab, export; src/runs/compress_stages.py), each a normal run of its method whose output feeds the next, all
under one output folder: <output_dir>/<stage>/ with a stage.json once the stage has finished, log.txt (the
pipeline's lines; each stage keeps its own log.txt), stages.md (the stage table, src/runs/compress_report.py).

A finished stage is skipped on the next call unless from_stage names it or an earlier one; once a stage runs,
every later stage runs again. Every stage's config is checked before the first one starts. A failed stage leaves
nothing of itself (a crash keeps its training state for `resume: true`); the earlier stages are kept."""
import os
import shutil
import subprocess
import time

from src.config import load_config
from src.errors import UserError
from src.fileio import atomic_json, require_file
from src.outputs import output_guard
from src.runlog import RunLog, format_duration, write_manifest
from src.runs.compress_stages import ORDER, TRAINING, Model, commands, input_model, read_stage, stage_metrics

OPEN_SECTIONS = ("depth.args", "width.args", "ternary.args")


class StageFailed(UserError):
    """A child run failed and has printed its own ERROR line (or traceback): exit with its status, print nothing."""

    def __init__(self, message: str, returncode: int):
        super().__init__(message)
        self.returncode = returncode
        self.reported = True


def run(cfg, save_resolved):
    out_dir = cfg.output_dir
    stages, start = check_plan(cfg)
    teacher = Model(cfg.teacher.config, cfg.teacher.ckpt)
    model = first_input(cfg, stages, teacher)
    from src.runtime import init_context
    init_context("CPU", "graph", cfg.threads)        # this process: the vocab and export stages, the table
    os.makedirs(out_dir, exist_ok=True)
    save_resolved(cfg, out_dir)
    write_manifest(out_dir, cfg.to_dict(), cfg.seed, {"method": "compress", "stages": stages})
    log = RunLog(out_dir)
    log.info(f"compression pipeline, task {cfg.task.name}, stages {' -> '.join(stages)}, output {out_dir}")
    depth_done = read_stage(os.path.join(out_dir, "depth"))
    depth_out, rerun = (Model(**depth_done["model"]) if depth_done else None), False
    for name in stages:
        stage_dir = os.path.join(out_dir, name)
        done = read_stage(stage_dir)
        rerun = rerun or name == start or done is None
        if not rerun:
            model = Model(**done["model"])
            depth_out = model if name == "depth" else depth_out
            log.info(f"stage {name}: done ({os.path.join(stage_dir, 'stage.json')}), skipped")
            continue
        model = run_stage(cfg, name, model, stage_dir, teacher, depth_out, log)
        depth_out = model if name == "depth" else depth_out
    from src.runs.compress_report import report
    rows = report(cfg, out_dir, teacher, log)
    log.close()
    return rows


def check_plan(cfg):
    """(stages, from_stage) after checking the stage list, every stage's section and each training stage's config
    as its run will load it (so a bad key fails before the first stage trains)."""
    stages = list(cfg.stages)
    unknown = [s for s in stages if s not in ORDER]
    if unknown or not stages:
        raise UserError(f"stages: {unknown or '[]'} unknown; expected a sub-list of {', '.join(ORDER)}, in order")
    if stages != [s for s in ORDER if s in stages] or len(set(stages)) != len(stages):
        raise UserError(f"stages {stages}: expected each at most once, in the order {', '.join(ORDER)}")
    if cfg.from_stage and cfg.from_stage not in stages:
        raise UserError(f"from_stage '{cfg.from_stage}': not in stages {stages}")
    from src.runs.compress_report import FORMAT_FLAGS
    if cfg.export.format not in FORMAT_FLAGS:
        raise UserError(f"export.format '{cfg.export.format}': expected one of {', '.join(FORMAT_FLAGS)}")
    from src.vocab_prune import SINGLE_CHARS
    if cfg.vocab.single_chars not in SINGLE_CHARS:
        raise UserError(f"vocab.single_chars '{cfg.vocab.single_chars}': expected one of {', '.join(SINGLE_CHARS)}")
    if cfg.vocab.top_n and not cfg.vocab.corpus:
        raise UserError("vocab.top_n > 0 needs vocab.corpus (records of a general corpus, e.g. data/imdb_gd)")
    from src.tasks import task_from_config
    task = task_from_config(cfg)                     # task.name, task.labels and task.regression agree
    if task.kind in ("token", "span") and "vocab" in stages:
        what = "per-piece tags (label_ids) and sentence ids" if task.token_level else \
            "answer positions (label_ids) and the features file's piece offsets"
        raise UserError(f"stages: vocab is not possible for the {task.kind} task {task.name}: the vocab stage "
                        f"re-encodes the records from their word pieces (src/vocab_prune.py reencode), which re-splits "
                        f"a word whose pieces were dropped while the {what} stay where they were; remove vocab from "
                        f"stages, e.g. stages: [{', '.join(s for s in stages if s != 'vocab')}]")
    require_file(cfg.teacher.config, "teacher.config")
    require_file(cfg.teacher.ckpt, "teacher.ckpt")
    from src.runs.compress_stages import argv_of, user_args, wired_common
    children = {}
    for name in (s for s in stages if s in TRAINING):
        argv = argv_of({**wired_common(cfg, os.path.join(cfg.output_dir, name)), **user_args(cfg, name)})
        try:
            children[name] = load_config(cfg[name].config, ["--config_path", cfg[name].config] + argv)
        except UserError as e:
            raise UserError(f"{name} stage ({cfg[name].config}): {e}") from None
    _check_ternary_hidden(cfg, stages, children)
    return stages, cfg.from_stage


def _check_ternary_hidden(cfg, stages, children):
    """ternary.distill_from teacher needs the model entering the ternary stage to be as wide (hidden_size) as the
    teacher (TernaryBERT matches hidden states without fit_dense): checked here, not after the earlier stages
    trained. The entering model's shape is the depth stage's student.config, else the first stage's input."""
    if "ternary" not in stages or cfg.ternary.distill_from != "teacher":
        return
    if "depth" in stages:
        entering = children["depth"].student.config
    else:                                            # only width can come first, and it keeps hidden_size
        entering = first_input(cfg, stages, Model(cfg.teacher.config, cfg.teacher.ckpt)).config
    if not os.path.isfile(entering):
        return                                       # not written yet (or missing: the stage's own error)
    from src.tinybert_model import load_bert_config
    sizes = [load_bert_config(path, what).hidden_size
             for path, what in ((entering, "the ternary stage's input config"), (cfg.teacher.config, "teacher.config"))]
    if sizes[0] != sizes[1]:
        raise UserError(f"ternary.distill_from teacher: the model entering the ternary stage ({entering}) has "
                        f"hidden_size {sizes[0]}, the teacher {sizes[1]}; TernaryBERT matches hidden states without "
                        f"fit_dense: set ternary.distill_from depth (or width)")


def first_input(cfg, stages, teacher: Model) -> Model:
    """The first stage's input: input_dir, else the previous stage's output under output_dir, else the teacher."""
    if cfg.input_dir:
        return input_model(cfg.input_dir)
    k = ORDER.index(stages[0])
    for prev in reversed(ORDER[:k]):
        done = read_stage(os.path.join(cfg.output_dir, prev))
        if done is not None:
            return Model(**done["model"])
    return teacher


def run_stage(cfg, name: str, model: Model, stage_dir: str, teacher: Model, depth_out, log) -> Model:
    """One stage under output_guard(stage_dir); writes stage.json last. Returns the model it hands on."""
    if name in ("width", "ternary") and model.kind != "fp32":
        raise UserError(f"{name} stage: its input {model.dir} is a {model.kind} model; {name} takes an fp32 model")
    t0 = time.time()
    stale = os.path.join(stage_dir, "stage.json")
    if os.path.exists(stale):
        os.remove(stale)
    shutil.rmtree(os.path.join(cfg.output_dir, "report"), ignore_errors=True)     # the table's exports are stale
    with output_guard(stage_dir, f"{name} stage folder"):
        if name in TRAINING:
            argvs, out = commands(cfg, name, model, stage_dir, teacher, depth_out)
            for argv in argvs:
                _run_child(argv, name, stage_dir, log)
            _check_output(name, out)
            metrics = stage_metrics(out)
        else:
            from src.runs.compress_steps import STEPS
            out, metrics = STEPS[name](cfg, model, stage_dir, teacher, log)
            argvs = []
        record = {"stage": name, "input": model.to_dict(), "model": out.to_dict(),
                  "commands": [_shown(a) for a in argvs], "metrics": metrics, "seconds": round(time.time() - t0, 1)}
        atomic_json(os.path.join(stage_dir, "stage.json"), record)
    log.info(f"stage {name}: done in {format_duration(time.time() - t0)} -> {out.dir}")
    log.record("stage", **record)
    return out


def _run_child(argv, name, stage_dir, log):
    log.info(f"stage {name}: {_shown(argv)}")
    p = subprocess.run(argv, cwd=os.getcwd())
    if p.returncode:
        e = StageFailed(f"stage {name} failed (exit {p.returncode}); its log: {stage_dir}", p.returncode)
        e.keep_outputs = p.returncode != 2           # a crash keeps the training state for resume
        log.info(f"stage {name}: failed (exit {p.returncode}); earlier stages kept")
        raise e


def _check_output(name, out: Model):
    for path in (out.config, out.ckpt) + ((out.packed,) if out.packed else ()):
        if not os.path.isfile(path):
            raise UserError(f"{name} stage: its run finished without writing {path}")


def _shown(argv) -> str:
    """A child's argv as the command a user would type (entry script relative to the repository)."""
    from src.runs.compress_stages import ROOT
    import shlex
    parts = ["python", os.path.relpath(argv[1], ROOT)] + list(argv[2:])
    return " ".join(shlex.quote(p) for p in parts)
