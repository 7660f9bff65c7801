"""BERT / TinyBERT cells for MindSpore (post-LN BERT, as in Google BERT and HF `modeling_bert.py`).

One readable model file. It knows nothing about distillation, quantization or width search:
- `BertConfig` describes the shape, including per-layer head and FFN sizes, so a narrowed sub-model is just a
  config (`layer_num_heads`, `layer_intermediate_sizes`). It reads and writes HF `config.json`.
- `BertModel` returns what every TinyBERT loss needs: the sequence output, the pooled output, all L+1 hidden
  states (embedding output first) and all L attention score tensors (pre-softmax, mask added).
- `BertForSequenceClassification` adds the task head: dropout -> dense (standard, default) or the anchors'
  ReLU-on-pooler head (`head_type="relu_pooler"`, TinyBERT/MindSpore-zoo parity).
- `BertForTokenClassification` (NER): dropout -> dense on every position of the sequence output, as HF's
  `BertForTokenClassification` (same parameter names: `classifier`); `BertForQuestionAnswering` (extractive QA):
  `qa_outputs` dense -> start / end logits per position, as HF's. It keeps the pooler of the backbone (unused:
  every checkpoint of this project has one layout, so a pre-trained BertModel loads strictly and width slicing,
  quantization and conversion see the same cells); exported graphs do not contain it.

Parameter names mirror HF `BertModel` (the explicit HF <-> MindSpore map is `NAME_MAP` in `src/hf_checkpoint.py`), e.g.
`bert.encoder.0.attention.query.weight`, `bert.embeddings.LayerNorm.gamma`.
"""
import copy
import json
import math
from dataclasses import asdict, dataclass, fields
from typing import List, Optional, Sequence

import numpy as np
import mindspore as ms
from mindspore import nn, ops
from mindspore.common.initializer import Normal, TruncatedNormal

from src.checkpoint import HEAD_TYPES
from src.cpu_kernels import FusedGELU, FusedLayerNorm, dropout
from src.errors import UserError
from src.fileio import atomic_json, require_file

# HF `hidden_act` strings -> whether GELU uses the tanh approximation. "gelu_erf_poly" is the exact GELU with erf
# from Abramowitz-Stegun 7.1.26 (|err| < 1.5e-7), built only from ops MindSpore can export to ONNX (`Erf` is not).
_GELU_APPROX = {"gelu": False, "gelu_exact": False, "gelu_new": True, "gelu_pytorch_tanh": True,
                "gelu_tanh": True, "gelu_fast": True, "gelu_erf_poly": False}


class ErfPolyGELU(nn.Cell):
    """x * Phi(x) = 0.5 * (x + |x| * erf(|x| / sqrt 2)) with erf(z) = 1 - poly(t) exp(-z^2), t = 1 / (1 + p z), z >= 0
    (A-S 7.1.26). Same values as the exact GELU to ~6e-7 in fp32; uses Abs/Mul/Add/Div/Exp only."""

    def construct(self, x):
        a = ops.abs(x)
        z = a * 0.7071067811865476
        t = ops.div(ops.ones_like(z), 1.0 + 0.3275911 * z)
        poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
        return 0.5 * (x + a * (1.0 - poly * ops.exp(-(z * z))))


RUNTIME_FIELDS = {"fused_cpu_kernels"}


def heads_after_pruning(pruned_heads: dict, num_layers: int, num_heads: int) -> List[int]:
    """Heads left per layer by a Hugging Face `pruned_heads` ({layer: [head indices removed]}, keys as strings in
    config.json). HF keeps the remaining heads in their order, so a model pruned this way is the same as one with
    `layer_num_heads` heads per layer. ValueError when a layer or head index is out of range, repeated, or a layer
    would keep no head."""
    if not isinstance(pruned_heads, dict):
        raise ValueError(f"pruned_heads must be a dict {{layer: [head indices]}}, got {pruned_heads!r}")
    heads = [num_heads] * num_layers
    for key, removed in pruned_heads.items():
        try:
            layer = int(key)
        except (TypeError, ValueError):
            raise ValueError(f"pruned_heads: layer {key!r} is not a layer index") from None
        if not 0 <= layer < num_layers:
            raise ValueError(f"pruned_heads: layer {layer} is out of range (num_hidden_layers {num_layers})")
        if not isinstance(removed, (list, tuple)) or not all(isinstance(h, int) and not isinstance(h, bool)
                                                             for h in removed):
            raise ValueError(f"pruned_heads: layer {layer}: expected a list of head indices, got {removed!r}")
        bad = [h for h in removed if not 0 <= h < num_heads]
        if bad or len(set(removed)) != len(removed):
            raise ValueError(f"pruned_heads: layer {layer}: {list(removed)} must be distinct head indices in "
                             f"0..{num_heads - 1}")
        if len(removed) == num_heads:
            raise ValueError(f"pruned_heads: layer {layer} would keep no head (all {num_heads} pruned)")
        heads[layer] = num_heads - len(removed)
    return heads


