"""Real compression of a quantized BERT classifier: a packed artefact, its loader, an honest size table, and the
inference model (ternary weights baked in) for evaluation and MINDIR/ONNX export.

File layout (one file, `.tpack`):
    b"TBPACK1\\n" | uint64 little-endian header length | header (UTF-8 JSON) | tensor blobs
The header holds the BERT config, the QuantConfig, the head type and one entry per tensor:
- kind "ternary": fp32 alpha per tensor (linear weights) or per row (word embedding), then the codes
  (0 -> 0, +1 -> 1, -1 -> 2), either 2 bits each, 4 per byte ("2bit", the issue's format) or 5 trits per byte
  ("base3", 1.6 bits each: 3^5 = 243 <= 256, a fixed-length code closer to the ~1.5-bit entropy of TWN codes).
- kind "codebook" (4/8-bit weights): the tensor's distinct fp32 values (<= 2^bits), then b-bit indices.
- kind "fp32": raw little-endian float32 (LayerNorm, biases, position/type embeddings, classifier, activation
  quantizer state). `max_positions` keeps only the first rows of the position table (a deployment for a fixed
  sequence length never reads the others); the header's config then says so (max_position_embeddings).
Unpacking multiplies alpha by codes in {-1, 0, 1} (exact in float32) or looks values up in the codebook, so the
rebuilt weights are bit-identical to the fake-quant weights the training forward pass used.
"""
import json
import os
import struct
from typing import Dict, Optional

import numpy as np

from src.errors import UserError
from src.fileio import atomic_write

MAGIC = b"TBPACK1\n"
CODECS = ("2bit", "base3")


def check_pack_options(codec: str, max_positions: int, table_rows: int):
    """UserError naming pack.codec / pack.max_positions when a run could not be packed (checked before training)."""
    if codec not in CODECS:
        raise UserError(f"pack.codec '{codec}': expected one of {list(CODECS)}")
    if not 0 < max_positions <= table_rows:
        raise UserError(f"pack.max_positions {max_positions}: expected 1..{table_rows} (the model's position table; "
                        f"0 = data.max_seq_length)")


# ---------------------------------------------------------------- code packing

def pack_codes(codes: np.ndarray, codec: str) -> bytes:
    """codes: uint8 in {0, 1, 2}, flattened."""
    c = np.ascontiguousarray(codes, np.uint8).reshape(-1)
    per = 4 if codec == "2bit" else 5
    pad = (-len(c)) % per
    c = np.concatenate([c, np.zeros(pad, np.uint8)]).reshape(-1, per).astype(np.uint16)
    if codec == "2bit":
        out = c[:, 0] | (c[:, 1] << 2) | (c[:, 2] << 4) | (c[:, 3] << 6)
    else:
        out = c[:, 0] + 3 * c[:, 1] + 9 * c[:, 2] + 27 * c[:, 3] + 81 * c[:, 4]
    return out.astype(np.uint8).tobytes()


def unpack_codes(data: bytes, n: int, codec: str) -> np.ndarray:
    b = np.frombuffer(data, np.uint8)
    if codec == "2bit":
        c = np.stack([(b >> s) & 3 for s in (0, 2, 4, 6)], axis=1)
    else:
        digits, rest = [], b.astype(np.int32)
        for _ in range(5):
            digits.append(rest % 3)
            rest = rest // 3
        c = np.stack(digits, axis=1)
    return c.reshape(-1)[:n].astype(np.uint8)


def _pack_bits(idx: np.ndarray, bits: int) -> bytes:
    if bits == 8:
        return idx.astype(np.uint8).tobytes()
    per = 8 // bits
    i = idx.astype(np.uint16).reshape(-1)
    i = np.concatenate([i, np.zeros((-len(i)) % per, np.uint16)]).reshape(-1, per)
    out = np.zeros(len(i), np.uint16)
    for k in range(per):
        out |= i[:, k] << (k * bits)
    return out.astype(np.uint8).tobytes()


def _unpack_bits(data: bytes, n: int, bits: int) -> np.ndarray:
    b = np.frombuffer(data, np.uint8)
    if bits == 8:
        return b[:n].copy()
    per = 8 // bits
    mask = (1 << bits) - 1
    return np.stack([(b >> (k * bits)) & mask for k in range(per)], axis=1).reshape(-1)[:n]


