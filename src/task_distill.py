"""Phases of task distillation, wired from a resolved config: finetune (teacher), td1, td2, eval.

The algorithms (losses, loss cells, train step) are in src/losses.py and src/distill.py; this file only builds
the objects each phase needs and hands them to the Trainer.
"""
import os
import time

import numpy as np

from src import runtime, teacher_cache
from src.distill import (CachedLogitsPhase2Loss, CachedTeacherPhase1Loss, DistillLossConfig, FinetuneLoss, FitDense,
                         TaskDistillPhase1Loss, TaskDistillPhase2Loss, train_step_from_config)
from src.errors import UserError
from src.tinybert_model import LogitsOnly, count_params
from src.trainer import ArrayBatcher, Trainer, evaluate, train_state_from_config


def loss_config(cfg) -> DistillLossConfig:
    try:
        return DistillLossConfig(**cfg.loss.to_dict())
    except (TypeError, ValueError) as e:
        raise UserError(str(e)) from None


def teacher_ckpt(cfg) -> str:
    """teacher.ckpt, or "" = the fine-tuned teacher of this output_dir (<output_dir>/teacher/best.ckpt)."""
    return cfg.teacher.ckpt or os.path.join(cfg.output_dir, "teacher", "best.ckpt")


def td1_ckpt(cfg) -> str:
    """student.td1_ckpt, or "" = phase 1's student of this output_dir (<output_dir>/td1/student.ckpt)."""
    return cfg.student.td1_ckpt or os.path.join(cfg.output_dir, "td1", "student.ckpt")


def _teacher(cfg, task, ckpt_key="ckpt"):
    tcfg = runtime.load_bert_config(cfg.teacher.config, "teacher.config", num_labels=task.num_labels,
                                    fused_cpu_kernels=runtime.fused_kernels(cfg))
    teacher = runtime.build_classifier(tcfg, cfg.teacher.head_type)
    return tcfg, teacher


def _student(cfg, task, tcfg):
    scfg = runtime.load_bert_config(cfg.student.config, "student.config", num_labels=task.num_labels,
                                    fused_cpu_kernels=runtime.fused_kernels(cfg))
    if scfg.vocab_size != tcfg.vocab_size:
        raise UserError(f"student.config vocab_size {scfg.vocab_size} differs from the teacher's {tcfg.vocab_size}")
    return scfg, runtime.build_classifier(scfg, cfg.student.head_type)


def _eval_fn(model, eval_sets, cfg, task, train_cells=()):
    net = LogitsOnly(model)

    def run():
        net.set_train(False)
        metrics = evaluate(net, eval_sets, cfg.eval.batch_size, task)
        for c in train_cells:
            c.set_train(True)
        return metrics
    return run


def run(cfg, out_dir, save_resolved):
    """One phase; on a user error nothing new is left in out_dir (runtime.output_guard)."""
    with runtime.output_guard(out_dir):
        return _run(cfg, out_dir, save_resolved)


