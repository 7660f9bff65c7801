"""Vocabulary pruning (src/vocab_prune.py, tools/prune_vocab.py): the pruned tokenizer on kept and dropped pieces,
re-encoding rows without their text against encoding real MR sentences, a pruned model's logits and strict reload
(fp32 and TernaryBERT folders, the latter packed), mismatched vocabs, and the CLI's bad input."""
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from src.errors import UserError, run_main
from src.tokenization import BertTokenizer, default_vocab_file
from src.vocab_prune import (kept_ids, prune_model_dir, prune_rows, pruned_tokens, read_vocab_tokens, remap_ids,
                             retokenize, token_stats, wordpiece, write_vocab)

L = 64
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@pytest.fixture(scope="module")
def base():
    vocab = default_vocab_file()
    return BertTokenizer(vocab), read_vocab_tokens(vocab)


@pytest.fixture(scope="module")
def mr():
    sys.path.insert(0, ROOT)
    from tools import prepare_data
    return prepare_data.mr_splits(None, 1234)


def _pruned(tmp_path, tokens, keep):
    return BertTokenizer(write_vocab(str(tmp_path / "vocab.txt"), pruned_tokens(tokens, keep)))


def _rows(tok, texts, texts_b=None, length=L):
    enc = tok.encode_batch(texts, texts_b, length)
    return {k: np.array([e[i] for e in enc], np.int64) for i, k in enumerate(("input_ids", "input_mask",
                                                                               "segment_ids"))}


# ---- tokenization with the pruned vocab ----------------------------------------------------------------------
def test_pruned_tokenizer_same_on_kept_text_and_sub_pieces_on_dropped(tmp_path, base, mr):
    tok, tokens = base
    train = [e[0] for e in mr["train"][:300]]
    rows = _rows(tok, train)
    keep = kept_ids(tokens, rows["input_ids"], train_mask=rows["input_mask"])
    assert keep[:1].tolist() == [0] and {tokens[i] for i in keep} >= set(SPECIALS)
    pruned = _pruned(tmp_path, tokens, keep)
    # text made only of kept pieces: the same pieces, ids through the remap
    for text in train:
        assert pruned.token_ids(text) == remap_ids(tok.token_ids(text), keep, len(tokens)).tolist(), text
    # dropped pieces: the longest kept pieces, down to single characters, never [UNK]
    small = kept_ids(tokens, np.array([tok.encode("the movie was great", None, 16)[0]]))
    pruned = _pruned(tmp_path, tokens, small)
    assert tok.tokenize("wonderful greatness") == ["wonderful", "great", "##ness"]
    assert pruned.tokenize("wonderful greatness") == (["w"] + ["##" + c for c in "onderful"] + ["great"]
                                                      + ["##" + c for c in "ness"])
    assert pruned.tokenize("the movie") == ["the", "movie"]
    assert pruned.unk_id not in pruned.token_ids("an unbelievably wonderful 1990s époque")
    # without the single-character pieces a dropped piece would become [UNK]
    bare = _pruned(tmp_path, tokens, kept_ids(tokens, np.array([tok.encode("the movie", None, 8)[0]]),
                                              single_chars=False))
    assert bare.tokenize("wonderful movie") == ["[UNK]", "movie"]


def test_wordpiece_matches_the_tokenizer_and_handles_a_word_tail(base):
    tok, _ = base
    for word in ("unbelievably", "greatness", "x", "qwzxv", "a" * 101):
        assert wordpiece(word, tok.vocab, tok.unk_id) == tok.token_ids(word), word
    assert wordpiece("ness", tok.vocab, tok.unk_id, continuation=True) == [tok.vocab["##ness"]]


def test_retokenize_a_row_that_starts_inside_a_word(tmp_path, base):
    """A general-distillation window can start with "##" pieces (the word began in the window before)."""
    tok, tokens = base
    v = tok.vocab
    keep = kept_ids(tokens, np.array([[v["great"], v["movie"]]]))
    pruned = _pruned(tmp_path, tokens, keep)
    row = [v["[CLS]"], v["##ness"], v["movie"], v["great"], v["##ness"], v["[SEP]"]]
    rows = {"input_ids": np.array([row + [0] * 10]), "input_mask": np.array([[1] * 6 + [0] * 10]),
            "segment_ids": np.zeros((1, 16), np.int64)}
    new, at_max = retokenize(rows, tokens, pruned)
    p = pruned.vocab
    tail = [p["##n"], p["##e"], p["##s"], p["##s"]]
    want = [p["[CLS]"]] + tail + [p["movie"], p["great"]] + tail + [p["[SEP]"]]
    assert new["input_ids"][0].tolist() == want + [0] * (16 - len(want))
    assert new["input_mask"][0].tolist() == [1] * len(want) + [0] * (16 - len(want))
    assert at_max == 0


