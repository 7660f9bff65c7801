"""Width adaptation (src/width.py): width lists and rounding, importance against finite differences, rewiring,
width views vs the plain model, slicing into a physically smaller model that reloads and exports, the
multi-width loss and its gradients reaching the shared supernet."""

import numpy as np
import pytest
import mindspore as ms
from mindspore import nn

from src.train_step import TrainStep
from src.errors import UserError
from src.tinybert_model import BertConfig, BertForSequenceClassification, LogitsOnly, count_params
from src.width import (MultiWidthDistillLoss, WidthView, compute_importance, importance_order,
                       parse_width_list, rewire, rounding_note, sample_widths, save_importance, slice_checkpoint,
                       slice_to_width, width_spec)
from src.checkpoint import checkpoint_head_type, load_into, save_cell
from src.tinybert_model import build_classifier, load_bert_config
from src.trainer import StepCounter

TINY = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=24,
                  max_position_embeddings=16, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
                  initializer_range=0.3)
B, S = 3, 8


def _model(seed=0):
    ms.set_seed(seed)
    m = BertForSequenceClassification(TINY)
    m.set_train(False)
    return m


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    mask = np.ones((B, S), np.int32)
    mask[1, 5:] = 0
    return {"input_ids": (rng.integers(1, 40, (B, S)) * mask).astype(np.int32),
            "segment_ids": np.zeros((B, S), np.int32), "input_mask": mask,
            "label_ids": np.array([0, 1, 1], np.int32)}


def _inputs(batch):
    return [ms.Tensor(batch[k]) for k in ("input_ids", "segment_ids", "input_mask")]


# ---------------------------------------------------------------- widths

def test_width_list_maps_to_whole_heads_and_rounds_the_rest():
    base = BertConfig(num_attention_heads=12, intermediate_size=1536, hidden_size=384, num_hidden_layers=6)
    specs = parse_width_list([0.5, 1.0, 0.6666666666666666, 0.8333333333333334], base)
    assert [s.width for s in specs] == [1.0, 0.8333333333333334, 0.6666666666666666, 0.5]   # largest first
    assert [s.heads[0] for s in specs] == [12, 10, 8, 6]
    assert [s.ffn[0] for s in specs] == [1536, 1280, 1024, 768]
    assert all(rounding_note(base, s) is None for s in specs)
    odd = width_spec(base, 0.8)                       # 9.6 heads -> 10, 1228.8 neurons -> 1229: reported
    assert odd.heads == (10,) * 6 and odd.ffn == (1229,) * 6
    assert "rounded to 10" in rounding_note(base, odd)
    assert width_spec(base, 0.01).heads[0] == 1      # never zero heads
    # widths that map to the same sub-network are kept once
    assert len(parse_width_list([1.0, 1.0, 0.5], base)) == 2


@pytest.mark.parametrize("bad", [[], [0], [0.0, 0.5], [1.5], [-0.5], ["wide"], [True], [float("nan")], None])
def test_bad_width_list_is_a_clear_user_error(bad):
    with pytest.raises(UserError, match=r"^width_mult_list: "):
        parse_width_list(bad, TINY)


def test_sample_widths_sandwich_rule():
    rng = np.random.default_rng(0)
    draws = [sample_widths(5, 3, rng) for _ in range(50)]
    assert all(len(d) == 3 and d[0] == 0 and d[-1] == 4 and list(d) == sorted(set(d)) for d in draws)
    assert {d[1] for d in draws} == {1, 2, 3}        # every middle width gets trained
    assert sample_widths(4, 0, rng) == (0, 1, 2, 3) and sample_widths(4, 4, rng) == (0, 1, 2, 3)


# ---------------------------------------------------------------- views, slicing, export

def test_full_width_view_equals_plain_model():
    m = _model()
    ins = _inputs(_batch())
    logits, hidden, scores = m(*ins)
    v = WidthView(m, width_spec(TINY, 1.0))
    v.set_train(False)
    vl, vh, vs = v(*ins)
    np.testing.assert_array_equal(vl.asnumpy(), logits.asnumpy())
    for a, b in zip(vh + vs, hidden + scores):
        np.testing.assert_array_equal(a.asnumpy(), b.asnumpy())


