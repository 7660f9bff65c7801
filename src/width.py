"""DynaBERT / OFA width adaptation: width lists, importance, rewiring, width views of a supernet, the multi-width
distillation loss and slicing a supernet into a physically smaller model.

Width is data, not state. A sub-network is a `BertConfig` with per-layer sizes (`layer_num_heads`,
`layer_intermediate_sizes`); `WidthView(model, heads, ffn)` runs the shared supernet parameters sliced to their
leading heads / FFN neurons with sizes fixed at construction (one compiled graph per width, no setattr broadcast,
no resizing inside construct). `slice_to_width` copies those same leading rows/columns into a plain
`BertForSequenceClassification` of the smaller config, which the normal strict loader reloads.

Rounding (stated once): active heads = floor(H*w + 0.5) clamped to [1, H]; FFN = floor(F*w + 0.5) clamped to
[1, F]. Head size never changes; hidden size, embeddings, LayerNorms, pooler and classifier are never narrowed.
"""
import json
import math
import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import mindspore as ms
from mindspore import nn, ops

from src import losses
from src.cpu_kernels import MaskedSquaredError
from src.distill import FrozenTeacher
from src.errors import UserError
from src.tinybert_model import BertConfig, BertForSequenceClassification, count_params


# ---------------------------------------------------------------------------------------------- widths

@dataclass(frozen=True)
class WidthSpec:
    """One sub-network: the requested width (and depth) multiplier and what it maps to: heads and FFN neurons per
    supernet layer, and the supernet layers it keeps (all of them at depth 1.0)."""
    width: float
    heads: Tuple[int, ...]
    ffn: Tuple[int, ...]
    layers: Tuple[int, ...] = ()
    depth: float = 1.0

    @property
    def label(self) -> str:
        return f"{self.width:.3f}" if self.depth == 1.0 else f"{self.width:.3f}_d{self.depth:.3f}"

    @property
    def hidden_map(self) -> Tuple[int, ...]:
        """Supernet hidden-state index of each of this sub-network's hidden states (0 = embedding output)."""
        return (0,) + tuple(i + 1 for i in self.layers)


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5 + 1e-9))


def kept_layers(num_layers: int, depth: float) -> Tuple[int, ...]:
    """DynaBERT's depth rule: round(L * depth) layers, layer floor(i / depth) for i = 0, 1, ... (depth 0.5 keeps
    every other layer, 0.75 drops every fourth), so the kept layers are spread over the whole depth."""
    n = min(num_layers, max(1, _round_half_up(num_layers * depth)))
    if n == num_layers:
        return tuple(range(num_layers))
    return tuple(sorted({min(num_layers - 1, int(math.floor(i / depth + 1e-9))) for i in range(n)}))


def width_spec(config: BertConfig, width: float, depth: float = 1.0) -> WidthSpec:
    """Per-layer sizes of a width multiplier applied to the (full) config's per-layer sizes, and the layers a
    depth multiplier keeps."""
    heads = tuple(min(config.heads(i), max(1, _round_half_up(config.heads(i) * width)))
                  for i in range(config.num_hidden_layers))
    ffn = tuple(min(config.ffn(i), max(1, _round_half_up(config.ffn(i) * width)))
                for i in range(config.num_hidden_layers))
    return WidthSpec(float(width), heads, ffn, kept_layers(config.num_hidden_layers, depth), float(depth))


def rounding_note(config: BertConfig, spec: WidthSpec) -> Optional[str]:
    """A one-line note when a width does not map to whole heads (or whole neurons); None when exact."""
    notes = []
    h0, f0 = config.heads(0), config.ffn(0)
    if abs(h0 * spec.width - spec.heads[0]) > 1e-6:
        notes.append(f"{h0}*{spec.width:g} = {h0 * spec.width:.3f} heads rounded to {spec.heads[0]} "
                     f"(effective width {spec.heads[0] / h0:.4f})")
    if abs(f0 * spec.width - spec.ffn[0]) > 1e-6:
        notes.append(f"FFN {f0}*{spec.width:g} = {f0 * spec.width:.2f} rounded to {spec.ffn[0]}")
    n = config.num_hidden_layers
    if spec.depth != 1.0 and abs(n * spec.depth - len(spec.layers)) > 1e-6:
        notes.append(f"depth {n}*{spec.depth:g} = {n * spec.depth:.2f} layers rounded to {len(spec.layers)}")
    return f"width {spec.width:g}: " + "; ".join(notes) if notes else None


