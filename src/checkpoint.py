"""MindSpore checkpoints: strict loading, atomic saves with a CRC, and the head-type record of classifiers.

- Loading is strict by default: every missing key, unexpected key and shape mismatch is reported in ONE
  `UserError` (`check_state`); `load_into` is the one loader every run, tool and test uses.
- `.ckpt` files are written atomically (temp file + `os.replace`) with a CRC, and read with CRC check; scalar
  metadata (metrics, the head type) travels inside the file.
- A classifier checkpoint records its head type (`save_cell`): the ReLU of a relu_pooler head has no parameter,
  so the weights alone cannot tell the heads apart. "auto" means the record, else dense (`pick_head_type`).
  Hugging Face names and conversion: src/hf_checkpoint.py.
"""
import json
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import mindspore as ms

from src.errors import UserError
from src.fileio import require_file
BERT_PREFIX = "bert."                       # backbone prefix of classification models, on both sides
# The classifier heads a checkpoint can record (BertForSequenceClassification): dropout -> dense (HF), or the
# TinyBERT anchors' pooled output -> ReLU -> dense.
HEAD_TYPES = ("dense", "relu_pooler")

# ---------------------------------------------------------------------------------------------------------------
# Strict state checking
# ---------------------------------------------------------------------------------------------------------------

def _compact(names: Iterable[str]) -> str:
    """Every name, with encoder layer indices folded: `encoder.[0-5].attention.query.weight, pooler.weight`."""
    groups: Dict[str, List[int]] = {}
    for name in names:
        m = re.search(r"\.(\d+)\.", name)
        key = name[:m.start()] + ".\0." + name[m.end():] if m else name
        groups.setdefault(key, []).extend([int(m.group(1))] if m else [])
    return ", ".join(key.replace("\0", _ranges(idx)) if idx else key for key, idx in groups.items())


def _ranges(idx: List[int]) -> str:
    """[0, 1, 2, 5] -> "[0-2,5]"; [3] -> "3"."""
    idx = sorted(set(idx))
    runs, start = [], idx[0]
    for a, b in zip(idx, idx[1:] + [None]):
        if b != a + 1:
            runs.append(str(start) if start == a else f"{start}-{a}")
            start = b
    return runs[0] if len(idx) == 1 else "[" + ",".join(runs) + "]"


def _shape(s) -> str:
    return "(" + ", ".join(str(int(d)) for d in s) + ("," if len(s) == 1 else "") + ")"


@dataclass
class LoadReport:
    """What a checkpoint gave a model. `mismatched` entries are (name, checkpoint shape, model shape)."""
    source: str
    loaded: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    mismatched: List[Tuple[str, tuple, tuple]] = field(default_factory=list)
    allowed_missing: List[str] = field(default_factory=list)       # missing, but tolerated by the caller
    allowed_unexpected: List[str] = field(default_factory=list)
    ignored: List[str] = field(default_factory=list)               # skipped on purpose (HF buffers)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def problems(self) -> str:
        def part(n, what, items):
            return f"{n} {what}" + (f" ({items})" if n else "")
        groups: Dict[Tuple[tuple, tuple], List[str]] = {}
        for name, got, want in self.mismatched:
            groups.setdefault((tuple(got), tuple(want)), []).append(name)
        mism = "; ".join(f"{_compact(names)}: checkpoint {_shape(got)} vs model {_shape(want)}"
                         for (got, want), names in groups.items())
        return ", ".join([part(len(self.missing), "missing", _compact(self.missing)),
                          part(len(self.unexpected), "unexpected", _compact(self.unexpected)),
                          part(len(self.mismatched), "shape mismatch" + ("" if len(self.mismatched) == 1 else "es"),
                               mism)])

    def left_out(self) -> str:
        """One line about what was not loaded ("" when everything was)."""
        parts = []
        if not self.ok:
            parts.append(self.problems())
        if self.allowed_missing:
            parts.append(f"not in checkpoint (allowed): {_compact(self.allowed_missing)}")
        if self.allowed_unexpected:
            parts.append(f"not in model (allowed): {_compact(self.allowed_unexpected)}")
        return "; ".join(parts)

    def __str__(self):
        rest = self.left_out()
        return f"{self.source}: loaded {len(self.loaded)} tensors" + (f"; left out: {rest}" if rest else "")


