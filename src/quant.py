"""TernaryBERT quantizers and the wrapper that gives a built BERT classifier quantized weights and activations.

Everything quantization-specific lives here; the model file only declares four activation points in attention
(identities in the full-precision model). Every quantizer is a graph-mode function with a straight-through
estimator (STE) written so that the forward value is EXACTLY the quantized value:
    y = stop_gradient(q(x_c)) + (x_c - stop_gradient(x_c)),   x_c = clip(x, -c, c)
so dy/dx = 1 inside [-c, c] and 0 outside (the PyTorch anchor's STE), and y == q(x_c) bit for bit (the packed
artefact in src/packing.py rebuilds exactly these values).

Weights (`QuantConfig.weight_bits`, `embedding_bits`):
- 2 bits = ternary. TWN (paper + both anchors): Delta = 0.7 * mean|w|, alpha = mean of |w| over |w| > Delta,
  w_hat = alpha * sign(w) * 1[|w| > Delta]; per tensor for linear weights (paper + both anchors;
  `weight_rowwise: true` = one alpha per output row, a finer granularity than the paper's), per ROW for the word
  embedding (paper / PyTorch anchor; the MindSpore anchor does per tensor: `embedding_rowwise: false`).
  LAT (loss-aware, paper eq. 5-6): alternate alpha = ||b*D*w||_1 / ||b*D||_1 and b = sign(w)*1[|w| > alpha/2],
  starting from the TWN support, with D = sqrt(Adam second moment) + eps (`lat`, refreshed after every
  optimizer step by `LatHessianRefresh`) or D = 1 (`lat_d1`, the BinaryBERT code's variant).
- 4 / 8 bits: asymmetric min-max uniform (MindSpore anchor): s = (max - min) / (2^b - 1),
  w_hat = round((w - min) / s) * s + min, per tensor.
- 32 = full precision (not quantized).
Activations (`activation_bits` 8, or 32 = off), at the input of every quantized Dense and at Q, K, attention
probabilities and V:
- `sym` (PyTorch anchor): clip to +-c (0 = no clip), s = 127 / max|x| over the whole tensor, round(x*s)/s.
  `scale: dynamic` takes max|x| from the current batch (anchor; outputs then depend on batch composition);
  `scale: ema` keeps an EMA of max|x| during training and uses it frozen at inference (batch-independent).
- `asym` (MindSpore anchor FakeQuantWithMinMaxObserver): EMA min/max (min <= 0 <= max) during training,
  frozen at inference; s = (max - min) / 255, zero point rounded.
Which tensors are quantized is decided by ROLE (`ROLES`), never by parameter-name arithmetic; LayerNorm, biases,
position / token-type embeddings and the classifier stay full precision.
"""
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Tuple

import numpy as np
import mindspore as ms
from mindspore import Parameter, nn, ops

WEIGHT_BITS = (2, 4, 8, 32)
ACTIVATION_BITS = (8, 32)
WEIGHT_METHODS = ("twn", "lat", "lat_d1")
ACTIVATION_MODES = ("sym", "asym")
ACTIVATION_SCALES = ("dynamic", "ema")
ROLES = ("query", "key", "value", "attention_output", "ffn_in", "ffn_out", "pooler", "word_embedding")
HESSIAN_SUFFIX = ".lat_hessian"     # LAT's optimizer-state buffer: never written to model checkpoints