def test_sliced_submodel_is_smaller_matches_the_view_reloads_and_exports(tmp_path):
    m = _model(1)
    ins = _inputs(_batch(1))
    spec = width_spec(TINY, 0.5)                       # 2 of 4 heads, 12 of 24 neurons
    view_logits = LogitsOnly(WidthView(m, spec))
    view_logits.set_train(False)
    expected = view_logits(*ins).asnumpy()

    sub = slice_to_width(m, 0.5)
    assert sub.config.layer_num_heads == [2, 2] and sub.config.layer_intermediate_sizes == [12, 12]
    a0 = sub.bert.encoder[0].attention
    assert a0.query.weight.shape == (8, 16) and a0.output_dense.weight.shape == (16, 8)
    assert sub.bert.encoder[1].ffn.intermediate.weight.shape == (12, 16)
    assert sub.bert.encoder[1].ffn.output_dense.weight.shape == (16, 12)
    # per layer: Q/K/V lose 3*(16*8+8), attention-out 16*8, FFN-in 16*12+12, FFN-out 16*12
    removed = 2 * (3 * (16 * 8 + 8) + 16 * 8 + (16 * 12 + 12) + 16 * 12)
    assert count_params(sub) == count_params(m) - removed

    save_cell(sub, str(tmp_path / "sub.ckpt"))
    sub.config.to_json_file(str(tmp_path / "config.json"))
    cfg = load_bert_config(str(tmp_path / "config.json"), "config")
    reloaded = build_classifier(cfg, "dense")
    load_into(reloaded, str(tmp_path / "sub.ckpt"), "sub", strict=True)
    net = LogitsOnly(reloaded)
    net.set_train(False)
    got = net(*ins).asnumpy()
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)

    ms.export(net, *ins, file_name=str(tmp_path / "sub"), file_format="MINDIR")
    graph = nn.GraphCell(ms.load(str(tmp_path / "sub.mindir")))
    np.testing.assert_allclose(graph(*ins).asnumpy(), expected, atol=1e-5, rtol=0)
    # a full-size model cannot take the sliced checkpoint: strict loading names the mismatch
    with pytest.raises(UserError, match="query.weight"):
        load_into(_model(), str(tmp_path / "sub.ckpt"), "sub", strict=True)


def test_slice_checkpoint_file_level(tmp_path):
    m = _model(2)
    save_cell(m, str(tmp_path / "supernet.ckpt"))
    TINY.to_json_file(str(tmp_path / "config.json"))
    ckpt, conf = slice_checkpoint(str(tmp_path / "supernet.ckpt"), str(tmp_path / "config.json"), 0.75,
                                  str(tmp_path / "out"))
    cfg = BertConfig.from_json_file(conf)
    assert cfg.layer_num_heads == [3, 3] and cfg.layer_intermediate_sizes == [18, 18]
    sub = build_classifier(cfg, "dense")
    load_into(sub, ckpt, "sliced", strict=True)
    np.testing.assert_array_equal(sub.bert.encoder[0].attention.value.weight.asnumpy(),
                                  m.bert.encoder[0].attention.value.weight.asnumpy()[:12])
    np.testing.assert_array_equal(sub.bert.encoder[1].ffn.output_dense.weight.asnumpy(),
                                  m.bert.encoder[1].ffn.output_dense.weight.asnumpy()[:, :18])
    with pytest.raises(UserError, match="width_mult"):
        slice_checkpoint(str(tmp_path / "supernet.ckpt"), str(tmp_path / "config.json"), 1.5, str(tmp_path / "x"))
    # the supernet's own folder: its config.json would be replaced by the sub-model's; refused, nothing written
    before = (tmp_path / "config.json").read_bytes()
    with pytest.raises(UserError, match=r"config\.json would overwrite the supernet config"):
        slice_checkpoint(str(tmp_path / "supernet.ckpt"), str(tmp_path / "config.json"), 0.5, str(tmp_path))
    assert (tmp_path / "config.json").read_bytes() == before and not (tmp_path / "model.ckpt").exists()


