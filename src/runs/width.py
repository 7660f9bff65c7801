"""DynaBERT / OFA width run (algorithm: src/width.py): importance -> rewire -> supernet training over widths with
distillation from the fine-tuned teacher -> each width's best sub-model, sliced -> the width table. Data parallel:
every rank takes rank 0's permutation and trains on its shard; rank 0 evaluates, saves and writes the table."""
import itertools
import os
import time

from src.batching import ArrayBatcher
from src.checkpoint import load_into, save_cell
from src.evaluation import evaluate, teacher_baseline
from src.errors import UserError
from src.fileio import atomic_text, require_file
from src.outputs import output_guard
from src.runs.common import (TASK_INPUTS, classifier_config, eval_buckets, eval_data, keep_outputs_on_error,
                             schedule, teacher_classifier, train_data)
from src.runtime import start_run
from src.tasks import task_from_config
from src.tinybert_model import LogitsOnly, build_classifier, count_params, load_bert_config
from src.train_step import make_train_step, schedule_and_optimizer, total_steps
from src.trainer import Evaluation, StateOf, StepCounter, Trainer, train_state_from_config
from src.width import (MultiWidthDistillLoss, PerWidthBest, SampledWidthStep, WidthView, compute_importance,
                       describe_spec, format_table, importance_order, measure_latency, parse_width_list, rewire,
                       save_importance, share_rank0_order, sizes_txt, supernet_mark, supernet_record, width_spec)


def run(cfg, out_dir: str, save_resolved):
    """On a user error nothing new is left in out_dir (output_guard)."""
    with output_guard(out_dir):
        return _run(cfg, out_dir, save_resolved)


