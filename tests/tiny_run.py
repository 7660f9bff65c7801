"""A tiny, self-contained workspace for end-to-end runs of the entry scripts in subprocesses (resume, data
parallel, bad inputs): MR-style records (seq 16, vocab 30), a tiny teacher BertModel checkpoint + config.json,
and the command-line overrides that point configs/td_mr.yaml / configs/gd.yaml at them. No dropout, except in the
student of td1_args (tests/test_determinism.py). Used by tests/test_resume.py, tests/test_distributed.py,
tests/test_bad_input.py, tests/test_determinism.py and benchmarks/bench_distributed.py."""
import json
import os
import subprocess
import sys

import numpy as np
from src.checkpoint import save_cell

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

SEQ = 16
VOCAB = 30
COLUMNS = {"input_ids": ("int64", SEQ), "input_mask": ("int64", SEQ), "segment_ids": ("int64", SEQ),
           "label_ids": ("int64", 1)}
TINY = dict(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
            max_position_embeddings=SEQ, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def token_inputs(seed: int, pad_row: int, pad_from: int, batch: int = 2, seq: int = 8):
    """(input_ids, token_type_ids, input_mask) Tensors for a model of TINY's vocab: random ids, row `pad_row`
    padded from position `pad_from` (in-process model tests)."""
    import mindspore as ms
    rng = np.random.default_rng(seed)
    ids = ms.Tensor(rng.integers(0, VOCAB, (batch, seq)).astype(np.int32))
    mask = np.ones((batch, seq), np.int32)
    mask[pad_row, pad_from:] = 0
    return ids, ms.Tensor(np.zeros((batch, seq), np.int32)), ms.Tensor(mask)


def calibrate(model, batches: int = 3, batch: int = 8):
    """Run `batches` training-mode forward passes of a quantized TINY classifier on random token batches, so EMA
    activation scales hold real ranges (a fresh EMA quantizer's amax is 0: every activation would quantize to 0);
    returns {name: amax} of those scales, then leaves the model in inference mode."""
    import mindspore as ms
    from src.export import sample_inputs
    from src.tinybert_model import LogitsOnly
    net = LogitsOnly(model)
    net.set_train(True)
    for seed in range(batches):
        net(*[ms.Tensor(a) for a in sample_inputs(batch, SEQ, VOCAB, seed=100 + seed)])
    net.set_train(False)
    return {n: float(p.asnumpy()) for n, p in model.parameters_and_names() if n.endswith("amax")}


def rows(n: int, seed: int):
    """Learnable rows: label 1 iff the first word id is >= 17 (about half); lengths 5..16."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        length = int(rng.integers(5, SEQ + 1))
        ids = [2] + [int(t) for t in rng.integers(4, VOCAB, length - 2)] + [3] + [0] * (SEQ - length)
        yield {"input_ids": ids, "input_mask": [1] * length + [0] * (SEQ - length), "segment_ids": [0] * SEQ,
               "label_ids": [int(ids[1] >= 17)]}


def write_split(data_dir: str, split: str, n: int, seed: int):
    from src.records import write_records, write_schema
    os.makedirs(data_dir, exist_ok=True)
    count = write_records(os.path.join(data_dir, f"{split}.tf_record"), rows(n, seed), COLUMNS)
    write_schema(os.path.join(data_dir, f"{split}_schema.json"), COLUMNS, count)


TOKEN_LABELS = ["O", "B-X", "I-X"]
TOKEN_COLUMNS = {"input_ids": ("int64", SEQ), "input_mask": ("int64", SEQ), "segment_ids": ("int64", SEQ),
                 "label_ids": ("int64", SEQ), "sentence_id": ("int64", 1)}


def _tags_of(words) -> list:
    """Words 20..29 are entity words: B-X where the word before is not one, I-X where it is (the tag needs the
    context); others O."""
    return [0 if w < 20 else 2 if i and words[i - 1] >= 20 else 1 for i, w in enumerate(words)]


def token_sentences(n: int, seed: int):
    """(words, tags) of `n` sentences of 3..20 words (ids 4..29, tags by _tags_of), so some sentences need two
    rows of SEQ positions."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        words = [int(w) for w in rng.integers(4, VOCAB, int(rng.integers(3, 21)))]
        yield words, _tags_of(words)


def token_rows(n: int, seed: int):
    """The token-task layout of src/tasks.py: each word is its id plus, for every third word, a second piece
    (label -1); the tag id on the first piece; a sentence longer than SEQ - 2 pieces continues in a second row
    that repeats its last two words before as context (labels -1). Returns (rows, sentences)."""
    rows_out, sentences = [], []
    for sid, (words, tags) in enumerate(token_sentences(n, seed)):
        sentences.append([TOKEN_LABELS[t] for t in tags])
        pieces = [[w] + ([4 + (w * 7) % 26] if i % 3 == 2 else []) for i, w in enumerate(words)]
        start, ctx = 0, 0
        while start < len(words):
            ids, labels, end = [2], [-1], start - ctx
            for j in range(start - ctx, len(words)):
                if len(ids) + len(pieces[j]) > SEQ - 1:
                    break
                ids += pieces[j]
                labels += ([tags[j]] if j >= start else [-1]) + [-1] * (len(pieces[j]) - 1)
                end = j + 1
            ids.append(3)
            labels.append(-1)
            pad = SEQ - len(ids)
            rows_out.append({"input_ids": ids + [0] * pad, "input_mask": [1] * len(ids) + [0] * pad,
                             "segment_ids": [0] * SEQ, "label_ids": labels + [-1] * pad, "sentence_id": [sid]})
            start, ctx = end, 2
    return rows_out, sentences


def write_token_split(data_dir: str, split: str, n: int, seed: int) -> list:
    """A token-task split (token_rows) under data_dir; returns the gold tags of its sentences."""
    from src.records import write_records, write_schema
    os.makedirs(data_dir, exist_ok=True)
    rows_, sentences = token_rows(n, seed)
    count = write_records(os.path.join(data_dir, f"{split}.tf_record"), iter(rows_), TOKEN_COLUMNS)
    write_schema(os.path.join(data_dir, f"{split}_schema.json"), TOKEN_COLUMNS, count)
    return sentences


SPAN_WORDS = [f"w{i}" for i in range(23)]
SPAN_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "where", "mark"] + SPAN_WORDS   # VOCAB entries