# ---- re-encoding rows without their text ----------------------------------------------------------------------
def test_retokenize_equals_encoding_the_text_with_the_pruned_vocab(tmp_path, base, mr):
    tok, tokens = base
    train = _rows(tok, [e[0] for e in mr["train"][:300]])
    keep = kept_ids(tokens, train["input_ids"], train_mask=train["input_mask"])
    pruned = _pruned(tmp_path, tokens, keep)
    dev = [e[0] for e in mr["dev"][:300]] + ["a \u2603 movie , unwatchably \U0001F600 long"]   # [UNK] stays [UNK]
    rows = _rows(tok, dev)
    assert tok.unk_id in rows["input_ids"][-1]
    rows["label_ids"] = np.arange(len(dev)).reshape(-1, 1)
    new, at_max = retokenize(rows, tokens, pruned)
    want = _rows(pruned, dev)
    full = rows["input_mask"].sum(1) == L
    assert at_max == int(full.sum())
    for k in ("input_ids", "input_mask", "segment_ids"):
        assert np.array_equal(new[k][~full], want[k][~full]), k
    assert np.array_equal(new["label_ids"], rows["label_ids"])
    st = token_stats(rows, new, keep, len(tokens), tok.unk_id, pruned.unk_id)
    assert st["changed_rows_pct"] > 20 and st["tokens_after"] > st["tokens_before"]   # dev has unseen pieces
    # pairs: split at [SEP], truncated again with truncate_seq_pair (short max length: many rows truncated)
    a, b = dev[:150], dev[150:300]
    rows = _rows(tok, a, b, 40)
    new, _ = retokenize(rows, tokens, pruned)
    want = _rows(pruned, a, b, 40)
    short = rows["input_mask"].sum(1) < 40
    assert short.sum() > 20 and (~short).sum() > 20
    for k in ("input_ids", "input_mask", "segment_ids"):
        assert np.array_equal(new[k][short], want[k][short]), k
    assert new["input_mask"].sum(1).max() == 40


# ---- pruned checkpoints ---------------------------------------------------------------------------------------
def _tiny(vocab_size=60):
    from src.tinybert_model import BertConfig
    return BertConfig(vocab_size=vocab_size, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=96, max_position_embeddings=16, initializer_range=0.3)


def _tiny_tokens(n=60):
    return SPECIALS + [f"w{i}" for i in range(n - len(SPECIALS) - 4)] + ["a", "##a", "b", "##b"]


def _kept_rows(keep, n=6, seq=12, seed=1):
    """Rows [CLS] kept ids [SEP] of several lengths (ids of the old vocab)."""
    rng = np.random.default_rng(seed)
    words = keep[keep >= len(SPECIALS)]
    ids = np.zeros((n, seq), np.int32)
    mask = np.zeros((n, seq), np.int32)
    for r in range(n):
        k = 3 + r % (seq - 3)
        ids[r, :k] = [2] + rng.choice(words, k - 2).tolist() + [3]
        mask[r, :k] = 1
    return {"input_ids": ids, "input_mask": mask, "segment_ids": np.zeros_like(ids)}


def _logits(net, rows):
    import mindspore as ms
    return net(*(ms.Tensor(rows[k].astype(np.int32)) for k in ("input_ids", "segment_ids", "input_mask"))).asnumpy()


def _model_from(folder, name):
    from src.checkpoint import load_into
    from src.tinybert_model import LogitsOnly, build_classifier, load_bert_config
    model = build_classifier(load_bert_config(os.path.join(folder, "config.json"), "config"), "dense")
    load_into(model, os.path.join(folder, name), "checkpoint", strict=True)
    net = LogitsOnly(model)
    net.set_train(False)
    return net


def _keep(tokens):
    train = np.array([[2, 7, 9, 11, 13, 20, 31, 40, 3, 0]])
    return kept_ids(tokens, train)


