"""TinyBERT loss cells (fine-tune, general distillation, task distillation phase 1 / phase 2) and the one
train-step cell every method uses (the model zoo calls this file tinybert_for_gd_td.py).

Each loss cell's construct takes a batch and returns (loss, parts) where parts is a tuple of scalars for the
log (e.g. attention, hidden, prediction losses). The teacher always runs in inference mode: dropout off, its
parameters frozen, its outputs behind stop_gradient.
"""
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np
import mindspore as ms
from mindspore import nn, ops
from mindspore.common.initializer import TruncatedNormal

from src import losses
from src.cpu_kernels import MaskedSquaredError
from src.errors import UserError


@dataclass
class DistillLossConfig:
    """Weights and conventions of the distillation losses. Defaults = TinyBERT anchors (unit weights, T=1,
    soft CE mean over classes) except `padding` (anchors: anchor)."""
    attention_weight: float = 1.0
    hidden_weight: float = 1.0
    pred_weight: float = 1.0
    hard_label_weight: float = 0.0
    temperature: float = 1.0
    soft_ce_reduction: str = "element_mean"
    temperature_squared: bool = False
    padding: str = "valid"

    @property
    def mask_padding(self) -> bool:
        return self.padding == "valid"

    def __post_init__(self):
        if self.soft_ce_reduction not in losses.SOFT_CE_REDUCTIONS:
            raise ValueError(f"loss.soft_ce_reduction '{self.soft_ce_reduction}' not supported: expected one of "
                             f"{losses.SOFT_CE_REDUCTIONS}")
        if self.padding not in losses.PADDINGS:
            raise ValueError(f"loss.padding '{self.padding}' not supported: expected one of {losses.PADDINGS}")
        if self.temperature <= 0:
            raise ValueError(f"loss.temperature must be > 0, got {self.temperature}")


class FrozenTeacher(nn.Cell):
    """A teacher in inference mode for good: no dropout even when the train step calls set_train(True) on the
    whole graph, and no gradients (parameters frozen, outputs behind stop_gradient)."""

    def __init__(self, net: nn.Cell):
        super().__init__()
        self.net = net
        for p in net.get_parameters():
            p.requires_grad = False
        self.add_flags_recursive(training=False)

    def add_flags_recursive(self, **flags):
        if "training" in flags:
            flags["training"] = False
        return super().add_flags_recursive(**flags)

    def construct(self, input_ids, segment_ids, input_mask):
        return ops.stop_gradient(self.net(input_ids, segment_ids, input_mask))


class FitDense(nn.Cell):
    """TinyBERT's learned projection of student hidden states to the teacher's width (shared by all layers).
    With equal widths it starts as the identity, so a student copied from teacher layers starts at its optimum."""

    def __init__(self, student_hidden: int, teacher_hidden: int):
        super().__init__()
        self.dense = nn.Dense(student_hidden, teacher_hidden, weight_init=TruncatedNormal(0.02), bias_init="zeros")
        if student_hidden == teacher_hidden:
            self.dense.weight.set_data(ms.Tensor(np.eye(teacher_hidden, dtype=np.float32)))

    def construct(self, x):
        return self.dense(x)


