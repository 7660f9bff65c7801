"""TernaryBERT run: quantization-aware distillation of a fine-tuned full-precision teacher into a quantized student
(2-bit weights / 8-bit activations, W-E-A notation). Algorithm: src/quant.py (quantizers), src/ternary.py (loss,
quantized checkpoints), src/packing.py (the packed artefact).

Keep-best writes best.ckpt (latent fp32 weights + activation-quantizer state), best_quant.ckpt (quantized values),
quant.json and config.json; with pack.after_train, model.tpack, model_sizes.md and the packed model's dev metric.
"""
import os

from src.batching import ArrayBatcher
from src.checkpoint import checkpoint_head_kind, load_into, pick_head_type, read_ms_checkpoint
from src.distill import loss_config, student_layer_map
from src.errors import UserError
from src.evaluation import evaluate, teacher_baseline
from src.fileio import atomic_text, require_file
from src.outputs import output_guard
from src.packing import build_ternary_inference_model, check_pack_options, pack, size_table
from src.quant import quantize_model, with_lat_refresh
from src.runs.common import (classifier_config, eval_buckets, eval_data, keep_outputs_on_error, logits_eval,
                             schedule, teacher_classifier, train_data)
from src.runtime import release_compiled_graphs, start_run
from src.tasks import task_from_config
from src.ternary import TernaryDistillLoss, quant_config, read_quant_json, save_quantized, write_quant_json
from src.tinybert_model import build_classifier, count_params, load_bert_config
from src.train_step import build_train_step
from src.trainer import Evaluation, StateOf, Trainer, train_state_from_config


def run_dir(cfg) -> str:
    """<output_dir>/<notation>: runs of other bit widths sit side by side (w2e2a8, w8e8a8, ...)."""
    return os.path.join(cfg.output_dir, quant_config(cfg).notation.lower())


def run(cfg, out_dir, save_resolved):
    """One TernaryBERT run; on a user error nothing new is left in out_dir (output_guard)."""
    with output_guard(out_dir):
        return _run(cfg, out_dir, save_resolved)


def _run(cfg, out_dir, save_resolved):
    task, qcfg = task_from_config(cfg), quant_config(cfg)
    rank, world, log = start_run(cfg, out_dir, save_resolved, {"method": "ternarybert", "quant": qcfg.notation})
    is_main = rank == 0
    log.info(f"TernaryBERT {qcfg.notation}, task {task.name}, output {out_dir}, rank {rank}/{world}")
    log.info(f"quant {qcfg.describe()}")
    eval_sets, buckets = eval_data(cfg, task, log), eval_buckets(cfg)
    result = _fit(cfg, out_dir, task, qcfg, log, (rank, world), eval_sets, buckets)

    # ---- report (packing was checked before training: any later error keeps the trained run). The fit's
    # compiled graphs (about 20 GB on CoNLL's four buckets) are released before the packed model compiles its
    # own (release_compiled_graphs); the fit's weights and optimizer state went out of scope with _fit
    release_compiled_graphs()
    if cfg.pack.after_train and is_main:
        result["packed"] = keep_outputs_on_error(
            pack_run, out_dir, cfg.pack.codec, cfg.pack.max_positions or cfg.data.max_seq_length,
            cfg.student.head_type, log=log, eval_sets=eval_sets, eval_batch=cfg.eval.batch_size, task=task,
            eval_buckets=buckets)
    log.close()
    return result


def _fit(cfg, out_dir, task, qcfg, log, rank_world, eval_sets, buckets) -> dict:
    """Build (data, teacher, quantized student, loss, train step; LAT refreshes D after every step) and fit;
    returns the Trainer's result."""
    rank, world = rank_world
    is_main = rank == 0
    train = train_data(cfg, task, log)
    lcfg = loss_config(cfg)
    tcfg, teacher = teacher_classifier(cfg, task, cfg.teacher.ckpt)
    scfg, model, how = _student(cfg, task, tcfg)
    log.info(how)
    if cfg.pack.after_train:
        check_pack_options(cfg.pack.codec, cfg.pack.max_positions or cfg.data.max_seq_length,
                           scfg.max_position_embeddings)
    att_map, hid_map = student_layer_map(cfg, tcfg, scfg, lcfg.attention_weight)
    att_txt = (f"{att_map} ({'head-mean' if lcfg.attention_heads == 'average' else 'per-head'} scores)"
               if lcfg.attention_weight else "none (loss.attention_weight 0)")
    hid_txt = hid_map if lcfg.hidden_weight else "none (loss.hidden_weight 0)"
    log.info(f"layer map: attention {att_txt}, hidden {hid_txt}")
    if cfg.eval.teacher_baseline and is_main:
        teacher_baseline(teacher, eval_sets, cfg.eval.batch_size, task, log, buckets)
    quantize_model(model, qcfg, sync_ranks=cfg.distributed)
    loss_net = TernaryDistillLoss(model, teacher, att_map, hid_map, lcfg, task.kind, cfg.distributed)
    batcher = ArrayBatcher(train, cfg.train.batch_size, shuffle=True, seed=cfg.seed, rank=rank, world=world,
                           length_buckets=list(cfg.data.length_buckets), kind=task.kind)
    step, lr = build_train_step(loss_net, cfg.optim, cfg.train, len(batcher), cfg.distributed)
    optimizer = step.optimizer
    step, refreshed = with_lat_refresh(step, model, optimizer)
    if refreshed:
        log.info(f"LAT: D = sqrt(Adam v) + eps refreshed after every step for {refreshed} weight(s)")
    log.info(f"model params {count_params(model)}; {len(batcher)} steps per epoch, buckets {batcher.buckets}")
    if is_main:
        scfg.to_json_file(os.path.join(out_dir, "config.json"))
        write_quant_json(out_dir, qcfg)

    # ---- fit. Resume state: latent weights + optimizer + the student's frozen quantizer state (activation ranges,
    # gathered over data-parallel ranks; the LAT Hessian)
    evaluation = Evaluation(logits_eval(model, eval_sets, cfg.eval.batch_size, task, [step], buckets),
                            task.main_metric, cfg.eval.every,
                            lambda m: save_quantized(model, out_dir, "best", qcfg, extra={**m}))
    state, resume = train_state_from_config(cfg, StateOf(model, optimizer, frozen_state=True), out_dir, is_main)
    trainer = Trainer(step, batcher, inputs=["input_ids", "segment_ids", "input_mask", "label_ids"],
                      parts=["att", "rep", "pred"], log=log, schedule=schedule(cfg.train, lr), log_every=cfg.log_every,
                      evaluation=evaluation, state=state, resume=resume, is_main=is_main,
                      skip_overflow_steps=cfg.optim.loss_scale != 1.0)
    result = trainer.fit()
    if is_main:
        log.info(f"best {task.main_metric} {trainer.best:.6f} at step {trainer.best_step} ({qcfg.notation}); "
                 f"checkpoints {os.path.join(out_dir, 'best.ckpt')}, {os.path.join(out_dir, 'best_quant.ckpt')}")
    return result


