"""run_predict.py (src/predict.py) on exported folders of token (NER) and span (extractive QA) tasks, with tiny
random models (vocab 64, batch 4, seq 16; no training): the printed tags are the argmax of the ONNX logits at each
word's first piece, computed here from the pieces; a sentence longer than a window gets one tag per word, equal to
the evaluation of the records tools/prepare_data.py --task ner makes from the same words; an answer is the span
squad.decode picks on the features prepare_data --task squad makes, cut from the context, and a v2.0 folder's
null threshold decides "no answer"; bad input is one ERROR line, exit 2, nothing written."""
import csv
import json
import os

import numpy as np
import pytest
import mindspore as ms

from src.checkpoint import save_cell
from src.errors import UserError, run_main
from src.evaluation import predict
from src.export import OnnxRunner
from src.export_folder import export_to_folder, read_export_folder, write_export_folder
from src.tasks import CONLL_LABELS, get_task
from src.tinybert_model import BertConfig, build_classifier
from src.tokenization import BertTokenizer

B, S, L_TOKEN = 4, 16, 12          # exported batch and seq length; the token folder's max_seq_length (padded to S)
WORDS = ["john", "smith", "visited", "paris", "in", "the", "city", "where", "is", "did", "go", "and", "london",
         "met", "mary"]
LETTERS = "abcdefghijklmnopqrstuvwxyz"
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "?"] + WORDS + list(LETTERS) + \
    ["##" + c for c in LETTERS[:15]]
assert len(VOCAB) == 64 and len(set(VOCAB)) == 64
# texts and the words BERT's BasicTokenizer splits them into, as written in the text (the test's own split)
SHORT = [("John Smith visited Paris.", ["John", "Smith", "visited", "Paris", "."]),
         ("Mary met   John in London,ok!", ["Mary", "met", "John", "in", "London", ",", "ok", "!"]),
         ("Where is the Crêpe, Dace?", ["Where", "is", "the", "Crêpe", ",", "Dace", "?"])]     # Dace: d ##a ##c ##e
LONG = ("John Smith and Mary visited the city of Paris and London, where John met Mary Dace in the city "
        "and did go to Paris again.")


def _quiet(*_):
    pass


