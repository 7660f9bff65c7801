"""The phases of task distillation as data: what each phase builds (model, loss cell, inputs, logged parts, hooks
around the train step) and which checkpoint it keeps. src/runs/task_distill.py runs any of them the same way."""
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from src import teacher_cache
from src.checkpoint import load_into
from src.distill import (CachedLogitsPhase2Loss, CachedTeacherPhase1Loss, FinetuneLoss, FitDense, TaskDistillPhase1Loss,
                         TaskDistillPhase2Loss, loss_config, student_layer_map)
from src.errors import UserError
from src.runs.common import TASK_INPUTS, classifier_config
from src.tinybert_model import HEAD_PARAMS, LogitsOnly, build_classifier, copy_teacher_layers


def teacher_ckpt(cfg) -> str:
    """teacher.ckpt, or "" = the fine-tuned teacher of this output_dir (<output_dir>/teacher/best.ckpt)."""
    return cfg.teacher.ckpt or os.path.join(cfg.output_dir, "teacher", "best.ckpt")


def td1_ckpt(cfg) -> str:
    """student.td1_ckpt, or "" = phase 1's student of this output_dir (<output_dir>/td1/student.ckpt)."""
    return cfg.student.td1_ckpt or os.path.join(cfg.output_dir, "td1", "student.ckpt")


@dataclass
class Built:
    """What a phase trains: the model (and its config), the loss cell with its inputs and logged parts, extra cells
    saved beside the model, optional hooks around the train step (td1's teacher caches) and state kept with the
    training state (td1's teacher logits, so a resumed phase 1 still hands phase 2 every row)."""
    model: object
    model_cfg: object
    loss_net: object
    inputs: list
    parts: list
    extra_cells: dict = field(default_factory=dict)
    wrap_step: Optional[Callable] = None          # (TrainStep, batcher) -> the step the Trainer runs
    finish: Optional[Callable] = None             # (that step, out_dir, is_main, log) after training
    extra_state: Optional[object] = None          # saved with the training state (Trainer extra_state)


def _finetune(cfg, task, tcfg, teacher, train, log) -> Built:
    load_into(teacher, cfg.teacher.init_ckpt, "teacher.init_ckpt", strict=True, prefix_map={"": "bert."},
              allow_missing=HEAD_PARAMS)
    if cfg.finetune.freeze_word_embeddings:
        teacher.bert.embeddings.word_embeddings.embedding_table.requires_grad = False
    return Built(teacher, tcfg, FinetuneLoss(teacher, task.kind), TASK_INPUTS, ["ce"])


def _student(cfg, task, tcfg, teacher, log):
    load_into(teacher, teacher_ckpt(cfg), "teacher.ckpt", strict=True)
    log.info(f"teacher {teacher_ckpt(cfg)}")
    scfg = classifier_config(cfg, cfg.student.config, "student.config", task)
    if scfg.vocab_size != tcfg.vocab_size:
        raise UserError(f"student.config vocab_size {scfg.vocab_size} differs from the teacher's {tcfg.vocab_size}")
    return scfg, build_classifier(scfg, cfg.student.head_type, task.head)


