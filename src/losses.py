"""Distillation losses (TinyBERT, TernaryBERT, DynaBERT) as pure MindSpore functions.

All functions are graph-mode safe (pure tensor ops). Conventions, stated once because peers differ silently:

- attention_mse: MSE between pre-softmax attention scores (mask already added). `mask_padding=True` (default,
  config `loss.padding: valid`) averages over valid (query, key) pairs only. `mask_padding=False` (`loss.padding:
  anchor`) reproduces the TinyBERT / model-zoo anchors: every entry <= -100 is replaced by 0 in both tensors, then
  a plain mean over B*H*S*S (padded query rows and the keys' zeros count in the denominator).
- hidden_mse: MSE between (projected) student and teacher hidden states; `mask_padding` as above (anchors: all
  positions).
- soft_cross_entropy: -softmax(t/T) . log_softmax(s/T). reduction "element_mean" = mean over all B*C elements
  (the TinyBERT / TernaryBERT anchors; equals true CE / C); "row_mean" = mean over batch of the sum over classes
  (true CE, DynaBERT / TextBrewer). No T^2 factor (as TinyBERT); say `temperature_squared: true` to add it.
- regression prediction loss: MSE between student and teacher outputs (not the gold label).
- token tasks (NER): logits [B, S, C], label_ids [B, S] with -1 where a position has no label (non-first word
  pieces, specials, padding, context words of another window). Hard and soft CE are per labelled position and
  averaged over the labelled positions of the batch (each position counts as one row of the sentence-level rule,
  so "element_mean" still divides by C). `label_loss` / `teacher_loss` pick the rule of a task kind.
- span tasks (extractive QA): logits [B, S, 2], label_ids [B, 2] = gold start / end positions. The start logits
  over the positions are one distribution, the end logits another (as Google BERT / HF: softmax over all
  positions of the row); the loss is the mean of the start and end terms (CE to the gold position, or soft CE to
  the teacher's distribution: "element_mean" divides by S).
- squares are `ops.square`, not `** 2`: MindSpore 2.10 lowers `** 2` to a Pow kernel, slower on CPU.
- data parallelism: a masked mean is per rank (sum_r / n_r); `GlobalMaskCounts` gives the factors that make each
  rank's masked loss its share of the global masked mean, so N workers at batch b == 1 worker at batch N*b.
"""
import mindspore as ms
from mindspore import nn, ops

SOFT_CE_REDUCTIONS = ("element_mean", "row_mean")
PADDINGS = ("valid", "anchor")              # loss.padding: valid = padding excluded, anchor = the anchors' masking
ATTENTION_HEADS = ("each", "average")       # loss.attention_heads: per-head scores, or the mean over a layer's heads


def _valid_pairs(input_mask):
    m = input_mask.astype(ms.float32)
    return m[:, None, :, None] * m[:, None, None, :]        # [B,1,S,S]: query valid AND key valid


def attention_mse(student_scores, teacher_scores, input_mask, mask_padding=True, sq_err=None, average_heads=False):
    """sq_err: the fused kernel for the masked numerator (src/cpu_kernels.MaskedSquaredError) or None.
    average_heads: compare the mean over each side's heads ([B, 1, S, S]), so the head counts may differ."""
    if average_heads:
        student_scores = student_scores.mean(axis=1, keep_dims=True)
        teacher_scores = teacher_scores.mean(axis=1, keep_dims=True)
    if mask_padding:
        w = _valid_pairs(input_mask)
        heads = student_scores.shape[1]
        if sq_err is None:
            num = (ops.square(student_scores - teacher_scores) * w).sum()
        else:
            num = sq_err(student_scores, teacher_scores, w).sum()
        return num / (w.sum() * heads)
    s = ops.where(student_scores <= -100.0, ops.zeros_like(student_scores), student_scores)
    t = ops.where(teacher_scores <= -100.0, ops.zeros_like(teacher_scores), teacher_scores)
    return ops.square(s - t).mean()


