"""The general-distillation corpus at scale (src/corpus.py, tools/prepare_data.py --task gd, src/batching.py
ShardBatcher): the sentence-pair layout row by row on a hand-made corpus, the random-next share, streamed reading
equal to reading the whole corpus, identical bytes with 1 and 2 tokenizing processes, shards that reload with
their row counts, the shards of a GD run split between 2 data-parallel ranks, and bad input (binary or undecodable
corpus, no text, a shard list naming a missing file)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import tiny_run  # noqa: E402
from src import corpus  # noqa: E402
from src.config import load_config  # noqa: E402
from src.dataset import read_all  # noqa: E402
from src.errors import UserError  # noqa: E402
from src.runs import general_distill  # noqa: E402
from src.tokenization import BertTokenizer, default_vocab_file  # noqa: E402
from tools import prepare_data  # noqa: E402

COLS = ["input_ids", "input_mask", "segment_ids", "next_sentence_labels"]
SCRIPT = str(ROOT / "tools" / "prepare_data.py")
WORDS = ["red", "blue", "green", "black", "white", "cat", "dog", "bird", "fish", "tree", "house", "car", "road",
         "city", "river", "stone"]
CLS, SEP = 101, 102


@pytest.fixture(scope="module")
def tok():
    return BertTokenizer(default_vocab_file())


def sentences(n, seed):
    """n distinct sentences of 5 one-token words."""
    rng = np.random.default_rng(seed)
    out = set()
    while len(out) < n:
        out.add(" ".join(rng.choice(WORDS, 5)))
    return sorted(out, key=lambda s: rng.random())


def write_corpus(path, docs, gaps="\n\n"):
    path.write_text(gaps.join("\n".join(d) for d in docs) + "\n", encoding="utf-8")
    return path


def prepare(out, *args):
    assert prepare_data.main(["--task", "gd", "--output_dir", str(out), *map(str, args)]) == 0
    return out


def load(out, cols=COLS, fmt="tfrecord"):
    return read_all(str(out), str(out / "train_schema.json"), cols, fmt)


def run_cli(*args):
    return subprocess.run([sys.executable, SCRIPT, *map(str, args)], capture_output=True, text=True, timeout=300)


def files_of(d):
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


# ---- the pair layout ------------------------------------------------------------------------------------
def test_pair_layout_exact(tmp_path, tok):
    """max_seq_length 13 (10 tokens of text): two 5-token sentences fill a row. random_next 0: each document's
    sentences pair up in order, [CLS] s1 [SEP] s2 [SEP] with segment ids 0 x 7 then 1 x 6; a one-sentence document
    has no continuation, so its B comes from another document (label 1), cut to the 7 tokens left."""
    s = sentences(8, 0)
    ids = {x: tok.token_ids(x) for x in s}
    assert all(len(v) == 5 for v in ids.values())
    docs = [s[:4], s[4:], ["a short one"]]
    short = tok.token_ids("a short one")
    assert len(short) == 3
    src = write_corpus(tmp_path / "c.txt", docs)
    got = load(prepare(tmp_path / "p0", "--input", src, "--max_seq_length", 13, "--random_next", 0))
    want = [[CLS] + ids[a] + [SEP] + ids[b] + [SEP] for a, b in [(s[0], s[1]), (s[2], s[3]), (s[4], s[5]),
                                                                 (s[6], s[7])]]
    assert got["input_ids"][:4].tolist() == want
    assert got["segment_ids"][:4].tolist() == [[0] * 7 + [1] * 6] * 4
    assert got["input_mask"].all() and got["next_sentence_labels"][:, 0].tolist() == [0, 0, 0, 0, 1]
    last = got["input_ids"][4].tolist()
    assert last[:5] == [CLS] + short + [SEP] and last[12] == SEP and [i for i, t in enumerate(last) if t == SEP] == [
        4, 12]
    assert got["segment_ids"][4].tolist() == [0] * 5 + [1] * 8
    runs = [sum((ids[x] for x in d[k:]), [])[:7] for d in docs[:2] for k in range(4)]     # from a sentence start
    assert last[5:12] in runs

    # random_next 1: every B from another document; A steps one sentence on (the unused one goes back)
    got = load(prepare(tmp_path / "p1", "--input", src, "--max_seq_length", 13, "--random_next", 1))
    assert [r[1:6] for r in got["input_ids"][:4].tolist()] == [ids[x] for x in s[:4]]
    assert got["next_sentence_labels"].all()
    others = {tuple(ids[x]) for x in s[4:]} | {tuple(short)}
    for row in got["input_ids"][:4].tolist():
        end = row.index(SEP, 7)
        assert tuple(row[7:end]) in others


def test_random_next_share_with_a_seed(tmp_path):
    """300 documents of 6 distinct 5-token sentences: the rows whose B could be the continuation (A is not a
    document's lone last sentence) get a random B in 50 % +- 5 % of cases with --random_next 0.5, none with 0, all
    with 1; the same seed gives the same rows, another seed other rows."""
    s = sentences(1800, 1)
    docs = [s[6 * i:6 * i + 6] for i in range(300)]
    src = write_corpus(tmp_path / "c.txt", docs)
    lasts = {d[-1] for d in docs}
    tok = BertTokenizer(default_vocab_file())
    last_ids = {tuple(tok.token_ids(x)) for x in lasts}

    def share(p, seed=7, name=None):
        got = load(prepare(tmp_path / (name or f"p{p}"), "--input", src, "--max_seq_length", 13, "--random_next", p,
                           "--seed", seed))
        free = np.array([tuple(r[1:6]) not in last_ids for r in got["input_ids"].tolist()])
        return got, got["next_sentence_labels"][free, 0].mean(), free.sum()

    a, half, n = share(0.5)
    assert n > 1000 and abs(half - 0.5) < 0.05
    assert share(0.0)[1] == 0.0 and share(1.0)[1] == 1.0
    b = share(0.5, name="again")[0]
    c = share(0.5, seed=8, name="other")[0]
    assert np.array_equal(a["input_ids"], b["input_ids"]) and np.array_equal(a["next_sentence_labels"],
                                                                              b["next_sentence_labels"])
    assert len(c["input_ids"]) != len(a["input_ids"]) or not np.array_equal(c["input_ids"], a["input_ids"])


# ---- streamed == in memory ------------------------------------------------------------------------------
def windows_in_memory(docs, tok, L):
    """The single-segment corpus as the earlier in-memory implementation built it: whole documents, their tokens
    cut into [CLS] window [SEP] rows."""
    rows = []
    for doc in docs:
        tokens = [t for sent in doc for t in tok.token_ids(sent)]
        for w in range(0, len(tokens), L - 2):
            rows.append(tok.build_inputs(tokens[w:w + L - 2], None, L)[0])
    return rows


def test_streamed_equals_in_memory(tmp_path, tok, monkeypatch):
    """Read in 5-byte blocks (multi-byte characters cut in half), with runs of blank lines and an empty document:
    windows equal the in-memory windows of the whole documents, pairs equal group_rows on the documents read
    whole; the IMDB source (reviews split into sentences) gives the windows of the whole reviews."""
    monkeypatch.setattr(corpus, "READ_BLOCK", 5)
    docs = [sentences(7, 2) + ["café naïve über — ok"], sentences(3, 3)] + [sentences(9, 10 + i) for i in range(70)]
    src = write_corpus(tmp_path / "c.txt", docs, gaps="\n\n\n   \n")
    whole = [d.split("\n") for d in src.read_text(encoding="utf-8").split("\n\n\n   \n")]
    whole[-1] = [x for x in whole[-1] if x]
    assert whole == docs
    got = load(prepare(tmp_path / "w", "--input", src, "--max_seq_length", 16, "--layout", "windows"), COLS[:3])
    assert got["input_ids"].tolist() == windows_in_memory(docs, tok, 16)

    got = load(prepare(tmp_path / "p", "--input", src, "--max_seq_length", 16, "--seed", 3))
    spec = corpus.RowSpec("pairs", 16, 0.5, 3, CLS, SEP)
    ref = [corpus.group_rows(spec, [[tok.token_ids(x) for x in d] for d in docs[k:k + corpus.GROUP_DOCS]],
                             k // corpus.GROUP_DOCS) for k in range(0, len(docs), corpus.GROUP_DOCS)]
    for c in COLS:
        np.testing.assert_array_equal(got[c], np.concatenate([r[c] for r in ref]), err_msg=c)

    imdb = load(prepare(tmp_path / "imdb", "--source", "imdb", "--max_docs", 20, "--max_seq_length", 64, "--layout",
                        "windows"), COLS[:1])
    assert imdb["input_ids"].tolist() == windows_in_memory(prepare_data.imdb_documents()[:20], tok, 64)


def test_split_sentences_rule():
    assert corpus.split_sentences('Great film!<br /><br />I loved it. "Really?" he said (twice.) Then  left') == [
        "Great film!", "I loved it.", '"Really?"', "he said (twice.)", "Then  left"]
    assert corpus.split_sentences("3.5 stars... ok") == ["3.5 stars...", "ok"]


# ---- workers, shards ------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["tfrecord", "mindrecord"])
def test_workers_identical_bytes_and_shards_reload(tmp_path, fmt):
    """200 documents (4 groups): --workers 1 and 2 write byte-identical shards and schema; every shard holds
    --rows_per_shard rows (the last the rest) as the schema's table says, and the shards together are the rows
    of the unsharded file."""
    src = write_corpus(tmp_path / "c.txt", [sentences(5, 100 + i) for i in range(200)])
    outs = {}
    for w, rps in ((1, 100), (2, 100), (1, 0)):
        out = tmp_path / f"w{w}_{rps}"
        r = run_cli("--task", "gd", "--input", src, "--output_dir", out, "--max_seq_length", 24, "--format", fmt,
                    "--workers", w, "--rows_per_shard", rps)
        assert r.returncode == 0, r.stderr
        outs[(w, rps)] = out
    a, b = outs[(1, 100)], outs[(2, 100)]
    assert files_of(a) == files_of(b) and len(files_of(a)) > 3
    for name in files_of(a):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    schema = json.loads((a / "train_schema.json").read_text())
    assert {c["type"] for c in schema["columns"].values()} == {"int32"}
    table = [(e["file"], e["rows"]) for e in schema["shards"]]
    assert [n for _, n in table[:-1]] == [100] * (len(table) - 1) and 0 < table[-1][1] <= 100
    assert schema["numRows"] == sum(n for _, n in table)
    parts = []
    for name, n in table:                            # each shard alone, as a GD run reads it
        rows = list(corpus.read_rows(str(a / name), schema, COLS, fmt, 0, n, expected_rows=n))
        assert len(rows) == n and rows[0]["input_ids"].dtype == np.int32
        parts.append(np.stack([r["input_ids"] for r in rows]))
    one = read_all(str(outs[(1, 0)]), str(outs[(1, 0)] / "train_schema.json"), COLS, fmt)
    np.testing.assert_array_equal(np.concatenate(parts), one["input_ids"])
    files, rows, _ = corpus.train_shards(str(a), fmt)
    assert [os.path.basename(f) for f in files] == [t[0] for t in table] and rows == [t[1] for t in table]


# ---- GD over shards and ranks ---------------------------------------------------------------------------
def numbered_shards(folder, n=96, per=10, L=16):
    """n rows whose input_ids[1] is the row number, in shards of `per` rows."""
    rows = ({"input_ids": [CLS, i] + [5] * (L - 3) + [SEP], "input_mask": [1] * L, "segment_ids": [0] * L}
            for i in range(n))
    cols = {c: ("int32", L) for c in ("input_ids", "input_mask", "segment_ids")}
    os.makedirs(folder, exist_ok=True)
    return corpus.write_shards(str(folder), rows, cols, "tfrecord", per)


def gd_cfg(data, **over):
    args = tiny_run.cli({"data.dir": str(data), "data.in_memory": False, "data.max_seq_length": 16,
                         "data.length_buckets": [16], "data.shuffle_buffer": 8, "train.batch_size": 4, **over})
    return load_config(str(ROOT / "configs" / "gd.yaml"), args)


def test_gd_ranks_read_disjoint_rows_covering_the_corpus(tmp_path):
    """96 rows in 10 shards, 2 ranks at batch 4: each rank reads only its 48 rows (12 batches), the two sets are
    disjoint and cover the corpus, in another order each epoch; 1 rank reads all 96, and so does the in-memory
    batcher on the shards. A shard list file names the same shards."""
    numbered_shards(tmp_path / "s")
    seen = {}
    for rank in (0, 1):
        batcher, total = general_distill._batcher(gd_cfg(tmp_path / "s"), rank, 2)
        assert total == 96 and len(batcher) == 12
        ep1 = [int(x) for b in batcher.epoch(1) for x in b["input_ids"][:, 1]]
        assert batcher.rows_read == 48
        ep2 = [int(x) for b in batcher.epoch(2) for x in b["input_ids"][:, 1]]
        assert sorted(ep1) != sorted(ep2) or ep1 != ep2
        seen[rank] = ep1
    assert not set(seen[0]) & set(seen[1]) and sorted(seen[0] + seen[1]) == list(range(96))
    one, _ = general_distill._batcher(gd_cfg(tmp_path / "s"), 0, 1)
    assert sorted(int(x) for b in one.epoch(1) for x in b["input_ids"][:, 1]) == list(range(96))
    assert next(iter(one.epoch(1)))["input_ids"].dtype == np.int32
    in_memory, n = general_distill._batcher(gd_cfg(tmp_path / "s", **{"data.in_memory": True}), 0, 1)
    assert n == 96 and sorted(int(x) for b in in_memory.epoch(1) for x in b["input_ids"][:, 1]) == list(range(96))

    lst = tmp_path / "list.txt"
    lst.write_text("# shards\n" + "".join(f"s/train-{i:05d}.tf_record\n" for i in range(10)))
    via_list, _ = general_distill._batcher(gd_cfg(lst), 0, 1)
    assert [b["input_ids"].tolist() for b in via_list.epoch(1)] == [b["input_ids"].tolist() for b in one.epoch(1)]


# ---- bad input ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("content, message", [
    (b"first sentence .\n\x00\x01\x02binary\n", "not a text file (NUL byte"),
    (b"first sentence .\nsecond \xff\xfe sentence\n", "not UTF-8 text (line 2"),
    (b"\n\n   \n\n", "no text (empty corpus)"),
])
def test_bad_corpus_is_one_error_nothing_written(tmp_path, content, message):
    (tmp_path / "c.txt").write_bytes(content)
    out = tmp_path / "out"
    r = run_cli("--task", "gd", "--input", tmp_path / "c.txt", "--output_dir", out, "--rows_per_shard", 10)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
    assert r.stderr.startswith(f"ERROR: {tmp_path / 'c.txt'}: {message}")
    assert not out.exists()


def test_empty_documents_are_skipped(tmp_path):
    s = sentences(6, 5)
    a = write_corpus(tmp_path / "a.txt", [s[:3], s[3:]])
    b = write_corpus(tmp_path / "b.txt", [s[:3], s[3:]], gaps="\n\n\n\n\n")
    (tmp_path / "b.txt").write_text("\n\n" + b.read_text())
    ra = load(prepare(tmp_path / "a", "--input", a, "--max_seq_length", 16))
    rb = load(prepare(tmp_path / "b", "--input", b, "--max_seq_length", 16))
    assert ra["input_ids"].tolist() == rb["input_ids"].tolist()


def test_shard_list_with_a_missing_file_is_one_error(tmp_path):
    """run_general_distill.py with data.dir a shard list naming a missing shard: one ERROR line naming the list, its
    line and the file, exit 2, no output folder."""
    ws = tiny_run.make_workspace(str(tmp_path / "ws"), n_train=8, n_dev=4)
    numbered_shards(tmp_path / "s", n=32)
    lst = tmp_path / "list.txt"
    lst.write_text("s/train-00000.tf_record\ns/train-00009.tf_record\n")
    out = tmp_path / "out"
    r = tiny_run.run_script("run_general_distill.py", tiny_run.gd_args(ws, str(out), **{"data.dir": str(lst),
                                                                                          "data.in_memory": False}))
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip().splitlines() == [f"ERROR: shard list {lst} line 2: s/train-00009.tf_record not found"]
    assert not out.exists()
    with pytest.raises(UserError, match="shard train-00002.tf_record named in .* not found"):
        os.remove(tmp_path / "s" / "train-00002.tf_record")
        corpus.train_shards(str(tmp_path / "s"), "tfrecord")