def span_squad(n: int, seed: int) -> dict:
    """A SQuAD v1.1-format dataset of `n` questions "where mark": a context of 4..18 random words w5..w22 holds an
    answer word (w0..w4) right after the word "mark", and half of them another answer word elsewhere (the answer
    needs the word before it); some contexts need several windows of SEQ positions."""
    rng = np.random.default_rng(seed)
    paragraphs = []
    for q in range(n):
        words = [SPAN_WORDS[i] for i in rng.integers(5, len(SPAN_WORDS), int(rng.integers(4, 19)))]
        if rng.random() < 0.5:                  # a distractor: an answer word not after "mark"
            words.insert(int(rng.integers(0, len(words))), SPAN_WORDS[int(rng.integers(0, 5))])
        at = int(rng.integers(0, len(words)))
        words[at:at] = ["mark", SPAN_WORDS[int(rng.integers(0, 5))]]
        start = len(" ".join(words[:at + 1])) + 1
        answer = {"text": words[at + 1], "answer_start": start}
        paragraphs.append({"context": " ".join(words),
                           "qas": [{"id": f"q{seed}-{q}", "question": "where mark", "answers": [answer]}]})
    return {"version": "1.1", "data": [{"title": "tiny", "paragraphs": paragraphs}]}


def make_workspace(root: str, n_train: int = 64, n_dev: int = 16) -> dict:
    """Records + tiny teacher under `root`; returns the paths."""
    import mindspore as ms
    from src.tinybert_model import BertConfig, BertModel
    data = os.path.join(root, "data")
    write_split(data, "train", n_train, 1)
    write_split(data, "dev", n_dev, 2)
    model_dir = os.path.join(root, "model")
    os.makedirs(model_dir, exist_ok=True)
    cfg = BertConfig(**TINY)
    cfg.to_json_file(os.path.join(model_dir, "config.json"))
    ms.set_seed(0)
    ms.save_checkpoint(BertModel(cfg), os.path.join(model_dir, "bert.ckpt"))
    return {"root": root, "data": data, "config": os.path.join(model_dir, "config.json"),
            "ckpt": os.path.join(model_dir, "bert.ckpt")}


def finetune_args(ws: dict, out: str, batch: int = 4, epochs: int = 3, **extra) -> list:
    """run_task_distill.py --phase finetune on the tiny workspace (teacher fine-tuning: plain CE mean over the
    batch, so gradient averaging over workers is exact)."""
    args = {"phase": "finetune", "threads": 1, "output_dir": out, "data.dir": ws["data"],
            "data.max_seq_length": SEQ, "data.length_buckets": [SEQ], "teacher.config": ws["config"],
            "teacher.init_ckpt": ws["ckpt"], "finetune.batch_size": batch, "finetune.epochs": epochs,
            "finetune.lr": 0.005, "finetune.warmup_ratio": 0.1, "eval.batch_size": 16, "log_every": 4,
            "checkpoint.every_steps": 0}
    args.update(extra)
    return cli(args)