def hidden_mse(student_hidden, teacher_hidden, input_mask, mask_padding=True, sq_err=None):
    if mask_padding:
        m = input_mask.astype(ms.float32)[:, :, None]
        if sq_err is None:
            num = (ops.square(student_hidden - teacher_hidden) * m).sum()
        else:
            num = sq_err(student_hidden, teacher_hidden, m).sum()
        return num / (m.sum() * student_hidden.shape[-1])
    return ops.square(student_hidden - teacher_hidden).mean()


class GlobalMaskCounts(nn.Cell):
    """Under data parallelism each rank's padding-masked MSE divides by its own count (real tokens for hidden
    states, valid (query, key) pairs for attention scores), so the averaged gradient weighs a token of a short
    shard more than one of a long shard. construct(input_mask) -> (token factor, pair factor) = world * n_r / n
    with n the count over all ranks (one all-reduce of two numbers per step, outside the gradient): a rank's
    masked mean times its factor is world * sum_r / n, and the mean of those over ranks is the global masked
    mean sum / n. Without data parallelism both factors are 1 (nothing is added to the graph)."""

    def __init__(self, data_parallel: bool = False):
        super().__init__()
        self.data_parallel = bool(data_parallel)
        if self.data_parallel:
            from mindspore.communication import get_group_size
            self.world = float(get_group_size())
            self.all_reduce = ops.AllReduce()

    def construct(self, input_mask):
        if not self.data_parallel:
            return 1.0, 1.0
        per_row = input_mask.astype(ms.float32).sum(axis=1)
        local = ops.stack([per_row.sum(), (per_row * per_row).sum()])
        factors = ops.stop_gradient(self.world * local / self.all_reduce(local))
        return factors[0], factors[1]


def soft_cross_entropy(student_logits, teacher_logits, temperature=1.0, reduction="element_mean",
                       temperature_squared=False):
    t_prob = ops.softmax(teacher_logits / temperature, axis=-1)
    s_logp = ops.log_softmax(student_logits / temperature, axis=-1)
    per_elem = -t_prob * s_logp
    loss = per_elem.mean() if reduction == "element_mean" else per_elem.sum(axis=-1).mean()
    if temperature_squared:
        loss = loss * (temperature * temperature)
    return loss


def hard_cross_entropy(logits, labels):
    logp = ops.log_softmax(logits, axis=-1)
    onehot = ops.one_hot(labels.astype(ms.int32), logits.shape[-1], ms.Tensor(1.0, ms.float32),
                         ms.Tensor(0.0, ms.float32))
    return -(onehot * logp).sum(axis=-1).mean()


def mse(a, b):
    return ops.square(a - b).mean()


def _labelled(label_ids):
    """(valid [B*S] float, safe ids [B*S] with -1 -> 0, number of labelled positions >= 1)."""
    ids = label_ids.reshape(-1).astype(ms.int32)
    valid = (ids >= 0).astype(ms.float32)
    return valid, ids * (ids >= 0).astype(ms.int32), ops.maximum(valid.sum(), 1.0)


def token_hard_cross_entropy(logits, label_ids):
    """CE over the labelled positions of [B, S, C] logits (label -1 = no label), averaged over them."""
    c = logits.shape[-1]
    valid, ids, n = _labelled(label_ids)
    logp = ops.log_softmax(logits.reshape(-1, c), axis=-1)
    onehot = ops.one_hot(ids, c, ms.Tensor(1.0, ms.float32), ms.Tensor(0.0, ms.float32))
    return (-(onehot * logp).sum(axis=-1) * valid).sum() / n


def token_soft_cross_entropy(student_logits, teacher_logits, label_ids, temperature=1.0,
                             reduction="element_mean", temperature_squared=False):
    """soft_cross_entropy over the labelled positions of [B, S, C] logits, averaged over them."""
    c = student_logits.shape[-1]
    valid, _, n = _labelled(label_ids)
    t_prob = ops.softmax(teacher_logits.reshape(-1, c) / temperature, axis=-1)
    s_logp = ops.log_softmax(student_logits.reshape(-1, c) / temperature, axis=-1)
    per_pos = -(t_prob * s_logp).sum(axis=-1)
    if reduction == "element_mean":
        per_pos = per_pos / c
    loss = (per_pos * valid).sum() / n
    if temperature_squared:
        loss = loss * (temperature * temperature)
    return loss