def _prefix_hint(model_names: set, ckpt_names: set) -> str:
    for add, drop in ((BERT_PREFIX, ""), ("", BERT_PREFIX)):
        renamed = {add + n[len(drop):] for n in ckpt_names if n.startswith(drop)}
        if renamed & model_names:
            how = f"'{add}' added to" if add else f"'{drop}' removed from"
            return f"; they would match with {how} each checkpoint key (pass a prefix_map)"
    return ""


def check_state(model_shapes: Dict[str, tuple], ckpt_shapes: Dict[str, tuple], source: str = "checkpoint",
                strict: bool = True, allow_missing: Sequence[str] = (), allow_unexpected: Sequence[str] = (),
                ignored: Sequence[str] = ()) -> LoadReport:
    """Compare checkpoint tensors with model parameters (name -> shape).

    Names starting with a prefix in allow_missing / allow_unexpected are tolerated. Strict: any other missing
    key, unexpected key or shape mismatch raises ONE UserError listing all of them. Not strict: prints what is
    left out to stderr. Returns the report; `report.loaded` are the names safe to load.
    """
    rep = LoadReport(source=source, ignored=list(ignored))
    for name, shape in model_shapes.items():
        if name not in ckpt_shapes:
            (rep.allowed_missing if name.startswith(tuple(allow_missing)) else rep.missing).append(name)
        elif tuple(ckpt_shapes[name]) != tuple(shape):
            rep.mismatched.append((name, tuple(ckpt_shapes[name]), tuple(shape)))
        else:
            rep.loaded.append(name)
    for name in ckpt_shapes:
        if name not in model_shapes:
            (rep.allowed_unexpected if name.startswith(tuple(allow_unexpected)) else rep.unexpected).append(name)
    if rep.ok:
        return rep
    if strict:
        if not rep.loaded:
            if rep.mismatched:
                why = "every shared tensor has another shape"
            else:
                why = "no parameter names in common" + _prefix_hint(set(model_shapes), set(ckpt_shapes))
            raise UserError(f"{source} is a checkpoint for another model ({why}): {rep.problems()}")
        raise UserError(f"{source} does not fit the model: {rep.problems()}")
    print(f"WARNING: {rep}", file=sys.stderr, flush=True)
    return rep


def param_shapes(net) -> Dict[str, tuple]:
    """Parameter name (relative to `net`) -> shape."""
    return {name: tuple(p.shape) for name, p in net.parameters_and_names()}


def net_prefix(net) -> str:
    return BERT_PREFIX if any(n.startswith(BERT_PREFIX) for n, _ in net.parameters_and_names()) else ""


# ---------------------------------------------------------------------------------------------------------------
# MindSpore checkpoints
# ---------------------------------------------------------------------------------------------------------------

METADATA_KEYS = "__metadata_keys__"   # reserved entry: JSON list of the names that are metadata, not tensors