class IntermediateLoss(nn.Cell):
    """attention + hidden (incl. embedding output) losses over a layer map. Shared by GD, TD phase 1 and
    TernaryBERT. fit_dense None: the hidden states are compared as they are (equal widths, TernaryBERT).
    data_parallel: masked means scaled to the rank's share of the global one (losses.GlobalMaskCounts)."""

    def __init__(self, fit_dense: Optional[FitDense], attention_map: Sequence[int], hidden_map: Sequence[int],
                 cfg: DistillLossConfig, data_parallel: bool = False, fused: bool = False):
        super().__init__()
        self.fit_dense = fit_dense
        # fused: the masked numerators run as one CPU kernel each (src/cpu_kernels.py), as the student's own
        # BertConfig.fused_cpu_kernels says
        self.sq_err = MaskedSquaredError() if fused and cfg.mask_padding else None
        self.attention_map = tuple(attention_map)
        self.hidden_map = tuple(hidden_map)
        self.att_w = cfg.attention_weight
        self.rep_w = cfg.hidden_weight
        self.mask_padding = cfg.mask_padding
        self.counts = losses.GlobalMaskCounts(data_parallel and cfg.mask_padding)

    def construct(self, s_hidden, s_scores, t_hidden, t_scores, input_mask):
        att = 0.0
        for i, ti in enumerate(self.attention_map):
            att = att + losses.attention_mse(s_scores[i], t_scores[ti], input_mask, self.mask_padding, self.sq_err)
        rep = 0.0
        for i, ti in enumerate(self.hidden_map):
            h = s_hidden[i] if self.fit_dense is None else self.fit_dense(s_hidden[i])
            rep = rep + losses.hidden_mse(h, t_hidden[ti], input_mask, self.mask_padding, self.sq_err)
        tokens, pairs = self.counts(input_mask)
        return att * pairs, rep * tokens


class GeneralDistillLoss(nn.Cell):
    """GD: teacher BertModel (pretrained) -> student BertModel on raw text. loss = att + rep."""

    def __init__(self, student, teacher, fit_dense, attention_map, hidden_map, cfg: DistillLossConfig,
                 data_parallel: bool = False):
        super().__init__()
        self.student = student
        self.teacher = FrozenTeacher(teacher)
        self.inter = IntermediateLoss(fit_dense, attention_map, hidden_map, cfg, data_parallel,
                                      student.config.fused_cpu_kernels)

    def construct(self, input_ids, segment_ids, input_mask):
        _, _, t_hidden, t_scores = self.teacher(input_ids, segment_ids, input_mask)
        _, _, s_hidden, s_scores = self.student(input_ids, segment_ids, input_mask)
        att, rep = self.inter(s_hidden, s_scores, t_hidden, t_scores, input_mask)
        loss = self.inter.att_w * att + self.inter.rep_w * rep
        return loss, (att, rep)


class TaskDistillPhase1Loss(nn.Cell):
    """TD phase 1 ("intermediate layer distillation"): teacher/student classifiers, att + rep only.
    The parts are (att, rep, teacher logits): the teacher computes its logits on the way (phase 2 reuses them, see
    src/teacher_cache.py). return_targets: the parts also carry the teacher tensors of the layer map in map order,
    (att, rep, logits, hidden [n_hidden, B, L, D], scores [n_att, B, H, L, L]), so a caller can keep them."""

    def __init__(self, student, teacher, fit_dense, attention_map, hidden_map, cfg: DistillLossConfig,
                 data_parallel: bool = False, return_targets: bool = False):
        super().__init__()
        self.student = student
        self.teacher = FrozenTeacher(teacher)
        self.inter = IntermediateLoss(fit_dense, attention_map, hidden_map, cfg, data_parallel,
                                      student.config.fused_cpu_kernels)
        self.return_targets = return_targets

    def construct(self, input_ids, segment_ids, input_mask, label_ids):
        t_logits, t_hidden, t_scores = self.teacher(input_ids, segment_ids, input_mask)
        _, s_hidden, s_scores = self.student(input_ids, segment_ids, input_mask)
        att, rep = self.inter(s_hidden, s_scores, t_hidden, t_scores, input_mask)
        loss = self.inter.att_w * att + self.inter.rep_w * rep
        if self.return_targets:
            hidden = ops.stack([t_hidden[i] for i in self.inter.hidden_map])
            scores = ops.stack([t_scores[i] for i in self.inter.attention_map])
            return loss, (att, rep, t_logits, hidden, scores)
        return loss, (att, rep, t_logits)