def span_hard_cross_entropy(logits, label_ids):
    """(CE(start logits over positions, gold start) + CE(end logits, gold end)) / 2 for [B, S, 2] logits."""
    label_ids = label_ids.reshape(-1, 2)
    return (hard_cross_entropy(logits[:, :, 0], label_ids[:, 0]) +
            hard_cross_entropy(logits[:, :, 1], label_ids[:, 1])) / 2.0


def span_soft_cross_entropy(student_logits, teacher_logits, temperature=1.0, reduction="element_mean",
                            temperature_squared=False):
    """soft_cross_entropy of the start distributions and of the end distributions over positions, averaged."""
    start = soft_cross_entropy(student_logits[:, :, 0], teacher_logits[:, :, 0], temperature, reduction,
                               temperature_squared)
    end = soft_cross_entropy(student_logits[:, :, 1], teacher_logits[:, :, 1], temperature, reduction,
                             temperature_squared)
    return (start + end) / 2.0


def label_loss(logits, label_ids, kind: str):
    """The supervised loss of a task kind (src/tasks.py): MSE for regression, CE over the labelled positions for
    token tasks, start / end CE for span tasks, CE otherwise."""
    if kind == "regression":
        return mse(logits.reshape(-1), label_ids.reshape(-1).astype(ms.float32))
    if kind == "token":
        return token_hard_cross_entropy(logits, label_ids)
    if kind == "span":
        return span_hard_cross_entropy(logits, label_ids)
    return hard_cross_entropy(logits, label_ids.reshape(-1))


def teacher_loss(student_logits, teacher_logits, label_ids, kind: str, temperature=1.0,
                 reduction="element_mean", temperature_squared=False):
    """The prediction-layer distillation loss of a task kind: MSE to the teacher's output for regression, soft CE
    over the labelled positions for token tasks, soft CE of the start and end distributions for span tasks, soft CE
    otherwise."""
    if kind == "regression":
        return mse(student_logits.reshape(-1), teacher_logits.reshape(-1))
    if kind == "token":
        return token_soft_cross_entropy(student_logits, teacher_logits, label_ids, temperature, reduction,
                                        temperature_squared)
    if kind == "span":
        return span_soft_cross_entropy(student_logits, teacher_logits, temperature, reduction, temperature_squared)
    return soft_cross_entropy(student_logits, teacher_logits, temperature, reduction, temperature_squared)


def uniform_layer_map(teacher_layers: int, student_layers: int):
    """TinyBERT's uniform map with k = M // N: student attention i <- teacher (i+1)k-1 (0-based),
    student hidden i (0 = embeddings) <- teacher hidden i*k."""
    if student_layers < 1 or teacher_layers < student_layers:
        raise ValueError(f"layer map needs 1 <= student layers ({student_layers}) <= teacher layers "
                         f"({teacher_layers})")
    k = teacher_layers // student_layers
    attention = [(i + 1) * k - 1 for i in range(student_layers)]
    hidden = [i * k for i in range(student_layers + 1)]
    return attention, hidden


def resolve_layer_map(teacher_layers, student_layers, attention=None, hidden=None):
    """Uniform map unless explicit lists are given; validates lengths and ranges with clear messages."""
    ua, uh = uniform_layer_map(teacher_layers, student_layers)
    attention = list(ua if attention is None else attention)
    hidden = list(uh if hidden is None else hidden)
    if len(attention) != student_layers:
        raise ValueError(f"layer_map.attention has {len(attention)} entries, expected one per student layer "
                         f"({student_layers})")
    if len(hidden) != student_layers + 1:
        raise ValueError(f"layer_map.hidden has {len(hidden)} entries, expected student layers + 1 "
                         f"({student_layers + 1}, embeddings first)")
    for name, values, hi in (("attention", attention, teacher_layers - 1), ("hidden", hidden, teacher_layers)):
        bad = [v for v in values if not 0 <= int(v) <= hi]
        if bad:
            raise ValueError(f"layer_map.{name} entries {bad} out of range: teacher has {teacher_layers} layers, "
                             f"so {name} indices must be in [0, {hi}]")
    return [int(v) for v in attention], [int(v) for v in hidden]
