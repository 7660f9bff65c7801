"""TinyBERT task-data augmentation (src/augment.py, src/mlm_head.py, tools/augment_data.py): the masked-LM
candidates against a numpy forward of the same HF weights, GloVe neighbours against a brute-force cosine top-K,
the replacement rate, copies and labels in the written records, determinism across reruns and batch sizes, and
bad input (one ERROR line, nothing written)."""
import csv
import json
import math
import os
import re

import mindspore as ms
import numpy as np
import pytest

from conftest import ROOT
from src.augment import Augmenter, GloveNeighbours, MaskedLMCandidates, top_k
from src.dataset import read_all
from src.errors import UserError, run_main
from src.tokenization import BertTokenizer
from tools import augment_data, prepare_data

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "a", "movie", "film", "was", "is", "good", "bad",
         "great", "awful", "very", "plot", "acting", "un", "##believ", "##ably", "##s", ".", ",", "!", "and", "but",
         "not", "fun", "dull", "story", "actors", "scenes", "music", "long", "short", "boring", "funny", "sad",
         "happy"]
TINY = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
            max_position_embeddings=64, type_vocab_size=2, hidden_act="gelu", layer_norm_eps=1e-12,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, initializer_range=0.02)
SENTENCES = ["the movie was unbelievably good .", "a very dull plot , but great acting !",
             "the story is not fun and the music is long", "boring scenes", "funny , sad and happy actors",
             "the film was awful", "short but good"]
COLUMNS = ["input_ids", "input_mask", "segment_ids", "label_ids"]


# ---- fixtures ----------------------------------------------------------------------------------------------
def hf_mlm_state(vocab_size, seed=0):
    """Random HF BertForMaskedLM tensors (bert.* + cls.predictions.*) of the TINY shape."""
    rng = np.random.default_rng(seed)
    h, f = TINY["hidden_size"], TINY["intermediate_size"]

    def w(*shape, std=0.5):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    s = {"bert.embeddings.word_embeddings.weight": w(vocab_size, h),
         "bert.embeddings.position_embeddings.weight": w(TINY["max_position_embeddings"], h),
         "bert.embeddings.token_type_embeddings.weight": w(2, h),
         "bert.embeddings.LayerNorm.weight": 1 + w(h, std=0.1), "bert.embeddings.LayerNorm.bias": w(h, std=0.1)}
    for i in range(TINY["num_hidden_layers"]):
        p = f"bert.encoder.layer.{i}."
        for name in ("query", "key", "value"):
            s[p + f"attention.self.{name}.weight"], s[p + f"attention.self.{name}.bias"] = w(h, h), w(h, std=0.1)
        s[p + "attention.output.dense.weight"], s[p + "attention.output.dense.bias"] = w(h, h), w(h, std=0.1)
        s[p + "attention.output.LayerNorm.weight"] = 1 + w(h, std=0.1)
        s[p + "attention.output.LayerNorm.bias"] = w(h, std=0.1)
        s[p + "intermediate.dense.weight"], s[p + "intermediate.dense.bias"] = w(f, h), w(f, std=0.1)
        s[p + "output.dense.weight"], s[p + "output.dense.bias"] = w(h, f), w(h, std=0.1)
        s[p + "output.LayerNorm.weight"], s[p + "output.LayerNorm.bias"] = 1 + w(h, std=0.1), w(h, std=0.1)
    s["cls.predictions.transform.dense.weight"] = w(h, h)
    s["cls.predictions.transform.dense.bias"] = w(h, std=0.1)
    s["cls.predictions.transform.LayerNorm.weight"] = 1 + w(h, std=0.1)
    s["cls.predictions.transform.LayerNorm.bias"] = w(h, std=0.1)
    s["cls.predictions.bias"] = w(vocab_size, std=0.5)
    return s


