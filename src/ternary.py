"""TernaryBERT (Zhang et al. 2020): the distillation loss of a quantized student and its checkpoints.

teacher (fine-tuned, frozen) -> student = the same model (or a TinyBERT student), with quantized weights by role
and activation fake-quant (src/quant.py); loss = attention MSE + hidden MSE (all L+1 hidden states, no fit_dense)
+ prediction loss (soft CE, or MSE to the teacher output for regression). A quantized checkpoint is two files:
    best.ckpt        the latent full-precision weights + activation-quantizer state (resume / re-quantize)
    best_quant.ckpt  the same state with every quantized weight replaced by its quantized value, at the
                     granularity used in training (row-wise ternary word embedding stays row-wise)
beside quant.json (the QuantConfig). The run: src/runs/ternary.py; the packed artefact: src/packing.py.
"""
import json
import os

import mindspore as ms
from mindspore import nn

from src.checkpoint import head_meta, save_checkpoint_atomic
from src.distill import FrozenTeacher, IntermediateLoss, PredictionLoss
from src.errors import UserError
from src.fileio import atomic_json, require_file
from src.quant import HESSIAN_SUFFIX, QuantConfig, quantized_state


class TernaryDistillLoss(nn.Cell):
    """TernaryBERT loss: sum of attention-score MSEs + hidden-state MSEs over a layer map (1:1 for a student
    copied from the teacher, no fit_dense) + the prediction loss. Returns (loss, (att, rep, pred))."""

    def __init__(self, student, teacher, attention_map, hidden_map, cfg, kind: str,
                 data_parallel: bool = False):
        super().__init__()
        self.student = student
        self.teacher = FrozenTeacher(teacher)
        self.pred = PredictionLoss(cfg, kind)
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
                           weight_clip=q.weight_clip, weight_rowwise=q.weight_rowwise,
                           embedding_rowwise=q.embedding_rowwise,
                           activation_mode=q.activation_mode, activation_scale=q.activation_scale,
                           activation_clip=q.activation_clip, ema_decay=q.ema_decay, lat_iters=q.lat_iters,
                           roles=list(q.roles))
    except ValueError as e:
        msg = str(e)
        for field, key in (("weight_bits", "bits.weight"), ("embedding_bits", "bits.embedding"),
                           ("activation_bits", "bits.activation")):
            msg = msg.replace(f"quant {field}", f"quant.{key}")
        raise UserError(msg.replace("quant ", "quant.")) from None


def save_quantized(model, out_dir: str, name: str, qcfg: QuantConfig, extra=None):
    """best.ckpt (latent) + best_quant.ckpt (quantized values) + quant.json, each written atomically; both
    checkpoints record the head type (head_meta)."""
    extra = {**head_meta(model), **(extra or {})}
    latent = [{"name": n, "data": p} for n, p in model.parameters_and_names() if not n.endswith(HESSIAN_SUFFIX)]
    save_checkpoint_atomic(latent, os.path.join(out_dir, f"{name}.ckpt"), extra=extra)
    qstate = quantized_state(model)
    save_checkpoint_atomic([{"name": n, "data": ms.Tensor(v)} for n, v in qstate.items()],
                           os.path.join(out_dir, f"{name}_quant.ckpt"), extra=extra)
    write_quant_json(out_dir, qcfg)


def write_quant_json(out_dir: str, qcfg: QuantConfig):
    atomic_json(os.path.join(out_dir, "quant.json"), {"notation": qcfg.notation, **qcfg.to_dict()}, sort_keys=True)


def read_quant_json(path: str) -> QuantConfig:
    require_file(path, "quant config")
    with open(path, encoding="utf-8") as f:
        d = json.load(f)
    d.pop("notation", None)
    try:
        return QuantConfig.from_dict(d)
    except (TypeError, ValueError) as e:
        raise UserError(f"{path}: {e}") from None