class CachedTeacherPhase1Loss(nn.Cell):
    """TD phase 1 with the teacher's outputs precomputed: the batch carries `teacher_hidden` [n_hidden, B, L, D]
    and `teacher_scores` [n_att, B, H, L, L], the teacher tensors of the layer map already gathered in map order
    (as TaskDistillPhase1Loss with return_targets gives them). Same loss as TaskDistillPhase1Loss,
    without the teacher forward: the step of src/teacher_cache.py for batches whose teacher tensors are kept.
    Only valid when the data is not augmented between epochs."""

    def __init__(self, student, fit_dense, n_attention: int, n_hidden: int, cfg: DistillLossConfig,
                 data_parallel: bool = False):
        super().__init__()
        self.student = student
        self.inter = IntermediateLoss(fit_dense, range(n_attention), range(n_hidden), cfg, data_parallel,
                                      student.config.fused_cpu_kernels)

    def construct(self, input_ids, segment_ids, input_mask, label_ids, teacher_hidden, teacher_scores):
        _, s_hidden, s_scores = self.student(input_ids, segment_ids, input_mask)
        att, rep = self.inter(s_hidden, s_scores, teacher_hidden, teacher_scores, input_mask)
        loss = self.inter.att_w * att + self.inter.rep_w * rep
        return loss, (att, rep)


class PredictionLoss(nn.Cell):
    """Prediction-layer loss on logits: soft CE to the teacher (+ optional hard-label CE) for classification,
    MSE to the teacher output for regression."""

    def __init__(self, cfg: DistillLossConfig, regression: bool):
        super().__init__()
        self.regression = regression
        self.cfg_t = cfg.temperature
        self.reduction = cfg.soft_ce_reduction
        self.t2 = cfg.temperature_squared
        self.pred_w = cfg.pred_weight
        self.hard_w = cfg.hard_label_weight

    def construct(self, s_logits, t_logits, label_ids):
        if self.regression:
            soft = losses.mse(s_logits.reshape(-1), t_logits.reshape(-1))
            hard = losses.mse(s_logits.reshape(-1), label_ids.reshape(-1).astype(ms.float32))
        else:
            soft = losses.soft_cross_entropy(s_logits, t_logits, self.cfg_t, self.reduction, self.t2)
            hard = losses.hard_cross_entropy(s_logits, label_ids.reshape(-1))
        loss = self.pred_w * soft
        if self.hard_w > 0:
            loss = loss + self.hard_w * hard
        return loss, soft, hard


class TaskDistillPhase2Loss(nn.Cell):
    """TD phase 2 ("prediction layer distillation") with the teacher run live."""

    def __init__(self, student, teacher, cfg: DistillLossConfig, regression: bool):
        super().__init__()
        self.student = student
        self.teacher = FrozenTeacher(teacher)
        self.pred = PredictionLoss(cfg, regression)

    def construct(self, input_ids, segment_ids, input_mask, label_ids):
        t_logits = self.teacher(input_ids, segment_ids, input_mask)[0]
        s_logits = self.student(input_ids, segment_ids, input_mask)[0]
        loss, soft, hard = self.pred(s_logits, t_logits, label_ids)
        return loss, (soft, hard)


class CachedLogitsPhase2Loss(nn.Cell):
    """TD phase 2 with teacher logits computed once before training (phase 2 needs nothing else of the
    teacher): the batch carries `teacher_logits`."""

    def __init__(self, student, cfg: DistillLossConfig, regression: bool):
        super().__init__()
        self.student = student
        self.pred = PredictionLoss(cfg, regression)

    def construct(self, input_ids, segment_ids, input_mask, label_ids, teacher_logits):
        s_logits = self.student(input_ids, segment_ids, input_mask)[0]
        loss, soft, hard = self.pred(s_logits, teacher_logits, label_ids)
        return loss, (soft, hard)