def write_mlm_dir(path, state, vocab_size, vocab=None):
    from safetensors.numpy import save_file
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(dict(TINY, vocab_size=vocab_size, architectures=["BertForMaskedLM"]), f)
    save_file(state, os.path.join(path, "model.safetensors"))
    if vocab is not None:
        with open(os.path.join(path, "vocab.txt"), "w") as f:
            f.write("\n".join(vocab) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("augment")
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n")
    state = hf_mlm_state(len(VOCAB))
    saved = dict(state)                                   # as HF's .bin files hold them: the tied decoder, its bias
    saved["cls.predictions.decoder.weight"] = state["bert.embeddings.word_embeddings.weight"].copy()
    saved["cls.predictions.decoder.bias"] = state["cls.predictions.bias"].copy()
    mlm_dir = write_mlm_dir(root / "mlm", saved, len(VOCAB), VOCAB)
    # GloVe-like table: every whole word of the vocab, 'unbelievably', and 100 fillers
    words = [t for t in VOCAB if not t.startswith(("[", "##"))] + ["unbelievably"] + [f"w{i}" for i in range(100)]
    vectors = np.random.default_rng(1).standard_normal((len(words), 8)).astype(np.float32)
    np.save(root / "glove.npy", vectors)
    (root / "glove.txt").write_text("\n".join(words) + "\n")
    with open(root / "train.csv", "w", newline="") as f:
        csv.writer(f).writerows([("text", "label")] + [(s, "pos" if i % 2 else "neg") for i, s in enumerate(SENTENCES)])
    (root / "dev.csv").write_text("text,label\ngood film,pos\nbad plot,neg\n")
    return dict(root=root, vocab=str(vocab), state=state, mlm_dir=mlm_dir, words=words, vectors=vectors,
                tok=BertTokenizer(str(vocab)))


def csv_args(ws, out, *extra):
    return ["--task", "csv", "--labels", "neg,pos", "--input", f"train={ws['root'] / 'train.csv'}",
            "--input", f"dev={ws['root'] / 'dev.csv'}", "--vocab_file", ws["vocab"], "--max_seq_length", "24",
            "--glove", str(ws["root"] / "glove.npy"), "--glove_words", str(ws["root"] / "glove.txt"),
            "--output_dir", str(out), *map(str, extra)]


# ---- numpy reference of HF BertForMaskedLM -----------------------------------------------------------------
_erf = np.vectorize(math.erf)


def _ln(x, g, b, eps=1e-12):
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps) * g + b


def _gelu(x):
    return 0.5 * x * (1 + _erf(x / math.sqrt(2)))


def numpy_mlm_logits(s, ids, pos):
    """HF BertForMaskedLM logits at position `pos` of one unpadded row, float64."""
    s = {k: v.astype(np.float64) for k, v in s.items()}
    n, heads = len(ids), TINY["num_attention_heads"]
    d = TINY["hidden_size"] // heads
    x = s["bert.embeddings.word_embeddings.weight"][ids] + s["bert.embeddings.position_embeddings.weight"][:n] \
        + s["bert.embeddings.token_type_embeddings.weight"][0]
    x = _ln(x, s["bert.embeddings.LayerNorm.weight"], s["bert.embeddings.LayerNorm.bias"])
    for i in range(TINY["num_hidden_layers"]):
        p = f"bert.encoder.layer.{i}."

        def dense(v, name):
            return v @ s[p + name + ".weight"].T + s[p + name + ".bias"]
        q, k, v = (dense(x, f"attention.self.{m}").reshape(n, heads, d).transpose(1, 0, 2)
                   for m in ("query", "key", "value"))
        att = q @ k.transpose(0, 2, 1) / math.sqrt(d)
        att = np.exp(att - att.max(-1, keepdims=True))
        ctx = (att / att.sum(-1, keepdims=True) @ v).transpose(1, 0, 2).reshape(n, heads * d)
        a = _ln(dense(ctx, "attention.output.dense") + x, s[p + "attention.output.LayerNorm.weight"],
                s[p + "attention.output.LayerNorm.bias"])
        x = _ln(dense(_gelu(dense(a, "intermediate.dense")), "output.dense") + a, s[p + "output.LayerNorm.weight"],
                s[p + "output.LayerNorm.bias"])
    t = _gelu(x[pos] @ s["cls.predictions.transform.dense.weight"].T + s["cls.predictions.transform.dense.bias"])
    t = _ln(t, s["cls.predictions.transform.LayerNorm.weight"], s["cls.predictions.transform.LayerNorm.bias"])
    return t @ s["bert.embeddings.word_embeddings.weight"].T + s["cls.predictions.bias"]


@pytest.fixture(scope="module")
def mlm_net(ws):
    from src.hf_checkpoint import load_hf_mlm
    return load_hf_mlm(ws["mlm_dir"])[0]


# ---- candidates ----------------------------------------------------------------------------------------------
def test_top_k_is_a_stable_sort():
    rng = np.random.default_rng(0)
    s = rng.standard_normal((3, 5000)).astype(np.float32)
    s[0, 10:30] = 9.0                                                     # ties: the lower columns win
    ref = np.lexsort((np.broadcast_to(np.arange(5000), s.shape), -s), axis=1)[:, :15]
    assert (top_k(s, 15) == ref).all()
    assert list(top_k(s, 15)[0]) == list(range(10, 25))