def test_pruned_fp32_model_gives_the_same_logits_and_reloads_strictly(tmp_path):
    from src.checkpoint import save_cell
    from src.tinybert_model import LogitsOnly, build_classifier
    cfg, tokens = _tiny(), _tiny_tokens()
    run = tmp_path / "run"
    model = build_classifier(cfg, "dense")
    save_cell(model, str(run / "best.ckpt"), extra={"acc": 0.5})
    cfg.to_json_file(str(run / "config.json"))
    keep = _keep(tokens)
    report = prune_model_dir(str(run), str(tmp_path / "pruned"), keep, tokens)
    out = tmp_path / "pruned"
    assert sorted(os.listdir(out)) == ["best.ckpt", "config.json", "prune_report.json", "vocab.txt"]
    assert json.load(open(out / "config.json"))["vocab_size"] == len(keep) == report["vocab_size_after"]
    assert open(out / "vocab.txt").read().split("\n")[:-1] == [tokens[i] for i in keep]
    assert report["rows_removed"] == 60 - len(keep)
    assert report["embedding_bytes_saved"]["fp32"] == (60 - len(keep)) * 48 * 4
    orig = LogitsOnly(model)
    orig.set_train(False)
    rows = _kept_rows(keep)
    new_rows = dict(rows, input_ids=remap_ids(rows["input_ids"], keep, 60).astype(np.int32))
    assert np.array_equal(_logits(orig, rows), _logits(_model_from(str(out), "best.ckpt"), new_rows))


def test_pruned_ternary_folder_reloads_and_packs_to_the_same_model(tmp_path):
    from src.checkpoint import read_ms_checkpoint
    from src.packing import build_ternary_inference_model
    from src.quant import QuantConfig, quantize_model
    from src.runs.ternary import pack_run
    from src.ternary import save_quantized
    from src.tinybert_model import build_classifier
    cfg, tokens = _tiny(), _tiny_tokens()
    run, out = tmp_path / "run", tmp_path / "pruned"
    model = build_classifier(cfg, "dense")
    qcfg = QuantConfig()                                          # ternary word embedding, one alpha per row
    quantize_model(model, qcfg)
    os.makedirs(run)
    save_quantized(model, str(run), "best", qcfg)
    cfg.to_json_file(str(run / "config.json"))
    keep = _keep(tokens)
    report = prune_model_dir(str(run), str(out), keep, tokens)
    assert report["latent_requantizes_identically"] is True
    assert json.load(open(out / "quant.json")) == json.load(open(run / "quant.json"))
    table = "bert.embeddings.word_embeddings.embedding_table"
    for name in ("best.ckpt", "best_quant.ckpt"):
        a, b = read_ms_checkpoint(str(run / name)), read_ms_checkpoint(str(out / name))
        assert np.array_equal(b[table], a[table][keep]) and a.keys() == b.keys()
        assert all(np.array_equal(a[k], b[k]) for k in a if k != table)
    # the latent checkpoint reloads strictly into a quantized model of the new config
    from src.checkpoint import load_into
    from src.tinybert_model import load_bert_config
    qmodel = quantize_model(build_classifier(load_bert_config(str(out / "config.json"), "c"), "dense"), qcfg)
    load_into(qmodel, str(out / "best.ckpt"), "best.ckpt", strict=True)
    for folder in (run, out):
        pack_run(str(folder), "2bit", 16, "auto")
    rows = _kept_rows(keep)
    new_rows = dict(rows, input_ids=remap_ids(rows["input_ids"], keep, 60).astype(np.int32))
    assert np.array_equal(_logits(build_ternary_inference_model(str(run / "model.tpack")), rows),
                          _logits(build_ternary_inference_model(str(out / "model.tpack")), new_rows))
    assert os.path.getsize(out / "model.tpack") < os.path.getsize(run / "model.tpack")


def test_mismatched_vocab_or_table_is_a_user_error_naming_the_file(tmp_path):
    from src.checkpoint import save_cell
    from src.tinybert_model import build_classifier
    cfg, tokens = _tiny(), _tiny_tokens()
    run = tmp_path / "run"
    save_cell(build_classifier(cfg, "dense"), str(run / "best.ckpt"))
    cfg.to_json_file(str(run / "config.json"))
    keep = _keep(tokens)
    out = tmp_path / "out"
    with pytest.raises(UserError, match=r"config.json: vocab_size 60 but the vocab has 59 tokens"):
        prune_model_dir(str(run), str(out), keep, tokens[:59])
    cfg.replace(vocab_size=64).to_json_file(str(run / "config.json"))      # config and vocab agree, table does not
    with pytest.raises(UserError, match=r"best.ckpt: word-embedding table .* has 60 rows but the vocab has 64"):
        prune_model_dir(str(run), str(out), keep, tokens + ["c", "d", "e", "f"])
    assert not out.exists()
    state = {"bert.embeddings.word_embeddings.embedding_table": np.zeros((60, 4)), "x": np.zeros((60, 4))}
    with pytest.raises(UserError, match=r"model.ckpt: word-embedding table .* 60 rows .* 30522"):
        prune_rows(state, keep, 30522, source="model.ckpt")
    # per-row tensors of the embedding module follow the table; other tensors of 60 rows do not
    state["bert.embeddings.word_embeddings.weight_quant.lat_hessian"] = np.arange(240.0).reshape(60, 4)
    got = prune_rows(state, keep, 60)
    assert got["bert.embeddings.word_embeddings.weight_quant.lat_hessian"].shape == (len(keep), 4)
    assert got["x"].shape == (60, 4)