def dropout_student_config(ws: dict, hidden: int = 64) -> str:
    """config.json of a 1-layer student `hidden` wide with dropout 0.1 on hidden states and attention probabilities
    (beside the workspace's teacher config): tensors of 4k-8k elements a dropout op at batch 8, large enough for
    MindSpore's CPU Dropout to split them over threads."""
    path = os.path.join(ws["root"], "model", f"student_dropout_{hidden}.json")
    if not os.path.exists(path):
        from src.tinybert_model import BertConfig
        BertConfig(**TINY).replace(hidden_size=hidden, intermediate_size=2 * hidden, hidden_dropout_prob=0.1,
                                   attention_probs_dropout_prob=0.1).to_json_file(path)
    return path


def td1_args(ws: dict, out: str, batch: int = 8, epochs: int = 3, **extra) -> list:
    """run_task_distill.py --phase td1 on the tiny workspace: the random classifier teacher, a random student of
    dropout_student_config (dropout on), every batch of `epochs` epochs (8 steps each at batch 8)."""
    args = {"phase": "td1", "threads": 1, "output_dir": out, "data.dir": ws["data"], "data.max_seq_length": SEQ,
            "data.length_buckets": [SEQ], "teacher.config": ws["config"], "teacher.ckpt": classifier_teacher(ws),
            "student.config": dropout_student_config(ws), "student.init": "random", "td1.batch_size": batch,
            "td1.epochs": epochs, "td1.max_steps": 0, "td1.lr": 0.002, "eval.batch_size": 16, "log_every": 8,
            "checkpoint.every_steps": 0}
    args.update(extra)
    return cli(args)


def classifier_teacher(ws: dict) -> str:
    """A (random, tiny) BertForSequenceClassification checkpoint beside the workspace's BertModel: the teacher
    of the ternary and width runs (their parity and resume tests need a teacher, not a good one)."""
    path = os.path.join(ws["root"], "model", "classifier.ckpt")
    if not os.path.exists(path):
        import mindspore as ms
        from src.tinybert_model import BertConfig, BertForSequenceClassification
        ms.set_seed(3)
        save_cell(BertForSequenceClassification(BertConfig(**TINY).replace(initializer_range=0.2)), path)
    return path


def ternary_args(ws: dict, out: str, batch: int = 4, **extra) -> list:
    """run_ternary.py on the tiny workspace: 1 epoch (16 steps at batch 4), no packing."""
    args = {"threads": 1, "output_dir": out, "data.dir": ws["data"], "data.max_seq_length": SEQ,
            "data.length_buckets": [SEQ], "teacher.config": ws["config"], "teacher.ckpt": classifier_teacher(ws),
            "train.batch_size": batch, "train.epochs": 1, "train.lr": 0.002, "train.warmup_ratio": 0.1,
            "eval.batch_size": 16, "eval.teacher_baseline": False, "log_every": 4, "checkpoint.every_steps": 0,
            "pack.after_train": False}
    args.update(extra)
    return cli(args)


def ofa_args(ws: dict, out: str, batch: int = 4, **extra) -> list:
    """run_ofa_width.py on the tiny workspace: widths 1.0 and 0.5 (2 heads -> 1), 1 epoch, no latency table."""
    args = {"threads": 1, "output_dir": out, "data.dir": ws["data"], "data.max_seq_length": SEQ,
            "data.length_buckets": [SEQ], "teacher.config": ws["config"], "teacher.ckpt": classifier_teacher(ws),
            "width_mult_list": [1.0, 0.5], "importance.max_batches": 2, "importance.batch_size": 8,
            "train.batch_size": batch, "train.epochs": 1, "train.lr": 0.002, "eval.batch_size": 16,
            "log_every": 4, "checkpoint.every_steps": 0, "latency.runs": 0}
    args.update(extra)
    return cli(args)


def gd_overrides(ws: dict, **extra) -> dict:
    """run_general_distill.py on the tiny workspace's records (labels ignored): a random 1-layer student."""
    args = {"threads": 1, "data.dir": ws["data"], "data.max_seq_length": SEQ, "data.length_buckets": [SEQ],
            "teacher.config": ws["config"], "teacher.ckpt": ws["ckpt"], "student.arch.num_hidden_layers": 1,
            "student.arch.hidden_size": 16, "student.arch.num_attention_heads": 2,
            "student.arch.intermediate_size": 32, "student.init": "random"}
    args.update(extra)
    return args