def test_mlm_candidates_are_the_numpy_top_k(ws, mlm_net):
    tok, k = ws["tok"], 5
    mlm = MaskedLMCandidates(mlm_net, tok, k, max_seq_length=24, rows_per_forward=4)
    allowed = np.array([not t.startswith(("##", "[")) for t in VOCAB])
    aug = Augmenter(tok, GloveNeighbours(ws["vectors"], ws["words"], k), mlm)
    checked = 0
    for sent in SENTENCES[:3]:
        words = tok.basic_words(sent)
        cands = aug._candidates([words])[0]
        pieces = tok.token_ids(sent)
        offset = 0
        for w, c in zip(words, cands):
            ids = tok.token_ids(w)
            if len(ids) == 1 and any(ch.isalnum() for ch in w):
                row = [tok.cls_id] + pieces + [tok.sep_id]
                row[offset + 1] = tok.vocab["[MASK]"]
                ref = numpy_mlm_logits(ws["state"], row, offset + 1)
                got = mlm_net(*[ms.Tensor(np.array([a], np.int32)) for a in
                                (row, [0] * len(row), [1] * len(row), offset + 1)]).asnumpy()[0]
                np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
                ref[~allowed] = -np.inf
                order = np.argsort(-ref, kind="stable")
                assert ref[order[k - 1]] - ref[order[k]] > 1e-3          # no near tie at the boundary
                assert c == tuple(VOCAB[i] for i in sorted(order[:k]))
                checked += 1
            elif w == "unbelievably":                                     # three pieces: GloVe
                assert len(ids) == 3 and c == aug.glove.neighbours([w])[w] and len(c) == k
            offset += len(ids)
    assert checked >= 12 and aug.stats.mlm_words == checked


def test_glove_neighbours_are_the_brute_force_cosine_top_k(ws):
    vectors, words = ws["vectors"], ws["words"]
    g = GloveNeighbours(vectors, words, 7)
    got = g.neighbours(words)                                             # 140 words: three padded products
    assert g.products == 3
    unit = vectors.astype(np.float64) / np.linalg.norm(vectors.astype(np.float64), axis=1, keepdims=True)
    cos = unit @ unit.T
    np.fill_diagonal(cos, -np.inf)
    for i, w in enumerate(words):
        assert set(got[w]) == {words[j] for j in np.argsort(-cos[i])[:7]}, w
    assert g.neighbours(["good", "not-in-the-table"]) == {"good": got["good"], "not-in-the-table": ()}
    assert g.products == 3                                                # cached


# ---- the rule ----------------------------------------------------------------------------------------------
def test_replacement_rate_and_copies(ws):
    rng = np.random.default_rng(3)
    words = ws["words"]
    sents = [" ".join(rng.choice(words[40:], 12, replace=False)) for _ in range(200)]
    aug = Augmenter(ws["tok"], GloveNeighbours(ws["vectors"], words, 5), p_replace=0.3, copies=8, seed=5)
    out = list(aug.augment([(s, None) for s in sents]))
    assert len(out) == 200 and all(len(c) == 8 and all(b is None for _, b in c) for c in out)
    changed = sum(a != o for s, copies in zip(sents, out) for t, _ in copies for a, o in zip(t.split(), s.split()))
    assert aug.stats.draws == 200 * 12 * 8 and changed == aug.stats.replaced   # neighbours exclude the word
    assert abs(changed / aug.stats.draws - 0.3) < 0.02
    nb = aug.glove.neighbours(words)
    for s, copies in zip(sents, out):
        for t, _ in copies:
            assert all(a == o or a in nb[o] for a, o in zip(t.split(), s.split()))


def test_deterministic_and_independent_of_batch_size(ws, mlm_net):
    tok = ws["tok"]
    pairs = [(s, SENTENCES[-1 - i]) for i, s in enumerate(SENTENCES)]      # a pair task: both segments

    def run(batch, rows, seed=11):
        glove = GloveNeighbours(ws["vectors"], ws["words"], 4)
        mlm = MaskedLMCandidates(mlm_net, tok, 4, 24, rows_per_forward=rows)
        return list(Augmenter(tok, glove, mlm, 0.5, 3, seed, batch_size=batch).augment(pairs))

    ref = run(256, 4)
    assert run(256, 4) == ref
    assert run(1, 1) == ref and run(3, 4) == ref
    assert run(256, 4, seed=12) != ref
    assert any(a != pairs[i][0] for i, copies in enumerate(ref) for a, _ in copies)
    assert any(b != pairs[i][1] for i, copies in enumerate(ref) for _, b in copies)   # segment b augmented too


