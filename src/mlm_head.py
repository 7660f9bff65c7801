"""BERT's masked-LM head (HF `BertForMaskedLM`) for MindSpore, in the style of src/tinybert_model.py.

- `BertMLMHead` is HF's `cls.predictions`: transform (dense -> GELU -> LayerNorm) and the output bias; the decoder
  weight is tied to the word embedding table, so the head has no copy of it.
- `BertForMaskedLM` runs `BertModel` and the head at one position per row: construct(input_ids, token_type_ids,
  input_mask, positions) -> logits [B, vocab] of the token at `positions[b]` of row b. Scoring only the masked
  position keeps a batch of masked sentences at [B, vocab] instead of [B, S, vocab].

Parameter names: `bert.*` as in BertForSequenceClassification, `cls.transform_dense.*`,
`cls.transform_LayerNorm.{gamma,beta}` and `cls.bias`; src/hf_checkpoint.py (`MLM_HEAD_MAP`, `load_hf_mlm`) maps
them to HF's `cls.predictions.*`. The pooler of BertModel is built but not used (HF's masked LM has none).
"""
import copy

import mindspore as ms
from mindspore import nn, ops
from mindspore.common.initializer import initializer

from src.tinybert_model import BertConfig, BertModel, _dense, _gelu, _layernorm


class BertMLMHead(nn.Cell):
    """HF `cls.predictions` without the tied decoder: construct(hidden [B, H], word_table [V, H]) -> [B, V]."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.transform_dense = _dense(config.hidden_size, config.hidden_size, config.initializer_range)
        self.transform_act = _gelu(config)
        self.transform_LayerNorm = _layernorm(config)
        self.bias = ms.Parameter(initializer("zeros", (config.vocab_size,), ms.float32), name="bias")

    def construct(self, hidden, word_table):
        x = self.transform_LayerNorm(self.transform_act(self.transform_dense(hidden)))
        return ops.matmul(x, word_table.T) + self.bias


class BertForMaskedLM(nn.Cell):
    """BERT + masked-LM head, scored at one position per row (see the module doc)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = copy.deepcopy(config)
        self.bert = BertModel(config)
        self.cls = BertMLMHead(config)

    def construct(self, input_ids, token_type_ids, input_mask, positions):
        sequence, _, _, _ = self.bert(input_ids, token_type_ids, input_mask)
        rows = ops.arange(sequence.shape[0], dtype=ms.int32)
        picked = ops.gather_nd(sequence, ops.stack([rows, positions.astype(ms.int32)], axis=1))   # [B, H]
        return self.cls(picked, self.bert.embeddings.word_embeddings.embedding_table)