def test_slice_keeps_the_supernets_head_type(tmp_path):
    """A relu_pooler supernet (its checkpoint records the head) slices into a relu_pooler sub-model whose
    checkpoint records it too, so export.py rebuilds the ReLU; an explicit other head is refused."""
    m = build_classifier(TINY, "relu_pooler")
    save_cell(m, str(tmp_path / "supernet.ckpt"))
    TINY.to_json_file(str(tmp_path / "config.json"))
    ckpt, _ = slice_checkpoint(str(tmp_path / "supernet.ckpt"), str(tmp_path / "config.json"), 0.5,
                               str(tmp_path / "out"))
    assert checkpoint_head_type(ckpt) == "relu_pooler"
    with pytest.raises(UserError, match="--head_type dense: checkpoint .* was saved with head_type relu_pooler"):
        slice_checkpoint(str(tmp_path / "supernet.ckpt"), str(tmp_path / "config.json"), 0.5,
                         str(tmp_path / "out2"), head_type="dense")
    with pytest.raises(UserError, match=r"supernet checkpoint: '.*nope\.ckpt' does not exist"):
        slice_checkpoint(str(tmp_path / "nope.ckpt"), str(tmp_path / "config.json"), 0.5, str(tmp_path / "out3"))


# ---------------------------------------------------------------- importance and rewiring

def _ce(logits, labels):
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -logp[np.arange(len(labels)), labels].mean()


def test_importance_matches_finite_differences_and_sums_fresh_per_batch_gradients():
    m = _model(3)
    b1, b2 = _batch(3), _batch(4)
    imp1 = compute_importance(m, [b1], kind="classification")
    net = LogitsOnly(m)
    net.set_train(False)
    ins = _inputs(b1)

    def loss():
        return _ce(net(*ins).asnumpy(), b1["label_ids"])

    def directional(params_slices, eps=1e-2):
        """d/da L(theta with the given slices scaled by (1+a)) at a=0, central differences."""
        saved = [(p, p.asnumpy().copy()) for p, _ in params_slices]
        vals = []
        for sign in (1, -1):
            for (p, sl), (_, orig) in zip(params_slices, saved):
                a = orig.copy()
                a[sl] *= 1 + sign * eps
                p.set_data(ms.Tensor(a))
            vals.append(loss())
        for p, orig in saved:
            p.set_data(ms.Tensor(orig))
        return (vals[0] - vals[1]) / (2 * eps)

    d = TINY.head_size
    for li, layer in enumerate(m.bert.encoder):
        att = layer.attention
        for h in range(4):
            # scaling head h's probabilities by m == scaling its value rows and bias by m
            fd = directional([(att.value.weight, np.s_[h * d:(h + 1) * d]), (att.value.bias, np.s_[h * d:(h + 1) * d])])
            assert imp1["head"][li, h] == pytest.approx(abs(fd), rel=2e-3, abs=1e-6)
        ffn = layer.ffn
        for j in (0, 7, 23):
            fd_in = directional([(ffn.intermediate.weight, np.s_[j]), (ffn.intermediate.bias, np.s_[j])])
            fd_out = directional([(ffn.output_dense.weight, np.s_[:, j])])
            assert imp1["ffn"][li][j] == pytest.approx(abs(fd_in) + abs(fd_out), rel=2e-3, abs=1e-6)
    assert imp1["head"].max() > 1e-3                    # the check above is not a comparison of zeros

    # two batches = sum of the two per-batch scores (no stale, accumulating gradients as in the anchors)
    imp2 = compute_importance(m, [b2], kind="classification")
    both = compute_importance(m, [b1, b2], kind="classification")
    np.testing.assert_allclose(both["head"], imp1["head"] + imp2["head"], rtol=1e-5)
    np.testing.assert_allclose(both["ffn"][1], imp1["ffn"][1] + imp2["ffn"][1], rtol=1e-5)
    norm = compute_importance(m, [b1], kind="classification", normalize=True)
    np.testing.assert_allclose(np.linalg.norm(norm["head"], axis=1), 1.0, rtol=1e-6)


