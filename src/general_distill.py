"""General distillation run, wired from a resolved config (algorithm: src/distill.py GeneralDistillLoss)."""
import os

from src import runtime
from src.distill import DistillLossConfig, FitDense, GeneralDistillLoss, TrainStep, WarmupLinearDecayLR, build_optimizer
from src.errors import UserError
from src.tinybert_model import BertModel, count_params
from src.trainer import ArrayBatcher, DatasetBatcher, Trainer, train_state_from_config

GD_COLUMNS = ["input_ids", "input_mask", "segment_ids"]


def _batcher(cfg, rank, world):
    if cfg.data.in_memory:
        arrays = runtime.load_split(cfg.data.dir, "train", cfg.data.dataset_type, cfg.data.max_seq_length,
                                    columns=GD_COLUMNS)
        return ArrayBatcher(arrays, cfg.train.batch_size, shuffle=True, seed=cfg.seed, rank=rank, world=world,
                            length_buckets=list(cfg.data.length_buckets)), len(arrays["input_ids"])
    from src.dataset import create_train_dataset
    records, schema = runtime.split_files(cfg.data.dir, "train", cfg.data.dataset_type)
    runtime.require_file(records, "data.dir train records")
    ds = create_train_dataset(records, schema, GD_COLUMNS, cfg.train.batch_size, cfg.data.max_seq_length,
                              dataset_type=cfg.data.dataset_type, shuffle=True, seed=cfg.seed, rank_id=rank,
                              rank_size=world)
    return DatasetBatcher(ds, cfg.train.epochs), ds.get_dataset_size() * cfg.train.batch_size


def run(cfg, save_resolved):
    """On a user error nothing new is left in output_dir (runtime.output_guard)."""
    with runtime.output_guard(cfg.output_dir):
        return _run(cfg, save_resolved)


def _run(cfg, save_resolved):
    out_dir = cfg.output_dir
    rank, world, log = runtime.start_run(cfg, out_dir, save_resolved, {})
    is_main = rank == 0
    log.info(f"general distillation, output {out_dir}, rank {rank}/{world}")

    tcfg = runtime.load_bert_config(cfg.teacher.config, "teacher.config",
                                    fused_cpu_kernels=runtime.fused_kernels(cfg))
    teacher = BertModel(tcfg)
    runtime.load_into(teacher, cfg.teacher.ckpt, "teacher.ckpt", strict=True)
    scfg = runtime.student_config(tcfg, cfg.student.arch.to_dict())
    student = BertModel(scfg)
    if cfg.student.init == "teacher_layers":
        runtime.copy_teacher_layers(student, teacher, list(cfg.student.teacher_layers))
        log.info(f"student initialised from teacher layers {list(cfg.student.teacher_layers)}")
    elif cfg.student.init != "random":
        raise UserError(f"student.init '{cfg.student.init}': expected random or teacher_layers")
    try:
        lcfg = DistillLossConfig(**cfg.loss.to_dict())
    except (TypeError, ValueError) as e:
        raise UserError(str(e)) from None
    att_map, hid_map = runtime.student_layer_map(cfg, tcfg, scfg, lcfg.attention_weight)
    log.info(f"teacher {tcfg.num_hidden_layers}L/{tcfg.hidden_size}H ({count_params(teacher)} params) -> student "
             f"{scfg.num_hidden_layers}L/{scfg.hidden_size}H ({count_params(student)} params); layer map "
             f"attention {att_map}, hidden {hid_map}")

    batcher, n_rows = _batcher(cfg, rank, world)
    log.info(f"dataset size: {n_rows}, {len(batcher)} steps per epoch")
    fit_dense = FitDense(scfg.hidden_size, tcfg.hidden_size)
    loss_net = GeneralDistillLoss(student, teacher, fit_dense, att_map, hid_map, lcfg, cfg.distributed)
    total = len(batcher) * cfg.train.epochs
    if cfg.train.max_steps:
        total = min(total, cfg.train.max_steps)
    lr = WarmupLinearDecayLR(cfg.train.lr, total, int(total * cfg.train.warmup_ratio), cfg.optim.end_lr)
    opt = build_optimizer(loss_net.trainable_params(), lr, cfg.optim.weight_decay, cfg.optim.eps)
    try:
        step = TrainStep(loss_net, opt, cfg.optim.clip_norm, cfg.optim.clip_mode, cfg.optim.loss_scale,
                         data_parallel=cfg.distributed)
    except ValueError as e:
        raise UserError(str(e)) from None
    step.set_train(True)
    if is_main:
        scfg.to_json_file(os.path.join(out_dir, "config.json"))

    def save_last():
        runtime.save_cell(student, os.path.join(out_dir, "student.ckpt"), prefix="bert.", fit_dense=fit_dense)

    state, resume = train_state_from_config(cfg, step, out_dir, is_main)
    trainer = Trainer(step, batcher, ["input_ids", "segment_ids", "input_mask"], ["att", "rep"], log,
                      cfg.train.epochs, lr.value, cfg.log_every, save_last=save_last, is_main=is_main,
                      max_steps=cfg.train.max_steps, state=state, resume=resume,
                      overflow_skips=cfg.optim.loss_scale != 1.0)
    result = trainer.fit()
    log.info(f"student checkpoint {os.path.join(out_dir, 'student.ckpt')} (student under 'bert.', fit_dense)")
    log.close()
    return result