@dataclass
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"                 # "gelu" = exact erf GELU; "gelu_tanh"/"gelu_new" = tanh approximation
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    # Per-layer sizes of a narrowed model (None = uniform). Head size stays hidden_size / num_attention_heads.
    layer_num_heads: Optional[List[int]] = None
    layer_intermediate_sizes: Optional[List[int]] = None
    # Task head (saved in config.json as HF does).
    num_labels: int = 2
    # Runtime only (never read from or written to config.json): LayerNorm and the exact GELU run as the fused C++
    # kernels of src/cpu_kernels.py (CPU, float32). Same parameters, same math; set by the runs on CPU.
    fused_cpu_kernels: bool = False

    def __post_init__(self):
        if self.hidden_act not in _GELU_APPROX:
            raise ValueError(f"hidden_act '{self.hidden_act}' not supported: expected one of {sorted(_GELU_APPROX)}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads "
                             f"{self.num_attention_heads}")
        for name in ("layer_num_heads", "layer_intermediate_sizes"):
            v = getattr(self, name)
            if v is not None:
                if len(v) != self.num_hidden_layers:
                    raise ValueError(f"{name} has {len(v)} entries, expected num_hidden_layers="
                                     f"{self.num_hidden_layers}")
                if any(int(x) < 1 for x in v):
                    raise ValueError(f"{name} must be >= 1 per layer, got {v}")
                setattr(self, name, [int(x) for x in v])

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def gelu_approximate(self) -> bool:
        return _GELU_APPROX[self.hidden_act]

    def heads(self, layer: int) -> int:
        return self.layer_num_heads[layer] if self.layer_num_heads else self.num_attention_heads

    def ffn(self, layer: int) -> int:
        return self.layer_intermediate_sizes[layer] if self.layer_intermediate_sizes else self.intermediate_size

    def replace(self, **kw) -> "BertConfig":
        d = asdict(self)
        d.update(kw)
        return BertConfig(**d)

    # ---- HF config.json ----
    @classmethod
    def from_dict(cls, d: dict) -> "BertConfig":
        known = {f.name for f in fields(cls)} - RUNTIME_FIELDS
        kw = {k: v for k, v in d.items() if k in known}
        if "num_labels" not in d and "id2label" in d:
            kw["num_labels"] = len(d["id2label"])
        if d.get("pruned_heads"):
            heads = heads_after_pruning(d["pruned_heads"], kw.get("num_hidden_layers", cls.num_hidden_layers),
                                        kw.get("num_attention_heads", cls.num_attention_heads))
            if kw.get("layer_num_heads") is not None and list(kw["layer_num_heads"]) != heads:
                raise ValueError(f"pruned_heads {d['pruned_heads']} leave {heads} heads per layer, but "
                                 f"layer_num_heads is {kw['layer_num_heads']}")
            kw["layer_num_heads"] = heads
        return cls(**kw)

    @classmethod
    def from_json_file(cls, path: str) -> "BertConfig":
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in RUNTIME_FIELDS:
            del d[k]
        if d["layer_num_heads"] is None:
            del d["layer_num_heads"]
        if d["layer_intermediate_sizes"] is None:
            del d["layer_intermediate_sizes"]
        d["model_type"] = "bert"
        d["architectures"] = ["BertModel"]
        d["pad_token_id"] = 0
        d["position_embedding_type"] = "absolute"
        return d

    def to_json_file(self, path: str):
        atomic_json(path, self.to_dict(), sort_keys=True)


def _dense(cin: int, cout: int, std: float) -> nn.Dense:
    # nn.Dense stores the weight [out, in] (= torch Linear) and runs MatMul with transpose_b: the fast CPU layout.
    return nn.Dense(cin, cout, weight_init=TruncatedNormal(std), bias_init="zeros")


def _layernorm(config: BertConfig) -> nn.Cell:
    if config.fused_cpu_kernels:
        return FusedLayerNorm(config.hidden_size, config.layer_norm_eps)
    return nn.LayerNorm((config.hidden_size,), epsilon=config.layer_norm_eps)


