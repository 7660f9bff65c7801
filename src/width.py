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
import math
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import mindspore as ms
from mindspore import nn, ops

from src import losses
from src.cpu_kernels import MaskedSquaredError
from src.distill import FrozenTeacher
from src.errors import UserError
from src.fileio import atomic_json, atomic_write
from src.tinybert_model import BertConfig, BertForSequenceClassification
from src.checkpoint import checkpoint_head_kind, load_into, resolve_head_type, save_cell
from src.tinybert_model import build_classifier, load_bert_config


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
        """Supernet (teacher) hidden-state index each of this sub-network's hidden states is distilled to
        (0 = embedding output, L = the last layer's output), DynaBERT's rule: the sub-network's state entering its
        kept layer k is matched to the teacher's state entering layer k (hidden k), and its final state, the one
        feeding the pooler and classifier, to the teacher's final state (hidden L). Each kept layer thereby stands
        in for itself and the dropped layers after it: 12 layers at depth 0.5 keep (0, 2, ..., 10) and map to
        (0, 2, ..., 10, 12). At depth 1.0 this is the identity (0, 1, ..., L)."""
        num_layers = len(self.heads)
        return tuple(self.layers or range(num_layers)) + (num_layers,)


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5 + 1e-9))


def kept_layers(num_layers: int, depth: float) -> Tuple[int, ...]:
    """DynaBERT's depth rule: round(L * depth) layers, layer floor(i / depth) for i = 0, 1, ... (0-based), so
    the kept layers are spread over the whole depth and layer 0 is always kept. 12 layers: depth 0.5 keeps
    (0, 2, 4, 6, 8, 10) (every other layer, the last one dropped), depth 0.75 keeps (0, 1, 2, 4, 5, 6, 8, 9, 10)
    (drops layers 3, 7 and 11, every fourth). The count rounds half up (6 x 0.75 = 4.5 -> 5 layers; DynaBERT's
    Python round gives 4). The sub-network's hidden states are matched to the teacher's as `WidthSpec.hidden_map`
    describes; the sliced sub-model (`slice_to_width`) keeps these same layers."""
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

    # Copied from src/tinybert_model.py BertAttention.construct + BertFFN.construct, with every weight sliced to
    # the leading heads / FFN neurons and an optional head mask (the activation quant points are not applied: a
    # width view trains in fp32). tests/test_width.py::test_full_width_view_equals_plain_model holds the two equal.
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
        return self.model.logits_of(hidden), hidden_states, attention_scores


class ImportanceGrad(nn.Cell):
    """One batch -> (loss, head importance [L, H], FFN neuron importance per layer), from fresh gradients.

    Head: |dL/d head_mask| (mask of ones multiplied into the attention probabilities). FFN neuron j of a layer:
    |sum_i W1[j,i] dW1[j,i] + b1[j] db1[j]| + |sum_k W2[k,j] dW2[k,j]| (first-order Taylor of removing it).
    Loss: losses.label_loss of the task kind (CE to the labels, over the labelled positions for token tasks; MSE
    for regression). Gradients are computed per call: nothing accumulates inside."""

    def __init__(self, model: BertForSequenceClassification, kind: str):
        super().__init__()
        cfg = model.config
        self.view = WidthView(model, width_spec(cfg, 1.0))
        self.kind = kind
        self.ffn_params = []
        for layer in model.bert.encoder:
            self.ffn_params += [layer.ffn.intermediate.weight, layer.ffn.intermediate.bias,
                                layer.ffn.output_dense.weight]
        self.ffn_params = ms.ParameterTuple(self.ffn_params)
        self.num_layers = cfg.num_hidden_layers
        self.grad_fn = ops.value_and_grad(self._loss, grad_position=3, weights=self.ffn_params)

    def _loss(self, input_ids, segment_ids, input_mask, head_mask, label_ids):
        logits = self.view(input_ids, segment_ids, input_mask, head_mask)[0]
        return losses.label_loss(logits, label_ids, self.kind)

    def construct(self, input_ids, segment_ids, input_mask, head_mask, label_ids):
        loss, (g_mask, g_w) = self.grad_fn(input_ids, segment_ids, input_mask, head_mask, label_ids)
        ffn_scores = ()
        for i in range(self.num_layers):
            w1, b1, w2 = self.ffn_params[3 * i], self.ffn_params[3 * i + 1], self.ffn_params[3 * i + 2]
            d1, db, d2 = g_w[3 * i], g_w[3 * i + 1], g_w[3 * i + 2]
            score = ops.abs((w1 * d1).sum(axis=1) + b1 * db) + ops.abs((w2 * d2).sum(axis=0))
            ffn_scores = ffn_scores + (score,)
        return loss, ops.abs(g_mask), ffn_scores


