"""TernaryBERT: quantization-aware distillation of a fine-tuned full-precision teacher into a quantized student
(2-bit weights / 8-bit activations, W-E-A notation), wired from a resolved config like src/task_distill.py.

teacher (fine-tuned, frozen) -> student = same model, initialised from the teacher (or from a TinyBERT student),
with quantized weights by role and activation fake-quant (src/quant.py); loss = attention MSE + hidden MSE (all
L+1 hidden states, no fit_dense) + prediction loss (soft CE, or MSE to the teacher output for regression);
eval on the full dev set with the quantized weights; keep-best writes
    best.ckpt        the latent full-precision weights + activation-quantizer state (resume / re-quantize)
    best_quant.ckpt  the same state with every quantized weight replaced by its quantized value, at the
                     granularity used in training (row-wise ternary word embedding stays row-wise)
    quant.json       the QuantConfig;   config.json  the BERT config
and, with pack.after_train, the packed artefact model.tpack (src/packing.py), its size table and the dev metric
of the packed model rebuilt from the file.
"""
import json
import os

import mindspore as ms
from mindspore import nn

from src import runtime
from src.distill import FrozenTeacher, IntermediateLoss, PredictionLoss, train_step_from_config
from src.errors import UserError
from src.quant import (HESSIAN_SUFFIX, QuantConfig, quantize_model, with_lat_refresh,
                       quantized_state)
from src.task_distill import loss_config
from src.tinybert_model import LogitsOnly, count_params
from src.trainer import ArrayBatcher, StateOf, Trainer, evaluate, teacher_baseline, train_state_from_config


class TernaryDistillLoss(nn.Cell):
    """TernaryBERT loss: sum of attention-score MSEs + hidden-state MSEs over a layer map (1:1 for a student
    copied from the teacher, no fit_dense) + the prediction loss. Returns (loss, (att, rep, pred))."""

    def __init__(self, student, teacher, attention_map, hidden_map, cfg, regression: bool,
                 data_parallel: bool = False):
        super().__init__()
        self.student = student
        self.teacher = FrozenTeacher(teacher)
        self.pred = PredictionLoss(cfg, regression)
        self.inter = IntermediateLoss(None, attention_map, hidden_map, cfg, data_parallel,
                                      student.config.fused_cpu_kernels)

    def construct(self, input_ids, segment_ids, input_mask, label_ids):
        t_logits, t_hidden, t_scores = self.teacher(input_ids, segment_ids, input_mask)
        s_logits, s_hidden, s_scores = self.student(input_ids, segment_ids, input_mask)
        att, rep = self.inter(s_hidden, s_scores, t_hidden, t_scores, input_mask)
        pred, _, _ = self.pred(s_logits, t_logits, label_ids)
        loss = self.inter.att_w * att + self.inter.rep_w * rep + pred
        return loss, (att, rep, pred)


def quant_config(cfg) -> QuantConfig:
    q = cfg.quant
    try:
        return QuantConfig(weight_bits=q.bits.weight, embedding_bits=q.bits.embedding,
                           activation_bits=q.bits.activation, weight_method=q.weight_method,
                           weight_clip=q.weight_clip, embedding_rowwise=q.embedding_rowwise,
                           activation_mode=q.activation_mode, activation_scale=q.activation_scale,
                           activation_clip=q.activation_clip, ema_decay=q.ema_decay, lat_iters=q.lat_iters,
                           roles=list(q.roles))
    except ValueError as e:
        msg = str(e)
        for field, key in (("weight_bits", "bits.weight"), ("embedding_bits", "bits.embedding"),
                           ("activation_bits", "bits.activation")):
            msg = msg.replace(f"quant {field}", f"quant.{key}")
        raise UserError(msg.replace("quant ", "quant.")) from None


def run_dir(cfg) -> str:
    return os.path.join(cfg.output_dir, quant_config(cfg).notation.lower())


def _student(cfg, task, tcfg, teacher):
    init = cfg.student.init
    if init == "teacher":
        scfg = tcfg
        model = runtime.build_classifier(scfg, cfg.student.head_type)
        runtime.load_into(model, cfg.teacher.ckpt, "teacher.ckpt", strict=True)
        return scfg, model, f"student initialised from the fine-tuned teacher {cfg.teacher.ckpt}"
    if init == "ckpt":
        path = cfg.student.config or os.path.join(os.path.dirname(cfg.student.ckpt), "config.json")
        scfg = runtime.load_bert_config(path, "student.config", num_labels=task.num_labels,
                                        fused_cpu_kernels=runtime.fused_kernels(cfg))
        if scfg.hidden_size != tcfg.hidden_size:
            raise UserError(f"student.config hidden_size {scfg.hidden_size} differs from the teacher's "
                            f"{tcfg.hidden_size}: TernaryBERT's hidden loss has no fit_dense")
        model = runtime.build_classifier(scfg, cfg.student.head_type)
        runtime.load_into(model, cfg.student.ckpt, "student.ckpt", strict=True, allow_unexpected=("fit_dense.",))
        return scfg, model, f"student initialised from {cfg.student.ckpt}"
    raise UserError(f"student.init '{init}': expected teacher or ckpt")