def _td1(cfg, task, tcfg, teacher, train, log) -> Built:
    scfg, student = _student(cfg, task, tcfg, teacher, log)
    fit_dense = FitDense(scfg.hidden_size, tcfg.hidden_size)
    _init_student(cfg, student, teacher, fit_dense, log)
    lcfg = loss_config(cfg)
    att_map, hid_map = student_layer_map(cfg, tcfg, scfg, lcfg.attention_weight)
    log.info(f"layer map: attention {att_map}, hidden {hid_map}")
    keep = cfg.td1.cache_teacher_outputs
    if keep and cfg.distributed:
        raise UserError("td1.cache_teacher_outputs needs distributed: false (each worker sees other rows every "
                        "epoch, so its cache would never be complete)")
    train[teacher_cache.ROW_ID] = np.arange(len(train["input_ids"]), dtype=np.int32)
    loss_net = TaskDistillPhase1Loss(student, teacher, fit_dense, att_map, hid_map, lcfg, cfg.distributed,
                                     return_targets=keep)
    logits = teacher_cache.TeacherLogits(*train["input_ids"].shape)

    def wrap_step(step, batcher):
        cache = cached = None
        if keep:
            cache = teacher_cache.Phase1TeacherCache(batcher.buckets, batcher.bucket_of, len(hid_map), len(att_map),
                                                     tcfg.hidden_size, tcfg.num_attention_heads)
            teacher_cache.check_cache_size(cache.max_bytes(), cfg.td1.teacher_cache_max_gb, len(train["input_ids"]))
            cached = teacher_cache.cached_step(step, CachedTeacherPhase1Loss(student, fit_dense, len(att_map),
                                                                             len(hid_map), lcfg))
            log.info(f"phase-1 teacher outputs are kept per row after its first batch (up to "
                     f"{cache.max_bytes() / 1e6:.1f} MB) and reused in later epochs")
        return teacher_cache.Phase1Step(step, logits, cached, cache)

    def finish(run_step, out_dir, is_main, log):
        if run_step.cache is not None:
            log.info(run_step.summary())
        if is_main:
            path = logits.save(out_dir)
            log.info(f"teacher logits of {int(logits.seen.sum())} train rows kept for phase 2: {path}")
    return Built(student, scfg, loss_net, TASK_INPUTS + [teacher_cache.ROW_ID], ["att", "rep"],
                 {"fit_dense": fit_dense}, wrap_step, finish, extra_state=logits)


def _td2(cfg, task, tcfg, teacher, train, log) -> Built:
    scfg, student = _student(cfg, task, tcfg, teacher, log)
    log.info(f"student from phase 1: {td1_ckpt(cfg)}")
    load_into(student, td1_ckpt(cfg), "student.td1_ckpt", strict=True, allow_unexpected=("fit_dense.",))
    lcfg = loss_config(cfg)
    if not cfg.td2.cache_teacher_logits:
        return Built(student, scfg, TaskDistillPhase2Loss(student, teacher, lcfg, task.kind), TASK_INPUTS,
                     ["soft", "hard"])
    t0, net = time.time(), LogitsOnly(teacher)
    net.set_train(False)
    train["teacher_logits"] = teacher_cache.logits_for_phase2(net, train, cfg.eval.batch_size,
                                                              list(cfg.data.length_buckets),
                                                              os.path.dirname(td1_ckpt(cfg)), log)
    log.info(f"cached teacher logits for {len(train['input_ids'])} train rows in {time.time() - t0:.1f}s")
    return Built(student, scfg, CachedLogitsPhase2Loss(student, lcfg, task.kind),
                 TASK_INPUTS + ["teacher_logits"], ["soft", "hard"])


@dataclass(frozen=True)
class Phase:
    build: Callable        # (cfg, task, teacher config, teacher, train arrays, log) -> Built
    ckpt: str              # the phase's result checkpoint
    evaluates: bool        # keep-best on the eval splits (td1 only matches intermediate layers: no eval)


PHASES = {"finetune": Phase(_finetune, "best.ckpt", True), "td1": Phase(_td1, "student.ckpt", False),
          "td2": Phase(_td2, "best.ckpt", True)}


def _init_student(cfg, student, teacher, fit_dense, log):
    init = cfg.student.init
    if init == "gd":
        load_into(student, cfg.student.gd_ckpt, "student.gd_ckpt", strict=True, allow_missing=HEAD_PARAMS,
                  extra_cells={"fit_dense": fit_dense})
        log.info(f"student initialised from GD checkpoint {cfg.student.gd_ckpt} (with its fit_dense)")
    elif init == "teacher_layers":
        copy_teacher_layers(student, teacher, list(cfg.student.teacher_layers))
        log.info(f"student initialised from teacher layers {list(cfg.student.teacher_layers)}")
    elif init == "random":
        log.info("student initialised at random")
    else:
        raise UserError(f"student.init '{init}': expected gd, teacher_layers or random")