def _gelu(config: BertConfig) -> nn.Cell:
    if config.fused_cpu_kernels and not config.gelu_approximate:
        return FusedGELU()
    if config.hidden_act == "gelu_erf_poly":
        return ErfPolyGELU()
    return nn.GELU(approximate=config.gelu_approximate)


class BertEmbeddings(nn.Cell):
    """word + position + token type embeddings, LayerNorm, dropout."""

    def __init__(self, config: BertConfig):
        super().__init__()
        std = config.initializer_range
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, embedding_table=Normal(std))
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size,
                                                embedding_table=Normal(std))
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size,
                                                  embedding_table=Normal(std))
        self.LayerNorm = _layernorm(config)
        self.dropout = dropout(config.hidden_dropout_prob)

    def construct(self, input_ids, token_type_ids):
        seq_len = input_ids.shape[1]
        position_ids = ops.arange(seq_len, dtype=ms.int32).reshape(1, seq_len)
        x = self.word_embeddings(input_ids) + self.position_embeddings(position_ids) \
            + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(x))


class BertAttention(nn.Cell):
    """Multi-head self-attention + output projection + residual LayerNorm.

    Returns (output, scores) where scores = QK^T / sqrt(d) + mask_bias, before softmax: the TinyBERT
    attention-distillation target.
    """

    def __init__(self, config: BertConfig, layer: int):
        super().__init__()
        std = config.initializer_range
        self.num_heads = config.heads(layer)
        self.head_size = config.head_size
        inner = self.num_heads * self.head_size
        self.query = _dense(config.hidden_size, inner, std)
        self.key = _dense(config.hidden_size, inner, std)
        self.value = _dense(config.hidden_size, inner, std)
        self.output_dense = _dense(inner, config.hidden_size, std)
        self.output_LayerNorm = _layernorm(config)
        self.attn_dropout = dropout(config.attention_probs_dropout_prob)
        self.output_dropout = dropout(config.hidden_dropout_prob)
        self.scale = 1.0 / math.sqrt(self.head_size)
        self.softmax = nn.Softmax(axis=-1)
        # Activation quantization points (TernaryBERT): identities here; src/quant.py swaps them for 8-bit
        # fake-quant cells on Q and K (before QK^T) and on the probabilities and V (before probs @ V).
        self.quant_q = nn.Identity()
        self.quant_k = nn.Identity()
        self.quant_probs = nn.Identity()
        self.quant_v = nn.Identity()

    def _split(self, x, b, s):
        return x.reshape(b, s, self.num_heads, self.head_size).transpose(0, 2, 1, 3)

    # src/width.py _LayerView.construct carries a marked copy of this forward and BertFFN's (weights sliced to a
    # width); a change here goes there too (tests/test_width.py::test_full_width_view_equals_plain_model).
    def construct(self, hidden, mask_bias):
        b, s = hidden.shape[0], hidden.shape[1]
        q = self._split(self.query(hidden), b, s)
        k = self._split(self.key(hidden), b, s)
        v = self._split(self.value(hidden), b, s)
        scores = ops.matmul(self.quant_q(q), self.quant_k(k).transpose(0, 1, 3, 2)) * self.scale + mask_bias
        probs = self.quant_probs(self.attn_dropout(self.softmax(scores)))
        ctx = ops.matmul(probs, self.quant_v(v))
        ctx = ctx.transpose(0, 2, 1, 3).reshape(b, s, self.num_heads * self.head_size)
        out = self.output_LayerNorm(self.output_dropout(self.output_dense(ctx)) + hidden)
        return out, scores


class BertFFN(nn.Cell):
    """intermediate dense -> GELU -> output dense -> dropout -> residual LayerNorm."""

    def __init__(self, config: BertConfig, layer: int):
        super().__init__()
        std = config.initializer_range
        self.intermediate = _dense(config.hidden_size, config.ffn(layer), std)
        self.act = _gelu(config)
        self.output_dense = _dense(config.ffn(layer), config.hidden_size, std)
        self.output_LayerNorm = _layernorm(config)
        self.dropout = dropout(config.hidden_dropout_prob)

    def construct(self, hidden):
        x = self.output_dense(self.act(self.intermediate(hidden)))
        return self.output_LayerNorm(self.dropout(x) + hidden)


class BertLayer(nn.Cell):
    def __init__(self, config: BertConfig, layer: int):
        super().__init__()
        self.attention = BertAttention(config, layer)
        self.ffn = BertFFN(config, layer)

    def construct(self, hidden, mask_bias):
        hidden, scores = self.attention(hidden, mask_bias)
        return self.ffn(hidden), scores