def test_rewiring_preserves_logits_and_sorts_importance(tmp_path):
    m = _model(5)
    batch = _batch(5)
    net = LogitsOnly(m)
    net.set_train(False)
    before = net(*_inputs(batch)).asnumpy()
    imp = compute_importance(m, [batch], kind="classification")
    head_order, ffn_order = importance_order(imp)
    assert head_order[0] != [0, 1, 2, 3] or head_order[1] != [0, 1, 2, 3]   # a real permutation is exercised
    save_importance(imp, head_order, ffn_order, str(tmp_path))
    saved = np.load(tmp_path / "importance.npz")
    np.testing.assert_array_equal(saved["head"], imp["head"])
    rewire(m, head_order, ffn_order)
    after = net(*_inputs(batch)).asnumpy()
    np.testing.assert_allclose(after, before, atol=1e-5, rtol=0)
    imp_after = compute_importance(m, [batch], kind="classification")
    for li in range(2):
        np.testing.assert_allclose(imp_after["head"][li], imp["head"][li][head_order[li]], rtol=1e-4, atol=1e-8)
        assert list(imp_after["head"][li]) == sorted(imp_after["head"][li], reverse=True)
        np.testing.assert_allclose(imp_after["ffn"][li], imp["ffn"][li][ffn_order[li]], rtol=1e-4, atol=1e-8)


# ---------------------------------------------------------------- multi-width loss and training

def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_multi_width_loss_matches_numpy_and_trains_only_the_active_slice():
    student, teacher = _model(6), _model(7)
    batch = _batch(6)
    ins = _inputs(batch) + [ms.Tensor(batch["label_ids"])]
    specs = parse_width_list([1.0, 0.5], TINY)
    loss_net = MultiWidthDistillLoss(student, teacher, specs, lambda1=1.0, lambda2=0.1, soft_ce_reduction="row_mean")
    loss_net.set_train(False)
    total, parts = loss_net(*ins)

    t_logits, t_hidden, _ = teacher(*_inputs(batch))
    mask = batch["input_mask"].astype(np.float64)[:, :, None]
    expected = []
    for s in specs:
        sub = slice_to_width(student, s.width)
        sub.set_train(False)
        logits, hidden, _ = sub(*_inputs(batch))
        pt = _softmax(t_logits.asnumpy().astype(np.float64))
        ls = np.log(_softmax(logits.asnumpy().astype(np.float64)))
        soft = -(pt * ls).sum(-1).mean()                 # true CE: sum over classes, mean over batch
        rep = sum((((h.asnumpy() - t.asnumpy()) ** 2) * mask).sum() / (mask.sum() * 16)
                  for h, t in zip(hidden, t_hidden))
        expected.append(soft + 0.1 * rep)
    np.testing.assert_allclose([p.asnumpy() for p in parts], expected, rtol=1e-5)
    assert float(total.asnumpy()) == pytest.approx(sum(expected), rel=1e-5)

    # one SGD step on the 0.5 width only: leading heads/neurons move, the rest of the supernet does not
    half = MultiWidthDistillLoss(student, teacher, specs[1:], soft_ce_reduction="row_mean")
    q = student.bert.encoder[0].attention.query.weight
    w2 = student.bert.encoder[1].ffn.output_dense.weight
    q0, w20 = q.asnumpy().copy(), w2.asnumpy().copy()
    step = TrainStep(half, nn.SGD(student.trainable_params(), learning_rate=0.5), clip_mode="none")
    step.set_train(True)
    step(*ins)
    assert np.abs(q.asnumpy()[:8] - q0[:8]).max() > 1e-6
    np.testing.assert_array_equal(q.asnumpy()[8:], q0[8:])
    assert np.abs(w2.asnumpy()[:, :12] - w20[:, :12]).max() > 1e-6
    np.testing.assert_array_equal(w2.asnumpy()[:, 12:], w20[:, 12:])
    assert all(not p.requires_grad for p in teacher.get_parameters())