def _run(cfg, out_dir, save_resolved):
    task = runtime.task_from_config(cfg)
    phase = cfg.phase
    phase_cfg = cfg[phase] if phase in ("finetune", "td1", "td2") else None
    rank, world, log = runtime.start_run(cfg, out_dir, save_resolved, {"phase": phase})
    is_main = rank == 0
    log.info(f"phase {phase}, task {task.name}, output {out_dir}, rank {rank}/{world}")

    eval_sets = runtime.load_eval_sets(cfg, task)
    for s, a in eval_sets.items():
        log.info(f"{s} eval dataset size: {len(a['input_ids'])}")
    if phase == "eval":
        return _run_eval(cfg, task, eval_sets, log)
    tcfg, teacher = _teacher(cfg, task)

    train = runtime.load_split(cfg.data.dir, "train", cfg.data.dataset_type, cfg.data.max_seq_length, task)
    log.info(f"train dataset size: {len(train['input_ids'])}")
    lcfg = loss_config(cfg)
    bucket_cfg = list(cfg.data.length_buckets)

    if phase == "finetune":
        model = teacher
        runtime.load_into(model, cfg.teacher.init_ckpt, "teacher.init_ckpt", strict=True,
                          prefix_map={"": "bert."}, allow_missing=("classifier.",))
        if phase_cfg.freeze_word_embeddings:
            model.bert.embeddings.word_embeddings.embedding_table.requires_grad = False
        loss_net = FinetuneLoss(model, task.regression)
        inputs, parts = ["input_ids", "segment_ids", "input_mask", "label_ids"], ["ce"]
        model_cfg, extra_save = tcfg, {}
    else:
        t_ckpt = teacher_ckpt(cfg)
        runtime.load_into(teacher, t_ckpt, "teacher.ckpt", strict=True)
        log.info(f"teacher {t_ckpt}")
        scfg, model = _student(cfg, task, tcfg)
        fit_dense = FitDense(scfg.hidden_size, tcfg.hidden_size)
        model_cfg = scfg
        if phase == "td1":
            _init_student_td1(cfg, model, teacher, fit_dense, log)
            att_map, hid_map = runtime.student_layer_map(cfg, tcfg, scfg, lcfg.attention_weight)
            log.info(f"layer map: attention {att_map}, hidden {hid_map}")
            inputs, parts = ["input_ids", "segment_ids", "input_mask", "label_ids"], ["att", "rep"]
            if phase_cfg.cache_teacher_outputs and cfg.distributed:
                raise UserError("td1.cache_teacher_outputs needs distributed: false (each worker sees other rows "
                                "every epoch, so its cache would never be complete)")
            train[teacher_cache.ROW_ID] = np.arange(len(train["input_ids"]), dtype=np.int32)
            inputs = inputs + [teacher_cache.ROW_ID]
            loss_net = TaskDistillPhase1Loss(model, teacher, fit_dense, att_map, hid_map, lcfg, cfg.distributed,
                                             return_targets=phase_cfg.cache_teacher_outputs)
            extra_save = {"fit_dense": fit_dense}
        else:
            s_ckpt = td1_ckpt(cfg)
            log.info(f"student from phase 1: {s_ckpt}")
            runtime.load_into(model, s_ckpt, "student.td1_ckpt", strict=True,
                              allow_unexpected=("fit_dense.",))
            extra_save = {}
            inputs, parts = ["input_ids", "segment_ids", "input_mask", "label_ids"], ["soft", "hard"]
            if phase_cfg.cache_teacher_logits:
                t0 = time.time()
                net = LogitsOnly(teacher)
                net.set_train(False)
                train["teacher_logits"] = teacher_cache.logits_for_phase2(
                    net, train, cfg.eval.batch_size, bucket_cfg, os.path.dirname(s_ckpt), log)
                log.info(f"cached teacher logits for {len(train['input_ids'])} train rows in {time.time() - t0:.1f}s")
                loss_net = CachedLogitsPhase2Loss(model, lcfg, task.regression)
                inputs = inputs + ["teacher_logits"]
            else:
                loss_net = TaskDistillPhase2Loss(model, teacher, lcfg, task.regression)

    batcher = ArrayBatcher(train, phase_cfg.batch_size, shuffle=True, seed=cfg.seed, rank=rank, world=world,
                           length_buckets=bucket_cfg, batch_key=f"{phase}.batch_size")
    step, lr = train_step_from_config(loss_net, cfg, phase_cfg, len(batcher), cfg.distributed)
    log.info(f"model params {count_params(model)}; {len(batcher)} steps per epoch, buckets {batcher.buckets}")
    run_step = step
    if phase == "td1":
        cache = cached = None
        if phase_cfg.cache_teacher_outputs:
            cache = teacher_cache.Phase1TeacherCache(batcher.buckets, batcher.bucket_of, len(hid_map),
                                                     len(att_map), tcfg.hidden_size, tcfg.num_attention_heads)
            teacher_cache.check_cache_size(cache.max_bytes(), phase_cfg.teacher_cache_max_gb,
                                           len(train["input_ids"]))
            cached = teacher_cache.cached_step(step, CachedTeacherPhase1Loss(model, fit_dense, len(att_map),
                                                                             len(hid_map), lcfg))
            log.info(f"phase-1 teacher outputs are kept per row after its first batch (up to "
                     f"{cache.max_bytes() / 1e6:.1f} MB) and reused in later epochs")
        teacher_logits = teacher_cache.TeacherLogits(len(train["input_ids"]))
        run_step = teacher_cache.Phase1Step(step, teacher_logits, cached, cache)
    model_cfg.to_json_file(os.path.join(out_dir, "config.json")) if is_main else None

    ckpt_name = "best.ckpt" if phase != "td1" else "student.ckpt"
    eval_fn = _eval_fn(model, eval_sets, cfg, task, [step]) if phase != "td1" else None

    def save_best(metrics):
        runtime.save_cell(model, os.path.join(out_dir, ckpt_name), extra={**metrics}, **extra_save)

    def save_last():
        runtime.save_cell(model, os.path.join(out_dir, "last.ckpt" if phase != "td1" else ckpt_name), **extra_save)

    state, resume = train_state_from_config(cfg, step, out_dir, is_main)
    trainer = Trainer(run_step, batcher, inputs, parts, log, phase_cfg.epochs, lr.value, cfg.log_every,
                      eval_fn=eval_fn, main_metric=task.main_metric, eval_every=cfg.eval.every,
                      save_best=save_best if eval_fn else None, save_last=save_last, is_main=is_main,
                      max_steps=phase_cfg.max_steps, state=state, resume=resume,
                      overflow_skips=cfg.optim.loss_scale != 1.0)
    result = trainer.fit()
    if phase == "td1":
        if run_step.cache is not None:
            log.info(run_step.summary())
        if is_main:
            path = teacher_logits.save(out_dir)
            log.info(f"teacher logits of {int(teacher_logits.seen.sum())} train rows kept for phase 2: {path}")
    if eval_fn is not None and is_main:
        log.info(f"best {task.main_metric} {trainer.best:.6f} at step {trainer.best_step}; "
                 f"checkpoint {os.path.join(out_dir, ckpt_name)}")
    log.close()
    return result


