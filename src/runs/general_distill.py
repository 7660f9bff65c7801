"""General distillation (TinyBERT GD): a pretrained teacher -> a smaller student on raw-text records.
Loss: src/distill.py GeneralDistillLoss (attention-score MSE + hidden-state MSE through fit_dense)."""
import os

import numpy as np

from src.batching import ArrayBatcher, ShardBatcher
from src.checkpoint import load_into, save_cell
from src.corpus import train_shards
from src.dataset import load_split, read_all, split_files
from src.distill import FitDense, GeneralDistillLoss, loss_config, student_layer_map
from src.errors import UserError
from src.outputs import output_guard
from src.runs.common import schedule
from src.runtime import fused_kernels, start_run
from src.tinybert_model import BertModel, copy_teacher_layers, count_params, load_bert_config, student_config
from src.train_step import build_train_step
from src.trainer import Trainer, train_state_from_config

GD_COLUMNS = ["input_ids", "input_mask", "segment_ids"]


def run(cfg, save_resolved):
    """On a user error nothing new is left in output_dir (output_guard)."""
    with output_guard(cfg.output_dir):
        return _run(cfg, cfg.output_dir, save_resolved)


def _run(cfg, out_dir, save_resolved):
    rank, world, log = start_run(cfg, out_dir, save_resolved, {})
    is_main = rank == 0
    log.info(f"general distillation, output {out_dir}, rank {rank}/{world}")

    # ---- build: teacher, student, layer maps, batches, loss, train step
    tcfg = load_bert_config(cfg.teacher.config, "teacher.config", fused_cpu_kernels=fused_kernels(cfg))
    teacher = BertModel(tcfg)
    load_into(teacher, cfg.teacher.ckpt, "teacher.ckpt", strict=True)
    scfg = student_config(tcfg, cfg.student.arch.to_dict())
    student = BertModel(scfg)
    if cfg.student.init == "teacher_layers":
        copy_teacher_layers(student, teacher, list(cfg.student.teacher_layers))
        log.info(f"student initialised from teacher layers {list(cfg.student.teacher_layers)}")
    elif cfg.student.init != "random":
        raise UserError(f"student.init '{cfg.student.init}': expected random or teacher_layers")
    lcfg = loss_config(cfg)
    att_map, hid_map = student_layer_map(cfg, tcfg, scfg, lcfg.attention_weight)
    log.info(f"teacher {tcfg.num_hidden_layers}L/{tcfg.hidden_size}H ({count_params(teacher)} params) -> student "
             f"{scfg.num_hidden_layers}L/{scfg.hidden_size}H ({count_params(student)} params); layer map "
             f"attention {att_map}, hidden {hid_map}")
    batcher, n_rows = _batcher(cfg, rank, world)
    log.info(f"dataset size: {n_rows}, {len(batcher)} steps per epoch")
    fit_dense = FitDense(scfg.hidden_size, tcfg.hidden_size)
    loss_net = GeneralDistillLoss(student, teacher, fit_dense, att_map, hid_map, lcfg, cfg.distributed)
    step, lr = build_train_step(loss_net, cfg.optim, cfg.train, len(batcher), cfg.distributed)
    if is_main:
        scfg.to_json_file(os.path.join(out_dir, "config.json"))

    # ---- fit
    def save_last():
        save_cell(student, os.path.join(out_dir, "student.ckpt"), prefix="bert.", fit_dense=fit_dense)

    state, resume = train_state_from_config(cfg, step, out_dir, is_main)
    trainer = Trainer(step, batcher, inputs=["input_ids", "segment_ids", "input_mask"], parts=["att", "rep"],
                      log=log, schedule=schedule(cfg.train, lr), log_every=cfg.log_every, save_last=save_last,
                      state=state, resume=resume, is_main=is_main, skip_overflow_steps=cfg.optim.loss_scale != 1.0)
    result = trainer.fit()

    # ---- report
    log.info(f"student checkpoint {os.path.join(out_dir, 'student.ckpt')} (student under 'bert.', fit_dense)")
    log.close()
    return result


def _batcher(cfg, rank, world):
    """(batcher, rows): in memory with length buckets, or streamed from the shards (data.in_memory false).
    data.dir: a folder with train_schema.json and its shards, a folder with one train.<ext>, or a shard list file
    (src/corpus.py train_shards)."""
    files, rows, schema = train_shards(cfg.data.dir, cfg.data.dataset_type)
    if not cfg.data.in_memory:
        batcher = ShardBatcher(files, rows, schema, GD_COLUMNS, cfg.train.batch_size, cfg.data.max_seq_length,
                               cfg.data.dataset_type, seed=cfg.seed, rank=rank, world=world,
                               shuffle_buffer=cfg.data.shuffle_buffer)
        return batcher, batcher.total
    records, _ = split_files(cfg.data.dir, "train", cfg.data.dataset_type) if os.path.isdir(cfg.data.dir) else ("",) * 2
    if files == [records]:
        arrays = load_split(cfg.data.dir, "train", cfg.data.dataset_type, cfg.data.max_seq_length, columns=GD_COLUMNS)
    else:
        arrays = read_all(",".join(files), schema, GD_COLUMNS, cfg.data.dataset_type)
        got = arrays["input_ids"].shape[1]
        if got != cfg.data.max_seq_length:
            raise UserError(f"{files[0]}: input_ids has length {got}, config data.max_seq_length is "
                            f"{cfg.data.max_seq_length}")
        arrays = {k: v.astype(np.int32) for k, v in arrays.items()}
    return ArrayBatcher(arrays, cfg.train.batch_size, shuffle=True, seed=cfg.seed, rank=rank, world=world,
                        length_buckets=list(cfg.data.length_buckets)), len(arrays["input_ids"])