def test_width_matched_teacher_uses_the_same_width():
    student, teacher = _model(8), _model(8)             # same weights: each width's hidden MSE must be 0
    batch = _batch(8)
    specs = parse_width_list([1.0, 0.5], TINY)
    loss_net = MultiWidthDistillLoss(student, teacher, specs, lambda1=1.0, lambda2=0.1, soft_ce_reduction="row_mean",
                                     teacher_views=[WidthView(teacher, s) for s in specs])
    loss_net.set_train(False)
    _, parts = loss_net(*_inputs(batch), ms.Tensor(batch["label_ids"]))
    for s, part in zip(specs, parts):
        sub = slice_to_width(teacher, s.width)
        sub.set_train(False)
        p = _softmax(sub(*_inputs(batch))[0].asnumpy().astype(np.float64))
        entropy = -(p * np.log(p)).sum(-1).mean()      # CE of a distribution with itself
        assert float(part.asnumpy()) == pytest.approx(entropy, rel=1e-5)


def test_sampled_width_step_builds_one_step_per_subset_and_shares_it():
    from src.width import SampledWidthStep
    built, used = [], []

    class FakeStep:
        def __init__(self, subset):
            self.subset, self.calls, self.mode = subset, 0, None

        def set_train(self, mode=True):
            self.mode = mode

        def __call__(self, *inputs):
            self.calls += 1
            used.append(self.subset)
            return float(len(self.subset)), ("parts",), 1.0

    def make(subset):
        built.append(FakeStep(subset))
        return built[-1]

    done = StepCounter()                                     # the Trainer's steps-done counter
    step = SampledWidthStep(make, n=4, k=3, seed=0, counter=done)
    for _ in range(30):
        loss, parts, norm = step("batch")
        done.value += 1
        assert loss == 3.0 and parts == (3.0,)
    assert sorted(s.subset for s in built) == [(0, 1, 3), (0, 2, 3)]      # each subset compiled once
    assert sum(s.calls for s in built) == 30 and all(s.mode is True for s in built)
    first = list(used)
    used.clear()
    done.value = 17                                          # a resumed run: the sequence goes on from step 17
    resumed = SampledWidthStep(make, n=4, k=3, seed=0, counter=done)
    for _ in range(13):
        resumed("batch")
        done.value += 1
    assert used == first[17:]


# ---------------------------------------------------------------- depth (DynaBERT-D)

def test_depth_rule_keeps_layers_spread_over_the_depth():
    from src.width import kept_layers
    assert kept_layers(12, 0.75) == (0, 1, 2, 4, 5, 6, 8, 9, 10)          # drops every fourth layer
    assert kept_layers(12, 0.5) == (0, 2, 4, 6, 8, 10)                    # every other layer
    assert kept_layers(6, 0.5) == (0, 2, 4)
    assert kept_layers(6, 0.75) == (0, 1, 2, 4, 5)                        # 4.5 layers rounded to 5
    assert kept_layers(6, 1.0) == tuple(range(6)) and kept_layers(6, 0.01) == (0,)
    deep = TINY.replace(num_hidden_layers=6)
    specs = parse_width_list([1.0, 0.5], deep, depths=[0.5, 1.0])
    assert [s.label for s in specs] == ["1.000", "0.500", "1.000_d0.500", "0.500_d0.500"]   # largest first
    assert specs[3].layers == (0, 2, 4) and specs[3].heads[0] == 2
    assert specs[0].hidden_map == tuple(range(7))                         # full depth: 1:1
    assert specs[3].hidden_map == (0, 2, 4, 6)                            # the final state <- teacher hidden 6
    assert width_spec(deep, 1.0, 0.75).hidden_map == (0, 1, 2, 4, 5, 6)
    assert "3.00 layers" not in (rounding_note(deep, specs[3]) or "")
    assert "4.50 layers rounded to 5" in rounding_note(deep, width_spec(deep, 1.0, 0.75))
    with pytest.raises(UserError, match=r"depth_mult_list: depth 0 is out of range"):
        parse_width_list([1.0], deep, depths=[0])