def read_ms_checkpoint(path: str, with_extra: bool = False):
    """A MindSpore .ckpt as name -> numpy array. Scalars and strings saved by `save_checkpoint_atomic(extra=)`
    are not tensors: they are returned separately as a dict when with_extra=True ((tensors, extra)).
    Files written by save_checkpoint_atomic name their metadata in a reserved entry, so a 0-d parameter (an
    activation quantizer's running max) stays a tensor; other files (plain `mindspore.save_checkpoint`, files
    from before that entry) fall back to: strings and 0-d values are metadata."""
    if not os.path.isfile(path):
        raise UserError(f"checkpoint '{path}' does not exist")
    try:
        loaded = ms.load_checkpoint(path, crc_check=True)
    except (ValueError, RuntimeError, TypeError, OSError) as e:
        raise UserError(f"checkpoint '{path}' cannot be read: corrupted, truncated or not a MindSpore checkpoint "
                        f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    meta_keys = None
    if METADATA_KEYS in loaded:
        try:
            meta_keys = set(json.loads(loaded.pop(METADATA_KEYS)))
        except (TypeError, ValueError):
            raise UserError(f"checkpoint '{path}': entry {METADATA_KEYS} is not a JSON list of names") from None
    tensors, extra = {}, {}
    for name, value in loaded.items():
        if isinstance(value, str):
            extra[name] = value
        elif (name in meta_keys) if meta_keys is not None else (len(value.shape) == 0):
            extra[name] = value.asnumpy().item()
        else:
            tensors[name] = value.asnumpy()
    return (tensors, extra) if with_extra else tensors


def _as_save_list(obj) -> Union[list, "ms.nn.Cell"]:
    if isinstance(obj, dict):
        obj = [{"name": k, "data": v} for k, v in obj.items()]
    if isinstance(obj, list):
        return [{"name": d["name"], "data": ms.Tensor(np.asarray(d["data"]))
                 if isinstance(d["data"], (np.ndarray, np.generic)) else d["data"]} for d in obj]
    return obj


def save_checkpoint_atomic(net_or_params, path: str, extra: Optional[dict] = None):
    """`mindspore.save_checkpoint` (with CRC) to a temp file in the target directory, then `os.replace`: the file
    at `path` is either the old one or the complete new one. `net_or_params`: a Cell, a list of
    {"name", "data"} (Parameter/Tensor/numpy) or a dict name -> data. `extra`: scalars/strings to store too;
    their names go in the reserved entry METADATA_KEYS so read_ms_checkpoint tells them from 0-d tensors."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp{os.getpid()}.ckpt")  # MindSpore wants .ckpt
    append = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in (extra or {}).items()}
    if METADATA_KEYS in append:
        raise ValueError(f"'{METADATA_KEYS}' is reserved")
    append[METADATA_KEYS] = json.dumps(sorted(append))
    try:
        ms.save_checkpoint(_as_save_list(net_or_params), tmp, append_dict=append, crc_check=True)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)



def cell_state(cell, extra_cells: Optional[dict] = None, prefix: str = "") -> Dict[str, "ms.Parameter"]:
    """Parameters by name relative to `cell` (stable whatever wrapper cells the model sits in), optionally
    under `prefix`, plus the parameters of `extra_cells` (e.g. {"fit_dense": FitDense}) under their key."""
    state = {prefix + n: p for n, p in cell.parameters_and_names()}
    for key, extra in (extra_cells or {}).items():
        state.update({f"{key}.{n}": p for n, p in extra.parameters_and_names()})
    return state


def head_meta(cell) -> dict:
    """{"head_type": ..., "head_kind": ...} for a classifier (recorded in its checkpoints: the ReLU of a relu_pooler
    head has no parameter, and a per-token head has the same weights as a per-row one, so the weights alone cannot
    tell the heads apart), else {}."""
    head = getattr(cell, "head_type", None)
    if not isinstance(head, str):
        return {}
    return {"head_type": head, "head_kind": getattr(cell, "HEAD_KIND", "sequence")}


def save_cell(cell, path: str, extra: Optional[dict] = None, prefix: str = "", **extra_cells):
    """Atomic checkpoint of a cell (names relative to it, under `prefix`) + extra cells + scalar metadata; a
    classifier's head type is recorded too (head_meta)."""
    params = [{"name": n, "data": p} for n, p in cell_state(cell, extra_cells, prefix).items()]
    save_checkpoint_atomic(params, path, extra={**head_meta(cell), **(extra or {})})


def checkpoint_head_type(ckpt: str) -> Optional[str]:
    """The head type a checkpoint records (save_cell / save_quantized), or None (older files, HF conversions,
    backbone-only checkpoints)."""
    head = read_ms_checkpoint(ckpt, with_extra=True)[1].get("head_type")
    return head if isinstance(head, str) else None


HEAD_KINDS = ("sequence", "token", "span")


def checkpoint_head_kind(ckpt: str) -> str:
    """The head kind a checkpoint records: "token" (per-token, NER), "span" (extractive QA), else "sequence" (also
    files that record nothing)."""
    kind = read_ms_checkpoint(ckpt, with_extra=True)[1].get("head_kind")
    return kind if kind in HEAD_KINDS else "sequence"


def pick_head_type(requested: str, recorded: Optional[str], flag: str, source: str) -> str:
    """`requested` "auto" (or "") -> the head `source` records, else "dense"; an explicit head type must match the
    recorded one (one clear error instead of a model that silently drops or adds the pooler ReLU). `flag` names
    the head-type option in the errors."""
    if requested in ("", "auto"):
        return recorded or "dense"
    if requested not in HEAD_TYPES:
        raise UserError(f"{flag} '{requested}': expected auto or one of {HEAD_TYPES}")
    if recorded is not None and recorded != requested:
        raise UserError(f"{flag} {requested}: checkpoint '{source}' was saved with head_type {recorded}")
    return requested


def resolve_head_type(requested: str, ckpt: str, flag: str, ckpt_what: str) -> str:
    """pick_head_type against the head a checkpoint file records; `ckpt_what` names the checkpoint's option when
    the file is missing."""
    require_file(ckpt, ckpt_what)
    return pick_head_type(requested, checkpoint_head_type(ckpt), flag, ckpt)


def load_into(cell, ckpt: str, what: str, strict: bool = True, prefix_map: Optional[dict] = None,
              allow_missing: Sequence[str] = (), allow_unexpected: Sequence[str] = (),
              extra_cells: Optional[dict] = None):
    """Load a MindSpore checkpoint into `cell` (+ extra cells) by relative name.

    Strict: every missing/unexpected key and shape mismatch is reported in one UserError, except keys starting
    with a prefix in allow_missing / allow_unexpected (e.g. the classifier of a freshly built head).
    prefix_map {"": "bert."} renames checkpoint keys (a BertModel checkpoint into a classifier's backbone).
    A classifier checkpoint that records its head type (save_cell) loads only into a classifier with that head,
    and one that records its head kind (per row / per token) only into a model of that kind.
    """
    require_file(ckpt, what)
    loaded, meta = read_ms_checkpoint(ckpt, with_extra=True)
    recorded, head = meta.get("head_type"), getattr(cell, "head_type", None)
    if isinstance(recorded, str) and isinstance(head, str) and recorded != head and not prefix_map:
        raise UserError(f"{what} '{ckpt}' was saved with head_type {recorded}, the model to load it into has "
                        f"head_type {head}: set the head type the checkpoint was trained with")
    kind, cell_kind = meta.get("head_kind"), getattr(cell, "HEAD_KIND", None)
    if isinstance(kind, str) and isinstance(cell_kind, str) and kind != cell_kind and not prefix_map:
        raise UserError(f"{what} '{ckpt}' holds a model with a {kind} head, the task needs a {cell_kind} head "
                        f"(sequence: one output per row, token: one per position, span: start / end per position): "
                        f"check task.name")
    for old, new in (prefix_map or {}).items():
        loaded = {(new + k[len(old):] if k.startswith(old) else k): v for k, v in loaded.items()}
    state = cell_state(cell, extra_cells)
    check_state({k: tuple(p.shape) for k, p in state.items()}, {k: tuple(v.shape) for k, v in loaded.items()},
                source=f"{what} '{ckpt}'", strict=strict, allow_missing=allow_missing,
                allow_unexpected=allow_unexpected)
    for k, p in state.items():
        if k in loaded and tuple(loaded[k].shape) == tuple(p.shape):
            p.set_data(ms.Tensor(loaded[k], p.dtype))