# ---- tools/augment_data.py ---------------------------------------------------------------------------------
def test_tool_writes_originals_copies_and_labels(ws, tmp_path, capsys):
    out, plain = tmp_path / "aug", tmp_path / "plain"
    assert augment_data.main(csv_args(ws, out, "--copies", 3, "--seed", 4, "--candidates", 5)) == 0
    log = capsys.readouterr().out
    assert "no --mlm_dir, so every word's candidates are its 5 nearest GloVe words" in log
    prepare_data.main(csv_args(ws, plain)[:12] + ["--output_dir", str(plain)])
    aug = read_all(str(out / "train.tf_record"), str(out / "train_schema.json"), COLUMNS)
    ref = read_all(str(plain / "train.tf_record"), str(plain / "train_schema.json"), COLUMNS)
    n = len(SENTENCES)
    assert aug["input_ids"].shape[0] == n * 4
    np.testing.assert_array_equal(aug["label_ids"][:, 0], np.repeat(ref["label_ids"][:, 0], 4))
    np.testing.assert_array_equal(aug["input_ids"][::4], ref["input_ids"])          # originals first, unchanged
    assert (aug["input_ids"][1::4] != ref["input_ids"]).any()
    for split in ("dev",):                                                           # not augmented
        a = read_all(str(out / f"{split}.tf_record"), str(out / f"{split}_schema.json"), COLUMNS)
        b = read_all(str(plain / f"{split}.tf_record"), str(plain / f"{split}_schema.json"), COLUMNS)
        assert all(np.array_equal(a[c], b[c]) for c in COLUMNS)
    rec = json.loads((out / "augment.json").read_text())
    assert (rec["task"], rec["copies"], rec["candidates"], rec["stats"]["train"]["examples"]) == ("csv", 3, 5, n)
    again = tmp_path / "again"
    augment_data.main(csv_args(ws, again, "--copies", 3, "--seed", 4, "--candidates", 5, "--batch_size", 2))
    assert (again / "train.tf_record").read_bytes() == (out / "train.tf_record").read_bytes()


def test_tool_with_masked_lm(ws, tmp_path, capsys):
    out = tmp_path / "aug"
    assert augment_data.main(csv_args(ws, out, "--copies", 2, "--candidates", 4, "--mlm_dir", ws["mlm_dir"],
                                      "--mlm_batch", 4, "--format", "mindrecord")) == 0
    log = capsys.readouterr().out
    assert "candidates of one-piece words from the masked LM" in log
    stats = [line for line in log.splitlines() if line.startswith("augment train:")][0]
    assert int(re.search(r"(\d+) masked-LM", stats).group(1)) > 10 and "7 examples x (1 + 2 copies)" in stats
    rows = read_all(str(out / "train.mindrecord"), str(out / "train_schema.json"), COLUMNS, "mindrecord")
    assert rows["input_ids"].shape[0] == 21



@pytest.mark.parametrize("task, splits", [("CoLA", ["dev"]), ("MNLI", ["dev_matched", "dev_mismatched"]),
                                          ("STS-B", ["dev"])])
def test_tool_on_glue_layouts(ws, tmp_path, task, splits):
    """No-header TSV (CoLA), three splits of pairs (MNLI), float labels (STS-B): both segments of a pair change."""
    glue = os.path.join(ROOT, "tests", "fixtures", "glue", task)
    out, plain = tmp_path / "aug", tmp_path / "plain"
    common = ["--task", task, "--input_dir", glue, "--max_seq_length", "48"]
    augment_data.main(common + ["--output_dir", str(out), "--copies", "2", "--glove", str(ws["root"] / "glove.npy"),
                                "--glove_words", str(ws["root"] / "glove.txt"), "--p_replace", "1.0"])
    prepare_data.main(common + ["--output_dir", str(plain)])
    aug = read_all(str(out / "train.tf_record"), str(out / "train_schema.json"), COLUMNS)
    ref = read_all(str(plain / "train.tf_record"), str(plain / "train_schema.json"), COLUMNS)
    assert aug["input_ids"].shape[0] == 3 * ref["input_ids"].shape[0]
    np.testing.assert_array_equal(aug["input_ids"][::3], ref["input_ids"])
    np.testing.assert_array_equal(aug["label_ids"], np.repeat(ref["label_ids"], 3, axis=0))
    if task != "CoLA":                                       # pairs: the second segment is augmented too
        def second(rows, r):
            return list(rows["input_ids"][r][rows["segment_ids"][r] == 1])
        assert any(second(aug, 3 * r + 1) != second(ref, r) for r in range(ref["input_ids"].shape[0]))
    for split in splits:
        a = read_all(str(out / f"{split}.tf_record"), str(out / f"{split}_schema.json"), COLUMNS)
        b = read_all(str(plain / f"{split}.tf_record"), str(plain / f"{split}_schema.json"), COLUMNS)
        assert all(np.array_equal(a[c], b[c]) for c in COLUMNS)