def _run(cfg, out_dir, save_resolved):
    task = task_from_config(cfg)
    tcfg = classifier_config(cfg, cfg.teacher.config, "teacher.config", task)
    specs = parse_width_list(cfg.width_mult_list, tcfg, depths=list(cfg.depth_mult_list))
    init_ckpt = cfg.supernet.init_ckpt or cfg.teacher.ckpt
    start = _check_start(cfg, specs, init_ckpt)           # the start's supernet record (None: not a supernet)
    rank, world, log = start_run(cfg, out_dir, save_resolved, {"phase": "ofa_width"})
    is_main = rank == 0
    log.info(f"OFA width adaptation, task {task.name}, output {out_dir}, rank {rank}/{world}")
    for s in specs:
        log.info(describe_spec(tcfg, s))

    # ---- build: data, teacher, supernet (rewired by importance), loss over widths, one optimizer for all
    eval_sets, train = eval_data(cfg, task, log), train_data(cfg, task, log)
    buckets = eval_buckets(cfg)
    _, teacher = teacher_classifier(cfg, task, cfg.teacher.ckpt)
    model = build_classifier(tcfg, cfg.teacher.head_type, task.head)
    load_into(model, init_ckpt, "supernet.init_ckpt", strict=True)
    source = cfg.train.distill_from
    # stage 2: the width supernet, frozen, is the teacher (the fine-tuned teacher stays the table's reference)
    supernet_teacher = teacher_classifier(cfg, task, init_ckpt, "supernet.init_ckpt")[1] if source == "supernet" \
        else None
    log.info(f"supernet initialised from {init_ckpt}{' (a width supernet: ' + str(start) + ')' if start else ''}; "
             f"teacher {init_ckpt if supernet_teacher else cfg.teacher.ckpt}; params {count_params(model)}")
    if cfg.eval.teacher_baseline and is_main:      # the reference the width table is read against
        teacher_baseline(teacher, eval_sets, cfg.eval.batch_size, task, log, buckets)
    if cfg.importance.rewire and (start is None or cfg.importance.rewire_supernet):
        aligned = {"narrowed_teacher": teacher, "supernet": supernet_teacher}.get(source)
        _rewire_by_importance(cfg, model, aligned, train, task, rank, world, out_dir, log)
    elif cfg.importance.rewire:
        log.info("no rewiring: supernet.init_ckpt is a width supernet, its heads / neurons keep the order its widths "
                 "were trained on (importance.rewire_supernet: true recomputes it)")
    teacher_views = _teacher_views(source, teacher, supernet_teacher, specs, tcfg)
    batcher = ArrayBatcher(train, cfg.train.batch_size, shuffle=True, seed=cfg.seed, rank=rank, world=world,
                           length_buckets=list(cfg.data.length_buckets), kind=task.kind)
    lr, opt = schedule_and_optimizer(model.trainable_params(), cfg.optim, cfg.train, len(batcher))

    def make_step(idx):               # a TrainStep over the widths `idx` (one compiled graph per subset)
        loss = MultiWidthDistillLoss(model, teacher, [specs[i] for i in idx], cfg.loss.lambda1, cfg.loss.lambda2,
                                     cfg.loss.soft_ce_reduction, cfg.loss.temperature, task.kind,
                                     cfg.loss.padding == "valid", data_parallel=cfg.distributed,
                                     teacher_views=[teacher_views[i] for i in idx] if teacher_views else None)
        return make_train_step(loss, opt, cfg.optim, cfg.distributed)

    counter, k = StepCounter(), cfg.train.sample_widths
    if k and k < len(specs):
        step, parts = SampledWidthStep(make_step, len(specs), k, cfg.seed, counter), ["sampled"]
        log.info(f"each step trains {k} of {len(specs)} widths (largest and smallest always)")
    else:
        step, parts = make_step(tuple(range(len(specs)))), [f"w{s.label}" for s in specs]
    log.info(f"{len(batcher)} steps per epoch, "
             f"{total_steps(len(batcher), cfg.train.epochs, cfg.train.max_steps)} steps, buckets {batcher.buckets}, "
             f"loss {cfg.loss.lambda1}*softCE({cfg.loss.soft_ce_reduction}) + {cfg.loss.lambda2}*hiddenMSE, "
             f"teacher: {TEACHER_WORDS[source]}")
    if is_main:
        tcfg.to_json_file(os.path.join(out_dir, "config.json"))

    # ---- fit: every width evaluated, keep-best per width (PerWidthBest) and for the supernet at full width
    bests = PerWidthBest(specs, out_dir, task.main_metric, counter)
    eval_nets = [LogitsOnly(WidthView(model, s)) for s in specs]

    def eval_widths():
        metrics = {}
        for s, net in zip(specs, eval_nets):
            net.set_train(False)
            m = evaluate(net, eval_sets, cfg.eval.batch_size, task, buckets)
            metrics.update({key if s is specs[0] else f"{key}_w{s.label}": v for key, v in m.items()})
            b = bests.update(model, s, m)
            log.info(f"width {s.label} (heads {sizes_txt(s.heads)}, FFN {sizes_txt(s.ffn)}): {task.main_metric} "
                     f"{m[task.main_metric]:.6f}, best {b['metric']:.6f}")
        step.set_train(True)
        return metrics

    mark = supernet_mark(specs)       # names the checkpoints width supernets (what stage 2 starts from)
    evaluation = Evaluation(eval_widths, task.main_metric, cfg.eval.every,
                            lambda m: save_cell(model, os.path.join(out_dir, "best.ckpt"), extra={**m, **mark}))
    state, resume = train_state_from_config(cfg, StateOf(model, opt), out_dir, is_main)
    trainer = Trainer(step, batcher, inputs=TASK_INPUTS, parts=parts, log=log, schedule=schedule(cfg.train, lr),
                      log_every=cfg.log_every, evaluation=evaluation, state=state, resume=resume, is_main=is_main,
                      save_last=lambda: save_cell(model, os.path.join(out_dir, "supernet.ckpt"), extra=mark),
                      skip_overflow_steps=cfg.optim.loss_scale != 1.0, extra_state=bests, counter=counter)
    result = trainer.fit()
    if is_main:                 # after training: an error here keeps the trained run (keep_outputs)
        result["rows"] = keep_outputs_on_error(_report, cfg, specs, bests, task, out_dir, log)
    log.close()
    return result


TEACHER_WORDS = {"teacher": "the fine-tuned full model",
                 "narrowed_teacher": "the fine-tuned model cut to each sub-network's width and layers",
                 "supernet": "the width supernet (supernet.init_ckpt) at each sub-network's width, full depth"}


