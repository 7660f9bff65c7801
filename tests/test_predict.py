"""The exported folder (src/export_folder.py), run_predict.py (src/predict.py) and run_eval_onnx.py --model_dir on a
tiny classifier (vocab 64, batch 4, seq 16): predictions on raw text equal the evaluation of the same file on the
records tools/prepare_data.py makes from the same text (single texts and pairs, a padded tail batch, a 2-bit
ternary file); the folder reloads as written and its model card prints the card dict's numbers; a missing or
malformed file and bad input are one ERROR line naming the file, exit 2, nothing written."""
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import mindspore as ms

from src.checkpoint import save_cell
from src.dataset import load_split
from src.errors import UserError, run_main
from src.evaluation import predict
from src.export import OnnxRunner
from src.export_folder import CARD_KEYS, export_to_folder, read_export_folder, write_export_folder
from src.tasks import get_task
from src.tinybert_model import BertConfig, build_classifier

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
B, S = 4, 16
WORDS = ["good", "bad", "film", "movie", "great", "dull", "fun", "plot", "not", "very", "is", "the", "and"]
LETTERS = "abcdefghijklmnopqrstuvwxyz"
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "!"] + WORDS + list(LETTERS[:22]) + \
    ["##" + c for c in LETTERS[:21]]
assert len(VOCAB) == 64 and len(set(VOCAB)) == 64
SINGLE = ["A GOOD film!", "the plot is very dull", "not fun, not great", "Bad movie.", "great fun",
          "a film", "very very bad plot, the movie is not good at all and the film is dull and the plot is bad"]
PAIRS = [("good film", "great movie"), ("the plot", "is dull"), ("Not fun", "very fun!"), ("bad", "bad"),
         ("a movie is a film", "the film is a movie, very good"), ("dull", "great")]