class FinetuneLoss(nn.Cell):
    """Plain supervised fine-tuning of a classifier (the teacher): CE, or MSE for regression."""

    def __init__(self, model, regression: bool):
        super().__init__()
        self.model = model
        self.regression = regression

    def construct(self, input_ids, segment_ids, input_mask, label_ids):
        logits = self.model(input_ids, segment_ids, input_mask)[0]
        if self.regression:
            loss = losses.mse(logits.reshape(-1), label_ids.reshape(-1).astype(ms.float32))
        else:
            loss = losses.hard_cross_entropy(logits, label_ids.reshape(-1))
        return loss, (loss,)


# ---------------------------------------------------------------- optimisation

class WarmupLinearDecayLR(nn.learning_rate_schedule.LearningRateSchedule):
    """Linear warmup from 0 to `lr` over `warmup_steps`, then linear decay to `end_lr` at `total_steps`
    (BERT / HF schedule; the model-zoo's schedule overlaps warmup and decay, which we do not reproduce)."""

    def __init__(self, lr: float, total_steps: int, warmup_steps: int, end_lr: float = 0.0):
        super().__init__()
        self.lr = float(lr)
        self.end_lr = float(end_lr)
        self.total = float(max(total_steps, 1))
        self.warmup = float(max(warmup_steps, 0))

    def construct(self, global_step):
        step = global_step.astype(ms.float32)
        if self.warmup > 0:
            warm = self.lr * ops.minimum(step / self.warmup, 1.0)
        else:
            warm = self.lr * ops.ones_like(step)
        frac = ops.clip_by_value((step - self.warmup) / ops.maximum(self.total - self.warmup, 1.0), 0.0, 1.0)
        decayed = self.lr - (self.lr - self.end_lr) * frac
        return ops.select(step < self.warmup, warm, decayed)

    def value(self, step: int) -> float:
        """Host-side value for logging."""
        if step < self.warmup:
            return self.lr * step / self.warmup
        frac = min(max((step - self.warmup) / max(self.total - self.warmup, 1.0), 0.0), 1.0)
        return self.lr - (self.lr - self.end_lr) * frac


def build_optimizer(params, lr_schedule, weight_decay: float, eps: float = 1e-6,
                    decay_filter=("layernorm", "bias")):
    """AdamWeightDecay with weight decay off for LayerNorm and bias parameters (names matched case-insensitively)."""
    params = [p for p in params if p.requires_grad]
    is_nodecay = [any(k in p.name.lower() for k in decay_filter) for p in params]
    nodecay = [p for p, n in zip(params, is_nodecay) if n]
    decay = [p for p, n in zip(params, is_nodecay) if not n]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": nodecay, "weight_decay": 0.0},
              {"order_params": params}]
    return nn.AdamWeightDecay(groups, learning_rate=lr_schedule, eps=eps)