@dataclass
class QuantConfig:
    weight_bits: int = 2
    embedding_bits: int = 2
    activation_bits: int = 8
    weight_method: str = "twn"          # twn | lat | lat_d1 (ternary weights only)
    weight_clip: float = 2.5            # clip weights to +-c before quantizing (PyTorch 2.5, MindSpore anchor 3.0)
    weight_rowwise: bool = False        # ternary Dense weights: one alpha per output row, or per tensor (paper)
    embedding_rowwise: bool = True      # ternary word embedding: one alpha per row (paper) or per tensor
    activation_mode: str = "sym"        # sym (PyTorch anchor) | asym (MindSpore anchor, EMA min/max)
    activation_scale: str = "dynamic"   # sym: dynamic (per batch) | ema (frozen at inference); asym is always ema
    activation_clip: float = 0.0        # sym: clip to +-c before the max (0 = no clip)
    ema_decay: float = 0.99
    lat_iters: int = 10
    roles: List[str] = field(default_factory=lambda: list(ROLES))

    def __post_init__(self):
        for name, allowed in (("weight_bits", WEIGHT_BITS), ("embedding_bits", WEIGHT_BITS),
                              ("activation_bits", ACTIVATION_BITS)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v not in allowed:
                raise ValueError(f"quant {name} {v!r} not supported: expected one of {list(allowed)}")
        for name, allowed in (("weight_method", WEIGHT_METHODS), ("activation_mode", ACTIVATION_MODES),
                              ("activation_scale", ACTIVATION_SCALES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"quant {name} '{getattr(self, name)}' not supported: expected one of {allowed}")
        bad = [r for r in self.roles if r not in ROLES]
        if bad:
            raise ValueError(f"quant roles {bad} not supported: expected a subset of {list(ROLES)}")
        if self.weight_clip < 0 or self.activation_clip < 0:
            raise ValueError("quant weight_clip / activation_clip must be >= 0 (0 = no clip)")
        if not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"quant ema_decay must be in (0, 1), got {self.ema_decay}")
        if self.lat_iters < 1:
            raise ValueError(f"quant lat_iters must be >= 1, got {self.lat_iters}")
        self.roles = list(self.roles)

    def bits(self, role: str) -> int:
        """Weight bits of a role: embedding_bits for the word embedding, weight_bits for the Dense roles."""
        return self.embedding_bits if role == "word_embedding" else self.weight_bits

    def rowwise(self, role: str) -> bool:
        """Whether a role's weight gets one alpha per row: only ternary (2-bit) weights have alphas."""
        per_row = self.embedding_rowwise if role == "word_embedding" else self.weight_rowwise
        return self.bits(role) == 2 and per_row

    @property
    def notation(self) -> str:
        """The paper's W-E-A notation, e.g. W2E2A8 (32 = full precision)."""
        return f"W{self.weight_bits}E{self.embedding_bits}A{self.activation_bits}"

    def describe(self) -> str:
        if self.weight_bits == 2:
            w = {"twn": "TWN", "lat": "LAT (Adam D)", "lat_d1": "LAT (D=1)"}[self.weight_method] \
                + (" per row" if self.weight_rowwise else "")
        else:
            w = f"{self.weight_bits}-bit min-max" if self.weight_bits < 32 else "fp32"
        e = ("ternary " + ("per row" if self.embedding_rowwise else "per tensor")) if self.embedding_bits == 2 \
            else f"{self.embedding_bits}-bit min-max" if self.embedding_bits < 32 else "fp32"
        if self.activation_bits == 32:
            a = "fp32"
        elif self.activation_mode == "sym":
            a = f"8-bit sym {self.activation_scale}" + (f" clip {self.activation_clip}" if self.activation_clip else "")
        else:
            a = f"8-bit asym EMA min/max (decay {self.ema_decay})"
        return f"{self.notation}: weights {w} clip {self.weight_clip}, word embedding {e}, activations {a}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "QuantConfig":
        return cls(**d)


# ---------------------------------------------------------------- quantizer math (pure graph-mode functions)

def _round(x):
    """Round half up, floor(x + 0.5): one rounding rule in training and inference, and ONNX-exportable
    (MindSpore exports its Round op with an extra input that onnxruntime rejects)."""
    return ops.floor(x + 0.5)


def _absmax(x):
    return ops.ReduceMax()(ops.abs(x))   # the ReduceMax primitive exports to ONNX; Tensor.max() does not


def _ste(x, q):
    """Forward value exactly q, gradient identity w.r.t. x."""
    return ops.stop_gradient(q) + (x - ops.stop_gradient(x))


def _clip(x, c):
    return ops.clip_by_value(x, -c, c) if c > 0 else x


def _sum(x, rowwise):
    return x.sum(axis=-1, keepdims=True) if rowwise else x.sum()


def _mean(x, rowwise):
    return x.mean(axis=-1, keep_dims=True) if rowwise else x.mean()


def twn(w, rowwise=False):
    """TWN ternarization (no clip, no STE): alpha * sign(w) * 1[|w| > 0.7 mean|w|], per tensor or per row."""
    a = ops.abs(w)
    m = (a > 0.7 * _mean(a, rowwise)).astype(w.dtype)
    alpha = _sum(a * m, rowwise) / ops.maximum(_sum(m, rowwise), 1.0)
    return alpha * ops.sign(w) * m


def lat(w, d, rowwise=False, iters=10):
    """Loss-aware ternarization with diagonal Hessian proxy d (same shape as w, > 0), fixed-point iterations
    alpha = sum(b*d*|w|) / sum(b*d), b = 1[|w| > alpha / 2], from the TWN support."""
    a = ops.abs(w)
    b = (a > 0.7 * _mean(a, rowwise)).astype(w.dtype)
    alpha = _sum(b * d * a, rowwise) / ops.maximum(_sum(b * d, rowwise), 1e-30)
    for _ in range(iters):
        b = (a > 0.5 * alpha).astype(w.dtype)
        alpha = _sum(b * d * a, rowwise) / ops.maximum(_sum(b * d, rowwise), 1e-30)
    return alpha * ops.sign(w) * b


def minmax_uniform(w, bits):
    """Asymmetric min-max uniform quantization, per tensor (MindSpore anchor)."""
    lo = w.min()
    s = ops.maximum((w.max() - lo) / float(2 ** bits - 1), 1e-8)
    return _round((w - lo) / s) * s + lo


def sym_quant(x, amax, bits=8):
    """Symmetric uniform: s = (2^(b-1) - 1) / amax, round(x * s) / s (x already within +-amax)."""
    s = ops.div(float(2 ** (bits - 1) - 1), ops.maximum(amax, 1e-8))
    return _round(x * s) / s


def asym_quant(x, lo, hi, bits=8):
    """Asymmetric uniform with a rounded zero point (MindSpore FakeQuantWithMinMaxObserver, not narrow range)."""
    levels = float(2 ** bits - 1)
    s = ops.maximum((hi - lo) / levels, 1e-8)
    zp = _round(-lo / s)
    return (ops.clip_by_value(_round(x / s) + zp, 0.0, levels) - zp) * s


# ---------------------------------------------------------------- quantizer cells

class WeightQuantizer(nn.Cell):
    """w -> quantized w with STE (zero gradient outside the clip range). Holds LAT's Hessian proxy if needed."""

    def __init__(self, bits: int, method: str = "twn", clip: float = 2.5, rowwise: bool = False,
                 lat_iters: int = 10, shape=None):
        super().__init__()
        self.bits = bits
        self.method = method if bits == 2 else "minmax"
        self.clip = float(clip)
        self.rowwise = bool(rowwise)
        self.lat_iters = int(lat_iters)
        self.use_hessian = self.method == "lat"
        if self.use_hessian:   # D = sqrt(Adam v) + eps; ones until the first optimizer step
            self.lat_hessian = Parameter(ms.Tensor(np.ones(shape, np.float32)), name="lat_hessian",
                                         requires_grad=False)

    def quantize(self, wc):
        if self.method == "twn":
            return twn(wc, self.rowwise)
        if self.method == "lat":
            return lat(wc, self.lat_hessian, self.rowwise, self.lat_iters)
        if self.method == "lat_d1":
            return lat(wc, ops.ones_like(wc), self.rowwise, self.lat_iters)
        return minmax_uniform(wc, self.bits)

    def construct(self, w):
        wc = _clip(w, self.clip)
        return _ste(wc, self.quantize(wc))


class ActQuantizer(nn.Cell):
    """8-bit activation fake-quant with STE. sym dynamic: no state. sym ema: `amax` (0 = not yet seen).
    asym: `ema_min`, `ema_max` (MindSpore anchor init -+clip, decay `ema_decay`). EMA updates only in training.
    sync_ranks (data parallelism): in training the batch statistic (max|x|, or min / max) is all-reduced over the
    ranks, so every rank quantizes with the scale of the global batch and keeps the same EMA range (like
    SyncBatchNorm); eval and inference (one rank) use no collective."""

    def __init__(self, bits: int = 8, mode: str = "sym", scale: str = "dynamic", clip: float = 2.5,
                 ema_decay: float = 0.99, sync_ranks: bool = False):
        super().__init__()
        self.bits = bits
        self.mode = mode
        self.sync = bool(sync_ranks)
        if self.sync:
            self.all_gather = ops.AllGather()     # CPU's AllReduce sums only: gather the ranks' values, reduce here
        self.dynamic = mode == "sym" and scale == "dynamic"
        self.clip = float(clip)
        self.decay = float(ema_decay)
        if mode == "sym" and not self.dynamic:
            self.amax = Parameter(ms.Tensor(0.0, ms.float32), name="amax", requires_grad=False)
        if mode == "asym":
            init = self.clip if self.clip > 0 else 2.5
            self.ema_min = Parameter(ms.Tensor(-init, ms.float32), name="ema_min", requires_grad=False)
            self.ema_max = Parameter(ms.Tensor(init, ms.float32), name="ema_max", requires_grad=False)

    def _global_max(self, v):
        """v (0-d): its max over the ranks in training with sync_ranks, else v."""
        if self.sync and self.training:
            return ops.ReduceMax()(self.all_gather(v.reshape((1,))))
        return v

    def _global_min(self, v):
        if self.sync and self.training:
            return ops.ReduceMin()(self.all_gather(v.reshape((1,))))
        return v

    def construct(self, x):
        if self.mode == "sym":
            xc = _clip(x, self.clip)
            if self.dynamic:
                amax = ops.stop_gradient(self._global_max(_absmax(xc)))
            elif self.training:
                cur = ops.stop_gradient(self._global_max(_absmax(xc)))
                amax = ops.select(self.amax > 0.0, self.decay * self.amax + (1.0 - self.decay) * cur, cur)
                amax = ops.depend(amax, ops.assign(self.amax, amax))
            else:
                amax = self.amax
            if not self.dynamic:   # a frozen / EMA scale: values beyond it saturate (127 levels, no more)
                xc = ops.clip_by_value(xc, -amax, amax)
            return _ste(xc, sym_quant(xc, amax, self.bits))
        if self.training:
            x_min = self._global_min(x.min())
            x_max = self._global_max(x.max())
            lo = ops.stop_gradient(ops.minimum(self.decay * self.ema_min + (1.0 - self.decay) * x_min, 0.0))
            hi = ops.stop_gradient(ops.maximum(self.decay * self.ema_max + (1.0 - self.decay) * x_max, 0.0))
            lo = ops.depend(lo, ops.assign(self.ema_min, lo))
            hi = ops.depend(hi, ops.assign(self.ema_max, hi))
        else:
            lo, hi = self.ema_min, self.ema_max
        xc = ops.clip_by_value(x, lo, hi)
        return _ste(xc, asym_quant(xc, lo, hi, self.bits))


class QuantDense(nn.Cell):
    """nn.Dense with fake-quantized input and weight. Holds the SAME weight/bias Parameters as the Dense it
    replaces, so parameter names and checkpoints are unchanged."""

    def __init__(self, dense: nn.Dense, weight_quant=None, act_quant=None):
        super().__init__()
        self.weight = dense.weight
        self.bias = dense.bias
        self.has_bias = dense.has_bias
        self.weight_quant = weight_quant
        self.act_quant = act_quant
        self.matmul = ops.MatMul(transpose_b=True)
        self.bias_add = ops.BiasAdd()

    def construct(self, x):
        if self.act_quant is not None:
            x = self.act_quant(x)
        w = self.weight if self.weight_quant is None else self.weight_quant(self.weight)
        shape = x.shape
        if len(shape) != 2:
            x = x.reshape(-1, shape[-1])
        y = self.matmul(x, w)
        if self.has_bias:
            y = self.bias_add(y, self.bias)
        if len(shape) != 2:
            y = y.reshape(shape[:-1] + (y.shape[-1],))
        return y


class QuantEmbedding(nn.Cell):
    """Word-embedding lookup from the quantized table (same `embedding_table` Parameter as the nn.Embedding)."""

    def __init__(self, emb: nn.Embedding, weight_quant):
        super().__init__()
        self.embedding_table = emb.embedding_table
        self.weight_quant = weight_quant

    def construct(self, ids):
        table = self.weight_quant(self.embedding_table)
        return ops.gather(table, ids.reshape(-1), 0).reshape(ids.shape + (table.shape[-1],))


# ---------------------------------------------------------------- applying a QuantConfig to a model by role

def _role_sites(model) -> List[Tuple[str, nn.Cell, str]]:
    """(role, parent cell, attribute) for every quantizable site of a BertForSequenceClassification / BertModel."""
    bert = model.bert if hasattr(model, "bert") else model
    sites = [("word_embedding", bert.embeddings, "word_embeddings")]
    for layer in bert.encoder:
        att, ffn = layer.attention, layer.ffn
        sites += [("query", att, "query"), ("key", att, "key"), ("value", att, "value"),
                  ("attention_output", att, "output_dense"), ("ffn_in", ffn, "intermediate"),
                  ("ffn_out", ffn, "output_dense")]
    sites.append(("pooler", bert, "pooler"))
    return sites


def _act(qcfg: QuantConfig, sync_ranks: bool = False):
    if qcfg.activation_bits == 32:
        return None
    return ActQuantizer(qcfg.activation_bits, qcfg.activation_mode, qcfg.activation_scale, qcfg.activation_clip,
                        qcfg.ema_decay, sync_ranks)


def quantize_model(model, qcfg: QuantConfig, quantize_weights: bool = True, sync_ranks: bool = False):
    """Give a built model quantized weights (by role) and activation fake-quant, in place, once at build time.
    With quantize_weights=False only the activation fake-quant is added (an inference model whose weights are
    already the quantized values, e.g. unpacked by src/packing.py). sync_ranks: data-parallel training, the
    activation quantizers' batch statistics are all-reduced (ActQuantizer). Returns the model."""
    bert = model.bert if hasattr(model, "bert") else model
    # Attaching a cell renames its parameters with the attribute name only (e.g. "query.weight"): keep the
    # original names and give new state parameters their full path, so names stay unique for the optimizer.
    rel = {id(p): n for n, p in model.parameters_and_names()}
    orig = {id(p): p.name for p in model.get_parameters()}
    some = next(iter(model.get_parameters()))
    prefix = some.name[:len(some.name) - len(rel[id(some)])] if some.name.endswith(rel[id(some)]) else ""
    if qcfg.activation_bits != 32:
        for layer in bert.encoder:
            att = layer.attention
            for point in ("quant_q", "quant_k", "quant_probs", "quant_v"):
                setattr(att, point, _act(qcfg, sync_ranks))
    for role, parent, attr in _role_sites(model):
        if role not in qcfg.roles:
            continue
        cell = getattr(parent, attr)
        if role == "word_embedding":
            if qcfg.embedding_bits == 32 or not quantize_weights:
                continue
            wq = WeightQuantizer(qcfg.embedding_bits, qcfg.weight_method, qcfg.weight_clip, qcfg.rowwise(role),
                                 qcfg.lat_iters, tuple(cell.embedding_table.shape))
            setattr(parent, attr, QuantEmbedding(cell, wq))
            continue
        wq = None
        if quantize_weights and qcfg.weight_bits != 32:
            wq = WeightQuantizer(qcfg.weight_bits, qcfg.weight_method, qcfg.weight_clip, qcfg.rowwise(role),
                                 qcfg.lat_iters, tuple(cell.weight.shape))
        setattr(parent, attr, QuantDense(cell, wq, _act(qcfg, sync_ranks)))
    for n, p in model.parameters_and_names():
        p.name = orig.get(id(p), prefix + n)
    return model


def role_params(model, qcfg: QuantConfig) -> Dict[str, dict]:
    """Parameter name (relative to `model`) -> {role, bits, rowwise} of every weight `qcfg` quantizes."""
    names = {id(p): n for n, p in model.parameters_and_names()}
    out = {}
    for role, parent, attr in _role_sites(model):
        if role not in qcfg.roles:
            continue
        cell = getattr(parent, attr)
        if qcfg.bits(role) == 32:
            continue
        p = cell.embedding_table if role == "word_embedding" else cell.weight
        out[names[id(p)]] = {"role": role, "bits": qcfg.bits(role), "rowwise": qcfg.rowwise(role)}
    return out


def quant_targets(model) -> Dict[str, Tuple[str, "WeightQuantizer"]]:
    """Quantized parameter name (relative to `model`) -> (role, its WeightQuantizer), for a quantized model."""
    names = {id(p): n for n, p in model.parameters_and_names()}
    out = {}
    for role, parent, attr in _role_sites(model):
        cell = getattr(parent, attr)
        wq = getattr(cell, "weight_quant", None)
        if wq is None:
            continue
        p = cell.embedding_table if role == "word_embedding" else cell.weight
        out[names[id(p)]] = (role, wq)
    return out


class QuantizedWeights(nn.Cell):
    """One graph that returns every quantized weight of a model (the values its forward pass uses)."""

    def __init__(self, model):
        super().__init__()
        targets = quant_targets(model)
        self.names = list(targets)
        self.quantizers = nn.CellList([targets[n][1] for n in self.names])
        params = dict(model.parameters_and_names())
        self.weights = ms.ParameterTuple([params[n] for n in self.names])

    def construct(self):
        out = ()
        for i in range(len(self.names)):
            out = out + (self.quantizers[i](self.weights[i]),)
        return out


def model_state(model) -> Dict[str, np.ndarray]:
    """Checkpoint state of a (quantized) model without LAT's optimizer-state buffers."""
    return {n: p.asnumpy() for n, p in model.parameters_and_names() if not n.endswith(HESSIAN_SUFFIX)}


def quantized_state(model) -> Dict[str, np.ndarray]:
    """Model state with every quantized weight replaced by its quantized value, at the granularity used in
    training (row-wise embedding stays row-wise): what the fake-quant forward pass computes with."""
    state = model_state(model)
    qw = QuantizedWeights(model)
    if qw.names:
        qw.set_train(False)
        for n, v in zip(qw.names, qw()):
            state[n] = v.asnumpy()
    return state


class LatHessianRefresh(nn.Cell):
    """After each optimizer step: D = sqrt(v) + eps for every LAT-quantized weight, with v the AdamWeightDecay
    second moment of that weight (MindSpore's Adam has no bias correction; LAT's alpha is invariant to the
    scale of D, so it does not matter)."""

    def __init__(self, model, optimizer, eps: float = 1e-8):
        super().__init__()
        targets = quant_targets(model)
        params = dict(model.parameters_and_names())
        index = {id(p): i for i, p in enumerate(optimizer.parameters)}
        ds, vs = [], []
        for n, (_, wq) in targets.items():
            if getattr(wq, "use_hessian", False) and id(params[n]) in index:
                ds.append(wq.lat_hessian)
                vs.append(optimizer.moments2[index[id(params[n])]])
        self.count = len(ds)
        self.ds = ms.ParameterTuple(ds)
        self.vs = ms.ParameterTuple(vs)
        self.eps = eps

    def construct(self):
        ok = True
        for i in range(self.count):
            ok = ops.depend(ok, ops.assign(self.ds[i], ops.sqrt(self.vs[i]) + self.eps))
        return ok


class StepWithHessian(nn.Cell):
    """A TrainStep followed by the LAT Hessian-proxy refresh; same inputs and outputs as the TrainStep."""

    def __init__(self, step, refresh):
        super().__init__(auto_prefix=False)
        self.step = step
        self.refresh = refresh

    def construct(self, *inputs):
        loss, parts, norm = self.step(*inputs)
        loss = ops.depend(loss, self.refresh())
        return loss, parts, norm


def with_lat_refresh(step, model, optimizer):
    """(`step` followed by the LAT Hessian-proxy refresh, the number of weights refreshed) when any weight of `model`
    is LAT-quantized (the ternary Dense weights, the ternary word embedding, or both), else (`step` itself, 0)."""
    refresh = LatHessianRefresh(model, optimizer)
    if not refresh.count:
        return step, 0
    wrapped = StepWithHessian(step, refresh)
    wrapped.set_train(True)
    return wrapped, refresh.count