def _quiet(*_):
    pass


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny classifier (config.json, model.ckpt, vocab.txt beside it) exported once as a folder (task MR)."""
    d = tmp_path_factory.mktemp("predict")
    ckpt_dir = d / "run"
    ckpt_dir.mkdir()
    cfg = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                     max_position_embeddings=32, hidden_act="gelu", num_labels=2, initializer_range=0.5)
    ms.set_seed(5)
    model = build_classifier(cfg, "dense")
    cfg.to_json_file(str(ckpt_dir / "config.json"))
    save_cell(model, str(ckpt_dir / "model.ckpt"))
    (ckpt_dir / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    card = {"title": "tiny MR student", "teacher": "tiny random teacher", "recipe": "td1 -> td2 -> export",
            "stages": [{"stage": "td1", "epochs": 3, "seconds": 12.5}, {"stage": "td2", "epochs": 2, "acc": 0.8125}],
            "metrics": {"teacher": {"acc": 0.84375, "f1": 0.8}, "student": {"acc": 0.8125, "f1": 0.7777}},
            "sizes": {"teacher ckpt": 90440258, "model.onnx": 123456},
            "latency": {"b1/s64": 3.25, "b32/s64": 41.5}, "machine": "tiny CPU host", "command": "make demo",
            "commit": "abc1234"}
    folder = str(d / "mr")
    out = export_to_folder(folder, "MR", str(ckpt_dir / "config.json"), str(ckpt_dir / "model.ckpt"),
                           file_format="ONNX", batch_size=B, seq_length=S, card=card, log=_quiet)
    return {"dir": d, "cfg": cfg, "folder": folder, "out": out, "card": card, "vocab": str(ckpt_dir / "vocab.txt"),
            "config": str(ckpt_dir / "config.json"), "ckpt": str(ckpt_dir / "model.ckpt")}


def _csv(path, rows, pair=False):
    import csv
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "text_b", "label"] if pair else ["label", "text"])
        for i, r in enumerate(rows):
            w.writerow([r[0], r[1], str(i % 2)] if pair else [str(i % 2), r])
    return str(path)


def _records(csv_path, out_dir, vocab, pair=False):
    """dev records of the csv, made by tools/prepare_data.py as training data is."""
    from tools import prepare_data
    args = ["--task", "csv", "--labels", "0,1", "--input", f"dev={csv_path}", "--output_dir", str(out_dir),
            "--vocab_file", vocab, "--max_seq_length", str(S)] + (["--text_b_column", "text_b"] if pair else [])
    assert prepare_data.main(args) == 0
    return load_split(str(out_dir), "dev", "tfrecord", S, get_task("MR"))


def _eval_probs(model_file, arrays):
    """What src/evaluation.py's predict gives for these records with this exported file, as probabilities."""
    runner = OnnxRunner(model_file)
    logits = predict(lambda *t: ms.Tensor(runner(*[x.asnumpy() for x in t])), arrays, B)
    z = np.exp(logits.astype(np.float64) - logits.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def _predict(args, capsys):
    import run_predict
    capsys.readouterr()
    preds = run_predict.main(args)
    return preds, capsys.readouterr().out.strip().splitlines()


def _probs(preds):
    return np.array([[p["probabilities"][x] for x in ("0", "1")] for p in preds])


def test_predict_equals_evaluation_on_prepared_records_single_texts(tiny, tmp_path, capsys):
    csv_path = _csv(tmp_path / "dev.csv", SINGLE)                     # 7 rows, batch 4: a padded tail
    arrays = _records(csv_path, tmp_path / "data", tiny["vocab"])
    folder = read_export_folder(tiny["folder"])
    want = _eval_probs(folder.model_file, arrays)
    assert np.ptp(want[:, 1]) > 0.05                                  # the rows really differ
    out = str(tmp_path / "out.jsonl")
    preds, lines = _predict(["--model_dir", tiny["folder"], "--csv", csv_path, "--output", out], capsys)
    np.testing.assert_allclose(_probs(preds), want, rtol=0, atol=1e-6)
    assert [p["label"] for p in preds] == [str(i) for i in want.argmax(-1)]
    assert len(lines) == len(SINGLE)
    for line, p, text in zip(lines, preds, SINGLE):
        label, probs, shown = line.split("\t")
        assert label == p["label"] and shown == (text if len(text) <= 80 else text[:77] + "...")
        assert probs == " ".join(f"{k}={v:.4f}" for k, v in p["probabilities"].items())
    with open(out, encoding="utf-8") as f:
        rows = [json.loads(x) for x in f]
    assert [r["text"] for r in rows] == SINGLE and rows == preds
    # the same texts as a text file and on the command line: the same predictions; the csv output
    (tmp_path / "t.txt").write_text("\n".join(SINGLE) + "\n\n", encoding="utf-8")
    out_csv = str(tmp_path / "out.csv")
    from_file, _ = _predict(["--model_dir", tiny["folder"], "--text_file", str(tmp_path / "t.txt"),
                             "--output", out_csv], capsys)
    from_args, _ = _predict(["--model_dir", tiny["folder"], *SINGLE], capsys)
    assert from_file == preds and from_args == preds
    import csv
    with open(out_csv, encoding="utf-8", newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == ["text", "label", "p_0", "p_1"] and [r[0] for r in table[1:]] == SINGLE
    np.testing.assert_array_equal(np.array([[float(r[2]), float(r[3])] for r in table[1:]]), _probs(preds))


def test_predict_equals_evaluation_on_prepared_records_pairs(tiny, tmp_path, capsys):
    """The same model file in a folder for a pair task (MRPC): pairs from a csv and from a TAB-separated text file
    equal the evaluation of the pair records (segment ids of the second text included)."""
    pair_dir = str(tmp_path / "mrpc")
    m = tiny["out"]
    write_export_folder(pair_dir, os.path.join(m["path"], "model.onnx"), tiny["vocab"], tiny["config"], "MRPC", S)
    csv_path = _csv(tmp_path / "pairs.csv", PAIRS, pair=True)         # 6 rows, batch 4: a padded tail
    arrays = _records(csv_path, tmp_path / "data", tiny["vocab"], pair=True)
    assert arrays["segment_ids"].max() == 1
    want = _eval_probs(os.path.join(pair_dir, "model.onnx"), arrays)
    preds, lines = _predict(["--model_dir", pair_dir, "--csv", csv_path, "--text_b_column", "text_b"], capsys)
    np.testing.assert_allclose(_probs(preds), want, rtol=0, atol=1e-6)
    assert [p["text_b"] for p in preds] == [b for _, b in PAIRS] and len(lines) == len(PAIRS)
    (tmp_path / "p.txt").write_text("".join(f"{a}\t{b}\n" for a, b in PAIRS), encoding="utf-8")
    from_file, _ = _predict(["--model_dir", pair_dir, "--text_file", str(tmp_path / "p.txt")], capsys)
    assert from_file == preds
    # the pair model's probabilities are not those of the texts run as single texts
    single = _eval_probs(os.path.join(pair_dir, "model.onnx"),
                         _records(_csv(tmp_path / "a.csv", [a for a, _ in PAIRS]), tmp_path / "d2", tiny["vocab"]))
    assert np.abs(single - want).max() > 1e-3


def _card_numbers(text):
    return sorted(re.findall(r"(?<![\w.])-?\d+(?:,\d{3})*(?:\.\d+)?(?!\w)", text))


def test_folder_reloads_as_written_and_the_card_holds_the_dicts_numbers(tiny):
    out, card = tiny["out"], tiny["card"]
    f = read_export_folder(tiny["folder"])
    assert sorted(out["files"]) == ["config.json", "labels.json", "model.onnx", "model.onnx.json", "model_card.md",
                                    "vocab.txt"]
    assert sorted(os.listdir(tiny["folder"])) == sorted(out["files"])
    assert not [n for n in os.listdir(tiny["dir"]) if n.startswith(".")]           # no temp folders left
    assert (f.task, f.labels, f.regression, f.text_pair) == (get_task("MR"), ("0", "1"), False, False)
    assert (f.batch_size, f.seq_length, f.max_seq_length, f.do_lower_case) == (B, S, S, True)
    assert (f.file_format, f.vocab_size, f.num_labels) == ("ONNX", 64, 2)
    assert f.model_file == os.path.join(tiny["folder"], "model.onnx") and f.quant is None and f.tpack_file is None
    with open(f.labels_file, encoding="utf-8") as fh:
        labels = json.load(fh)
    assert labels == {k: v for k, v in out.items() if k not in ("path", "files", "export")}
    assert f.bert_config == dict(tiny["cfg"].to_dict(), id2label={"0": "0", "1": "1"}, label2id={"0": 0, "1": 1})
    assert open(f.vocab_file, encoding="utf-8").read() == open(tiny["vocab"], encoding="utf-8").read()
    assert OnnxRunner(f.model_file).shape == (B, S)
    with open(f.sidecar_file, encoding="utf-8") as fh:
        assert json.load(fh)["file"] == "model.onnx"
    # the model card: every number in it is one of the card dict's, labels.json's shape or a file size
    text = open(f.card_file, encoding="utf-8").read()
    assert text.startswith("# tiny MR student\n") and "tiny random teacher" in text and "`abc1234`" in text

    def fmt(v):
        return f"{v:,}" if isinstance(v, int) else f"{v:.4f}"
    nums = [v for r in card["stages"] for v in r.values() if not isinstance(v, str)]
    nums += [v for m in card["metrics"].values() for v in m.values()] + list(card["sizes"].values())
    nums += list(card["latency"].values())
    files = [fmt(b) for n, b in out["files"].items() if n != "model_card.md"]   # the card lists the others
    expected = [fmt(v) for v in nums] + ["0", "1"] + [fmt(B), fmt(S), fmt(S)] + files     # labels, shape
    assert _card_numbers(text) == sorted(expected)
    for row in card["stages"]:
        assert "| " + " | ".join(fmt(row[c]) if c in row and not isinstance(row[c], str) else row.get(c, "")
                                 for c in ("stage", "epochs", "seconds", "acc")) + " |" in text
    assert "| student | 0.8125 | 0.7777 |" in text and "| teacher ckpt | 90,440,258 |" in text
    with pytest.raises(UserError, match="model card: unknown key"):
        write_export_folder(str(tiny["dir"] / "x"), f.model_file, f.vocab_file, f.config_file, "MR", S,
                            card={"acc": 0.8})
    assert not os.path.exists(tiny["dir"] / "x") and set(CARD_KEYS) >= set(card)


def test_write_refuses_a_vocab_that_is_not_the_models_and_leaves_nothing(tiny, tmp_path):
    f = read_export_folder(tiny["folder"])
    (tmp_path / "v.txt").write_text("\n".join(VOCAB[:60]) + "\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"has 60 lines, the model config's vocab_size is 64"):
        write_export_folder(str(tmp_path / "out"), f.model_file, str(tmp_path / "v.txt"), f.config_file, "MR", S)
    with pytest.raises(UserError, match=r"num_labels 2, task MNLI has 3"):
        write_export_folder(str(tmp_path / "out"), f.model_file, f.vocab_file, f.config_file, "MNLI", S)
    with pytest.raises(UserError, match=r"exists and is not empty"):
        write_export_folder(tiny["folder"], f.model_file, f.vocab_file, f.config_file, "MR", S)
    assert sorted(os.listdir(tmp_path)) == ["v.txt"]


def test_a_failed_write_leaves_nothing_and_overwrite_keeps_the_old_folder_on_failure(tiny, tmp_path, monkeypatch):
    from src import export_folder
    f = read_export_folder(tiny["folder"])
    args = (f.model_file, f.vocab_file, f.config_file, "MR", S)

    def fail(*_):
        raise RuntimeError("disk full")
    real = export_folder.render_model_card
    monkeypatch.setattr(export_folder, "render_model_card", fail)
    with pytest.raises(RuntimeError, match="disk full"):                # after the model and vocab were copied
        write_export_folder(str(tmp_path / "new"), *args)
    assert os.listdir(tmp_path) == []
    monkeypatch.setattr(export_folder, "render_model_card", real)
    write_export_folder(str(tmp_path / "new"), *args, card={"title": "first"})
    monkeypatch.setattr(export_folder, "render_model_card", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        write_export_folder(str(tmp_path / "new"), *args, overwrite=True)
    assert os.listdir(tmp_path) == ["new"] and read_export_folder(str(tmp_path / "new")).task.name == "MR"
    monkeypatch.setattr(export_folder, "render_model_card", real)
    write_export_folder(str(tmp_path / "new"), *args, card={"title": "second"}, overwrite=True)
    assert os.listdir(tmp_path) == ["new"]
    assert open(tmp_path / "new" / "model_card.md", encoding="utf-8").read().startswith("# second\n")


def _broken(tiny, tmp_path, how):
    d = tmp_path / "broken"
    shutil.copytree(tiny["folder"], d)
    if how.startswith("rm "):
        os.remove(d / how[3:])
    elif how == "short vocab":
        (d / "vocab.txt").write_text("\n".join(VOCAB[:63]) + "\n", encoding="utf-8")
    elif how == "bad labels":
        (d / "labels.json").write_text('{"task": "MR", ', encoding="utf-8")
    elif how == "labels without seq_length":
        labels = json.loads((d / "labels.json").read_text())
        del labels["seq_length"]
        (d / "labels.json").write_text(json.dumps(labels))
    elif how == "bad config":
        (d / "config.json").write_text('{"hidden_size": 15, "num_attention_heads": 2}')
    return str(d)


@pytest.mark.parametrize("how, names", [
    ("rm vocab.txt", r"broken/vocab\.txt'?: missing"),
    ("rm model.onnx", r"broken/model\.onnx'?: missing"),
    ("rm labels.json", r"broken/labels\.json'?: missing"),
    ("rm config.json", r"broken/config\.json'?: missing"),
    ("short vocab", r"broken/vocab\.txt'?: 63 lines, config\.json has vocab_size 64"),
    ("bad labels", r"broken/labels\.json'?: not valid JSON"),
    ("labels without seq_length", r"broken/labels\.json'?: no 'seq_length'"),
    ("bad config", r"broken/config\.json'?: not a valid model config"),
])
def test_a_broken_folder_is_one_error_naming_the_file(tiny, tmp_path, capsys, how, names):
    import run_predict
    d = _broken(tiny, tmp_path, how)
    out = tmp_path / "out.jsonl"
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_main(run_predict.main, ["--model_dir", d, "good film", "--output", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("ERROR: "), err
    assert re.search(names, err[0]), err[0]
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (["--model_dir", "{tmp}/nowhere", "x"], r"--model_dir '.*nowhere': not a folder"),
    (["--model_dir", "{mr}"], r"give the input as texts on the command line, --text_file or --csv"),
    (["--model_dir", "{mr}", "--text_file", "{tmp}/empty.txt"], r"--text_file '.*empty\.txt': no text"),
    (["--model_dir", "{mr}", "--csv", "{tmp}/in.csv", "--text_column", "body"],
     r"--csv '.*in\.csv': --text_column 'body' is not a column \(columns: label, text\)"),
    (["--model_dir", "{mr}", "good\tfilm"], r"text pairs given, but the model in .* takes single texts \(task MR\)"),
    (["--model_dir", "{mr}", "--csv", "{tmp}/in.csv", "--text_b_column", "label"], r"text pairs given"),
    (["--model_dir", "{mrpc}", "good film"], r"single texts given, but the model in .* takes text pairs"),
    (["--model_dir", "{mr}", "good", "--output", "{tmp}/out.txt"], r"--output '.*out\.txt': expected a \.jsonl"),
])
def test_bad_input_is_one_error_line_and_nothing_written(tiny, tmp_path, capsys, args, message):
    import run_predict
    (tmp_path / "empty.txt").write_text("\n \n", encoding="utf-8")
    _csv(tmp_path / "in.csv", SINGLE[:2])
    mrpc = tmp_path / "mrpc"
    if "{mrpc}" in args:
        write_export_folder(str(mrpc), os.path.join(tiny["folder"], "model.onnx"), tiny["vocab"], tiny["config"],
                            "MRPC", S)
    args = [a.format(tmp=tmp_path, mr=tiny["folder"], mrpc=mrpc) for a in args]
    before = sorted(os.listdir(tmp_path))
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_main(run_predict.main, args + ([] if "--output" in args else ["--output", str(tmp_path / "o.jsonl")]))
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("ERROR: ") and re.search(message, err[0]), err
    assert sorted(os.listdir(tmp_path)) == before


def test_run_predict_script_reports_a_missing_vocab_in_one_line(tiny, tmp_path):
    """As a user runs it (scripts/run_predict.sh, a subprocess): one ERROR line, exit 2, no traceback, no file."""
    d = _broken(tiny, tmp_path, "rm vocab.txt")
    r = subprocess.run(["bash", os.path.join(ROOT, "scripts", "run_predict.sh"), d, "good film", "--output",
                        "o.jsonl"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYTHON=sys.executable))
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "vocab.txt" in lines[0] and lines[0].startswith("ERROR"), \
        r.stderr[-2000:]
    assert not (tmp_path / "o.jsonl").exists()
    ok = subprocess.run(["bash", os.path.join(ROOT, "scripts", "run_predict.sh"), tiny["folder"], "good film",
                         "--output", "o.jsonl"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                        env=dict(os.environ, PYTHON=sys.executable))
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert ok.stdout.count("\n") == 1 and json.loads((tmp_path / "o.jsonl").read_text())["text"] == "good film"


def test_run_eval_onnx_model_dir_equals_model_file(tiny, tmp_path):
    """The folder's task (MRPC: f1 and acc, not the default MR's acc), shape and model file."""
    import run_eval_onnx
    pair_dir = str(tmp_path / "mrpc")
    write_export_folder(pair_dir, os.path.join(tiny["folder"], "model.onnx"), tiny["vocab"], tiny["config"], "MRPC",
                        S)
    _records(_csv(tmp_path / "dev.csv", PAIRS, pair=True), tmp_path / "data", tiny["vocab"], pair=True)
    data = str(tmp_path / "data")
    by_file = run_eval_onnx.main(["--model_file", os.path.join(tiny["folder"], "model.onnx"), "--data_dir", data,
                                  "--task", "MRPC"])
    by_dir = run_eval_onnx.main(["--model_dir", pair_dir, "--data_dir", data])
    assert by_dir == by_file and set(by_dir) == {"f1", "acc"}
    with pytest.raises(UserError, match=r"--task MNLI: the model in .* is for task MRPC"):
        run_eval_onnx.main(["--model_dir", pair_dir, "--data_dir", data, "--task", "MNLI"])


def test_export_py_export_dir_writes_the_folder(tiny, tmp_path):
    """export.py --export_dir as a user runs it: the vocab beside the checkpoint is taken; flags that describe a
    folder without --export_dir, --file_name with it, or no --task are one error line."""
    import export
    out = tmp_path / "folder"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "export.py"), "--config_path", tiny["config"],
                        "--ckpt_file", tiny["ckpt"], "--file_format", "MINDIR", "--batch_size", "2",
                        "--seq_length", "8", "--task", "SST-2", "--export_dir", str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    f = read_export_folder(str(out))
    assert (f.file_format, f.batch_size, f.seq_length, f.task.name) == ("MINDIR", 2, 8, "SST-2")
    assert open(f.vocab_file, encoding="utf-8").read() == open(tiny["vocab"], encoding="utf-8").read()
    # the MINDIR folder predicts what the ONNX one does on texts short enough for both (padding is masked)
    import run_predict
    short = ["good film", "Bad movie.", "great fun"]                 # 3 rows, batch 2: a padded tail
    mindir = run_predict.main(["--model_dir", str(out), *short])
    onnx_ = run_predict.main(["--model_dir", tiny["folder"], *short])
    assert [p["label"] for p in mindir] == [p["label"] for p in onnx_]
    np.testing.assert_allclose(_probs(mindir), _probs(onnx_), rtol=0, atol=1e-4)
    for argv, message in ((["--vocab_file", tiny["vocab"]], "--vocab_file: only with --export_dir"),
                          (["--export_dir", str(tmp_path / "y"), "--file_name", "z", "--task", "MR"],
                           "--file_name and --export_dir"),
                          (["--export_dir", str(tmp_path / "y")], "--export_dir needs --task"),
                          (["--export_dir", str(tmp_path / "y"), "--task", "csv"], "needs a label list")):
        with pytest.raises(UserError, match=message):
            export.main(["--config_path", tiny["config"], "--ckpt_file", tiny["ckpt"]] + argv)
    assert sorted(os.listdir(tmp_path)) == ["folder"]


def test_a_regression_folder_prints_values(tiny, tmp_path, capsys):
    """STS-B (regression, pairs): the value is the model's one output, equal to the evaluation's logits."""
    cfg = tiny["cfg"].replace(num_labels=1)
    ms.set_seed(9)
    save_cell(build_classifier(cfg, "dense"), str(tmp_path / "reg.ckpt"))
    cfg.to_json_file(str(tmp_path / "reg.json"))
    folder = str(tmp_path / "stsb")
    export_to_folder(folder, "STS-B", str(tmp_path / "reg.json"), str(tmp_path / "reg.ckpt"), vocab_file=tiny["vocab"],
                     file_format="ONNX", batch_size=B, seq_length=S, log=_quiet)
    csv_path = _csv(tmp_path / "pairs.csv", PAIRS, pair=True)
    arrays = _records(csv_path, tmp_path / "data", tiny["vocab"], pair=True)
    runner = OnnxRunner(os.path.join(folder, "model.onnx"))
    want = predict(lambda *t: ms.Tensor(runner(*[x.asnumpy() for x in t])), arrays, B)[:, 0]
    out = str(tmp_path / "o.csv")
    preds, lines = _predict(["--model_dir", folder, "--csv", csv_path, "--text_b_column", "text_b", "--output", out],
                            capsys)
    np.testing.assert_allclose([p["value"] for p in preds], want, rtol=0, atol=1e-6)
    assert all("label" not in p for p in preds) and np.ptp(want) > 1e-3
    assert [float(x.split("\t")[0]) for x in lines] == [float(f"{v:.6f}") for v in (p["value"] for p in preds)]
    assert open(out, encoding="utf-8").readline().strip() == "text,text_b,value"


@pytest.fixture(scope="module")
def ternary(tiny, tmp_path_factory):
    """A packed TernaryBERT model of the tiny shape (dynamic 8-bit activation scales), exported as a 2-bit folder."""
    from src.packing import pack
    from src.quant import QuantConfig, quantize_model, quantized_state
    from src.tinybert_model import BertForSequenceClassification
    d = tmp_path_factory.mktemp("tern_folder")
    ms.set_seed(0)
    model = BertForSequenceClassification(tiny["cfg"].replace(initializer_range=0.3))
    q = QuantConfig()
    quantize_model(model, q)
    pack(quantized_state(model), tiny["cfg"], q, str(d / "model.tpack"))
    folder = str(d / "w2")
    out = export_to_folder(folder, "MR", tiny["config"], str(d / "model.tpack"), vocab_file=tiny["vocab"],
                           file_format="ONNX", batch_size=B, seq_length=S, ternary=True, nbits=2,
                           include_tpack=True, log=_quiet)
    return {"folder": folder, "out": out, "qcfg": q, "tpack": str(d / "model.tpack")}


def test_a_2bit_folder_runs_in_eval_and_predict(ternary, tiny, tmp_path, capsys):
    """export.py --ternary --file_format ONNX --nbits 2 into a folder: MatMulNBits in the file, quant.json and the
    packed artefact beside it; run_eval_onnx --model_dir equals --model_file, and run_predict equals the
    evaluation of the file (dynamic activation scales: a row's output depends on its batch, so the tail is padded
    exactly as evaluation pads it)."""
    import onnx
    import run_eval_onnx
    f = read_export_folder(ternary["folder"])
    ops = {n.op_type for n in onnx.load(f.model_file).graph.node}
    assert "MatMulNBits" in ops and ternary["out"]["export"]["nbits_rewrite"]["dense"] > 0
    assert f.quant == {"notation": ternary["qcfg"].notation, **ternary["qcfg"].to_dict()}
    assert open(f.tpack_file, "rb").read() == open(ternary["tpack"], "rb").read()
    csv_path = _csv(tmp_path / "dev.csv", SINGLE)
    arrays = _records(csv_path, tmp_path / "data", tiny["vocab"])
    data = str(tmp_path / "data")
    by_dir = run_eval_onnx.main(["--model_dir", ternary["folder"], "--data_dir", data])
    assert by_dir == run_eval_onnx.main(["--model_file", f.model_file, "--data_dir", data, "--task", "MR"])
    want = _eval_probs(f.model_file, arrays)
    preds, _ = _predict(["--model_dir", ternary["folder"], "--csv", csv_path], capsys)
    np.testing.assert_allclose(_probs(preds), want, rtol=0, atol=1e-6)