# ---------------------------------------------------------------- ternary checks

def _ternary_rows(w: np.ndarray, rowwise: bool):
    """(w as float32 rows [rows or 1, -1], per-row mask of the entries that are 0 or +-that row's max |w|)."""
    w2 = np.asarray(w, np.float32).reshape(w.shape[0], -1) if rowwise else np.asarray(w, np.float32).reshape(1, -1)
    a = np.abs(w2)
    return w2, (a == 0) | (a == a.max(axis=1)[:, None])


def ternary_signs(w: np.ndarray, rowwise: bool):
    """(alpha [rows or 1] float32, signs int8 in {-1, 0, 1} shaped like w) when w holds only 0 and +-alpha (one alpha
    per row, or one for the whole tensor), else None."""
    w2, ok = _ternary_rows(w, rowwise)
    if not ok.all():
        return None
    return np.abs(w2).max(axis=1).astype(np.float32), np.sign(w2).astype(np.int8).reshape(np.shape(w))


def dense_ternary(w: np.ndarray):
    """A Dense weight [out, in] -> (alpha, signs int8) when each output row holds only 0 and +-its alpha: alpha has
    one value per row (quant.weight_rowwise), or one value ([1]) when every row shares it (per tensor, the paper's);
    None when not ternary or all zero (the exports leave such a matmul in fp32)."""
    t = ternary_signs(np.asarray(w, np.float32), rowwise=True)
    if t is None or not t[0].any():
        return None
    alpha, signs = t
    return (alpha[:1] if np.all(alpha == alpha.max()) else alpha), signs


def ternary_split(w: np.ndarray, rowwise: bool, name: str = "tensor", source: str = ""):
    """A ternary tensor -> (alpha [rows or 1] float32, codes uint8 in {0,1,2}). UserError if not ternary."""
    parts = ternary_signs(w, rowwise)
    if parts is None:
        w2, ok = _ternary_rows(w, rowwise)
        r = int(np.argmin(ok.all(axis=1)))
        k = int(np.unique(w2[r]).size)
        where = f"row {r} " if rowwise else ""
        raise UserError(f"{source}: tensor '{name}' {where}is not ternary ({k} distinct values, expected "
                        f"{{-a, 0, +a}}{' per row' if rowwise else ''}): pack the quantized checkpoint "
                        f"(best_quant.ckpt), not a full-precision one")
    alpha, signs = parts
    codes = np.where(signs > 0, 1, np.where(signs < 0, 2, 0)).astype(np.uint8)
    return alpha, codes.reshape(-1)


def ternary_join(alpha: np.ndarray, codes: np.ndarray, shape, rowwise: bool) -> np.ndarray:
    sign = np.array([0.0, 1.0, -1.0], np.float32)[codes]
    rows = shape[0] if rowwise else 1
    return (alpha.reshape(rows, 1) * sign.reshape(rows, -1)).reshape(shape).astype(np.float32)


# ---------------------------------------------------------------- pack / unpack

def quant_layout(bert_config, qcfg, head_type: str = "dense", head_kind: str = "sequence") -> Dict[str, dict]:
    """Quantized parameter name -> {role, bits, rowwise}, decided by role on a built model."""
    from src.quant import role_params
    from src.tinybert_model import HEADS
    return role_params(HEADS[head_kind](bert_config, head_type=head_type), qcfg)


def header_head_kind(header: dict) -> str:
    """The head kind a packed file records ("token", "span"); files written before it was recorded hold
    sentence-level models."""
    from src.checkpoint import HEAD_KINDS
    kind = header.get("head_kind")
    return kind if kind in HEAD_KINDS else "sequence"


