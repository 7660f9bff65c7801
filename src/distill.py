"""TinyBERT loss cells (fine-tune, general distillation, task distillation phase 1 / phase 2) and the one
train-step cell every method uses (the model zoo calls this file tinybert_for_gd_td.py).

Each loss cell's construct takes a batch and returns (loss, parts) where parts is a tuple of scalars for the
log (e.g. attention, hidden, prediction losses). The teacher always runs in inference mode: dropout off, its
parameters frozen, its outputs behind stop_gradient.
"""
import math
from dataclasses import dataclass
from typing import Optional, Sequence

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
    attention_heads: str = "each"

    @property
    def mask_padding(self) -> bool:
        return self.padding == "valid"

    def __post_init__(self):
        if self.soft_ce_reduction not in losses.SOFT_CE_REDUCTIONS:
            raise ValueError(f"loss.soft_ce_reduction '{self.soft_ce_reduction}' not supported: expected one of "
                             f"{losses.SOFT_CE_REDUCTIONS}")
        if self.attention_heads not in losses.ATTENTION_HEADS:
            raise ValueError(f"loss.attention_heads '{self.attention_heads}' not supported: expected one of "
                             f"{losses.ATTENTION_HEADS}")
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
    data_parallel: masked means scaled to the rank's share of the global one (losses.GlobalMaskCounts). A term
    whose weight is 0 is not built into the graph (its part is 0)."""

    def __init__(self, fit_dense: Optional[FitDense], attention_map: Sequence[int], hidden_map: Sequence[int],
                 cfg: DistillLossConfig, data_parallel: bool = False, fused: bool = False):
        super().__init__()
        self.fit_dense = fit_dense
        # fused: the masked numerators run as one CPU kernel each (src/cpu_kernels.py), as the student's own
        # BertConfig.fused_cpu_kernels says
        self.sq_err = MaskedSquaredError() if fused and cfg.mask_padding else None
        self.attention_map = tuple(attention_map) if cfg.attention_weight else ()
        self.hidden_map = tuple(hidden_map) if cfg.hidden_weight else ()
        self.average_heads = cfg.attention_heads == "average"
        self.att_w = cfg.attention_weight
        self.rep_w = cfg.hidden_weight
        self.mask_padding = cfg.mask_padding
        self.counts = losses.GlobalMaskCounts(data_parallel and cfg.mask_padding)

    def construct(self, s_hidden, s_scores, t_hidden, t_scores, input_mask):
        att = 0.0
        for i, ti in enumerate(self.attention_map):
            att = att + losses.attention_mse(s_scores[i], t_scores[ti], input_mask, self.mask_padding, self.sq_err,
                                             self.average_heads)
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
    """Prediction-layer loss on logits (losses.teacher_loss of the task kind: soft CE to the teacher, over the
    labelled positions for token tasks, MSE to the teacher output for regression) + optional hard-label loss
    (losses.label_loss)."""

    def __init__(self, cfg: DistillLossConfig, kind: str):
        super().__init__()
        self.kind = kind
        self.cfg_t = cfg.temperature
        self.reduction = cfg.soft_ce_reduction
        self.t2 = cfg.temperature_squared
        self.pred_w = cfg.pred_weight
        self.hard_w = cfg.hard_label_weight

    def construct(self, s_logits, t_logits, label_ids):
        soft = losses.teacher_loss(s_logits, t_logits, label_ids, self.kind, self.cfg_t, self.reduction, self.t2)
        hard = losses.label_loss(s_logits, label_ids, self.kind)
        loss = self.pred_w * soft
        if self.hard_w > 0:
            loss = loss + self.hard_w * hard
        return loss, soft, hard


class TaskDistillPhase2Loss(nn.Cell):
    """TD phase 2 ("prediction layer distillation") with the teacher run live."""

    def __init__(self, student, teacher, cfg: DistillLossConfig, kind: str):
        super().__init__()
        self.student = student
        self.teacher = FrozenTeacher(teacher)
        self.pred = PredictionLoss(cfg, kind)

    def construct(self, input_ids, segment_ids, input_mask, label_ids):
        t_logits = self.teacher(input_ids, segment_ids, input_mask)[0]
        s_logits = self.student(input_ids, segment_ids, input_mask)[0]
        loss, soft, hard = self.pred(s_logits, t_logits, label_ids)
        return loss, (soft, hard)


class CachedLogitsPhase2Loss(nn.Cell):
    """TD phase 2 with teacher logits computed once before training (phase 2 needs nothing else of the
    teacher): the batch carries `teacher_logits`."""

    def __init__(self, student, cfg: DistillLossConfig, kind: str):
        super().__init__()
        self.student = student
        self.pred = PredictionLoss(cfg, kind)

    def construct(self, input_ids, segment_ids, input_mask, label_ids, teacher_logits):
        s_logits = self.student(input_ids, segment_ids, input_mask)[0]
        loss, soft, hard = self.pred(s_logits, teacher_logits, label_ids)
        return loss, (soft, hard)


class FinetuneLoss(nn.Cell):
    """Plain supervised fine-tuning of a classifier (the teacher): losses.label_loss of the task kind (CE, CE over
    the labelled positions for token tasks, MSE for regression)."""

    def __init__(self, model, kind: str):
        super().__init__()
        self.model = model
        self.kind = kind

    def construct(self, input_ids, segment_ids, input_mask, label_ids):
        logits = self.model(input_ids, segment_ids, input_mask)[0]
        loss = losses.label_loss(logits, label_ids, self.kind)
        return loss, (loss,)


def student_layer_map(cfg, teacher_cfg, student_cfg, attention_weight: float):
    """(attention map, hidden map) from the config's `layer_map` (uniform when null), range-checked, and the check
    that an attention loss has equal head counts on both sides. Shared by GD, TD phase 1 and TernaryBERT.

    The uniform map (every k-th teacher layer, k = teacher layers // student layers) is only used when the
    teacher's layer count is a multiple of the student's, as TinyBERT requires: otherwise (e.g. 6 -> 4, k = 1)
    it would end at teacher layer N*k < M and silently never use the teacher's last layers, so a map the loss
    uses (attention: attention_weight != 0; hidden: loss.hidden_weight != 0) must then be given explicitly."""
    from src.losses import resolve_layer_map
    attention = layer_list(cfg.layer_map.attention, "layer_map.attention")
    hidden = layer_list(cfg.layer_map.hidden, "layer_map.hidden")
    n_teacher, n_student = teacher_cfg.num_hidden_layers, student_cfg.num_hidden_layers
    uniform = [f"layer_map.{name}" for name, value, weight in
               (("attention", attention, attention_weight), ("hidden", hidden, cfg.loss.hidden_weight))
               if value is None and weight]
    if uniform and 1 <= n_student <= n_teacher and n_teacher % n_student:
        suggest = [int(math.floor(i * n_teacher / n_student + 0.5)) for i in range(n_student + 1)]
        raise UserError(f"the teacher's {n_teacher} layers are not a multiple of the student's {n_student} "
                        f"(num_hidden_layers of each config), so the uniform layer map would never use the "
                        f"teacher's last layers; choose the map explicitly with layer_map.attention (one teacher "
                        f"layer per student layer, 0-based, e.g. {[h - 1 for h in suggest[1:]]}) and "
                        f"layer_map.hidden (student layers + 1 entries, embeddings first, e.g. {suggest}); "
                        f"missing: {', '.join(uniform)}")
    try:
        maps = resolve_layer_map(n_teacher, n_student, attention, hidden)
    except ValueError as e:
        raise UserError(str(e)) from None
    if attention_weight and cfg.loss.attention_heads == "each":   # per mapped layer: width sub-models have
        for s_layer, t_layer in enumerate(maps[0]):                    # per-layer head counts
            s_heads, t_heads = student_cfg.heads(s_layer), teacher_cfg.heads(t_layer)
            if s_heads != t_heads:
                raise UserError(f"attention loss needs equal head counts: student layer {s_layer} has {s_heads}, "
                                f"teacher layer {t_layer} has {t_heads} (set loss.attention_heads average, "
                                f"loss.attention_weight 0, or a teacher with the student's heads)")
    return maps


def layer_list(value, field: str):
    """A layer-map entry from YAML/CLI: null, one index (`--layer_map.attention 3` parses as an int) or a list
    of ints; anything else is a UserError naming the field."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return value
    raise UserError(f"{field}: expected null or a list of layer indices, e.g. [1, 3, 5], got {value!r}")


def loss_config(cfg) -> DistillLossConfig:
    try:
        return DistillLossConfig(**cfg.loss.to_dict())
    except (TypeError, ValueError) as e:
        raise UserError(str(e)) from None
