"""HF weight files as real downloads ship them (src/hf_checkpoint.py): a sharded safetensors index, bf16 tensors in
a torch zip, and the file taken when a folder holds several (safetensors before .bin, as transformers does).
No torch and no graph: the bf16 file is the torch fixture with its float storages re-declared as bfloat16."""
import json
import os
import shutil
import zipfile

import numpy as np
import pytest
import mindspore as ms
from safetensors.numpy import save_file

from conftest import FIXTURES
from src.errors import UserError
from src.hf_checkpoint import find_hf_weights, load_hf_into, ms_to_hf_name, read_hf_state_dict
from src.tinybert_model import BertConfig, BertModel

TORCH_BIN = os.path.join(FIXTURES, "torch_bin")
TINY = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                  max_position_embeddings=16)


def _hf_state(seed=0):
    ms.set_seed(seed)
    net = BertModel(TINY)
    return net, {ms_to_hf_name(n): p.asnumpy() for n, p in net.parameters_and_names()}


def test_sharded_safetensors_index_reads_every_shard(tmp_path):
    """model.safetensors.index.json over two shards: every tensor of both, exact, and a BertModel loads it strictly;
    a shard the index names but the folder lacks is one error naming it."""
    net, state = _hf_state()
    names = list(state)
    shards = {"model-00001-of-00002.safetensors": names[:len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    for shard, keys in shards.items():
        save_file({k: state[k] for k in keys}, str(tmp_path / shard))
    index = {"metadata": {"total_size": 0}, "weight_map": {k: s for s, keys in shards.items() for k in keys}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    assert find_hf_weights(str(tmp_path)) == str(tmp_path / "model.safetensors.index.json")
    got = read_hf_state_dict(str(tmp_path))
    assert sorted(got) == sorted(names)
    for k in names:
        np.testing.assert_array_equal(got[k], state[k], err_msg=k)
    ms.set_seed(9)
    fresh = BertModel(TINY)
    load_hf_into(fresh, str(tmp_path), strict=True)
    for n, p in fresh.parameters_and_names():
        np.testing.assert_array_equal(p.asnumpy(), state[ms_to_hf_name(n)], err_msg=n)

    os.remove(tmp_path / "model-00002-of-00002.safetensors")
    with pytest.raises(UserError, match="model-00002-of-00002.safetensors' do not exist"):
        read_hf_state_dict(str(tmp_path))


def _bf16_torch_bin(path):
    """The torch fixture with its two float32 storages re-declared as BFloat16Storage (what torch.save writes for
    bfloat16 tensors) and refilled with 2-byte bf16 codes; returns the expected arrays (bf16 widened to float32)."""
    expected = dict(np.load(os.path.join(TORCH_BIN, "expected.npz")))
    rng = np.random.default_rng(0)
    codes = {}
    with zipfile.ZipFile(os.path.join(TORCH_BIN, "pytorch_model.bin")) as src, zipfile.ZipFile(path, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith("data.pkl"):
                assert data.count(b"torch\nFloatStorage\n") == 1          # memoised: the second is a BINGET
                data = data.replace(b"torch\nFloatStorage\n", b"torch\nBFloat16Storage\n")
            elif item.filename.split("/")[-2:] in (["data", "0"], ["data", "2"]):
                n = len(data) // 4
                bits = (rng.standard_normal(n).astype(np.float32).view(np.uint32) >> 16).astype("<u2")
                codes[item.filename[-1]] = (bits.astype(np.uint32) << 16).view(np.float32)
                data = bits.tobytes()
            dst.writestr(item, data)
    expected["embeddings.word_embeddings.weight"] = codes["0"].reshape(11, 8)
    base = codes["2"].reshape(6, 10)
    expected["encoder.layer.0.attention.self.query.weight"] = base[1:5, ::2]
    expected["encoder.layer.0.attention.self.key.weight"] = base[:3, 2:6].T
    return expected


def test_bf16_torch_bin_is_widened_to_float32_exactly(tmp_path):
    """bfloat16 storages (plain and as strided views of one shared storage) come back as float32 with exactly the
    bf16 values; the float16 and int64 tensors beside them are unchanged."""
    path = str(tmp_path / "pytorch_model.bin")
    expected = _bf16_torch_bin(path)
    got = read_hf_state_dict(path)
    assert list(got) == list(expected)
    for k, want in expected.items():
        assert got[k].dtype == want.dtype, k
        np.testing.assert_array_equal(got[k], want, err_msg=k)
    assert got["embeddings.word_embeddings.weight"].dtype == np.float32
    assert got["embeddings.LayerNorm.weight"].dtype == np.float16
    assert (got["embeddings.word_embeddings.weight"].view(np.uint32) & 0xFFFF == 0).all()      # really bf16 values
    assert np.abs(got["encoder.layer.0.attention.self.key.weight"]).min() > 0                    # not zeros


def test_safetensors_is_taken_before_pytorch_bin(tmp_path):
    """A folder with both model.safetensors and pytorch_model.bin reads the safetensors file (as transformers does);
    the shard index of safetensors also comes before a .bin; with only the .bin that is read."""
    shutil.copy(os.path.join(TORCH_BIN, "pytorch_model.bin"), tmp_path / "pytorch_model.bin")
    expected = dict(np.load(os.path.join(TORCH_BIN, "expected.npz")))
    other = {k: (v + 1).astype(v.dtype) for k, v in expected.items()}
    assert find_hf_weights(str(tmp_path)) == str(tmp_path / "pytorch_model.bin")
    np.testing.assert_array_equal(read_hf_state_dict(str(tmp_path))["embeddings.position_ids"],
                                  expected["embeddings.position_ids"])
    save_file(other, str(tmp_path / "model-00001-of-00001.safetensors"))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {k: "model-00001-of-00001.safetensors" for k in other}}))
    assert find_hf_weights(str(tmp_path)) == str(tmp_path / "model.safetensors.index.json")
    save_file({k: v * 3 for k, v in other.items()}, str(tmp_path / "model.safetensors"))
    assert find_hf_weights(str(tmp_path)) == str(tmp_path / "model.safetensors")
    got = read_hf_state_dict(str(tmp_path))
    for k in expected:
        np.testing.assert_array_equal(got[k], other[k] * 3, err_msg=k)