def pack(state: Dict[str, np.ndarray], bert_config, qcfg, path: str, head_type: str = "dense",
         codec: str = "2bit", max_positions: Optional[int] = None, source: str = "checkpoint",
         extra: Optional[dict] = None, head_kind: str = "sequence") -> dict:
    """Write the packed artefact (atomic). `state` = the quantized checkpoint (quantized values). Returns the
    size breakdown in bytes."""
    if codec not in CODECS:
        raise UserError(f"codec '{codec}' not supported: expected one of {CODECS}")
    layout = quant_layout(bert_config, qcfg, head_type, head_kind)
    missing = [n for n in layout if n not in state]
    if missing:
        raise UserError(f"{source}: quantized tensors missing: {missing[:3]}")
    cfg = bert_config
    entries, blobs, offset = [], [], 0
    sizes = {"ternary codes": 0, "ternary alphas": 0, "codebook indices": 0, "codebooks": 0, "fp32 tensors": 0}
    for name in sorted(state):
        w = np.asarray(state[name], np.float32)
        e = {"name": name, "shape": list(w.shape)}
        if name in layout and layout[name]["bits"] == 2:
            alpha, codes = ternary_split(w, layout[name]["rowwise"], name, source)
            code_bytes = pack_codes(codes, codec)
            blob = alpha.tobytes() + code_bytes
            e.update(kind="ternary", rowwise=layout[name]["rowwise"], n_alpha=int(alpha.size))
            sizes["ternary codes"] += len(code_bytes)
            sizes["ternary alphas"] += alpha.nbytes
        elif name in layout:
            bits = layout[name]["bits"]
            values, idx = np.unique(w.reshape(-1), return_inverse=True)
            if values.size > 2 ** bits:
                raise UserError(f"{source}: tensor '{name}' has {values.size} distinct values, more than a "
                                f"{bits}-bit quantized tensor can (pack the quantized checkpoint best_quant.ckpt)")
            idx_bytes = _pack_bits(idx, 4 if bits == 4 else 8)
            blob = values.astype(np.float32).tobytes() + idx_bytes
            e.update(kind="codebook", bits=4 if bits == 4 else 8, n_values=int(values.size))
            sizes["codebook indices"] += len(idx_bytes)
            sizes["codebooks"] += values.nbytes
        else:
            if name.endswith("position_embeddings.embedding_table") and max_positions:
                if max_positions > w.shape[0]:
                    raise UserError(f"max_positions {max_positions} exceeds the model's {w.shape[0]} positions")
                w = w[:max_positions]
                e["shape"] = list(w.shape)
                cfg = cfg.replace(max_position_embeddings=int(max_positions))
            blob = np.ascontiguousarray(w, "<f4").tobytes()
            e.update(kind="fp32")
            sizes["fp32 tensors"] += len(blob)
        e.update(offset=offset, nbytes=len(blob))
        offset += len(blob)
        entries.append(e)
        blobs.append(blob)
    header = {"format": 1, "codec": codec, "head_type": head_type, "head_kind": head_kind, "config": cfg.to_dict(),
              "quant": qcfg.to_dict(), "tensors": entries, "extra": extra or {}}
    hbytes = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    def write(f):
        f.write(MAGIC)
        f.write(struct.pack("<Q", len(hbytes)))
        f.write(hbytes)
        for b in blobs:
            f.write(b)
    atomic_write(path, write, "wb")
    sizes["header (config, quant config, tensor table)"] = len(MAGIC) + 8 + len(hbytes)
    sizes["total"] = os.path.getsize(path)
    return sizes


def _split(path: str, data: bytes):
    """(header dict, body) of a packed file's bytes."""
    if not data.startswith(MAGIC):
        raise UserError(f"'{path}' is not a packed ternary model (bad magic; expected a .tpack from "
                        f"tools/pack_ternary.py)")
    (hlen,) = struct.unpack("<Q", data[len(MAGIC):len(MAGIC) + 8])
    start = len(MAGIC) + 8
    return json.loads(data[start:start + hlen].decode("utf-8")), memoryview(data)[start + hlen:]


def read_header(path: str) -> dict:
    """The header of a packed file (config, quant config, head type, tensor table) without its tensors; needs
    neither MindSpore nor the tensor bytes."""
    if not os.path.isfile(path):
        raise UserError(f"packed model '{path}' does not exist")
    with open(path, "rb") as f:
        head = f.read(len(MAGIC) + 8)
        hlen = struct.unpack("<Q", head[len(MAGIC):])[0] if len(head) == len(MAGIC) + 8 else 0
        return _split(path, head + f.read(hlen))[0]