class BertModel(nn.Cell):
    """BERT encoder.

    construct(input_ids, token_type_ids, input_mask) -> (sequence_output, pooled_output, hidden_states,
    attention_scores) with hidden_states a tuple of L+1 [B,S,H] tensors (embedding output first) and
    attention_scores a tuple of L [B,heads,S,S] tensors (pre-softmax, padding keys at about -10000).
    """

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = copy.deepcopy(config)
        self.embeddings = BertEmbeddings(config)
        self.encoder = nn.CellList([BertLayer(config, i) for i in range(config.num_hidden_layers)])
        self.pooler = _dense(config.hidden_size, config.hidden_size, config.initializer_range)
        self.tanh = nn.Tanh()
        self.num_layers = config.num_hidden_layers

    def construct(self, input_ids, token_type_ids, input_mask):
        # keys only: [B, 1, 1, S]; 0 where attended, -10000 where padded (Google BERT / model-zoo convention)
        mask_bias = (1.0 - input_mask.astype(ms.float32)).reshape(input_mask.shape[0], 1, 1, -1) * -10000.0
        hidden = self.embeddings(input_ids, token_type_ids)
        hidden_states = (hidden,)
        attention_scores = ()
        for layer in self.encoder:
            hidden, scores = layer(hidden, mask_bias)
            hidden_states = hidden_states + (hidden,)
            attention_scores = attention_scores + (scores,)
        pooled = self.tanh(self.pooler(hidden[:, 0]))
        return hidden, pooled, hidden_states, attention_scores


class BertWithHead(nn.Cell):
    """BERT + a task head: the head-type check, the config copy and the backbone are here, the head layers and
    `logits_of` in each subclass. construct -> (logits, hidden_states, attention_scores). The backbone's pooler
    exists in every head kind (one checkpoint layout); only the sequence head uses it."""

    HEAD_TYPES = ("dense",)
    HEAD_KIND = ""
    TASK = ""          # in the head-type error: "... not supported for <TASK>"

    def __init__(self, config: BertConfig, head_type: str = "dense"):
        super().__init__()
        if head_type not in self.HEAD_TYPES:
            raise ValueError(f"head_type '{head_type}' not supported for {self.TASK}: expected one of "
                             f"{', '.join(self.HEAD_TYPES)}")
        self.config = copy.deepcopy(config)
        self.head_type = head_type
        self.bert = BertModel(config)

    def construct(self, input_ids, token_type_ids, input_mask):
        sequence_output, _, hidden_states, attention_scores = self.bert(input_ids, token_type_ids, input_mask)
        return self.logits_of(sequence_output), hidden_states, attention_scores

    def logits_of(self, sequence_output):
        """The head on the last hidden state [B, S, H] (also run by width views)."""
        raise NotImplementedError


class BertForSequenceClassification(BertWithHead):
    """BERT + sentence head -> logits [B, num_labels].

    head_type "dense": dropout(pooled) -> Dense (HF / Google BERT fine-tuning head, the default).
    head_type "relu_pooler": Dense(ReLU(pooled)) — the TinyBERT / model-zoo head, for parity runs only.
    For regression tasks use num_labels=1.
    """

    HEAD_TYPES = HEAD_TYPES
    HEAD_KIND = "sequence"
    TASK = "sequence classification"

    def __init__(self, config: BertConfig, head_type: str = "dense"):
        super().__init__(config, head_type)
        self.dropout = dropout(config.hidden_dropout_prob)
        self.relu = nn.ReLU()
        self.classifier = _dense(config.hidden_size, config.num_labels, config.initializer_range)

    def logits_of(self, sequence_output):
        """[B, S, H] -> [B, num_labels]."""
        pooled = self.bert.tanh(self.bert.pooler(sequence_output[:, 0]))
        if self.head_type == "relu_pooler":
            return self.classifier(self.relu(pooled))
        return self.classifier(self.dropout(pooled))


class BertForTokenClassification(BertWithHead):
    """BERT + per-token head (NER) -> logits [B, S, num_labels].

    dropout(sequence_output) -> Dense, as HF `BertForTokenClassification`. Only head_type "dense" exists for token
    tasks (the ReLU-on-pooler head is sentence-level)."""

    HEAD_KIND = "token"
    TASK = "token classification"

    def __init__(self, config: BertConfig, head_type: str = "dense"):
        super().__init__(config, head_type)
        self.dropout = dropout(config.hidden_dropout_prob)
        self.classifier = _dense(config.hidden_size, config.num_labels, config.initializer_range)

    def logits_of(self, sequence_output):
        """[B, S, H] -> [B, S, num_labels]."""
        return self.classifier(self.dropout(sequence_output))