def save_quantized(model, out_dir: str, name: str, qcfg: QuantConfig, extra=None):
    """best.ckpt (latent) + best_quant.ckpt (quantized values) + quant.json, each written atomically; both
    checkpoints record the head type (runtime.head_meta)."""
    from src.checkpoint import save_checkpoint_atomic
    extra = {**runtime.head_meta(model), **(extra or {})}
    latent = [{"name": n, "data": p} for n, p in model.parameters_and_names() if not n.endswith(HESSIAN_SUFFIX)]
    save_checkpoint_atomic(latent, os.path.join(out_dir, f"{name}.ckpt"), extra=extra)
    qstate = quantized_state(model)
    save_checkpoint_atomic([{"name": n, "data": ms.Tensor(v)} for n, v in qstate.items()],
                           os.path.join(out_dir, f"{name}_quant.ckpt"), extra=extra)
    write_quant_json(out_dir, qcfg)


def write_quant_json(out_dir: str, qcfg: QuantConfig):
    path = os.path.join(out_dir, "quant.json")
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"notation": qcfg.notation, **qcfg.to_dict()}, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def read_quant_json(path: str) -> QuantConfig:
    runtime.require_file(path, "quant config")
    with open(path, encoding="utf-8") as f:
        d = json.load(f)
    d.pop("notation", None)
    try:
        return QuantConfig.from_dict(d)
    except (TypeError, ValueError) as e:
        raise UserError(f"{path}: {e}") from None


def _keep_outputs_on_error(fn, *args, **kwargs):
    """Steps after training: a UserError there keeps the run's checkpoints and log (output_guard keep_outputs)."""
    try:
        return fn(*args, **kwargs)
    except UserError as e:
        e.keep_outputs = True
        raise


def run(cfg, out_dir, save_resolved):
    """One TernaryBERT run; on a user error nothing new is left in out_dir (runtime.output_guard)."""
    with runtime.output_guard(out_dir):
        return _run(cfg, out_dir, save_resolved)


def _check_pack(cfg, scfg):
    """The packing options, checked before training (packing runs after it, when an error would cost the run)."""
    from src.packing import CODECS
    if cfg.pack.codec not in CODECS:
        raise UserError(f"pack.codec '{cfg.pack.codec}': expected one of {list(CODECS)}")
    positions = cfg.pack.max_positions or cfg.data.max_seq_length
    if not 0 < positions <= scfg.max_position_embeddings:
        raise UserError(f"pack.max_positions {positions}: expected 1..{scfg.max_position_embeddings} (the model's "
                        f"position table; 0 = data.max_seq_length)")


def _run(cfg, out_dir, save_resolved):
    task = runtime.task_from_config(cfg)
    qcfg = quant_config(cfg)
    rank, world, log = runtime.start_run(cfg, out_dir, save_resolved,
                                         {"method": "ternarybert", "quant": qcfg.notation})
    is_main = rank == 0
    log.info(f"TernaryBERT {qcfg.notation}, task {task.name}, output {out_dir}, rank {rank}/{world}")
    log.info(f"quant {qcfg.describe()}")

    eval_sets = runtime.load_eval_sets(cfg, task)
    for s, a in eval_sets.items():
        log.info(f"{s} eval dataset size: {len(a['input_ids'])}")
    train = runtime.load_split(cfg.data.dir, "train", cfg.data.dataset_type, cfg.data.max_seq_length, task)
    log.info(f"train dataset size: {len(train['input_ids'])}")
    lcfg = loss_config(cfg)

    tcfg = runtime.load_bert_config(cfg.teacher.config, "teacher.config", num_labels=task.num_labels,
                                    fused_cpu_kernels=runtime.fused_kernels(cfg))
    teacher = runtime.build_classifier(tcfg, cfg.teacher.head_type)
    runtime.load_into(teacher, cfg.teacher.ckpt, "teacher.ckpt", strict=True)
    scfg, model, how = _student(cfg, task, tcfg, teacher)
    log.info(how)
    if cfg.pack.after_train:
        _check_pack(cfg, scfg)
    att_map, hid_map = runtime.student_layer_map(cfg, tcfg, scfg, lcfg.attention_weight)
    log.info(f"layer map: attention {att_map}, hidden {hid_map}")

    if cfg.eval.teacher_baseline and is_main:
        teacher_baseline(teacher, eval_sets, cfg.eval.batch_size, task, log)

    quantize_model(model, qcfg, sync_ranks=cfg.distributed)
    loss_net = TernaryDistillLoss(model, teacher, att_map, hid_map, lcfg, task.regression, cfg.distributed)
    batcher = ArrayBatcher(train, cfg.train.batch_size, shuffle=True, seed=cfg.seed, rank=rank, world=world,
                           length_buckets=list(cfg.data.length_buckets))
    step, lr = train_step_from_config(loss_net, cfg, cfg.train, len(batcher), cfg.distributed)
    optimizer = step.optimizer
    step = with_lat_refresh(step, model, optimizer)          # LAT: D = sqrt(Adam v) after every step
    if hasattr(step, "refresh"):
        log.info(f"LAT: D = sqrt(Adam v) + eps refreshed after every step for {step.refresh.count} weight(s)")
    log.info(f"model params {count_params(model)}; {len(batcher)} steps per epoch, buckets {batcher.buckets}")
    if is_main:
        scfg.to_json_file(os.path.join(out_dir, "config.json"))
        write_quant_json(out_dir, qcfg)

    net = LogitsOnly(model)

    def eval_fn():
        net.set_train(False)
        metrics = evaluate(net, eval_sets, cfg.eval.batch_size, task)
        step.set_train(True)
        return metrics

    def save_best(metrics):
        save_quantized(model, out_dir, "best", qcfg, extra={**metrics})

    # resume state: latent weights + optimizer, and the student's frozen quantizer state (activation ranges,
    # LAT Hessian) under network.*; data parallel: each rank's EMA ranges follow its own shard, rank 0's are saved
    state, resume = train_state_from_config(cfg, StateOf(model, optimizer), out_dir, is_main, buffers=("network.",))
    trainer = Trainer(step, batcher, ["input_ids", "segment_ids", "input_mask", "label_ids"],
                      ["att", "rep", "pred"], log, cfg.train.epochs, lr.value, cfg.log_every, eval_fn=eval_fn,
                      main_metric=task.main_metric, eval_every=cfg.eval.every, save_best=save_best,
                      is_main=is_main, max_steps=cfg.train.max_steps, state=state, resume=resume,
                      overflow_skips=cfg.optim.loss_scale != 1.0)
    result = trainer.fit()
    if is_main:
        log.info(f"best {task.main_metric} {trainer.best:.6f} at step {trainer.best_step} ({qcfg.notation}); "
                 f"checkpoints {os.path.join(out_dir, 'best.ckpt')}, {os.path.join(out_dir, 'best_quant.ckpt')}")
    if cfg.pack.after_train and is_main:        # checked before training; any later error keeps the trained run
        result["packed"] = _keep_outputs_on_error(
            pack_run, out_dir, cfg.pack.codec, cfg.pack.max_positions or cfg.data.max_seq_length,
            cfg.student.head_type, log=log, eval_sets=eval_sets, eval_batch=cfg.eval.batch_size, task=task)
    log.close()
    return result


