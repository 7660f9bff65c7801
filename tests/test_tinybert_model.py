"""BERT model: parity with HF transformers on all-MiniLM-L6-v2, output contract, configs, heads.

Graph mode throughout (conftest). Compiled graphs: the real-weight model once (module fixture), plus three tiny
models (per-layer exact GELU, the same with tanh GELU, a relu_pooler classifier) sharing one input shape.
"""
import os

import numpy as np
import pytest
import mindspore as ms

from conftest import FIXTURES
from src.hf_checkpoint import default_teacher_dir, load_hf_into
from src.tinybert_model import BertConfig, BertForSequenceClassification, BertModel

REF = os.path.join(FIXTURES, "hf_reference", "minilm_l6_reference.npz")
TOL = 1e-4


def _run(net, ids, types, mask):
    net.set_train(False)
    out = net(ms.Tensor(ids, ms.int32), ms.Tensor(types, ms.int32), ms.Tensor(mask, ms.int32))
    return [[t.asnumpy() for t in o] if isinstance(o, tuple) else o.asnumpy() for o in out]


@pytest.fixture(scope="module")
def ref():
    return dict(np.load(REF))


@pytest.fixture(scope="module")
def minilm(ref):
    """all-MiniLM-L6-v2 loaded from the package's HF safetensors; one graph run on the fixture ids."""
    teacher = default_teacher_dir()
    net = BertModel(BertConfig.from_json_file(os.path.join(teacher, "config.json")))
    report = load_hf_into(net, teacher)
    seq, pooled, hidden, scores = _run(net, ref["input_ids"], ref["token_type_ids"], ref["attention_mask"])
    return {"report": report, "seq": seq, "pooled": pooled, "hidden": hidden, "scores": scores}


# ---- (1) HF parity on the real weights ----

def test_real_weights_load_completely(minilm):
    rep = minilm["report"]
    assert rep.ok and len(rep.loaded) == 103 and rep.ignored == ["embeddings.position_ids"]


def test_hidden_states_match_hf(minilm, ref):
    valid = ref["attention_mask"].astype(bool)                      # [B, S]
    assert len(minilm["hidden"]) == 7
    for layer, (ours, theirs) in enumerate(zip(minilm["hidden"], ref["hidden_states"])):
        err = np.abs(ours - theirs)[valid].max()
        assert err <= TOL, f"hidden state {layer}: max abs error {err}"
    np.testing.assert_array_equal(minilm["seq"], minilm["hidden"][-1])


def test_attention_probs_match_hf(minilm, ref):
    valid_rows = ref["attention_mask"].astype(bool)[:, None, :]     # query rows [B, 1, S]
    for layer, (scores, probs) in enumerate(zip(minilm["scores"], ref["attention_probs"])):
        e = np.exp(scores - scores.max(-1, keepdims=True))
        ours = e / e.sum(-1, keepdims=True)
        err = np.abs(ours - probs).max(-1)                            # [B, heads, S]
        err = err[np.broadcast_to(valid_rows, err.shape)].max()
        assert err <= TOL, f"attention probs {layer}: max abs error {err}"


def test_pooler_matches_hf(minilm, ref):
    assert np.abs(minilm["pooled"] - ref["pooler_output"]).max() <= TOL


# ---- (2) output contract ----

def test_output_shapes_and_mask(minilm, ref):
    b, s = ref["input_ids"].shape
    assert [h.shape for h in minilm["hidden"]] == [(b, s, 384)] * 7
    assert [a.shape for a in minilm["scores"]] == [(b, 12, s, s)] * 6
    assert minilm["pooled"].shape == (b, 384)
    padded_keys = np.broadcast_to(~ref["attention_mask"].astype(bool)[:, None, None, :], minilm["scores"][0].shape)
    for scores in minilm["scores"]:
        assert scores[padded_keys].max() <= -9000                     # mask bias added to padded keys
        assert scores[~padded_keys].min() > -1000


# ---- (3)-(6) tiny models ----

TINY = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=32, initializer_range=0.2,    # wide init: GELU inputs reach |x| ~ 1-2
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=3,
            layer_num_heads=[4, 2], layer_intermediate_sizes=[64, 24])


def _tiny_inputs():
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 100, size=(2, 8))
    mask = np.ones((2, 8), np.int64)
    mask[1, 5:] = 0
    types = np.zeros((2, 8), np.int64)
    types[:, 4:] = 1
    return ids, types, mask