def _check_start(cfg, specs, init_ckpt):
    """The start checkpoint's width-supernet record, or None. Stage 2 (train.distill_from supernet) needs a width
    supernet that trained every width it is asked to train: one UserError otherwise, before any work."""
    require_file(init_ckpt, "supernet.init_ckpt" if cfg.supernet.init_ckpt else "teacher.ckpt")
    start = supernet_record(init_ckpt)
    if cfg.train.distill_from != "supernet":
        return start
    if not cfg.supernet.init_ckpt:
        raise UserError("train.distill_from supernet: supernet.init_ckpt is empty; expected a stage-1 width run's "
                        "supernet.ckpt or best.ckpt")
    if start is None:
        raise UserError(f"supernet.init_ckpt '{init_ckpt}': not a width supernet (no width record in the checkpoint); "
                        f"train.distill_from supernet starts from a run_ofa_width.py run's supernet.ckpt or best.ckpt")
    trained = start["widths"]
    for s in specs:
        if not any(abs(s.width - w) < 1e-9 for w in trained):
            raise UserError(f"width_mult_list: width {s.width:g} was not trained in supernet.init_ckpt "
                            f"'{init_ckpt}' (its widths: {trained}); train.distill_from supernet needs a teacher "
                            f"trained at every width")
    return start


def _teacher_views(source, teacher, supernet_teacher, specs, tcfg):
    """Per sub-network, the cell it is distilled from (None = the full fine-tuned teacher for all): the teacher
    cut to its width and layers, or the width supernet at its width and full depth (one view per width)."""
    if source == "narrowed_teacher":
        return [WidthView(teacher, s) for s in specs]
    if source == "supernet":
        full_depth = {}
        return [full_depth.setdefault(s.width, WidthView(supernet_teacher, width_spec(tcfg, s.width))) for s in specs]
    return None


def _rewire_by_importance(cfg, model, aligned, train, task, rank, world, out_dir, log):
    """Head / FFN-neuron importance on TRAINING batches (fresh gradients per batch), then the supernet and the
    teacher `aligned` with it (a narrowed teacher or the supernet teacher; None for the full teacher) reordered so
    the most important units come first."""
    t0, limit = time.time(), cfg.importance.max_batches
    batcher = ArrayBatcher(train, cfg.importance.batch_size, shuffle=True, seed=cfg.seed + 1,
                           length_buckets=list(cfg.data.length_buckets), batch_key="importance.batch_size",
                           kind=task.kind)
    batches = itertools.islice(batcher.epoch(0), limit) if limit else batcher.epoch(0)
    imp = compute_importance(model, batches, task.kind, cfg.importance.normalize)
    head_order, ffn_order = importance_order(imp)
    if world > 1:
        head_order, ffn_order = share_rank0_order(head_order, ffn_order, rank)
    if rank == 0:
        save_importance(imp, head_order, ffn_order, out_dir)
    rewire(model, head_order, ffn_order)
    if aligned is not None:
        rewire(aligned, head_order, ffn_order)
    log.info(f"importance on {imp['batches']} training batches (loss {imp['loss']:.4f}) in {time.time() - t0:.1f}s; "
             f"head order layer 0 {head_order[0]}; rewired (saved importance.npz, permutation.json)")


def _report(cfg, specs, bests, task, out_dir, log):
    metric = task.main_metric
    """Each best sub-model reloaded with the normal strict loader, its parameters counted and its latency timed;
    the width table logged and written to width_table.md. Returns the rows."""
    rows = []
    for s in specs:
        conf = load_bert_config(os.path.join(out_dir, f"config_w{s.label}.json"), "sub-model config")
        sub = build_classifier(conf, cfg.teacher.head_type, task.head)
        load_into(sub, os.path.join(out_dir, f"best_w{s.label}.ckpt"), "sub-model checkpoint", strict=True)
        lat = measure_latency(LogitsOnly(sub), cfg.latency.batch_size, cfg.data.max_seq_length, conf.vocab_size,
                              cfg.latency.runs) if cfg.latency.runs else None
        b = bests.best[s.label]
        rows.append({"width": s.width, "depth": s.depth, "layers": len(s.layers), "heads": sizes_txt(s.heads),
                     "ffn": sizes_txt(s.ffn), "params": count_params(sub), "metric": b["metric"],
                     "best_step": b["step"], "latency_ms": lat})
        log.info(f"The best {metric} of width {s.label} is {b['metric']:.6f} (step {b['step']})")
        log.record("width", **rows[-1])
    table = format_table(rows, metric)
    log.info(f"width table (latency: batch {cfg.latency.batch_size}, seq {cfg.data.max_seq_length}, median of "
             f"{cfg.latency.runs} runs, graph mode):")
    for line in table:
        log.info(line)
    atomic_text(os.path.join(out_dir, "width_table.md"), "\n".join(table) + "\n")
    log.info(f"The best acc is {bests.best[specs[0].label]['metric']:.6f}")
    return rows