def pack_run(out_dir: str, codec: str, max_positions: int, head_type: str, log=None, eval_sets=None,
             eval_batch: int = 64, task=None, fp32_ckpt: str = "", out_path: str = "") -> dict:
    """Pack <out_dir>/best_quant.ckpt into <out_dir>/model.tpack, write size_table.md, and (with eval_sets)
    evaluate the model rebuilt from the packed file. `head_type` = the run's student.head_type: the packed file
    records it and the rebuilt model uses it. Returns sizes and metrics."""
    from src.checkpoint import read_ms_checkpoint
    from src.packing import build_ternary_inference_model, pack, size_table
    say = log.info if log is not None else print
    qcfg = read_quant_json(os.path.join(out_dir, "quant.json"))
    bcfg = runtime.load_bert_config(os.path.join(out_dir, "config.json"), "run config.json")
    qckpt = runtime.require_file(os.path.join(out_dir, "best_quant.ckpt"), "quantized checkpoint")
    state, meta = read_ms_checkpoint(qckpt, with_extra=True)
    head_type = runtime.pick_head_type(head_type, meta.get("head_type"), "student.head_type", qckpt)
    out_path = out_path or os.path.join(out_dir, "model.tpack")
    sizes = pack(state, bcfg, qcfg, out_path, head_type=head_type, codec=codec, max_positions=max_positions,
                 source=qckpt)
    fp32 = fp32_ckpt or os.path.join(out_dir, "best.ckpt")
    note = (f"Everything the packed file holds is counted (header with config and tensor table included); "
            f"position table: first {max_positions} rows kept (the deployed max_seq_length). The tokenizer "
            f"vocab.txt is shipped by neither and counted in neither.")
    table = size_table(fp32, out_path, sizes, qcfg.notation, codec, note)
    ratio = os.path.getsize(fp32) / os.path.getsize(out_path)
    table_path = os.path.splitext(out_path)[0] + "_sizes.md"
    with open(table_path + ".tmp", "w", encoding="utf-8") as f:
        f.write(table + "\n")
    os.replace(table_path + ".tmp", table_path)
    for line in table.splitlines():
        say(line)
    say(f"packed size ratio {ratio:.2f}x ({os.path.getsize(fp32):,} -> {os.path.getsize(out_path):,} bytes)")
    result = {"fp32_bytes": os.path.getsize(fp32), "packed_bytes": os.path.getsize(out_path), "ratio": ratio}
    if eval_sets is not None:
        net = build_ternary_inference_model(out_path)
        metrics = evaluate(net, eval_sets, eval_batch, task)
        say("packed model eval " + ", ".join(f"{k} {v:.6f}" for k, v in metrics.items()) + f" | {out_path}")
        if log is not None:
            log.record("packed_eval", ratio=ratio, packed_bytes=result["packed_bytes"],
                       fp32_bytes=result["fp32_bytes"], **metrics)
        result.update(metrics)
    return result