# ---- bad input ---------------------------------------------------------------------------------------------
def _fails(argv, capsys, out, fragment):
    with pytest.raises(SystemExit) as e:
        run_main(augment_data.main, argv)
    err = capsys.readouterr().err.splitlines()
    assert e.value.code == 2
    assert len(err) == 1 and err[0].startswith("ERROR: ") and fragment in err[0], err
    assert not os.path.exists(out) or os.listdir(out) == []


def test_bad_glove(ws, tmp_path, capsys):
    out = tmp_path / "out"
    flat = tmp_path / "flat.npy"
    np.save(flat, ws["vectors"].ravel())
    args = csv_args(ws, out)
    args[args.index("--glove") + 1] = str(flat)
    _fails(args, capsys, out, "expected a float matrix [words, dim]")
    short = tmp_path / "short.txt"
    short.write_text("\n".join(ws["words"][:-3]) + "\n")
    args = csv_args(ws, out)
    args[args.index("--glove_words") + 1] = str(short)
    _fails(args, capsys, out, f"{len(ws['words'])} vectors but {len(ws['words']) - 3} words")


def test_bad_mlm_dir(ws, tmp_path, capsys):
    out = tmp_path / "out"
    no_head = {k: v for k, v in ws["state"].items() if not k.startswith("cls.")}
    d = write_mlm_dir(tmp_path / "no_head", no_head, len(VOCAB))
    _fails(csv_args(ws, out, "--mlm_dir", d), capsys, out, "has no cls.predictions.* tensors")
    d = write_mlm_dir(tmp_path / "big_vocab", hf_mlm_state(len(VOCAB) + 3), len(VOCAB) + 3)
    _fails(csv_args(ws, out, "--mlm_dir", d), capsys, out, f"vocab_size is {len(VOCAB) + 3} but the vocab file")
    untied = dict(ws["state"], **{"cls.predictions.decoder.weight": ws["state"]["cls.predictions.bias"][:, None]
                                   * np.ones((1, TINY["hidden_size"]), np.float32)})
    d = write_mlm_dir(tmp_path / "untied", untied, len(VOCAB))
    _fails(csv_args(ws, out, "--mlm_dir", d), capsys, out, "cls.predictions.decoder.weight differs from the word")
    d = write_mlm_dir(tmp_path / "other_vocab", ws["state"], len(VOCAB), VOCAB[:-1] + ["zebra"])
    _fails(csv_args(ws, out, "--mlm_dir", d), capsys, out, "its vocab.txt differs from the records' vocab")


def test_bad_flags_and_empty_input(ws, tmp_path, capsys):
    out = tmp_path / "out"
    _fails(csv_args(ws, out, "--copies", 0), capsys, out, "--copies 0: expected at least 1")
    _fails(csv_args(ws, out, "--p_replace", 1.5), capsys, out, "--p_replace 1.5")
    (tmp_path / "empty.csv").write_text("text,label\n")
    args = csv_args(ws, out)
    args[args.index(f"train={ws['root'] / 'train.csv'}")] = f"train={tmp_path / 'empty.csv'}"
    _fails(args, capsys, out, "no examples (empty input)")


# ---- benchmarks/bench_augment.py ---------------------------------------------------------------------------
def test_bench_quick_rows_and_from_json(tmp_path):
    from benchmarks import bench_augment
    md = tmp_path / "doc.md"
    md.write_text("x\n<!-- bench:augment_rate:start -->\nold\n<!-- bench:augment_rate:end -->\n")
    out = bench_augment.main(["--quick", "--out_dir", str(tmp_path), "--results", str(md)])
    rows = out["rate"]["rows"]
    assert [(r["copies"], r["rows"]) for r in rows] == [(0, 20), (1, 40), (2, 60)]
    assert all(r["rows_per_s"] > 0 for r in rows) and all(0.2 < r["replaced"] < 0.6 for r in rows[1:])
    block = md.read_text()
    assert "| GloVe, N 2 | 60 |" in block and "old" not in block
    md2 = tmp_path / "doc2.md"
    md2.write_text("<!-- bench:augment_rate:start -->\n<!-- bench:augment_rate:end -->\n")
    bench_augment.main(["--from_json", str(tmp_path / "augment.json"), "--results", str(md2)])
    assert md2.read_text() == block[2:]