def _init_student_td1(cfg, student, teacher, fit_dense, log):
    init = cfg.student.init
    if init == "gd":
        runtime.load_into(student, cfg.student.gd_ckpt, "student.gd_ckpt", strict=True,
                          allow_missing=("classifier.",), extra_cells={"fit_dense": fit_dense})
        log.info(f"student initialised from GD checkpoint {cfg.student.gd_ckpt} (with its fit_dense)")
    elif init == "teacher_layers":
        runtime.copy_teacher_layers(student, teacher, list(cfg.student.teacher_layers))
        log.info(f"student initialised from teacher layers {list(cfg.student.teacher_layers)}")
    elif init == "random":
        log.info("student initialised at random")
    else:
        raise UserError(f"student.init '{init}': expected gd, teacher_layers or random")


def _run_eval(cfg, task, eval_sets, log):
    """Standalone eval of a checkpoint (default: the TD phase-2 best) on the full eval split(s)."""
    ckpt = cfg.eval.ckpt or os.path.join(cfg.output_dir, "td2", "best.ckpt")
    model_cfg_path = cfg.eval.model_config or os.path.join(os.path.dirname(ckpt), "config.json")
    mcfg = runtime.load_bert_config(model_cfg_path, "eval.model_config", num_labels=task.num_labels,
                                    fused_cpu_kernels=runtime.fused_kernels(cfg))
    head = runtime.resolve_head_type(cfg.eval.head_type, ckpt, "eval.head_type", "eval.ckpt")
    model = runtime.build_classifier(mcfg, head)
    runtime.load_into(model, ckpt, "eval.ckpt", strict=True, allow_unexpected=("fit_dense.",))
    net = LogitsOnly(model)
    net.set_train(False)
    metrics = evaluate(net, eval_sets, cfg.eval.batch_size, task)
    log.info("eval " + ", ".join(f"{k} {v:.6f}" for k, v in metrics.items()) + f" | {ckpt}")
    log.info(f"============== {task.main_metric} is {metrics[task.main_metric]:.6f}")
    log.record("eval", ckpt=ckpt, **metrics)
    log.close()
    return metrics