# ---- CLI -----------------------------------------------------------------------------------------------------
@pytest.fixture
def cli_ws(tmp_path):
    """A tiny fp32 run folder with its vocab.txt and a records folder (train + dev) encoded with that vocab."""
    from src.checkpoint import save_cell
    from src.records import write_records, write_schema
    from src.tinybert_model import build_classifier
    cfg, tokens = _tiny(), _tiny_tokens()
    run, data = tmp_path / "run", tmp_path / "data"
    save_cell(build_classifier(cfg, "dense"), str(run / "best.ckpt"))
    cfg.to_json_file(str(run / "config.json"))
    write_vocab(str(run / "vocab.txt"), tokens)
    cols = {c: ("int64", 12) for c in ("input_ids", "input_mask", "segment_ids")}
    os.makedirs(data)
    for split, seed in (("train", 1), ("dev", 2)):
        rows = _kept_rows(np.arange(60), n=8, seed=seed)
        write_records(str(data / f"{split}.tf_record"), ({k: v[r] for k, v in rows.items()} for r in range(8)), cols)
        write_schema(str(data / f"{split}_schema.json"), cols, 8)
    return {"run": str(run), "data": str(data), "tokens": tokens, "out": str(tmp_path / "out")}


def _prune_main():
    spec = importlib.util.spec_from_file_location("prune_vocab_cli", os.path.join(ROOT, "tools", "prune_vocab.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


def test_cli_prunes_a_run_folder(cli_ws, capsys):
    assert _prune_main()(["--model_dir", cli_ws["run"], "--train_data", cli_ws["data"],
                          "--output_dir", cli_ws["out"]]) == 0
    printed = capsys.readouterr().out
    assert "kept" in printed and "dev: 8 rows" in printed
    report = json.load(open(os.path.join(cli_ws["out"], "prune_report.json")))
    assert report["kept_by_source"]["special"] == 5 and report["effect"]["dev"]["rows"] == 8
    _model_from(cli_ws["out"], "best.ckpt")


@pytest.mark.parametrize("case", ["missing_model_dir", "missing_train_data", "negative_top_n", "top_n_no_corpus",
                                  "vocab_mismatch", "no_checkpoint", "missing_vocab_file"])
def test_cli_bad_input_one_error_line_exit_2_nothing_written(case, cli_ws, capsys, tmp_path):
    args = {"--model_dir": cli_ws["run"], "--train_data": cli_ws["data"], "--output_dir": cli_ws["out"]}
    fragment = {"missing_model_dir": "--model_dir", "missing_train_data": "--train_data",
                "negative_top_n": "--top_n -1", "top_n_no_corpus": "needs --corpus",
                "vocab_mismatch": "vocab_size 60 but the vocab has 59 tokens", "no_checkpoint": "none of best.ckpt",
                "missing_vocab_file": "not found"}[case]
    if case == "missing_model_dir":
        args["--model_dir"] = str(tmp_path / "nope")
    elif case == "missing_train_data":
        args["--train_data"] = str(tmp_path / "nope")
    elif case == "negative_top_n":
        args["--top_n"] = "-1"
    elif case == "top_n_no_corpus":
        args["--top_n"] = "10"
    elif case == "vocab_mismatch":
        args["--vocab_file"] = write_vocab(str(tmp_path / "short.txt"), cli_ws["tokens"][:59])
    elif case == "no_checkpoint":
        os.rename(os.path.join(cli_ws["run"], "best.ckpt"), os.path.join(cli_ws["run"], "other.ckpt"))
    else:
        args["--vocab_file"] = str(tmp_path / "missing.txt")
    main = _prune_main()
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_main(main, [x for kv in args.items() for x in kv])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err.count("\n") == 1 and err.startswith("ERROR: ") and fragment in err, err
    assert not os.path.exists(cli_ws["out"])


def test_cli_subprocess_exit_status(tmp_path):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "prune_vocab.py"), "--model_dir",
                        str(tmp_path / "nope"), "--train_data", str(tmp_path), "--output_dir", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("ERROR: --model_dir") and r.stderr.count("\n") == 1
    assert not (tmp_path / "o").exists()