class TrainStep(nn.Cell):
    """One optimisation step for any loss cell returning (loss, parts).

    grads -> (data parallel: averaged exactly once by DistributedGradReducer, mean=True) -> unscale (loss
    scale) -> clip (global norm, or per tensor as the anchors) -> optimizer. With a loss scale > 1 (fp16 on
    Ascend/GPU) a step whose gradients overflow is skipped. Returns (loss, parts, grad_norm).
    """

    CLIP_MODES = ("global", "per_tensor", "none")

    def __init__(self, loss_net: nn.Cell, optimizer: nn.Optimizer, clip_norm: float = 1.0,
                 clip_mode: str = "global", loss_scale: float = 1.0, data_parallel: bool = False):
        super().__init__(auto_prefix=False)
        if clip_mode not in self.CLIP_MODES:
            raise ValueError(f"train.clip_mode '{clip_mode}' not supported: expected one of {self.CLIP_MODES}")
        self.loss_net = loss_net
        self.optimizer = optimizer
        self.weights = optimizer.parameters
        self.clip_norm = float(clip_norm)
        self.clip_mode = clip_mode
        self.loss_scale = float(loss_scale)
        self.grad_fn = ops.value_and_grad(self._scaled_loss, None, self.weights, has_aux=True)
        self.map = ops.HyperMap()
        self.reducer = None
        if data_parallel:
            from mindspore.nn.wrap.grad_reducer import DistributedGradReducer
            from mindspore.communication import get_group_size
            self.reducer = DistributedGradReducer(self.weights, mean=True, degree=get_group_size())

    def _scaled_loss(self, *inputs):
        loss, parts = self.loss_net(*inputs)
        return loss * self.loss_scale, (loss, parts)

    def construct(self, *inputs):
        (_, (loss, parts)), grads = self.grad_fn(*inputs)
        if self.reducer is not None:
            grads = self.reducer(grads)
        if self.loss_scale != 1.0:
            grads = self.map(ops.partial(_scale_grad, 1.0 / self.loss_scale), grads)
        half_sq = self.map(_half_sq_norm, grads)
        norm = ops.sqrt(2.0 * ops.addn(half_sq))
        if self.clip_mode == "global":
            grads = self.map(ops.partial(_scale_grad, self.clip_norm / ops.maximum(norm, self.clip_norm)), grads)
        elif self.clip_mode == "per_tensor":
            grads = self.map(ops.partial(_clip_by_own_norm, self.clip_norm), half_sq, grads)
        if self.loss_scale != 1.0:
            finite = ops.isfinite(norm)
            if finite:
                loss = ops.depend(loss, self.optimizer(grads))
        else:
            loss = ops.depend(loss, self.optimizer(grads))
        return loss, parts, norm


# Per-gradient maps of TrainStep. They run through ops.HyperMap, not Python comprehensions: an unrolled tuple
# comprehension over ~100 gradients doubled the compile time of every training graph (15 s -> 7 s for a
# TinyBERT step on MindSpore 2.10 CPU). The squared norm is L2Loss (sum(g^2) / 2, one kernel): `square(g).sum()`
# ran a separate ReduceSum that took ~50 ms a step on the 30522x384 word-embedding gradient alone.
_scale_grad = ops.MultitypeFuncGraph("scale_grad")
_half_sq_norm = ops.MultitypeFuncGraph("half_sq_norm")
_clip_by_own_norm = ops.MultitypeFuncGraph("clip_by_own_norm")
_l2_loss = ops.L2Loss()


@_scale_grad.register("Number", "Tensor")
@_scale_grad.register("Tensor", "Tensor")
def _scale_grad_tensor(scale, grad):
    return grad * scale


@_half_sq_norm.register("Tensor")
def _half_sq_norm_tensor(grad):
    return _l2_loss(grad)


@_clip_by_own_norm.register("Number", "Tensor", "Tensor")
def _clip_by_own_norm_tensor(clip_norm, half_sq, grad):
    return grad * (clip_norm / ops.maximum(ops.sqrt(2.0 * half_sq), clip_norm))


def train_step_from_config(loss_net, cfg, phase_cfg, steps_per_epoch: int, distributed: bool):
    """(TrainStep, lr schedule) from a run config: warmup + linear decay over `phase_cfg` epochs (or max_steps),
    AdamWeightDecay with the decay filter, clipping and loss scale from `cfg.optim`."""
    total = steps_per_epoch * phase_cfg.epochs
    if phase_cfg.max_steps:
        total = min(total, phase_cfg.max_steps)
    lr = WarmupLinearDecayLR(phase_cfg.lr, total, int(total * phase_cfg.warmup_ratio), cfg.optim.end_lr)
    opt = build_optimizer(loss_net.trainable_params(), lr, cfg.optim.weight_decay, cfg.optim.eps)
    try:
        step = TrainStep(loss_net, opt, cfg.optim.clip_norm, cfg.optim.clip_mode, cfg.optim.loss_scale,
                         data_parallel=distributed)
    except ValueError as e:
        raise UserError(str(e)) from None
    step.set_train(True)
    return step, lr