def unpack(path: str):
    """-> (state {name: float32 array}, BertConfig, QuantConfig, head_type, header)."""
    from src.quant import QuantConfig
    from src.tinybert_model import BertConfig
    if not os.path.isfile(path):
        raise UserError(f"packed model '{path}' does not exist")
    with open(path, "rb") as f:
        data = f.read()
    header, body = _split(path, data)
    codec = header["codec"]
    state = {}
    for e in header["tensors"]:
        blob = bytes(body[e["offset"]:e["offset"] + e["nbytes"]])
        shape = tuple(e["shape"])
        n = int(np.prod(shape)) if shape else 1
        if e["kind"] == "ternary":
            na = e["n_alpha"]
            alpha = np.frombuffer(blob[:4 * na], "<f4")
            codes = unpack_codes(blob[4 * na:], n, codec)
            state[e["name"]] = ternary_join(alpha, codes, shape, e["rowwise"])
        elif e["kind"] == "codebook":
            nv = e["n_values"]
            values = np.frombuffer(blob[:4 * nv], "<f4")
            state[e["name"]] = values[_unpack_bits(blob[4 * nv:], n, e["bits"])].reshape(shape).astype(np.float32)
        else:
            state[e["name"]] = np.frombuffer(blob, "<f4").reshape(shape).astype(np.float32)
    return state, BertConfig.from_dict(header["config"]), QuantConfig.from_dict(header["quant"]), \
        header["head_type"], header


# ---------------------------------------------------------------- inference model and export

def build_ternary_inference_model(packed_or_state, bert_config=None, qcfg=None, head_type: str = "dense",
                                  hidden_act: Optional[str] = None, head_kind: str = "sequence"):
    """A plain classifier cell (inputs input_ids, token_type_ids, input_mask -> logits) with the quantized
    weights baked in as ordinary fp32 parameters and the activation fake-quant of the QuantConfig (frozen
    scales when the config uses EMA scales). Pass a .tpack path, or (state, bert_config, qcfg, head_type).
    `hidden_act` overrides the GELU (e.g. "gelu_erf_poly" for ONNX export)."""
    import mindspore as ms
    from src.quant import quantize_model
    from src.tinybert_model import HEADS, LogitsOnly
    if isinstance(packed_or_state, str):
        state, bert_config, qcfg, head_type, header = unpack(packed_or_state)
        head_kind = header_head_kind(header)
    else:
        state = packed_or_state
    if hidden_act:
        bert_config = bert_config.replace(hidden_act=hidden_act)
    model = quantize_model(HEADS[head_kind](bert_config, head_type=head_type), qcfg, quantize_weights=False)
    params = dict(model.parameters_and_names())
    want = set(params)
    got = set(state)
    if want != got:
        raise UserError(f"packed state does not match the model: missing {sorted(want - got)[:3]}, "
                        f"unexpected {sorted(got - want)[:3]}")
    for n, p in params.items():
        if tuple(p.shape) != tuple(state[n].shape):
            raise UserError(f"packed tensor '{n}' has shape {state[n].shape}, model expects {tuple(p.shape)}")
        p.set_data(ms.Tensor(state[n], ms.float32))
    net = LogitsOnly(model)
    net.set_train(False)
    return net


def size_table(fp32_ckpt_path: str, packed_path: str, sizes: dict, notation: str, codec: str,
               note: str = "") -> str:
    """Markdown size table from the real files (bytes)."""
    fp32 = os.path.getsize(fp32_ckpt_path)
    total = os.path.getsize(packed_path)
    rows = [("fp32 checkpoint " + os.path.basename(fp32_ckpt_path), fp32, "")]
    for k, v in sizes.items():
        if k != "total" and v:
            rows.append((f"  packed: {k}", v, ""))
    rows.append((f"packed artefact {os.path.basename(packed_path)} ({notation}, codes {codec})", total,
                 f"{fp32 / total:.2f}x"))
    lines = ["| item | bytes | ratio vs fp32 ckpt |", "|---|---:|---:|"]
    lines += [f"| {a} | {b:,} | {c} |" for a, b, c in rows]
    if note:
        lines.append(f"\n{note}")
    return "\n".join(lines)