def test_depth_hidden_map_is_dynaberts_kept_layers_plus_the_last():
    """DynaBERT matches the sub-network's state entering kept layer k to teacher hidden k and its final state
    (the classifier's input) to the teacher's final hidden state L, never to hidden L-1."""
    big = TINY.replace(num_hidden_layers=12)
    half, three_quarters = width_spec(big, 1.0, 0.5), width_spec(big, 0.5, 0.75)
    assert half.layers == (0, 2, 4, 6, 8, 10) and half.hidden_map == (0, 2, 4, 6, 8, 10, 12)
    assert three_quarters.layers == (0, 1, 2, 4, 5, 6, 8, 9, 10)          # layers 3, 7, 11 dropped
    assert three_quarters.hidden_map == (0, 1, 2, 4, 5, 6, 8, 9, 10, 12)
    assert width_spec(big, 1.0, 1.0).hidden_map == tuple(range(13))
    for d in (0.25, 0.5, 0.75, 1.0 / 3, 0.9):                             # one entry per hidden state, ends at L
        s = width_spec(big, 1.0, d)
        assert len(s.hidden_map) == len(s.layers) + 1 and s.hidden_map[0] == 0 and s.hidden_map[-1] == 12


def test_depth_view_slices_to_a_shallower_model_and_the_loss_maps_kept_layers(tmp_path):
    deep = TINY.replace(num_hidden_layers=4)
    ms.set_seed(11)
    student = BertForSequenceClassification(deep)
    teacher = BertForSequenceClassification(deep)
    for m in (student, teacher):
        m.set_train(False)
    batch = _batch(3)
    ins = _inputs(batch)
    spec = width_spec(deep, 0.5, 0.5)                                     # layers 0 and 2, 2 heads, 12 neurons
    assert spec.layers == (0, 2)
    view = LogitsOnly(WidthView(student, spec))
    view.set_train(False)
    expected = view(*ins).asnumpy()

    sub = slice_to_width(student, 0.5, 0.5)
    assert sub.config.num_hidden_layers == 2 and sub.config.layer_num_heads == [2, 2]
    assert count_params(sub) == count_params(slice_to_width(student, 0.5)) - 2 * count_params(
        slice_to_width(student, 0.5).bert.encoder[1])                     # two of four half-width layers gone
    np.testing.assert_array_equal(sub.bert.encoder[1].attention.query.weight.asnumpy(),
                                  student.bert.encoder[2].attention.query.weight.asnumpy()[:8])  # renumbered
    save_cell(sub, str(tmp_path / "sub.ckpt"))
    sub.config.to_json_file(str(tmp_path / "config.json"))
    reloaded = build_classifier(load_bert_config(str(tmp_path / "config.json"), "c"), "dense")
    load_into(reloaded, str(tmp_path / "sub.ckpt"), "sub", strict=True)
    net = LogitsOnly(reloaded)
    net.set_train(False)
    np.testing.assert_allclose(net(*ins).asnumpy(), expected, atol=1e-5, rtol=0)

    # the loss matches the depth-0.5 student's hidden states j to the teacher's hidden_map[j] = (0, 2, 4): the
    # state entering kept layer k to teacher hidden k, the final one to the teacher's final hidden state
    loss_net = MultiWidthDistillLoss(student, teacher, [spec], lambda1=0.0, lambda2=1.0)
    loss_net.set_train(False)
    _, parts = loss_net(*ins, ms.Tensor(batch["label_ids"]))
    _, t_hidden, _ = teacher(*ins)
    _, s_hidden, _ = sub(*ins)
    mask = batch["input_mask"].astype(np.float64)[:, :, None]
    rep = sum((((s_hidden[j].asnumpy() - t_hidden[t].asnumpy()) ** 2) * mask).sum() / (mask.sum() * 16)
              for j, t in enumerate((0, 2, 4)))
    assert spec.hidden_map == (0, 2, 4) and len(s_hidden) == 3 and len(t_hidden) == 5
    np.testing.assert_allclose(parts[0].asnumpy(), rep, rtol=1e-5)