class BertForQuestionAnswering(BertWithHead):
    """BERT + span head (extractive QA) -> logits [B, S, 2]: start and end logits of every position. One Dense
    `qa_outputs` on the sequence output, as HF's `BertForQuestionAnswering` (no dropout there either).
    config.num_labels must be 2."""

    HEAD_KIND = "span"
    TASK = "span extraction"

    def __init__(self, config: BertConfig, head_type: str = "dense"):
        if config.num_labels != 2:
            raise ValueError(f"a span head has 2 outputs (start, end), the config says num_labels "
                             f"{config.num_labels}")
        super().__init__(config, head_type)
        self.qa_outputs = _dense(config.hidden_size, 2, config.initializer_range)

    def logits_of(self, sequence_output):
        """[B, S, H] -> [B, S, 2]."""
        return self.qa_outputs(sequence_output)


# head kind (Task.head in src/tasks.py; recorded in checkpoints as head_kind) -> model class
HEADS = {"sequence": BertForSequenceClassification, "token": BertForTokenClassification,
         "span": BertForQuestionAnswering}
HEAD_PARAMS = ("classifier.", "qa_outputs.")   # the task head's parameters: absent from a pre-trained backbone


class LogitsOnly(nn.Cell):
    """Wraps a classifier so it returns only the logits (for eval and MINDIR/ONNX export)."""

    def __init__(self, net: nn.Cell):
        super().__init__()
        self.net = net

    def construct(self, input_ids, token_type_ids, input_mask):
        return self.net(input_ids, token_type_ids, input_mask)[0]


def count_params(net: nn.Cell) -> int:
    return int(sum(np.prod(p.shape) for p in net.get_parameters()))


def load_bert_config(path: str, what: str, **overrides) -> BertConfig:
    require_file(path, what)
    try:
        cfg = BertConfig.from_json_file(path)
        return cfg.replace(**overrides) if overrides else cfg
    except (ValueError, TypeError, OSError) as e:
        raise UserError(f"{what} '{path}': {e}") from None


def student_config(teacher_cfg: BertConfig, spec: dict) -> BertConfig:
    """Student shape from the YAML `student.arch` block; vocab/positions/types always follow the teacher."""
    keys = ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size", "hidden_act",
            "hidden_dropout_prob", "attention_probs_dropout_prob")
    kw = {k: spec[k] for k in keys if spec.get(k) is not None}
    try:
        return teacher_cfg.replace(layer_num_heads=None, layer_intermediate_sizes=None, **kw)
    except ValueError as e:
        raise UserError(f"student.arch: {e}") from None


def build_classifier(cfg: BertConfig, head_type: str, head_kind: str = "sequence") -> nn.Cell:
    """The model of a head kind (Task.head: "sequence" -> BertForSequenceClassification, "token" ->
    BertForTokenClassification, "span" -> BertForQuestionAnswering) with `cfg.num_labels` outputs."""
    try:
        return HEADS[head_kind](cfg, head_type=head_type)
    except ValueError as e:
        raise UserError(str(e)) from None


def copy_teacher_layers(student, teacher, layers: Sequence[int]):
    """DistilBERT-style init: embeddings, pooler and the chosen encoder layers copied from the teacher.
    Requires equal hidden size; student layer i <- teacher layer layers[i]."""
    s_bert = student.bert if hasattr(student, "bert") else student
    t_bert = teacher.bert if hasattr(teacher, "bert") else teacher
    if s_bert.config.hidden_size != t_bert.config.hidden_size:
        raise UserError(f"student.init=teacher_layers needs equal hidden sizes (student "
                        f"{s_bert.config.hidden_size}, teacher {t_bert.config.hidden_size})")
    if len(layers) != s_bert.num_layers or any(not 0 <= i < t_bert.num_layers for i in layers):
        raise UserError(f"student.teacher_layers {list(layers)}: expected {s_bert.num_layers} indices in "
                        f"[0, {t_bert.num_layers - 1}]")

    def copy(dst_cell, src_cell):
        src = dict(src_cell.parameters_and_names())       # names relative to the cell
        for key, p in dst_cell.parameters_and_names():
            if src[key].shape != p.shape:
                raise UserError(f"student.init=teacher_layers: {p.name} shape {p.shape} differs from teacher "
                                f"{src[key].shape} (heads/FFN sizes must match the teacher)")
            p.set_data(ms.Tensor(src[key].asnumpy()))

    copy(s_bert.embeddings, t_bert.embeddings)
    copy(s_bert.pooler, t_bert.pooler)
    for i, ti in enumerate(layers):
        copy(s_bert.encoder[i], t_bert.encoder[ti])