def _multipliers(values, field: str, what: str) -> List[float]:
    if not isinstance(values, (list, tuple)) or len(values) == 0:
        raise UserError(f"{field}: expected a non-empty list of {what}s in (0, 1], e.g. 1.0 0.75 0.5; got {values!r}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
            raise UserError(f"{field}: {v!r} is not a number; expected {what}s in (0, 1], e.g. 1.0 0.75 0.5")
        if not 0.0 < float(v) <= 1.0:
            raise UserError(f"{field}: {what} {v!r} is out of range; expected {what}s in (0, 1] "
                            f"(1.0 = the full model)")
        out.append(float(v))
    return out


def parse_width_list(values, config: BertConfig, field: str = "width_mult_list", depths=(1.0,),
                     depth_field: str = "depth_mult_list") -> List[WidthSpec]:
    """Validate a width list (numbers in (0, 1]) and a depth list -> one spec per (depth, width), sorted largest
    first (depth, then width); combinations that map to the same sub-network as a larger one are dropped.
    Errors name `field` / `depth_field`."""
    widths = _multipliers(values, field, "width")
    depth_values = _multipliers(list(depths), depth_field, "depth")
    specs = []
    for d in sorted(depth_values, reverse=True):
        for w in sorted(widths, reverse=True):
            spec = width_spec(config, w, d)
            if any(s.heads == spec.heads and s.ffn == spec.ffn and s.layers == spec.layers for s in specs):
                continue
            specs.append(spec)
    return specs


def sub_config(config: BertConfig, spec: WidthSpec) -> BertConfig:
    """The plain model config of a sub-network: the kept layers, with fewer heads and FFN neurons per layer."""
    layers = spec.layers or tuple(range(config.num_hidden_layers))
    return config.replace(num_hidden_layers=len(layers), layer_num_heads=[spec.heads[i] for i in layers],
                          layer_intermediate_sizes=[spec.ffn[i] for i in layers])


# ---------------------------------------------------------------------------------------------- width views

def _linear(x, weight, bias):
    """x[..., in] @ weight[out, in]^T + bias with the fast CPU layout (MatMul transpose_b), like nn.Dense."""
    shape = x.shape
    y = ops.bias_add(_MATMUL_TB(x.reshape(-1, shape[-1]), weight), bias)
    return y.reshape(shape[:-1] + (weight.shape[0],))


_MATMUL_TB = ops.MatMul(transpose_b=True)


class _LayerView(nn.Cell):
    """One BertLayer of the supernet run with its leading `heads` heads and `ffn` FFN neurons.

    Holds the supernet's layer cell (shared Parameters, its LayerNorm / GELU / dropout cells); only the slices
    differ. Output: (hidden, scores) like BertLayer. `head_mask` ([heads] or None) multiplies the attention
    probabilities (Michel et al. head importance)."""

    def __init__(self, layer, heads: int, ffn: int):
        super().__init__()
        self.layer = layer
        self.heads = int(heads)
        self.ffn = int(ffn)
        self.head_size = layer.attention.head_size
        self.inner = self.heads * self.head_size
        self.scale = layer.attention.scale

    def construct(self, hidden, mask_bias, head_mask=None):
        att = self.layer.attention
        ffn = self.layer.ffn
        b, s = hidden.shape[0], hidden.shape[1]
        n = self.inner
        q = _linear(hidden, att.query.weight[:n], att.query.bias[:n])
        k = _linear(hidden, att.key.weight[:n], att.key.bias[:n])
        v = _linear(hidden, att.value.weight[:n], att.value.bias[:n])
        q = q.reshape(b, s, self.heads, self.head_size).transpose(0, 2, 1, 3)
        k = k.reshape(b, s, self.heads, self.head_size).transpose(0, 2, 1, 3)
        v = v.reshape(b, s, self.heads, self.head_size).transpose(0, 2, 1, 3)
        scores = ops.matmul(q, k.transpose(0, 1, 3, 2)) * self.scale + mask_bias
        probs = att.attn_dropout(att.softmax(scores))
        if head_mask is not None:
            probs = probs * head_mask.reshape(1, -1, 1, 1)
        ctx = ops.matmul(probs, v).transpose(0, 2, 1, 3).reshape(b, s, n)
        out = _linear(ctx, att.output_dense.weight[:, :n], att.output_dense.bias)
        hidden = att.output_LayerNorm(att.output_dropout(out) + hidden)
        f = self.ffn
        x = ffn.act(_linear(hidden, ffn.intermediate.weight[:f], ffn.intermediate.bias[:f]))
        x = _linear(x, ffn.output_dense.weight[:, :f], ffn.output_dense.bias)
        return ffn.output_LayerNorm(ffn.dropout(x) + hidden), scores


class WidthView(nn.Cell):
    """A supernet (BertForSequenceClassification) at one width (and depth: only the spec's kept layers run):
    construct(input_ids, token_type_ids, input_mask [, head_mask]) -> (logits, hidden_states, attention_scores),
    like the model it views.

    The sizes are static (fixed here), the Parameters are the supernet's own: training a view trains the
    supernet. `head_mask` (optional [L, heads] float input) multiplies each layer's attention probabilities."""

    def __init__(self, model: BertForSequenceClassification, spec: WidthSpec):
        super().__init__()
        cfg = model.config
        for i in range(cfg.num_hidden_layers):
            if spec.heads[i] > cfg.heads(i) or spec.ffn[i] > cfg.ffn(i):
                raise ValueError(f"width {spec.width}: layer {i} wants {spec.heads[i]} heads / {spec.ffn[i]} FFN, "
                                 f"the supernet has {cfg.heads(i)} / {cfg.ffn(i)}")
        self.spec = spec
        self.model = model
        kept = spec.layers or tuple(range(cfg.num_hidden_layers))
        self.layers = nn.CellList([_LayerView(model.bert.encoder[i], spec.heads[i], spec.ffn[i]) for i in kept])
        self.relu_head = model.head_type == "relu_pooler"

    def construct(self, input_ids, token_type_ids, input_mask, head_mask=None):
        bert = self.model.bert
        mask_bias = (1.0 - input_mask.astype(ms.float32)).reshape(input_mask.shape[0], 1, 1, -1) * -10000.0
        hidden = bert.embeddings(input_ids, token_type_ids)
        hidden_states = (hidden,)
        attention_scores = ()
        i = 0
        for layer in self.layers:
            if head_mask is None:
                hidden, scores = layer(hidden, mask_bias)
            else:
                hidden, scores = layer(hidden, mask_bias, head_mask[i])
            hidden_states = hidden_states + (hidden,)
            attention_scores = attention_scores + (scores,)
            i = i + 1
        pooled = bert.tanh(bert.pooler(hidden[:, 0]))
        x = self.model.relu(pooled) if self.relu_head else self.model.dropout(pooled)
        return self.model.classifier(x), hidden_states, attention_scores


class ViewLogits(nn.Cell):
    """Logits of a WidthView (for evaluate / predict)."""

    def __init__(self, view: WidthView):
        super().__init__()
        self.view = view

    def construct(self, input_ids, token_type_ids, input_mask):
        return self.view(input_ids, token_type_ids, input_mask)[0]


# ---------------------------------------------------------------------------------------------- importance

class ImportanceGrad(nn.Cell):
    """One batch -> (loss, head importance [L, H], FFN neuron importance per layer), from fresh gradients.

    Head: |dL/d head_mask| (mask of ones multiplied into the attention probabilities). FFN neuron j of a layer:
    |sum_i W1[j,i] dW1[j,i] + b1[j] db1[j]| + |sum_k W2[k,j] dW2[k,j]| (first-order Taylor of removing it).
    Loss: CE to the labels (MSE for regression). Gradients are computed per call: nothing accumulates inside."""

    def __init__(self, model: BertForSequenceClassification, regression: bool):
        super().__init__()
        cfg = model.config
        self.view = WidthView(model, width_spec(cfg, 1.0))
        self.regression = regression
        self.ffn_params = []
        for layer in model.bert.encoder:
            self.ffn_params += [layer.ffn.intermediate.weight, layer.ffn.intermediate.bias,
                                layer.ffn.output_dense.weight]
        self.ffn_params = ms.ParameterTuple(self.ffn_params)
        self.num_layers = cfg.num_hidden_layers
        self.grad_fn = ops.value_and_grad(self._loss, grad_position=3, weights=self.ffn_params)

    def _loss(self, input_ids, segment_ids, input_mask, head_mask, label_ids):
        logits = self.view(input_ids, segment_ids, input_mask, head_mask)[0]
        if self.regression:
            return losses.mse(logits.reshape(-1), label_ids.reshape(-1).astype(ms.float32))
        return losses.hard_cross_entropy(logits, label_ids.reshape(-1))

    def construct(self, input_ids, segment_ids, input_mask, head_mask, label_ids):
        loss, (g_mask, g_w) = self.grad_fn(input_ids, segment_ids, input_mask, head_mask, label_ids)
        ffn_scores = ()
        for i in range(self.num_layers):
            w1, b1, w2 = self.ffn_params[3 * i], self.ffn_params[3 * i + 1], self.ffn_params[3 * i + 2]
            d1, db, d2 = g_w[3 * i], g_w[3 * i + 1], g_w[3 * i + 2]
            score = ops.abs((w1 * d1).sum(axis=1) + b1 * db) + ops.abs((w2 * d2).sum(axis=0))
            ffn_scores = ffn_scores + (score,)
        return loss, ops.abs(g_mask), ffn_scores


def compute_importance(model: BertForSequenceClassification, batches, regression: bool,
                       normalize: bool = False) -> Dict[str, object]:
    """Sum of per-batch head / neuron importance over `batches` (dicts with input_ids, segment_ids, input_mask,
    label_ids: use TRAINING data). Model in inference mode (no dropout). `normalize` divides each layer's scores
    by their L2 norm (Michel et al.); the per-layer ranking, hence the rewiring, is the same either way.
    Returns {"head": [L, H] array, "ffn": list of [F_l] arrays, "batches": n, "loss": mean loss}."""
    cfg = model.config
    if cfg.layer_num_heads and len(set(cfg.layer_num_heads)) > 1:
        raise ValueError("importance needs the same head count in every layer (a full, unsliced model)")
    net = ImportanceGrad(model, regression)
    net.set_train(False)
    mask = ms.Tensor(np.ones((cfg.num_hidden_layers, cfg.heads(0)), np.float32))
    head = np.zeros((cfg.num_hidden_layers, cfg.heads(0)), np.float64)
    ffn = [np.zeros(cfg.ffn(i), np.float64) for i in range(cfg.num_hidden_layers)]
    n, total = 0, 0.0
    for batch in batches:
        label_dtype = ms.float32 if regression else ms.int32
        loss, h, f = net(ms.Tensor(batch["input_ids"], ms.int32), ms.Tensor(batch["segment_ids"], ms.int32),
                         ms.Tensor(batch["input_mask"], ms.int32), mask,
                         ms.Tensor(batch["label_ids"], label_dtype))
        head += h.asnumpy()
        for i in range(cfg.num_hidden_layers):
            ffn[i] += f[i].asnumpy()
        total += float(loss.asnumpy())
        n += 1
    if n == 0:
        raise UserError("importance: no batches (the importance split is empty or smaller than one batch)")
    if normalize:
        head = head / np.maximum(np.linalg.norm(head, axis=1, keepdims=True), 1e-20)
        ffn = [f / max(np.linalg.norm(f), 1e-20) for f in ffn]
    return {"head": head, "ffn": ffn, "batches": n, "loss": total / n}


def importance_order(importance: dict) -> Tuple[List[List[int]], List[List[int]]]:
    """Per-layer permutations, most important first (stable: ties keep their original order)."""
    heads = [list(np.argsort(-row, kind="stable")) for row in importance["head"]]
    ffn = [list(np.argsort(-f, kind="stable")) for f in importance["ffn"]]
    return [[int(i) for i in h] for h in heads], [[int(i) for i in f] for f in ffn]


def save_importance(importance: dict, head_order, ffn_order, out_dir: str):
    """importance.npz (scores) + permutation.json (orders), both written atomically."""
    os.makedirs(out_dir, exist_ok=True)
    arrays = {"head": np.asarray(importance["head"])}
    arrays.update({f"ffn_{i}": np.asarray(f) for i, f in enumerate(importance["ffn"])})
    path = os.path.join(out_dir, "importance.npz")
    tmp = os.path.join(out_dir, f".importance.tmp{os.getpid()}.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    perm = os.path.join(out_dir, "permutation.json")
    tmp = perm + f".tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"head_order": head_order, "ffn_order": ffn_order, "batches": importance["batches"]}, f)
    os.replace(tmp, perm)


# ---------------------------------------------------------------------------------------------- rewiring

def _set(p, array):
    p.set_data(ms.Tensor(np.ascontiguousarray(array), p.dtype))


def rewire(model: BertForSequenceClassification, head_order: Sequence[Sequence[int]],
           ffn_order: Sequence[Sequence[int]]):
    """Permute heads (Q/K/V rows and biases by whole heads, attention-output columns) and FFN neurons (FFN-in
    rows and bias, FFN-out columns) in place, so position 0 holds the most important unit. Function-preserving."""
    for layer, horder, forder in zip(model.bert.encoder, head_order, ffn_order):
        att, ffn = layer.attention, layer.ffn
        d = att.head_size
        n_ffn = ffn.intermediate.weight.shape[0]
        if sorted(horder) != list(range(att.num_heads)) or sorted(forder) != list(range(n_ffn)):
            raise ValueError("rewire: head_order / ffn_order must be permutations of each layer's heads / neurons")
        rows = np.concatenate([np.arange(h * d, (h + 1) * d) for h in horder])
        for dense in (att.query, att.key, att.value):
            _set(dense.weight, dense.weight.asnumpy()[rows])
            _set(dense.bias, dense.bias.asnumpy()[rows])
        _set(att.output_dense.weight, att.output_dense.weight.asnumpy()[:, rows])
        f = np.asarray(forder)
        _set(ffn.intermediate.weight, ffn.intermediate.weight.asnumpy()[f])
        _set(ffn.intermediate.bias, ffn.intermediate.bias.asnumpy()[f])
        _set(ffn.output_dense.weight, ffn.output_dense.weight.asnumpy()[:, f])


# ---------------------------------------------------------------------------------------------- slicing

def slice_state(model: BertForSequenceClassification, spec: WidthSpec) -> Dict[str, np.ndarray]:
    """The supernet's parameters (names relative to the classifier) cut to the leading heads / neurons of `spec`
    and its kept layers (renumbered 0..): exactly what `WidthView(model, spec)` computes with."""
    state = {}
    d = model.config.head_size
    kept = list(spec.layers or range(model.config.num_hidden_layers))
    for name, p in model.parameters_and_names():
        a = p.asnumpy()
        parts = name.split(".")
        if len(parts) > 3 and parts[0] == "bert" and parts[1] == "encoder":
            i = int(parts[2])
            if i not in kept:
                continue                                 # a layer the depth drops
            name = ".".join(parts[:2] + [str(kept.index(i))] + parts[3:])
            n, f = spec.heads[i] * d, spec.ffn[i]
            sub = ".".join(parts[3:])
            if sub in ("attention.query.weight", "attention.key.weight", "attention.value.weight",
                       "attention.query.bias", "attention.key.bias", "attention.value.bias"):
                a = a[:n]
            elif sub == "attention.output_dense.weight":
                a = a[:, :n]
            elif sub in ("ffn.intermediate.weight", "ffn.intermediate.bias"):
                a = a[:f]
            elif sub == "ffn.output_dense.weight":
                a = a[:, :f]
        state[name] = np.ascontiguousarray(a)
    return state


def slice_to_width(model: BertForSequenceClassification, width_mult: float,
                   depth_mult: float = 1.0) -> BertForSequenceClassification:
    """A plain, physically smaller BertForSequenceClassification holding the supernet's leading heads / FFN
    neurons at `width_mult` (rounded as `width_spec`) and the layers `depth_mult` keeps. Its config (`.config`)
    has the per-layer sizes; save it with `runtime.save_cell` + `config.to_json_file` and it reloads with
    `runtime.load_into` (strict)."""
    spec = parse_width_list([width_mult], model.config, "width_mult", [depth_mult], "depth_mult")[0]
    sub = BertForSequenceClassification(sub_config(model.config, spec), head_type=model.head_type)
    state = slice_state(model, spec)
    for name, p in sub.parameters_and_names():
        if tuple(p.shape) != state[name].shape:
            raise ValueError(f"slice_to_width: {name} is {state[name].shape}, sub-model expects {tuple(p.shape)}")
        _set(p, state[name])
    return sub


def slice_checkpoint(supernet_ckpt: str, supernet_config: str, width_mult: float, out_dir: str,
                     head_type: str = "auto", num_labels: Optional[int] = None,
                     depth_mult: float = 1.0) -> Tuple[str, str]:
    """File-level slicing: supernet checkpoint + its config.json -> <out_dir>/model.ckpt + config.json of the
    sub-model at `width_mult` (and `depth_mult`), which records the head type ("auto": the supernet's record,
    else dense). Returns (ckpt path, config path). Used by tools/slice_width.py."""
    from src import runtime
    ckpt = os.path.join(out_dir, "model.ckpt")
    conf = os.path.join(out_dir, "config.json")
    for mine, theirs, what in ((ckpt, supernet_ckpt, "checkpoint"), (conf, supernet_config, "config")):
        if os.path.abspath(mine) == os.path.abspath(theirs):
            raise UserError(f"--output_dir {out_dir}: the sub-model's {os.path.basename(mine)} would overwrite the "
                            f"supernet {what} '{theirs}'; choose another folder")
    overrides = {"num_labels": num_labels} if num_labels else {}
    cfg = runtime.load_bert_config(supernet_config, "supernet config", **overrides)
    head_type = runtime.resolve_head_type(head_type, supernet_ckpt, "--head_type", "supernet checkpoint")
    model = runtime.build_classifier(cfg, head_type)
    runtime.load_into(model, supernet_ckpt, "supernet checkpoint", strict=True, allow_unexpected=("fit_dense.",))
    sub = slice_to_width(model, width_mult, depth_mult)
    os.makedirs(out_dir, exist_ok=True)
    runtime.save_cell(sub, ckpt, extra={"width_mult": float(width_mult), "depth_mult": float(depth_mult)})
    sub.config.to_json_file(conf)
    return ckpt, conf


# ---------------------------------------------------------------------------------------------- training loss

class MultiWidthDistillLoss(nn.Cell):
    """DynaBERT-W loss summed over widths (largest first):
        sum_w  lambda1 * softCE(student_w, teacher) + lambda2 * sum_{l=0..L} MSE(h_w[l], h_t[l])
    (a sub-network with fewer layers (depth < 1) matches its hidden states to the teacher's at the layers it
    keeps, DynaBERT-D; a width-matched teacher view keeps the same layers, so there the map is 1:1)
    Regression: MSE to the teacher's output instead of soft CE (the anchors' 0 logit loss is a bug). The teacher
    is the fine-tuned full model (FrozenTeacher), or with `teacher_views` one frozen view per width
    (width-matched teacher). Returns (loss, per-width losses)."""

    def __init__(self, model: BertForSequenceClassification, teacher: nn.Cell, specs: Sequence[WidthSpec],
                 lambda1: float = 1.0, lambda2: float = 0.1, soft_ce_reduction: str = "row_mean",
                 temperature: float = 1.0, regression: bool = False, mask_padding: bool = True,
                 teacher_views: Optional[Sequence[nn.Cell]] = None, data_parallel: bool = False):
        super().__init__()
        if soft_ce_reduction not in losses.SOFT_CE_REDUCTIONS:
            raise ValueError(f"loss.soft_ce_reduction '{soft_ce_reduction}': expected one of "
                             f"{losses.SOFT_CE_REDUCTIONS}")
        self.views = nn.CellList([WidthView(model, s) for s in specs])
        self.width_matched = teacher_views is not None
        if self.width_matched:
            self.teachers = nn.CellList([FrozenTeacher(t) for t in teacher_views])
        else:
            self.teacher = FrozenTeacher(teacher)
        self.l1 = float(lambda1)
        self.l2 = float(lambda2)
        self.reduction = soft_ce_reduction
        self.temperature = float(temperature)
        self.regression = regression
        self.mask_padding = mask_padding
        self.sq_err = MaskedSquaredError() if model.config.fused_cpu_kernels and mask_padding else None
        self.counts = losses.GlobalMaskCounts(data_parallel and mask_padding)
        self.n = len(specs)
        n_hidden = model.config.num_hidden_layers + 1
        self.hidden_maps = tuple(tuple(range(len(s.hidden_map))) if self.width_matched else
                                 (s.hidden_map if s.layers else tuple(range(n_hidden))) for s in specs)

    def _one(self, view, t_logits, t_hidden, hidden_map, input_ids, segment_ids, input_mask, tokens):
        logits, hidden, _ = view(input_ids, segment_ids, input_mask)
        if self.regression:
            pred = losses.mse(logits.reshape(-1), t_logits.reshape(-1))
        else:
            pred = losses.soft_cross_entropy(logits, t_logits, self.temperature, self.reduction)
        rep = 0.0
        for j, tj in enumerate(hidden_map):
            rep = rep + losses.hidden_mse(hidden[j], t_hidden[tj], input_mask, self.mask_padding, self.sq_err)
        return self.l1 * pred + self.l2 * rep * tokens

    def construct(self, input_ids, segment_ids, input_mask, label_ids):
        total = 0.0
        parts = ()
        tokens, _ = self.counts(input_mask)
        if self.width_matched:
            i = 0
            for view in self.views:
                t_logits, t_hidden, _ = self.teachers[i](input_ids, segment_ids, input_mask)
                loss = self._one(view, t_logits, t_hidden, self.hidden_maps[i], input_ids, segment_ids, input_mask,
                                 tokens)
                total = total + loss
                parts = parts + (loss,)
                i = i + 1
        else:
            t_logits, t_hidden, _ = self.teacher(input_ids, segment_ids, input_mask)
            i = 0
            for view in self.views:
                loss = self._one(view, t_logits, t_hidden, self.hidden_maps[i], input_ids, segment_ids, input_mask,
                                 tokens)
                total = total + loss
                parts = parts + (loss,)
                i = i + 1
        return total, parts


def sample_widths(n: int, k: int, rng: np.random.Generator) -> Tuple[int, ...]:
    """Indices of the widths trained this step (sorted, largest first). k <= 0 or k >= n: all. Otherwise the
    sandwich rule: the largest and the smallest always, plus k-2 others drawn at random (k=1: the largest only
    would never train small widths, so k=1 draws one width uniformly)."""
    if k <= 0 or k >= n:
        return tuple(range(n))
    if k == 1:
        return (int(rng.integers(n)),)
    middle = list(rng.choice(np.arange(1, n - 1), size=k - 2, replace=False)) if k > 2 else []
    return tuple(sorted([0, n - 1] + [int(i) for i in middle]))



class SampledWidthStep:
    """Train step over a sampled subset of widths per batch (`sample_widths` k of n, see `sample_widths`): one
    TrainStep per subset, built on first use (one compiled graph each), all sharing the supernet, the teacher
    and ONE optimizer (same moments and step counter). Called like a TrainStep: (loss, (loss,), grad_norm).
    The subset of the step after `steps_done()` steps depends on (seed, that number) only: the same on every
    data-parallel rank, and a resumed run continues the sequence (steps_done reads the Trainer's counter)."""

    def __init__(self, make_step, n: int, k: int, seed: int, steps_done: Callable[[], int]):
        self.make_step = make_step          # subset (tuple of width indices) -> TrainStep
        self.n, self.k = n, k
        self.seed = seed
        self.steps_done = steps_done
        self.steps = {}

    def set_train(self, mode: bool = True):
        for s in self.steps.values():
            s.set_train(mode)

    def __call__(self, *inputs):
        subset = sample_widths(self.n, self.k, np.random.default_rng([self.seed, 17, self.steps_done()]))
        if subset not in self.steps:
            self.steps[subset] = self.make_step(subset)
            self.steps[subset].set_train(True)
        loss, _, norm = self.steps[subset](*inputs)
        return loss, (loss,), norm


class _AllReduceSum(nn.Cell):
    def __init__(self):
        super().__init__()
        self.op = ops.AllReduce()

    def construct(self, x):
        return self.op(x)


def share_rank0_order(head_order, ffn_order, rank: int):
    """Data parallel: every rank computes the importance on the same batches, but floating point need not agree
    to the last bit across processes, and ranks rewired differently would average gradients of different
    neurons. Every rank takes rank 0's permutation (AllReduce of rank 0's indices, zeros elsewhere; indices are
    exact in float32 below 2^24)."""
    flat = np.concatenate([np.asarray(h).ravel() for h in head_order] + [np.asarray(f) for f in ffn_order])
    x = flat.astype(np.float32) if rank == 0 else np.zeros(flat.size, np.float32)
    shared = np.rint(_AllReduceSum()(ms.Tensor(x)).asnumpy()).astype(np.int64)
    out_h, out_f, i = [], [], 0
    for h in head_order:
        out_h.append([int(v) for v in shared[i:i + len(h)]])
        i += len(h)
    for f in ffn_order:
        out_f.append([int(v) for v in shared[i:i + len(f)]])
        i += len(f)
    return out_h, out_f


# ---------------------------------------------------------------------------------------------- latency

def measure_latency(logits_net: nn.Cell, batch_size: int, seq_len: int, vocab_size: int, runs: int = 10,
                    warmup: int = 2, seed: int = 0) -> float:
    """Median wall time (ms) of one forward of a [batch_size, seq_len] batch in graph mode, after `warmup`
    calls (the first compiles). Every sequence uses all seq_len tokens."""
    import time
    rng = np.random.default_rng(seed)
    ids = ms.Tensor(rng.integers(1, vocab_size, (batch_size, seq_len)), ms.int32)
    seg = ms.Tensor(np.zeros((batch_size, seq_len)), ms.int32)
    mask = ms.Tensor(np.ones((batch_size, seq_len)), ms.int32)
    logits_net.set_train(False)
    for _ in range(max(warmup, 1)):
        logits_net(ids, seg, mask).asnumpy()
    times = []
    for _ in range(max(runs, 1)):
        t = time.perf_counter()
        logits_net(ids, seg, mask).asnumpy()
        times.append((time.perf_counter() - t) * 1000.0)
    return float(np.median(times))


def format_table(rows: Sequence[dict], metric: str) -> List[str]:
    """Markdown table: width, (depth and layers when a row has depth < 1,) heads, FFN, params, dev metric, latency
    (ms/batch), speed-up vs the first row."""
    deep = any(r.get("depth", 1.0) != 1.0 for r in rows)
    out = [f"| width |{' depth | layers |' if deep else ''} heads | FFN | params | dev {metric} | latency ms/batch "
           f"| speed-up |", "|---|---|---|---|---|---|---|" + ("---|---|" if deep else "")]
    base = rows[0].get("latency_ms") if rows else None
    for r in rows:
        lat = r.get("latency_ms")
        lat_txt = f"{lat:.1f}" if lat else "-"
        speed = f"{base / lat:.2f}x" if lat and base else "-"
        dcols = f" {r.get('depth', 1.0):.3f} | {r.get('layers', '-')} |" if deep else ""
        out.append(f"| {r['width']:.3f} |{dcols} {r['heads']} | {r['ffn']} | {r['params']:,} | {r['metric']:.4f} | "
                   f"{lat_txt} | {speed} |")
    return out


# ------------------------------------------------------------------------------------------ wiring (run_ofa_width.py)

def _sizes_txt(values: Sequence[int]) -> str:
    return str(values[0]) if len(set(values)) == 1 else "/".join(str(v) for v in values)


def run_ofa(cfg, out_dir: str, save_resolved):
    """Importance on the training split -> rewire -> supernet training over widths -> per-width best sub-models
    -> table. Wiring only: the algorithms are above. Data parallel (`distributed: true`, msrun): every rank
    computes the importance on the same batches and takes rank 0's permutation; each rank trains on its shard
    of every global batch; rank 0 evaluates, saves and writes the table."""
    import time
    from src import runtime
    from src.distill import TrainStep, WarmupLinearDecayLR, build_optimizer
    from src.trainer import ArrayBatcher, StateOf, Trainer, evaluate, teacher_baseline, train_state_from_config

    task = runtime.task_from_config(cfg)
    tcfg = runtime.load_bert_config(cfg.teacher.config, "teacher.config", num_labels=task.num_labels,
                                    fused_cpu_kernels=runtime.fused_kernels(cfg))
    specs = parse_width_list(cfg.width_mult_list, tcfg, depths=list(cfg.depth_mult_list))
    if cfg.train.sample_widths < 0:
        raise UserError(f"train.sample_widths: expected 0 (all widths) or a count >= 1, got {cfg.train.sample_widths}")
    if cfg.loss.soft_ce_reduction not in losses.SOFT_CE_REDUCTIONS:
        raise UserError(f"loss.soft_ce_reduction '{cfg.loss.soft_ce_reduction}': expected one of "
                        f"{losses.SOFT_CE_REDUCTIONS}")
    rank, world, log = runtime.start_run(cfg, out_dir, save_resolved, {"phase": "ofa_width"})
    is_main = rank == 0
    log.info(f"OFA width adaptation, task {task.name}, output {out_dir}, rank {rank}/{world}")
    for s in specs:
        note = rounding_note(tcfg, s)
        depth = f", layers {list(s.layers)}" if s.depth != 1.0 else ""
        log.info(f"width {s.label}: heads {_sizes_txt(s.heads)}, FFN {_sizes_txt(s.ffn)}{depth}"
                 + (f" ({note})" if note else ""))

    eval_sets = runtime.load_eval_sets(cfg, task)               # the task's dev split(s): MNLI matched + mismatched
    train = runtime.load_split(cfg.data.dir, "train", cfg.data.dataset_type, cfg.data.max_seq_length, task)
    log.info(f"train dataset size: {len(train['input_ids'])}, "
             + ", ".join(f"{s} eval dataset size: {len(a['input_ids'])}" for s, a in eval_sets.items()))
    buckets = list(cfg.data.length_buckets)

    teacher = runtime.build_classifier(tcfg, cfg.teacher.head_type)
    runtime.load_into(teacher, cfg.teacher.ckpt, "teacher.ckpt", strict=True)
    model = runtime.build_classifier(tcfg, cfg.teacher.head_type)
    init = cfg.supernet.init_ckpt or cfg.teacher.ckpt
    runtime.load_into(model, init, "supernet.init_ckpt", strict=True)
    log.info(f"supernet initialised from {init}; teacher {cfg.teacher.ckpt}; params {count_params(model)}")
    if cfg.eval.teacher_baseline and is_main:     # the reference the width table is read against
        teacher_baseline(teacher, eval_sets, cfg.eval.batch_size, task, log)

    # ---- importance on the TRAINING split, fresh gradients per batch, then rewiring
    if cfg.importance.rewire:
        t0 = time.time()
        imp_batcher = ArrayBatcher(train, cfg.importance.batch_size, shuffle=True, seed=cfg.seed + 1,
                                   length_buckets=buckets, batch_key="importance.batch_size")
        limit = cfg.importance.max_batches

        def batches():
            for i, b in enumerate(imp_batcher.epoch(0)):
                if limit and i >= limit:
                    return
                yield b
        imp = compute_importance(model, batches(), task.regression, cfg.importance.normalize)
        head_order, ffn_order = importance_order(imp)
        if world > 1:
            head_order, ffn_order = share_rank0_order(head_order, ffn_order, rank)
        if is_main:
            save_importance(imp, head_order, ffn_order, out_dir)
        rewire(model, head_order, ffn_order)
        if cfg.train.width_matched_teacher:
            rewire(teacher, head_order, ffn_order)
        log.info(f"importance on {imp['batches']} training batches (loss {imp['loss']:.4f}) in {time.time() - t0:.1f}s;"
                 f" head order layer 0 {head_order[0]}; rewired (saved importance.npz, permutation.json)")

    # ---- training
    regression = task.regression
    teacher_views = [WidthView(teacher, s) for s in specs] if cfg.train.width_matched_teacher else None

    def loss_cell(idx):
        tv = [teacher_views[i] for i in idx] if teacher_views else None
        return MultiWidthDistillLoss(model, teacher, [specs[i] for i in idx], cfg.loss.lambda1, cfg.loss.lambda2,
                                     cfg.loss.soft_ce_reduction, cfg.loss.temperature, regression,
                                     cfg.loss.padding == "valid", teacher_views=tv, data_parallel=cfg.distributed)

    batcher = ArrayBatcher(train, cfg.train.batch_size, shuffle=True, seed=cfg.seed, rank=rank, world=world,
                           length_buckets=buckets)
    total = len(batcher) * cfg.train.epochs
    if cfg.train.max_steps:
        total = min(total, cfg.train.max_steps)
    lr = WarmupLinearDecayLR(cfg.train.lr, total, int(total * cfg.train.warmup_ratio), cfg.optim.end_lr)
    opt = build_optimizer(model.trainable_params(), lr, cfg.optim.weight_decay, cfg.optim.eps)

    def make_step(idx):
        try:
            return TrainStep(loss_cell(idx), opt, cfg.optim.clip_norm, cfg.optim.clip_mode,
                             cfg.optim.loss_scale, data_parallel=cfg.distributed)
        except ValueError as e:
            raise UserError(str(e)) from None

    k = cfg.train.sample_widths
    if k and k < len(specs):
        step = SampledWidthStep(make_step, len(specs), k, cfg.seed, lambda: trainer.step)
        parts = ["sampled"]                 # loss of this step's sampled widths (the train line's total)
        log.info(f"each step trains {k} of {len(specs)} widths (largest and smallest always)")
    else:
        step = make_step(tuple(range(len(specs))))
        step.set_train(True)
        parts = [f"w{s.label}" for s in specs]
    log.info(f"{len(batcher)} steps per epoch, {total} steps, buckets {batcher.buckets}, "
             f"loss {cfg.loss.lambda1}*softCE({cfg.loss.soft_ce_reduction}) + {cfg.loss.lambda2}*hiddenMSE, "
             f"teacher {'width-matched' if teacher_views else 'full fine-tuned'}")
    if is_main:
        tcfg.to_json_file(os.path.join(out_dir, "config.json"))

    # ---- eval of every width, keep-best per width (sliced sub-model + its config)
    main = task.main_metric
    eval_nets = [ViewLogits(WidthView(model, s)) for s in specs]
    best = {s.label: {"metric": -math.inf, "step": -1} for s in specs}

    def eval_fn():
        metrics = {}
        for s, net in zip(specs, eval_nets):
            net.set_train(False)
            m = evaluate(net, eval_sets, cfg.eval.batch_size, task)
            metrics.update({k if s is specs[0] else f"{k}_w{s.label}": v for k, v in m.items()})
            b = best[s.label]
            if m[main] > b["metric"]:
                b.update(metric=m[main], step=trainer.step, all=m)
                sub = slice_to_width(model, s.width, s.depth)
                runtime.save_cell(sub, os.path.join(out_dir, f"best_w{s.label}.ckpt"),
                                  extra={"width_mult": s.width, "depth_mult": s.depth, **m})
                sub.config.to_json_file(os.path.join(out_dir, f"config_w{s.label}.json"))
            log.info(f"width {s.label} (heads {_sizes_txt(s.heads)}, FFN {_sizes_txt(s.ffn)}): {main} {m[main]:.6f},"
                     f" best {b['metric']:.6f}")
        step.set_train(True)
        return metrics

    def save_best(metrics):
        runtime.save_cell(model, os.path.join(out_dir, "best.ckpt"), extra=dict(metrics))

    def save_last():
        runtime.save_cell(model, os.path.join(out_dir, "supernet.ckpt"))

    def get_extra():                         # resume: per-width bests (their checkpoints are on disk already)
        return {"best": best}

    def set_extra(extra):
        for label, b in extra["best"].items():
            best[label] = b

    # resume state: supernet weights + the one optimizer all width subsets share, per-width bests
    train_state, resume = train_state_from_config(cfg, StateOf(model, opt), out_dir, is_main)
    trainer = Trainer(step, batcher, ["input_ids", "segment_ids", "input_mask", "label_ids"], parts, log,
                      cfg.train.epochs, lr.value, cfg.log_every, eval_fn=eval_fn, main_metric=main,
                      eval_every=cfg.eval.every, save_best=save_best, save_last=save_last, is_main=is_main,
                      max_steps=cfg.train.max_steps, state=train_state, resume=resume,
                      extra_state=(get_extra, set_extra), overflow_skips=cfg.optim.loss_scale != 1.0)
    result = trainer.fit()
    if not is_main:
        log.close()
        return result

    # ---- table: reload each best sub-model with the normal strict loader, count params, time it
    rows = []
    for s in specs:
        conf = runtime.load_bert_config(os.path.join(out_dir, f"config_w{s.label}.json"), "sub-model config")
        sub = runtime.build_classifier(conf, cfg.teacher.head_type)
        runtime.load_into(sub, os.path.join(out_dir, f"best_w{s.label}.ckpt"), "sub-model checkpoint", strict=True)
        from src.tinybert_model import LogitsOnly
        lat = None
        if cfg.latency.runs:
            lat = measure_latency(LogitsOnly(sub), cfg.latency.batch_size, cfg.data.max_seq_length,
                                  conf.vocab_size, cfg.latency.runs)
        rows.append({"width": s.width, "depth": s.depth, "layers": len(s.layers), "heads": _sizes_txt(s.heads),
                     "ffn": _sizes_txt(s.ffn), "params": count_params(sub), "metric": best[s.label]["metric"],
                     "best_step": best[s.label]["step"], "latency_ms": lat})
        log.info(f"The best {main} of width {s.label} is {best[s.label]['metric']:.6f} (step {best[s.label]['step']})")
        log.record("width", **rows[-1])
    table = format_table(rows, main)
    log.info(f"width table (latency: batch {cfg.latency.batch_size}, seq {cfg.data.max_seq_length}, median of "
             f"{cfg.latency.runs} runs, graph mode):")
    for line in table:
        log.info(line)
    path = os.path.join(out_dir, "width_table.md")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write("\n".join(table) + "\n")
    os.replace(path + ".tmp", path)
    log.info(f"The best acc is {best[specs[0].label]['metric']:.6f}")
    log.close()
    return {**result, "rows": rows}