def test_entity_type_pairs():
    """The CoNLL entity-typing pair task of bench_augment --pairs: one pair per sentence with an entity; the claim
    names one of its entities, with its own type for `yes` and another type for `no`; about half of each; the same
    seed gives the same pairs."""
    from benchmarks.bench_augment import TYPE_CLAIMS, entity_type_pairs
    sentences = [(["John", "Smith", "visited", "New", "York", "for", "Reuters"],
                  ["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "O", "B-ORG"]),
                 (["nothing", "here"], ["O", "O"])] * 200
    truth = {"John Smith": "PER", "New York": "LOC", "Reuters": "ORG"}
    claim_type = {v: k for k, v in TYPE_CLAIMS.items()}
    pairs = entity_type_pairs(sentences, np.random.default_rng(0))
    assert len(pairs) == 200 and pairs == entity_type_pairs(sentences, np.random.default_rng(0))
    seen = set()
    for sentence, claim, label in pairs:
        assert sentence == "John Smith visited New York for Reuters"
        entity, kind = next((e, claim_type[claim[len(e) + 4:]]) for e in truth if claim.startswith(e + " is "))
        assert (kind == truth[entity]) == (label == "yes") and label in ("yes", "no")
        seen.add(entity)
    assert seen == set(truth)
    assert 0.4 < sum(p[2] == "yes" for p in pairs) / len(pairs) < 0.6


def test_bench_pair_table_from_json(tmp_path):
    """The pair-task block: % of the teacher and the 97% goal from the saved numbers."""
    from benchmarks import bench_augment
    run = dict(td1_steps=150, td2_steps=210, seconds=600.0, teacher_logits="")
    machine = {"cpu": "x", "cores": 2, "threads": 2, "isa": "AVX2", "mhz": 2000.0, "peak_gflops": 64.0}
    out = {"machine": machine, "p_replace": 0.4, "candidates": 15,
           "pairs": {"pairs": {"train": 7922, "dev": 992}, "teacher_acc": 0.8, "teacher_epochs": 1,
                     "runs": [dict(run, data="CoNLL entity typing", train_rows=7922, dev_acc=0.77),
                              dict(run, data="CoNLL entity typing + augmented, N 2", train_rows=23766,
                                   dev_acc=0.78)]}}
    saved = tmp_path / "augment_pairs.json"
    saved.write_text(json.dumps(out))
    md = tmp_path / "doc.md"
    md.write_text("<!-- bench:augment_pairs:start -->\n<!-- bench:augment_pairs:end -->\n")
    bench_augment.main(["--from_json", str(saved), "--results", str(md)])
    text = md.read_text()
    assert "| CoNLL entity typing | 7,922 | 150 | 210 | 0.7700 | +0.0000 | 96.2% | no |" in text
    assert "| CoNLL entity typing + augmented, N 2 | 23,766 | 150 | 210 | 0.7800 | +0.0100 | 97.5% | yes |" in text
    assert "7,922 train / 992 dev sentence + claim pairs" in text
    assert "1 epoch on the plain pairs: dev acc 0.8000" in text


def test_bench_runs_reuse_the_first_phase_1_of_their_data():
    """--td2_steps 210 640 --aug_td2_steps 210 640: four runs; the second of each data starts phase 2 from the
    first one's phase 1."""
    from benchmarks import bench_augment
    args = bench_augment.parse_args(["--student", "--td2_steps", "210", "640", "--aug_td2_steps", "210", "640"])
    assert bench_augment._runs(args, "MR", "d", "MR + aug", "a") == [
        ("MR", "d", "td_plain", 210, None), ("MR", "d", "td_plain_td2_640", 640, "td_plain"),
        ("MR + aug", "a", "td_aug", 210, None), ("MR + aug", "a", "td_aug_td2_640", 640, "td_aug")]
    args = bench_augment.parse_args(["--pairs", "--td2_steps", "250"])
    assert [r[2:] for r in bench_augment._runs(args, "P", "d", "P + aug", "a")] == [
        ("td_plain", 250, None), ("td_aug", 250, None)]


def test_one_segment_of_a_pair_keeps_the_other_as_written(ws, tmp_path, capsys):
    """--augment_segments a / b: the named segment of each copy is the one `both` writes (same draws), the other
    one is the original text; on a one-segment task it is one error."""
    glove = GloveNeighbours(ws["vectors"], ws["words"], 4)
    pairs = [(s, SENTENCES[-1 - i]) for i, s in enumerate(SENTENCES)]

    def run(segments):
        return list(Augmenter(ws["tok"], glove, None, 0.5, 3, 7, segments=segments).augment(pairs))
    both, only_a, only_b = run("both"), run("a"), run("b")
    for i, (a, b) in enumerate(pairs):
        assert [x for x, _ in only_a[i]] == [x for x, _ in both[i]] and all(y == b for _, y in only_a[i])
        assert [y for _, y in only_b[i]] == [y for _, y in both[i]] and all(x == a for x, _ in only_b[i])
    assert any(x != a for (a, _), copies in zip(pairs, only_a) for x, _ in copies)       # a really augmented
    with pytest.raises(UserError, match="--augment_segments c: expected one of a, b, both"):
        Augmenter(ws["tok"], glove, segments="c")
    _fails(csv_args(ws, tmp_path / "x", "--augment_segments", "b"), capsys, tmp_path / "x",
           "--augment_segments b: task csv has one text segment")


# ---- token tasks (conll / ner) -----------------------------------------------------------------------------
TAGGED = [("the movie was unbelievably good .", "O B-MISC O O O O"),
          ("a very dull plot , but great acting !", "O O O B-MISC O O O B-PER O"),
          ("funny , sad and happy actors", "B-ORG I-ORG I-ORG O O O"),
          ("the story is not fun and the music is long", "O B-PER I-PER O O O O O O O")]
TOKEN_COLUMNS = COLUMNS + ["sentence_id"]


def test_token_copies_replace_one_word_for_one(ws, mlm_net):
    """augment_words: every copy has one word per word (so the tags stay aligned), the draws and candidates
    (GloVe, and the masked LM's) are those of the same sentence as one text segment, and kept words are never
    replaced."""
    glove = GloveNeighbours(ws["vectors"], ws["words"], 4)
    sents = [s.split() for s, _ in TAGGED]
    words = list(Augmenter(ws["tok"], glove, None, 0.5, 6, 9, batch_size=3).augment_words(sents))
    texts = list(Augmenter(ws["tok"], glove, None, 0.5, 6, 9).augment([(" ".join(s), None) for s in sents]))
    assert [[" ".join(c) for c in copies] for copies in words] == [[a for a, _ in t] for t in texts]
    mlm = MaskedLMCandidates(mlm_net, ws["tok"], 4, 24, rows_per_forward=4)
    words = list(Augmenter(ws["tok"], glove, mlm, 0.5, 6, 9).augment_words(sents))
    texts = list(Augmenter(ws["tok"], glove, mlm, 0.5, 6, 9).augment([(" ".join(s), None) for s in sents]))
    assert [[" ".join(c) for c in copies] for copies in words] == [[a for a, _ in t] for t in texts]
    words = list(Augmenter(ws["tok"], glove, None, 0.5, 6, 9, batch_size=3).augment_words(sents))
    assert all(len(c) == len(s) for s, copies in zip(sents, words) for c in copies)
    keep = [[t != "O" for t in tags.split()] for _, tags in TAGGED]
    aug = Augmenter(ws["tok"], glove, None, 1.0, 6, 9)
    kept = list(aug.augment_words(sents, keep))
    for s, k, copies in zip(sents, keep, kept):
        for c in copies:
            assert all((a == w) if f else (a != w or not any(ch.isalnum() for ch in w)) for a, w, f in zip(c, s, k))
    assert aug.stats.kept_entities == sum(map(sum, keep))
    cased = list(Augmenter(ws["tok"], glove, None, 0.5, 6, 9).augment_words([[w.upper() for w in s] for s in sents]))
    assert [[[a.lower() for a in c] for c in copies] for copies in cased] == words   # looked up by the basic form
    with pytest.raises(ValueError, match="one flag per word"):
        list(aug.augment_words(sents, keep[:-1]))


@pytest.fixture(scope="module")
def ner_files(ws):
    root = ws["root"] / "ner"
    root.mkdir()
    for split, rows in (("train", TAGGED), ("dev", TAGGED[:2])):
        (root / f"{split}.tsv").write_text("\n\n".join("\n".join(f"{w}\t{t}" for w, t in zip(s.split(), tags.split()))
                                                      for s, tags in rows) + "\n")
    return root


def ner_args(ws, ner_files, out, *extra):
    return ["--task", "ner", "--input", f"train={ner_files / 'train.tsv'}", "--input",
            f"dev={ner_files / 'dev.tsv'}", "--labels", "O,B-PER,I-PER,B-ORG,I-ORG,B-MISC,I-MISC",
            "--vocab_file", ws["vocab"], "--max_seq_length", "10", "--window_context", "2",
            "--glove", str(ws["root"] / "glove.npy"), "--glove_words", str(ws["root"] / "glove.txt"),
            "--output_dir", str(out), *map(str, extra)]


def test_tool_token_task_rows_keep_the_tags(ws, ner_files, tmp_path, capsys):
    """--task ner: each sentence's rows, then its copies' rows; a copy's labelled positions carry the sentence's
    tags in order (a long sentence's windows included), --keep_entities leaves entity pieces as they were, the
    split not augmented is the plain one byte for byte, and a rerun at another batch size writes the same."""
    out, plain, kept = tmp_path / "aug", tmp_path / "plain", tmp_path / "kept"
    assert augment_data.main(ner_args(ws, ner_files, out, "--copies", 2, "--seed", 3, "--candidates", 4)) == 0
    log = capsys.readouterr().out
    assert "augment train: 4 sentences x (1 + 2 copies)" in log and "train: 12 sentences" in log
    prepare_data.main(ner_args(ws, ner_files, plain)[:14] + ["--output_dir", str(plain)])
    aug = read_all(str(out / "train.tf_record"), str(out / "train_schema.json"), TOKEN_COLUMNS)
    ref = read_all(str(plain / "train.tf_record"), str(plain / "train_schema.json"), TOKEN_COLUMNS)
    sid, ref_sid = aug["sentence_id"][:, 0], ref["sentence_id"][:, 0]
    assert sorted(set(sid)) == list(range(12))

    def tags_of(rows, ids, s):
        lab = rows["label_ids"][ids == s]
        return lab[lab >= 0].tolist()
    windowed = False
    for i in range(len(TAGGED)):
        n_ref = int((ref_sid == i).sum())
        windowed |= n_ref > 1
        np.testing.assert_array_equal(aug["input_ids"][sid == 3 * i], ref["input_ids"][ref_sid == i])  # original
        for c in (1, 2):
            assert tags_of(aug, sid, 3 * i + c) == tags_of(ref, ref_sid, i)
    assert windowed                                          # the 9- and 10-word sentences need two windows at 10
    assert any(not np.array_equal(aug["input_ids"][sid == 3 * i + 1], ref["input_ids"][ref_sid == i])
               for i in range(len(TAGGED)))
    for name in ("dev.tf_record", "dev_schema.json", "labels.txt"):
        assert (out / name).read_bytes() == (plain / name).read_bytes()
    rec = json.loads((out / "augment.json").read_text())
    assert (rec["copies"], rec["augment_splits"], rec["stats"]["train"]["examples"]) == (2, ["train"], 4)
    assert rec["stats"]["train"]["draws"] == 2 * sum(any(c.isalnum() for c in w) for s, _ in TAGGED for w in s.split())
    assert not (plain / "augment.json").exists()
    again = tmp_path / "again"
    augment_data.main(ner_args(ws, ner_files, again, "--copies", 2, "--seed", 3, "--candidates", 4,
                               "--batch_size", 1))
    assert (again / "train.tf_record").read_bytes() == (out / "train.tf_record").read_bytes()
    augment_data.main(ner_args(ws, ner_files, kept, "--copies", 2, "--seed", 3, "--candidates", 4,
                               "--p_replace", 1, "--keep_entities"))
    k = read_all(str(kept / "train.tf_record"), str(kept / "train_schema.json"), TOKEN_COLUMNS)
    ksid = k["sentence_id"][:, 0]
    for i in range(len(TAGGED)):
        orig = k["input_ids"][ksid == 3 * i][0]
        lab = k["label_ids"][ksid == 3 * i][0]
        ent = [int(orig[p]) for p in np.flatnonzero(lab > 0)]             # first pieces of the entity words
        for c in (1, 2):
            ids, lab_c = k["input_ids"][ksid == 3 * i + c][0], k["label_ids"][ksid == 3 * i + c][0]
            assert [int(ids[p]) for p in np.flatnonzero(lab_c > 0)] == ent
            assert (ids != orig).any()                                    # the other words all replaced


def test_token_task_bad_flags(ws, ner_files, tmp_path, capsys):
    out = tmp_path / "out"
    _fails(ner_args(ws, ner_files, out, "--augment_segments", "a"), capsys, out,
           "--augment_segments a: task ner has one text segment")
    _fails(csv_args(ws, out, "--keep_entities"), capsys, out, "apply to --task conll / ner only")
    _fails(["--task", "squad", "--input", "x.json", "--output_dir", str(out)], capsys, out,
           "span tasks are not augmented")
    _fails(ner_args(ws, ner_files, out, "--augment_splits", "test"), capsys, out,
           "--augment_splits test: expected splits of this task (train, dev)")
    bad = tmp_path / "bad.tsv"
    bad.write_text("good\tB-PER\nfilm\tB-LOC\n")
    args = ner_args(ws, ner_files, out)
    args[args.index(f"dev={ner_files / 'dev.tsv'}")] = f"dev={bad}"
    _fails(args, capsys, out, "line 2: tag 'B-LOC' is not in the tag set given by --labels")