def _model(tmp, name, num_labels, head_kind, seed):
    cfg = BertConfig(vocab_size=len(VOCAB), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=32, hidden_act="gelu", num_labels=num_labels,
                     initializer_range=0.5)
    ms.set_seed(seed)
    save_cell(build_classifier(cfg, "dense", head_kind), str(tmp / f"{name}.ckpt"))
    cfg.to_json_file(str(tmp / f"{name}.json"))
    return str(tmp / f"{name}.json"), str(tmp / f"{name}.ckpt")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A random token model exported by export.py --export_dir --task CoNLL (max_seq_length 12 in seq 16) and a
    random span model exported as a SQuAD folder (doc_stride 3, max_query_length 4)."""
    import export
    d = tmp_path_factory.mktemp("predict_tokens")
    vocab = d / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    tok_cfg, tok_ckpt = _model(d, "tok", len(CONLL_LABELS), "token", 3)
    span_cfg, span_ckpt = _model(d, "span", 2, "span", 4)
    conll = str(d / "conll")
    export.main(["--config_path", tok_cfg, "--ckpt_file", tok_ckpt, "--vocab_file", str(vocab), "--file_format",
                 "ONNX", "--batch_size", str(B), "--seq_length", str(S), "--max_seq_length", str(L_TOKEN),
                 "--task", "CoNLL", "--export_dir", conll])
    squad_dir = str(d / "squad")
    export_to_folder(squad_dir, "SQuAD", span_cfg, span_ckpt, vocab_file=str(vocab), file_format="ONNX",
                     batch_size=B, seq_length=S, settings={"doc_stride": 3, "max_query_length": 4}, log=_quiet)
    return {"dir": d, "vocab": str(vocab), "conll": conll, "squad": squad_dir, "tok": (tok_cfg, tok_ckpt),
            "span": (span_cfg, span_ckpt)}


def _predict(args, capsys):
    import run_predict
    capsys.readouterr()
    preds = run_predict.main(args)
    return preds, capsys.readouterr().out.strip().splitlines()


def _logits(model_file, arrays):
    """The ONNX logits of rows [n, S] (the tail batch padded as evaluation pads it)."""
    runner = OnnxRunner(model_file)
    return predict(lambda *t: ms.Tensor(runner(*[x.asnumpy() for x in t])), arrays, B)


def test_folders_record_the_task_and_its_settings(folders):
    f = read_export_folder(folders["conll"])
    assert (f.task, f.text_pair, f.max_seq_length, f.seq_length) == (get_task("CoNLL"), False, L_TOKEN, S)
    assert f.settings == {"window_context": 4}                       # prepare_data's min(16, (12 - 3) // 2)
    card = open(f.card_file, encoding="utf-8").read()
    assert card.startswith("# CoNLL tagger\n") and "`B-PER`" in card and "window_context 4" in card
    q = read_export_folder(folders["squad"])
    assert (q.task.name, q.text_pair, q.settings) == ("SQuAD", True, {"doc_stride": 3, "max_query_length": 4})
    card = open(q.card_file, encoding="utf-8").read()
    assert "question<TAB>context" in card and "doc_stride 3" in card


def test_token_tags_are_the_argmax_at_each_words_first_piece(folders, tmp_path, capsys):
    f = read_export_folder(folders["conll"])
    tok = BertTokenizer(f.vocab_file)
    ids, mask, first = np.zeros((len(SHORT), S), np.int32), np.zeros((len(SHORT), S), np.int32), []
    for r, (_, words) in enumerate(SHORT):
        pieces = [tok.token_ids(w) for w in words]
        row = [tok.cls_id] + [p for ps in pieces for p in ps] + [tok.sep_id]
        assert len(row) <= L_TOKEN                                      # one window
        ids[r, :len(row)], mask[r, :len(row)] = row, 1
        first.append(list(1 + np.cumsum([0] + [len(p) for p in pieces[:-1]])))
    assert [len(tok.token_ids(w)) for w in SHORT[2][1]] == [1, 1, 1, 1, 1, 4, 1]
    logits = _logits(f.model_file, {"input_ids": ids, "input_mask": mask, "segment_ids": np.zeros_like(ids)})
    want = [[CONLL_LABELS[int(logits[r, p].argmax())] for p in first[r]] for r in range(len(SHORT))]
    assert len({t for tags in want for t in tags}) > 2                  # the random model's tags really differ
    out = str(tmp_path / "out.jsonl")
    preds, lines = _predict(["--model_dir", folders["conll"], *[t for t, _ in SHORT], "--output", out], capsys)
    assert [p["words"] for p in preds] == [w for _, w in SHORT]         # the surface words, "Crêpe" as written
    assert [p["tags"] for p in preds] == want
    rows = [json.loads(x) for x in open(out, encoding="utf-8")]
    assert rows == preds and [r["text"] for r in rows] == [t for t, _ in SHORT]
    assert sum(len(p["entities"]) for p in preds) > 0
    for (text, words), p, line in zip(SHORT, preds, lines):
        for e in p["entities"]:
            a, b = e["start_word"], e["end_word"]
            assert e["type"] in ("PER", "ORG", "LOC", "MISC") and 0 <= a < b <= len(words)
            assert p["tags"][a][2:] == e["type"] and e["text"].startswith(words[a]) and e["text"].endswith(words[b - 1])
            assert e["text"] in text and all(t == f"I-{e['type']}" for t in p["tags"][a + 1:b])
        ents = ", ".join(f'{e["type"]} "{e["text"]}"' for e in p["entities"]) or "none"
        assert line == " ".join(f"{w}/{t}" for w, t in zip(words, p["tags"])) + f"\tentities: {ents}"
    # the csv output and a --text_file give the same
    (tmp_path / "t.txt").write_text("".join(t + "\n" for t, _ in SHORT), encoding="utf-8")
    out_csv = str(tmp_path / "out.csv")
    from_file, _ = _predict(["--model_dir", folders["conll"], "--text_file", str(tmp_path / "t.txt"), "--output",
                             out_csv], capsys)
    assert from_file == preds
    with open(out_csv, encoding="utf-8", newline="") as fh:
        table = list(csv.reader(fh))
    assert table[0] == ["text", "words", "tags", "entities"]
    assert [r[2].split() for r in table[1:]] == want and [json.loads(r[3]) for r in table[1:]] == \
        [p["entities"] for p in preds]


def test_a_long_sentence_gets_one_tag_per_word_as_the_evaluation_of_prepared_records(folders, tmp_path, capsys):
    """Windows recombined: the tags equal ner.sentence_tags over the logits of the rows prepare_data --task ner
    writes for the same words (one sentence in several windows; 5 rows in batch 4, a padded tail)."""
    from src.dataset import load_split
    from src.ner import sentence_tags
    from tools import prepare_data
    f = read_export_folder(folders["conll"])
    texts = [LONG, SHORT[0][0]]
    words = [w for w, _, _ in BertTokenizer(f.vocab_file).surface_words(LONG)]
    assert words == LONG.replace(",", " ,").replace(".", " .").split() and len(words) == 27
    (tmp_path / "dev.txt").write_text("\n\n".join("\n".join(f"{w}\tO" for w in ws)
                                                  for ws in (words, SHORT[0][1])) + "\n", encoding="utf-8")
    assert prepare_data.main(["--task", "ner", "--labels", ",".join(CONLL_LABELS), "--input",
                              f"dev={tmp_path / 'dev.txt'}", "--output_dir", str(tmp_path / "data"), "--vocab_file",
                              folders["vocab"], "--max_seq_length", str(L_TOKEN)]) == 0
    task = get_task("ner", list(CONLL_LABELS))
    arrays = load_split(str(tmp_path / "data"), "dev", "tfrecord", L_TOKEN, task)
    assert len(arrays["input_ids"]) >= 4 and np.sum(arrays["sentence_id"] == 0) >= 3      # windows
    padded = {k: np.pad(arrays[k], ((0, 0), (0, S - L_TOKEN)), constant_values=-1 if k == "label_ids" else 0)
              for k in ("input_ids", "input_mask", "segment_ids", "label_ids")}
    logits = _logits(f.model_file, padded)
    _, want = sentence_tags(padded["label_ids"], logits.argmax(-1), arrays["sentence_id"], CONLL_LABELS)
    preds, lines = _predict(["--model_dir", folders["conll"], *texts], capsys)
    assert [p["words"] for p in preds] == [words, SHORT[0][1]]
    assert [p["tags"] for p in preds] == want and len(want[0]) == len(words) and len(set(want[0])) > 2
    assert len(lines) == 2 and lines[0].count("/") == len(words)


def _squad_json(path, pairs):
    paragraphs = [{"context": c, "qas": [{"id": str(i), "question": q, "answers": [], "is_impossible": True}]}
                  for i, (q, c) in enumerate(pairs)]
    path.write_text(json.dumps({"version": "2.0", "data": [{"title": "t", "paragraphs": paragraphs}]}),
                    encoding="utf-8")
    return str(path)


QA = [("where is john?", "John Smith visited Paris and London, where Mary met John in the city."),
      ("who met john", "Mary met John."),
      ("where did mary go", "The city is Paris. Mary did go to London and the city of Paris again, and met Smith."),
      ("is it", "Paris?"),
      ("where is the city", "In the city, John visited Mary and Smith met Mary in London.")]


def _decoded(folders, tmp_path, doc_stride=3, max_query=4):
    """(answers, null scores, span scores) by squad.decode on the features prepare_data --task squad makes."""
    from src import squad
    from src.dataset import load_eval_split
    from tools import prepare_data
    src = _squad_json(tmp_path / "dev.json", QA)
    assert prepare_data.main(["--task", "squad", "--input", f"dev={src}", "--output_dir", str(tmp_path / "sq"),
                              "--vocab_file", folders["vocab"], "--max_seq_length", str(S), "--doc_stride",
                              str(doc_stride), "--max_query_length", str(max_query)]) == 0
    arrays = load_eval_split(str(tmp_path / "sq"), "dev", "tfrecord", S, get_task("SQuAD-v2"))
    assert len(arrays["input_ids"]) > len(QA) + 3                       # contexts in several windows
    logits = _logits(os.path.join(folders["squad"], "model.onnx"), arrays)
    scores = {}
    answers, nulls = squad.decode(logits[:, :, 0], logits[:, :, 1], arrays["features"],
                                  feature_ids=arrays["feature_id"], span_scores=scores)
    return [answers[str(i)] for i in range(len(QA))], [nulls[str(i)] for i in range(len(QA))], \
        [scores[str(i)] for i in range(len(QA))]


def test_an_answer_is_the_span_decode_picks_cut_from_the_context(folders, tmp_path, capsys):
    answers, _, scores = _decoded(folders, tmp_path)
    (tmp_path / "qa.txt").write_text("".join(f"{q}\t{c}\n" for q, c in QA), encoding="utf-8")
    out = str(tmp_path / "qa.jsonl")
    preds, lines = _predict(["--model_dir", folders["squad"], "--text_file", str(tmp_path / "qa.txt"), "--output",
                             out], capsys)
    assert [p["answer"] for p in preds] == answers and len(set(answers)) > 2
    assert all(p["answer"] and p["answer"] in c for p, (_, c) in zip(preds, QA))
    np.testing.assert_allclose([p["score"] for p in preds], scores, rtol=0, atol=1e-9)
    assert lines == [f"{p['answer']}\t{p['score']:.4f}\t{q}" for p, (q, _) in zip(preds, QA)]
    rows = [json.loads(x) for x in open(out, encoding="utf-8")]
    assert rows == preds and set(rows[0]) == {"question", "context", "answer", "score"}
    # the same pairs from a csv (question and context columns), written as csv
    with open(tmp_path / "qa.csv", "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "question", "context"])
        w.writerows([[i, q, c] for i, (q, c) in enumerate(QA)])
    out_csv = str(tmp_path / "qa.csv.out.csv")
    from_csv, _ = _predict(["--model_dir", folders["squad"], "--csv", str(tmp_path / "qa.csv"), "--text_column",
                            "question", "--text_b_column", "context", "--output", out_csv], capsys)
    assert from_csv == preds
    with open(out_csv, encoding="utf-8", newline="") as fh:
        table = list(csv.reader(fh))
    assert table[0] == ["question", "context", "answer", "score"] and [r[2] for r in table[1:]] == answers


def test_a_v2_folder_answers_no_answer_where_the_null_score_beats_the_span_by_the_threshold(folders, tmp_path,
                                                                                          capsys):
    from types import SimpleNamespace
    from src.runs.compress_steps import span_settings
    answers, nulls, _ = _decoded(folders, tmp_path)
    # the compression pipeline's export stage takes a span folder's settings from its records' features file
    cfg = SimpleNamespace(data=SimpleNamespace(dir=str(tmp_path / "sq")))
    assert span_settings(cfg, get_task("SQuAD-v2")) == {"doc_stride": 3, "max_query_length": 4}
    thr = float(np.median(nulls))
    f = read_export_folder(folders["squad"])
    v2 = str(tmp_path / "v2")
    write_export_folder(v2, f.model_file, f.vocab_file, f.config_file, "SQuAD-v2", S,
                        settings={"doc_stride": 3, "max_query_length": 4, "null_threshold": thr})
    assert read_export_folder(v2).settings["null_threshold"] == thr
    preds, lines = _predict(["--model_dir", v2, *[f"{q}\t{c}" for q, c in QA]], capsys)
    no = [n > thr for n in nulls]
    assert 0 < sum(no) < len(QA)
    assert [p["no_answer"] for p in preds] == no
    assert [p["answer"] for p in preds] == ["" if n else a for n, a in zip(no, answers)]
    np.testing.assert_allclose([p["null_score_diff"] for p in preds], nulls, rtol=0, atol=1e-9)
    assert [ln.split("\t")[0] for ln in lines] == ["(no answer)" if n else a for n, a in zip(no, answers)]
    # without a recorded threshold: 0.0
    v2_default = str(tmp_path / "v2d")
    write_export_folder(v2_default, f.model_file, f.vocab_file, f.config_file, "SQuAD-v2", S,
                        settings={"doc_stride": 3, "max_query_length": 4})
    assert read_export_folder(v2_default).settings["null_threshold"] == 0.0
    preds0, _ = _predict(["--model_dir", v2_default, *[f"{q}\t{c}" for q, c in QA]], capsys)
    assert [p["no_answer"] for p in preds0] == [n > 0.0 for n in nulls]


@pytest.mark.parametrize("folder, inputs, message", [
    ("squad", ["where is john", "where\tParis"], r"text 1: 0 TAB\(s\), expected one"),
    ("squad", ["where is john"], r"command line: no TAB in the input, .* give question<TAB>context"),
    ("squad", ["where is john\t "], r"text 1: empty context"),
    ("squad", ["\tParis"], r"text 1: empty question"),
    ("squad", ["john\tParis", "john smith visited paris and london\tParis"],
     r"text 2: the question has 4 word pieces \(max_query_length 4\).* no room is left for the context"),
    ("squad", ["--csv", "{tmp}/qa.csv", "--text_column", "question"], r"no TAB in the input, .*--text_b_column"),
    ("conll", ["John\tParis"], r"text pairs given, but the model .* tags single texts"),
    ("conll", ["John", "\x00\x01"], r"text 2: no words"),
])
def test_bad_input_is_one_error_line_and_nothing_written(folders, tmp_path, capsys, folder, inputs, message):
    import re
    import run_predict
    (tmp_path / "qa.csv").write_text("question,context\nwhere,Paris\n", encoding="utf-8")
    model_dir = folders[folder]
    if "no room" in message:                      # max_seq_length 7: a 4-piece question leaves no room
        f = read_export_folder(folders["squad"])
        model_dir = str(tmp_path / "short")
        write_export_folder(model_dir, f.model_file, f.vocab_file, f.config_file, "SQuAD", 7,
                            settings={"doc_stride": 3, "max_query_length": 4})
    before = sorted(os.listdir(tmp_path))
    args = ["--model_dir", model_dir, *[a.format(tmp=tmp_path) for a in inputs], "--output",
            str(tmp_path / "o.jsonl")]
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_main(run_predict.main, args)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("ERROR: ") and re.search(message, err[0]), err
    assert sorted(os.listdir(tmp_path)) == before


def test_export_checks_the_head_and_the_task_settings(folders, tmp_path):
    """A span model exported for a sentence task, a setting of another kind of task: one error, nothing written."""
    import export
    cfg, ckpt = folders["span"]
    base = ["--config_path", cfg, "--ckpt_file", ckpt, "--vocab_file", folders["vocab"], "--file_format", "ONNX",
            "--batch_size", str(B), "--seq_length", str(S)]
    for argv, message in ((["--task", "MR"], r"the model has a span head, task MR .* needs a sequence head"),
                          (["--task", "SQuAD", "--window_context", "2"], r"window_context do\(es\) not apply"),
                          (["--task", "SQuAD", "--null_threshold", "1"], r"null_threshold do\(es\) not apply"),
                          (["--task", "CoNLL", "--window_context", "7"], r"window_context 7: expected"),
                          (["--task", "SQuAD", "--doc_stride", "1", "--file_name", "x"],
                           r"--doc_stride: only with --export_dir")):
        with pytest.raises(UserError, match=message):
            export.main(base + argv + ([] if "--file_name" in argv else ["--export_dir", str(tmp_path / "out")]))
    assert os.listdir(tmp_path) == []
