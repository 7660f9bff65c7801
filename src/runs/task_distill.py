"""Task distillation (TinyBERT), one phase per run: finetune (the teacher), td1 (intermediate layers), td2
(prediction layer), eval (a checkpoint on the eval splits). The phases differ only in what `PHASES` builds;
the run around them reads build -> fit -> report. Phases: src/runs/td_phases.py; losses: src/distill.py."""
import os

from src.batching import ArrayBatcher
from src.checkpoint import load_into, resolve_head_type, save_cell
from src.evaluation import evaluate
from src.outputs import output_guard
from src.runs.common import classifier_config, eval_buckets, eval_data, logits_eval, schedule, train_data
from src.runs.td_phases import PHASES
from src.runtime import start_run
from src.tasks import task_from_config
from src.tinybert_model import LogitsOnly, build_classifier, count_params
from src.train_step import build_train_step
from src.trainer import Evaluation, Trainer, train_state_from_config


def run(cfg, out_dir, save_resolved):
    """One phase; on a user error nothing new is left in out_dir (output_guard)."""
    with output_guard(out_dir):
        return _run(cfg, out_dir, save_resolved)


def _run(cfg, out_dir, save_resolved):
    task = task_from_config(cfg)
    rank, world, log = start_run(cfg, out_dir, save_resolved, {"phase": cfg.phase})
    is_main = rank == 0
    log.info(f"phase {cfg.phase}, task {task.name}, output {out_dir}, rank {rank}/{world}")
    eval_sets = eval_data(cfg, task, log)
    if cfg.phase == "eval":
        return _evaluate_checkpoint(cfg, task, eval_sets, log)

    # ---- build
    phase, sched = PHASES[cfg.phase], cfg[cfg.phase]
    tcfg = classifier_config(cfg, cfg.teacher.config, "teacher.config", task)
    teacher = build_classifier(tcfg, cfg.teacher.head_type, task.head)
    train = train_data(cfg, task, log)
    b = phase.build(cfg, task, tcfg, teacher, train, log)
    batcher = ArrayBatcher(train, sched.batch_size, shuffle=True, seed=cfg.seed, rank=rank, world=world,
                           length_buckets=list(cfg.data.length_buckets), batch_key=f"{cfg.phase}.batch_size",
                           kind=task.kind)
    step, lr = build_train_step(b.loss_net, cfg.optim, sched, len(batcher), cfg.distributed)
    log.info(f"model params {count_params(b.model)}; {len(batcher)} steps per epoch, buckets {batcher.buckets}")
    run_step = b.wrap_step(step, batcher) if b.wrap_step else step
    if is_main:
        b.model_cfg.to_json_file(os.path.join(out_dir, "config.json"))

    # ---- fit
    ckpt = os.path.join(out_dir, phase.ckpt)
    evaluation = None
    if phase.evaluates:
        evaluation = Evaluation(logits_eval(b.model, eval_sets, cfg.eval.batch_size, task, [step],
                                            eval_buckets(cfg)), task.main_metric, cfg.eval.every,
                                lambda m: save_cell(b.model, ckpt, extra={**m}, **b.extra_cells))
    last = os.path.join(out_dir, "last.ckpt") if phase.evaluates else ckpt
    state, resume = train_state_from_config(cfg, step, out_dir, is_main)
    trainer = Trainer(run_step, batcher, inputs=b.inputs, parts=b.parts, log=log, schedule=schedule(sched, lr),
                      log_every=cfg.log_every, evaluation=evaluation,
                      save_last=lambda: save_cell(b.model, last, **b.extra_cells), state=state, resume=resume,
                      is_main=is_main, skip_overflow_steps=cfg.optim.loss_scale != 1.0, extra_state=b.extra_state)
    result = trainer.fit()

    # ---- report
    if b.finish is not None:
        b.finish(run_step, out_dir, is_main, log)
    if evaluation is not None and is_main:
        log.info(f"best {task.main_metric} {trainer.best:.6f} at step {trainer.best_step}; checkpoint {ckpt}")
    log.close()
    return result


def _evaluate_checkpoint(cfg, task, eval_sets, log):
    """Phase eval: a checkpoint (default: the TD phase-2 best) on the full eval split(s)."""
    ckpt = cfg.eval.ckpt or os.path.join(cfg.output_dir, "td2", "best.ckpt")
    mcfg = classifier_config(cfg, cfg.eval.model_config or os.path.join(os.path.dirname(ckpt), "config.json"),
                             "eval.model_config", task)
    model = build_classifier(mcfg, resolve_head_type(cfg.eval.head_type, ckpt, "eval.head_type", "eval.ckpt"),
                             task.head)
    load_into(model, ckpt, "eval.ckpt", strict=True, allow_unexpected=("fit_dense.",))
    net = LogitsOnly(model)
    net.set_train(False)
    metrics = evaluate(net, eval_sets, cfg.eval.batch_size, task, eval_buckets(cfg))
    log.info("eval " + ", ".join(f"{k} {v:.6f}" for k, v in metrics.items()) + f" | {ckpt}")
    log.info(f"============== {task.main_metric} is {metrics[task.main_metric]:.6f}")
    log.record("eval", ckpt=ckpt, **metrics)
    log.close()
    return metrics