def gd_args(ws: dict, out: str, batch: int = 4, **extra) -> list:
    return cli(gd_overrides(ws, output_dir=out, **{"train.batch_size": batch, "train.epochs": 1, "train.lr": 0.005,
                                                   "log_every": 4, "checkpoint.every_steps": 0, **extra}))


def write_vocab(path: str) -> str:
    """A vocab.txt of VOCAB pieces (special tokens at ids 0-4, then w05 .. w29) for runs that need the teacher's
    vocab file (run_compress.py's vocab and export stages)."""
    with open(path, "w", encoding="utf-8") as f:
        words = [f"w{i:02d}" for i in range(5, VOCAB)]
        f.write("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words) + "\n")
    return path


def compress_args(ws: dict, out: str, **extra) -> list:
    """run_compress.py on a tiny workspace (ws: data, config, teacher, vocab): every training stage 4 steps of 8
    rows, one length bucket, no checkpoints, latency from 2 runs."""
    a = {"output_dir": out, "threads": 1, "data.dir": ws["data"], "data.max_seq_length": SEQ,
         "teacher.config": ws["config"], "teacher.ckpt": ws["teacher"], "teacher.vocab": ws["vocab"],
         "depth.args.student.config": ws["config"], "depth.args.student.init": "random",
         "export.seq_length": SEQ, "report.latency_runs": 2}
    common = {"data.length_buckets": [SEQ], "eval.batch_size": 16, "checkpoint.every_steps": 0, "log_every": 2}
    steps = {"depth": {"td1.max_steps": 4, "td1.batch_size": 8, "td2.max_steps": 4, "td2.batch_size": 8},
             "width": {"train.max_steps": 4, "train.batch_size": 8, "importance.max_batches": 2,
                       "importance.batch_size": 8, "eval.every": 0},
             "ternary": {"train.max_steps": 4, "train.batch_size": 8, "train.lr": 0.002}}
    for name, keys in steps.items():
        a.update({f"{name}.args.{k}": v for k, v in {**common, **keys}.items()})
    a.update(extra)
    return cli(a)


def cli(args: dict) -> list:
    """{"a.b": value} -> ["--a.b", "value"]; lists as several tokens, booleans as true/false."""
    out = []
    for k, v in args.items():
        values = v if isinstance(v, list) else [v]
        out += [f"--{k}"] + [str(x).lower() if isinstance(x, bool) else str(x) for x in values]
    return out


def env(threads: int = 1) -> dict:
    e = dict(os.environ)
    e["PATH"] = os.path.dirname(sys.executable) + os.pathsep + e.get("PATH", "")   # msrun's `python` = ours
    e["PYTHONPATH"] = ROOT + os.pathsep + e.get("PYTHONPATH", "")
    e["OMP_NUM_THREADS"] = str(threads)
    e["GLOG_v"] = "3"                        # MindSpore: errors only
    return e


def run_script(script: str, args: list, timeout: int = 300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, os.path.join(ROOT, script)] + list(args), cwd=ROOT, env=env(),
                          capture_output=True, text=True, timeout=timeout, **kw)


def export_onnx(run_dir: str, ckpt: str, num_labels: int, file_name: str, batch: int = 8) -> list:
    """export.py of a run's checkpoint (its config.json) to <file_name>.onnx at batch `batch`, seq SEQ; returns the
    output shape the sidecar JSON records."""
    res = run_script("export.py", ["--config_path", os.path.join(run_dir, "config.json"), "--ckpt_file", ckpt,
                                   "--num_labels", str(num_labels), "--file_format", "ONNX", "--batch_size",
                                   str(batch), "--seq_length", str(SEQ), "--file_name", file_name])
    assert res.returncode == 0, res.stderr[-3000:]
    with open(file_name + ".onnx.json", encoding="utf-8") as f:
        return json.load(f)["output"]["shape"]


def assert_onnx_f1(f1: float, *args: str) -> None:
    """run_eval_onnx.py with `args` (model, task, records; 1 thread) prints `f1 is <f1>` to 6 decimals: the exported
    file reproduces an F1 a run logged."""
    res = run_script("run_eval_onnx.py", [*args, "--threads", "1"])
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"f1 is {f1:.6f}" in res.stdout, (f1, res.stdout)


def read_ckpt(path: str) -> dict:
    from src.checkpoint import read_ms_checkpoint
    return read_ms_checkpoint(path, with_extra=True)


def best_acc(log_path: str) -> list:
    with open(log_path, encoding="utf-8") as f:
        return [float(line.split()[-1]) for line in f if line.startswith("The best acc is")]