def test_regression_importance_and_width_loss_are_row_by_row_mse():
    """Regression (STS-B, num_labels 1): logits are (B, 1) and the batcher's labels (B, 1); importance's loss and
    the width loss's prediction term are the mean of per-row squared errors (a (B, 1) - (B,) broadcast would
    average all B x B pairs instead)."""
    cfg = TINY.replace(num_labels=1)
    ms.set_seed(11)
    student = BertForSequenceClassification(cfg)
    ms.set_seed(12)
    teacher = BertForSequenceClassification(cfg)
    for m in (student, teacher):
        m.set_train(False)
    batch = dict(_batch(8), label_ids=np.array([[0.5], [2.0], [4.5]], np.float32))
    s = student(*_inputs(batch))[0].asnumpy().astype(np.float64)
    t = teacher(*_inputs(batch))[0].asnumpy().astype(np.float64)
    assert s.shape == t.shape == (B, 1) and np.ptp(s) > 1e-3 and np.ptp(t) > 1e-3
    y = batch["label_ids"].astype(np.float64)
    imp = compute_importance(student, [batch], kind="regression")
    assert imp["loss"] == pytest.approx(((s - y) ** 2).mean(), rel=1e-5)
    assert imp["loss"] != pytest.approx(((s - y.reshape(-1)) ** 2).mean(), rel=1e-3)   # the broadcast value differs
    loss_net = MultiWidthDistillLoss(student, teacher, parse_width_list([1.0], cfg), lambda1=1.0, lambda2=0.0,
                                     kind="regression")
    loss_net.set_train(False)
    total, _ = loss_net(*_inputs(batch), ms.Tensor(batch["label_ids"]))
    assert float(total.asnumpy()) == pytest.approx(((s - t) ** 2).mean(), rel=1e-5)


def test_every_width_x_depth_grid_point_slices_to_a_plain_model_with_the_supernet_logits(tmp_path):
    """DynaBERT's grid, widths 1/0.75/0.5/0.25 x depths 1/0.75/0.5 on a 4-layer, 4-head supernet: each sub-network
    saved as a plain model reloads strictly from its own config.json and gives the supernet view's logits; the
    teacher map of stage 2 (teacher at full depth) is DynaBERT's, of a narrowed teacher with the same layers 1:1.
    PyNative: 24 forwards of 12 shapes without 24 graph compilations (graph-mode parity: the tests above)."""
    from src.width import teacher_hidden_map
    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        _grid_slices(tmp_path)
    finally:
        ms.set_context(mode=ms.GRAPH_MODE)
    deep = TINY.replace(num_hidden_layers=4)
    half = width_spec(deep, 0.5, 0.5)
    assert half.layers == (0, 2)
    assert teacher_hidden_map(half, width_spec(deep, 0.5)) == (0, 2, 4) == teacher_hidden_map(half, None)
    assert teacher_hidden_map(half, half) == (0, 1, 2)
    with pytest.raises(ValueError):
        teacher_hidden_map(half, width_spec(deep, 0.5, 0.75))


def _grid_slices(tmp_path):
    deep = TINY.replace(num_hidden_layers=4, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    ms.set_seed(13)
    supernet = BertForSequenceClassification(deep)
    supernet.set_train(False)
    ins = _inputs(_batch(4))
    specs = parse_width_list([1.0, 0.75, 0.5, 0.25], deep, depths=[1.0, 0.75, 0.5])
    assert len(specs) == 12
    for s in specs:
        view = LogitsOnly(WidthView(supernet, s))
        view.set_train(False)
        sub = slice_to_width(supernet, s.width, s.depth)
        folder = tmp_path / s.label
        folder.mkdir()
        save_cell(sub, str(folder / "model.ckpt"))
        sub.config.to_json_file(str(folder / "config.json"))
        conf = load_bert_config(str(folder / "config.json"), "c")
        assert conf.num_hidden_layers == len(s.layers) and conf.layer_num_heads == [s.heads[0]] * len(s.layers)
        reloaded = build_classifier(conf, "dense")
        load_into(reloaded, str(folder / "model.ckpt"), "sub", strict=True)
        net = LogitsOnly(reloaded)
        net.set_train(False)
        np.testing.assert_allclose(net(*ins).asnumpy(), view(*ins).asnumpy(), atol=1e-5, rtol=0, err_msg=s.label)