def _copy_params(dst, src, dst_prefix=""):
    src_params = dict(src.parameters_and_names())
    for name, p in dst.parameters_and_names():
        if name.startswith(dst_prefix):
            p.set_data(ms.Tensor(src_params[name[len(dst_prefix):]].asnumpy()))


@pytest.fixture(scope="module")
def tiny():
    ms.set_seed(1)
    cfg = BertConfig(**TINY)
    net = BertModel(cfg)
    return cfg, net, _run(net, *_tiny_inputs())


def test_config_json_round_trip(tmp_path):
    cfg = BertConfig(**TINY, hidden_act="gelu_tanh")
    path = str(tmp_path / "config.json")
    cfg.to_json_file(path)
    back = BertConfig.from_json_file(path)
    assert back == cfg
    assert back.layer_num_heads == [4, 2] and back.layer_intermediate_sizes == [64, 24]
    uniform = BertConfig(**{**TINY, "layer_num_heads": None, "layer_intermediate_sizes": None})
    uniform.to_json_file(path)
    assert BertConfig.from_json_file(path) == uniform


def test_hf_config_json_reads(ref):
    cfg = BertConfig.from_json_file(os.path.join(default_teacher_dir(), "config.json"))
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size,
            cfg.vocab_size, cfg.hidden_act) == (384, 6, 12, 1536, 30522, "gelu")


def test_per_layer_model_shapes_and_run(tiny):
    cfg, net, (seq, pooled, hidden, scores) = tiny
    shapes = {n: tuple(p.shape) for n, p in net.parameters_and_names()}
    head = cfg.head_size
    assert head == 8
    assert shapes["encoder.0.attention.query.weight"] == (4 * head, 32)
    assert shapes["encoder.1.attention.query.weight"] == (2 * head, 32)
    assert shapes["encoder.1.attention.output_dense.weight"] == (32, 2 * head)
    assert shapes["encoder.0.ffn.intermediate.weight"] == (64, 32)
    assert shapes["encoder.1.ffn.intermediate.weight"] == (24, 32)
    assert shapes["encoder.1.ffn.output_dense.weight"] == (32, 24)
    assert seq.shape == (2, 8, 32) and pooled.shape == (2, 32) and len(hidden) == 3
    assert [s.shape for s in scores] == [(2, 4, 8, 8), (2, 2, 8, 8)]
    assert all(np.isfinite(h).all() for h in hidden)


def test_tanh_gelu_differs_slightly_from_exact(tiny):
    cfg, exact_net, exact = tiny
    tanh_net = BertModel(cfg.replace(hidden_act="gelu_tanh"))
    _copy_params(tanh_net, exact_net)
    approx = _run(tanh_net, *_tiny_inputs())
    np.testing.assert_array_equal(approx[2][0], exact[2][0])           # embeddings: no GELU yet
    diff = np.abs(approx[0] - exact[0]).max()
    assert 1e-5 < diff < 1e-2, diff                                   # about 8e-4
    x = np.linspace(-8, 8, 4001).astype(np.float32)                   # the activation cell itself, elementwise
    got = tanh_net.encoder[0].ffn.act(ms.Tensor(x)).asnumpy().astype(np.float64)
    v = x.astype(np.float64)
    want = 0.5 * v * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (v + 0.044715 * v ** 3)))
    assert np.abs(got - want).max() < 2e-6


def test_relu_pooler_head(tiny):
    cfg, bert, _ = tiny
    net = BertForSequenceClassification(cfg, head_type="relu_pooler")
    _copy_params(net, bert, dst_prefix="bert.")
    logits, hidden, _ = _run(net, *_tiny_inputs())
    p = {n: v.asnumpy() for n, v in net.parameters_and_names()}
    cls = hidden[-1][:, 0]
    pooled = np.tanh(cls @ p["bert.pooler.weight"].T + p["bert.pooler.bias"])
    expected = np.maximum(pooled, 0) @ p["classifier.weight"].T + p["classifier.bias"]
    assert logits.shape == (2, 3)
    np.testing.assert_allclose(logits, expected, atol=1e-5)


@pytest.mark.parametrize("bad, field", [
    (dict(hidden_size=30, num_attention_heads=4), "num_attention_heads"),
    (dict(layer_num_heads=[4, 4, 4]), "layer_num_heads"),
    (dict(layer_intermediate_sizes=[64]), "layer_intermediate_sizes"),
    (dict(hidden_act="swish"), "hidden_act"),
])
def test_bad_config_names_the_field(bad, field):
    with pytest.raises(ValueError, match=field):
        BertConfig(**{**TINY, **bad})