def compute_importance(model: BertForSequenceClassification, batches, kind: str,
                       normalize: bool = False) -> Dict[str, object]:
    """Sum of per-batch head / neuron importance over `batches` (dicts with input_ids, segment_ids, input_mask,
    label_ids: use TRAINING data). Model in inference mode (no dropout). `normalize` divides each layer's scores
    by their L2 norm (Michel et al.); the per-layer ranking, hence the rewiring, is the same either way.
    Returns {"head": [L, H] array, "ffn": list of [F_l] arrays, "batches": n, "loss": mean loss}."""
    cfg = model.config
    if cfg.layer_num_heads and len(set(cfg.layer_num_heads)) > 1:
        raise ValueError("importance needs the same head count in every layer (a full, unsliced model)")
    net = ImportanceGrad(model, kind)
    net.set_train(False)
    mask = ms.Tensor(np.ones((cfg.num_hidden_layers, cfg.heads(0)), np.float32))
    head = np.zeros((cfg.num_hidden_layers, cfg.heads(0)), np.float64)
    ffn = [np.zeros(cfg.ffn(i), np.float64) for i in range(cfg.num_hidden_layers)]
    n, total = 0, 0.0
    for batch in batches:
        label_dtype = ms.float32 if kind == "regression" else ms.int32
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
    atomic_write(os.path.join(out_dir, "importance.npz"), lambda f: np.savez(f, **arrays), "wb")
    atomic_json(os.path.join(out_dir, "permutation.json"),
                {"head_order": head_order, "ffn_order": ffn_order, "batches": importance["batches"]}, indent=None)


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
    has the per-layer sizes; save it with `save_cell` + `config.to_json_file` and it reloads with
    `load_into` (strict)."""
    spec = parse_width_list([width_mult], model.config, "width_mult", [depth_mult], "depth_mult")[0]
    sub = type(model)(sub_config(model.config, spec), head_type=model.head_type)
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
    ckpt = os.path.join(out_dir, "model.ckpt")
    conf = os.path.join(out_dir, "config.json")
    for mine, theirs, what in ((ckpt, supernet_ckpt, "checkpoint"), (conf, supernet_config, "config")):
        if os.path.abspath(mine) == os.path.abspath(theirs):
            raise UserError(f"--output_dir {out_dir}: the sub-model's {os.path.basename(mine)} would overwrite the "
                            f"supernet {what} '{theirs}'; choose another folder")
    overrides = {"num_labels": num_labels} if num_labels else {}
    cfg = load_bert_config(supernet_config, "supernet config", **overrides)
    head_type = resolve_head_type(head_type, supernet_ckpt, "--head_type", "supernet checkpoint")
    model = build_classifier(cfg, head_type, checkpoint_head_kind(supernet_ckpt))
    load_into(model, supernet_ckpt, "supernet checkpoint", strict=True, allow_unexpected=("fit_dense.",))
    sub = slice_to_width(model, width_mult, depth_mult)
    os.makedirs(out_dir, exist_ok=True)
    save_cell(sub, ckpt, extra={"width_mult": float(width_mult), "depth_mult": float(depth_mult)})
    sub.config.to_json_file(conf)
    return ckpt, conf


SUPERNET_KEY = "supernet_widths"


def supernet_mark(specs: Sequence[WidthSpec]) -> Dict[str, str]:
    """The metadata a width run writes into its supernet checkpoints (supernet.ckpt, best.ckpt): the trained widths
    and depths, as JSON. `supernet_record` reads it back; stage 2 (train.distill_from: supernet) requires it."""
    import json
    return {SUPERNET_KEY: json.dumps({"widths": sorted({s.width for s in specs}, reverse=True),
                                      "depths": sorted({s.depth for s in specs}, reverse=True)})}


def supernet_record(ckpt: str) -> Optional[dict]:
    """{"widths": [...], "depths": [...]} a width run recorded in `ckpt`, or None (not a width supernet)."""
    import json
    from src.checkpoint import read_ms_checkpoint
    value = read_ms_checkpoint(ckpt, with_extra=True)[1].get(SUPERNET_KEY)
    return json.loads(value) if isinstance(value, str) else None


class PerWidthBest:
    """Keep-best per width: each width's best score, and its sliced sub-model saved as best_w<width>.ckpt +
    config_w<width>.json on every improvement (`counter.value`: the step recorded). Saved with the training
    state (state_dict / load_state_dict)."""

    def __init__(self, specs: Sequence[WidthSpec], out_dir: str, metric: str, counter):
        self.out_dir, self.metric, self.counter = out_dir, metric, counter
        self.best = {s.label: {"metric": -math.inf, "step": -1} for s in specs}

    def update(self, model, spec, metrics: dict) -> dict:
        b = self.best[spec.label]
        if metrics[self.metric] > b["metric"]:
            b.update(metric=metrics[self.metric], step=self.counter.value, all=metrics)
            sub = slice_to_width(model, spec.width, spec.depth)
            save_cell(sub, os.path.join(self.out_dir, f"best_w{spec.label}.ckpt"),
                      extra={"width_mult": spec.width, "depth_mult": spec.depth, **metrics})
            sub.config.to_json_file(os.path.join(self.out_dir, f"config_w{spec.label}.json"))
        return b

    def state_dict(self) -> dict:
        return {"best": self.best}

    def load_state_dict(self, state: dict):
        self.best.update(state["best"])


# ---------------------------------------------------------------------------------------------- training loss

class MultiWidthDistillLoss(nn.Cell):
    """DynaBERT-W loss summed over widths (largest first):
        sum_w  lambda1 * softCE(student_w, teacher) + lambda2 * sum_{l=0..L} MSE(h_w[l], h_t[l])
    (a sub-network with fewer layers (depth < 1) matches its hidden states to the teacher's by
    `WidthSpec.hidden_map`, DynaBERT-D: the state entering kept layer k to teacher hidden k, the final state to the
    teacher's final state; a width-matched teacher view keeps the same layers, so there the map is 1:1)
    Regression: MSE to the teacher's output instead of soft CE (the anchors' 0 logit loss is a bug); token tasks:
    soft CE over the labelled positions (losses.teacher_loss). The teacher
    is the fine-tuned full model (FrozenTeacher), or with `teacher_views` one frozen view per width
    (width-matched teacher). Returns (loss, per-width losses)."""

    def __init__(self, model: BertForSequenceClassification, teacher: nn.Cell, specs: Sequence[WidthSpec],
                 lambda1: float = 1.0, lambda2: float = 0.1, soft_ce_reduction: str = "row_mean",
                 temperature: float = 1.0, kind: str = "classification", mask_padding: bool = True,
                 teacher_views: Optional[Sequence[nn.Cell]] = None, data_parallel: bool = False):
        super().__init__()
        if soft_ce_reduction not in losses.SOFT_CE_REDUCTIONS:
            raise ValueError(f"loss.soft_ce_reduction '{soft_ce_reduction}': expected one of "
                             f"{losses.SOFT_CE_REDUCTIONS}")
        self.views = nn.CellList([WidthView(model, s) for s in specs])
        self.width_matched = teacher_views is not None
        if self.width_matched:          # one frozen teacher per distinct view (widths may share one), run once a step
            unique = []
            for t in teacher_views:
                if not any(t is u for u in unique):
                    unique.append(t)
            self.teachers = nn.CellList([FrozenTeacher(t) for t in unique])
            self.teacher_index = tuple(next(j for j, u in enumerate(unique) if u is t) for t in teacher_views)
        else:
            self.teacher = FrozenTeacher(teacher)
        self.l1 = float(lambda1)
        self.l2 = float(lambda2)
        self.reduction = soft_ce_reduction
        self.temperature = float(temperature)
        self.kind = kind
        self.mask_padding = mask_padding
        self.sq_err = MaskedSquaredError() if model.config.fused_cpu_kernels and mask_padding else None
        self.counts = losses.GlobalMaskCounts(data_parallel and mask_padding)
        self.n = len(specs)
        self.hidden_maps = tuple(teacher_hidden_map(s, getattr(t, "spec", None) if self.width_matched else None)
                                 for s, t in zip(specs, teacher_views or specs))

    def _one(self, view, t_logits, t_hidden, hidden_map, input_ids, segment_ids, input_mask, label_ids, tokens):
        logits, hidden, _ = view(input_ids, segment_ids, input_mask)
        pred = losses.teacher_loss(logits, t_logits, label_ids, self.kind, self.temperature, self.reduction)
        rep = 0.0
        for j, tj in enumerate(hidden_map):
            rep = rep + losses.hidden_mse(hidden[j], t_hidden[tj], input_mask, self.mask_padding, self.sq_err)
        return self.l1 * pred + self.l2 * rep * tokens

    def construct(self, input_ids, segment_ids, input_mask, label_ids):
        total = 0.0
        parts = ()
        tokens, _ = self.counts(input_mask)
        if self.width_matched:
            t_outs = ()
            for t in self.teachers:
                t_outs = t_outs + (t(input_ids, segment_ids, input_mask),)
            i = 0
            for view in self.views:
                t_logits, t_hidden, _ = t_outs[self.teacher_index[i]]
                loss = self._one(view, t_logits, t_hidden, self.hidden_maps[i], input_ids, segment_ids, input_mask,
                                 label_ids, tokens)
                total = total + loss
                parts = parts + (loss,)
                i = i + 1
        else:
            t_logits, t_hidden, _ = self.teacher(input_ids, segment_ids, input_mask)
            i = 0
            for view in self.views:
                loss = self._one(view, t_logits, t_hidden, self.hidden_maps[i], input_ids, segment_ids, input_mask,
                                 label_ids, tokens)
                total = total + loss
                parts = parts + (loss,)
                i = i + 1
        return total, parts


def teacher_hidden_map(student: WidthSpec, teacher: Optional[WidthSpec]) -> Tuple[int, ...]:
    """Teacher hidden-state index for each of the student's hidden states. `teacher` None (the full model) or a
    view at full depth (stage 2: the supernet at the student's width): `student.hidden_map` (DynaBERT: kept
    layers + the final state). A teacher view that keeps the student's own layers: 1:1."""
    n_layers = len(student.heads)
    if teacher is None or len(teacher.layers or range(n_layers)) == n_layers:
        return student.hidden_map
    if tuple(teacher.layers) == tuple(student.layers or range(n_layers)):
        return tuple(range(len(student.hidden_map)))
    raise ValueError(f"teacher view layers {teacher.layers} are neither all layers nor the student's {student.layers}")


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
    The subset of the step after `counter.value` steps depends on (seed, that number) only: the same on every
    data-parallel rank, and a resumed run continues the sequence (`counter`: the Trainer's StepCounter)."""

    def __init__(self, make_step, n: int, k: int, seed: int, counter):
        self.make_step = make_step          # subset (tuple of width indices) -> TrainStep
        self.n, self.k = n, k
        self.seed = seed
        self.counter = counter
        self.steps = {}

    def set_train(self, mode: bool = True):
        for s in self.steps.values():
            s.set_train(mode)

    def __call__(self, *inputs):
        subset = sample_widths(self.n, self.k, np.random.default_rng([self.seed, 17, self.counter.value]))
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


def describe_spec(config: BertConfig, spec: WidthSpec) -> str:
    """The log line of a width: heads and FFN per layer, kept layers (depth < 1), and any rounding note."""
    note, depth = rounding_note(config, spec), f", layers {list(spec.layers)}" if spec.depth != 1.0 else ""
    return f"width {spec.label}: heads {sizes_txt(spec.heads)}, FFN {sizes_txt(spec.ffn)}{depth}" + (
        f" ({note})" if note else "")


def sizes_txt(values: Sequence[int]) -> str:
    """'4' when every layer has 4, else '4/3/2' per layer."""
    return str(values[0]) if len(set(values)) == 1 else "/".join(str(v) for v in values)