def _student(cfg, task, tcfg):
    """(config, model, log line): a copy of the fine-tuned teacher, or a checkpoint (e.g. a TinyBERT student)."""
    if cfg.student.init == "teacher":
        model = build_classifier(tcfg, cfg.student.head_type, task.head)
        load_into(model, cfg.teacher.ckpt, "teacher.ckpt", strict=True)
        return tcfg, model, f"student initialised from the fine-tuned teacher {cfg.teacher.ckpt}"
    if cfg.student.init == "ckpt":
        path = cfg.student.config or os.path.join(os.path.dirname(cfg.student.ckpt), "config.json")
        scfg = classifier_config(cfg, path, "student.config", task)
        if scfg.hidden_size != tcfg.hidden_size:
            raise UserError(f"student.config hidden_size {scfg.hidden_size} differs from the teacher's "
                            f"{tcfg.hidden_size}: TernaryBERT's hidden loss has no fit_dense")
        model = build_classifier(scfg, cfg.student.head_type, task.head)
        load_into(model, cfg.student.ckpt, "student.ckpt", strict=True, allow_unexpected=("fit_dense.",))
        return scfg, model, f"student initialised from {cfg.student.ckpt}"
    raise UserError(f"student.init '{cfg.student.init}': expected teacher or ckpt")


def pack_run(out_dir: str, codec: str, max_positions: int, head_type: str, log=None, eval_sets=None,
             eval_batch: int = 64, task=None, fp32_ckpt: str = "", out_path: str = "",
             eval_buckets=None) -> dict:
    """Pack <out_dir>/best_quant.ckpt into <out_dir>/model.tpack, write model_sizes.md, and (with eval_sets)
    evaluate the model rebuilt from the packed file (batches grouped by `eval_buckets` when given). `head_type` =
    the run's student.head_type: the packed file records it and the rebuilt model uses it. Returns sizes and
    metrics."""
    say = log.info if log is not None else print
    qcfg = read_quant_json(os.path.join(out_dir, "quant.json"))
    bcfg = load_bert_config(os.path.join(out_dir, "config.json"), "run config.json")
    qckpt = require_file(os.path.join(out_dir, "best_quant.ckpt"), "quantized checkpoint")
    state, meta = read_ms_checkpoint(qckpt, with_extra=True)
    head_type = pick_head_type(head_type, meta.get("head_type"), "student.head_type", qckpt)
    out_path = out_path or os.path.join(out_dir, "model.tpack")
    sizes = pack(state, bcfg, qcfg, out_path, head_type=head_type, codec=codec, max_positions=max_positions,
                 source=qckpt, head_kind=checkpoint_head_kind(qckpt))
    fp32 = fp32_ckpt or os.path.join(out_dir, "best.ckpt")
    note = (f"Everything the packed file holds is counted (header with config and tensor table included); "
            f"position table: first {max_positions} rows kept (the deployed max_seq_length). The tokenizer "
            f"vocab.txt is shipped by neither and counted in neither.")
    table = size_table(fp32, out_path, sizes, qcfg.notation, codec, note)
    ratio = os.path.getsize(fp32) / os.path.getsize(out_path)
    atomic_text(os.path.splitext(out_path)[0] + "_sizes.md", table + "\n")
    for line in table.splitlines():
        say(line)
    say(f"packed size ratio {ratio:.2f}x ({os.path.getsize(fp32):,} -> {os.path.getsize(out_path):,} bytes)")
    result = {"fp32_bytes": os.path.getsize(fp32), "packed_bytes": os.path.getsize(out_path), "ratio": ratio}
    if eval_sets is not None:
        metrics = evaluate(build_ternary_inference_model(out_path), eval_sets, eval_batch, task, eval_buckets)
        say("packed model eval " + ", ".join(f"{k} {v:.6f}" for k, v in metrics.items()) + f" | {out_path}")
        if log is not None:
            log.record("packed_eval", ratio=ratio, packed_bytes=result["packed_bytes"],
                       fp32_bytes=result["fp32_bytes"], **metrics)
        result.update(metrics)
    return result
