"""Export a classifier checkpoint to MINDIR / ONNX (AIR on Ascend) and run exported models.

What an exported model is: inputs `input_ids, token_type_ids, input_mask` (int32, [batch, seq], fixed shapes:
`ms.export` writes static shapes) and one output, the **logits** [batch, num_labels] (no softmax, no log-softmax:
the model-zoo exported log-softmax probabilities; argmax and every metric agree either way); a token-level (NER)
model's are per token, [batch, seq, num_labels], a span (QA) model's [batch, seq, 2] start / end logits.

GELU and ONNX: MindSpore 2.10 cannot export `Erf` to ONNX, so the exact (erf) GELU of BERT/MiniLM checkpoints
does not export as is. For ONNX the graph is built with `gelu_erf_poly` - the exact GELU with erf from
Abramowitz-Stegun 7.1.26 built from Abs/Mul/Div/Exp - and the written file is then rewritten (src/onnx_graph.py):
`gelu="auto"` / `"exact"` (default) map that polynomial to ONNX's own `Erf` and every LayerNorm to the standard
pattern, so onnxruntime fuses `Gelu` and `LayerNormalization`; `gelu="erf_poly"` keeps the polynomial (for a
runtime without `Erf`; LayerNorm is still rewritten). `gelu="tanh"` exports the tanh approximation instead (the logit
difference is measured and printed). MINDIR keeps the exact GELU (bit-exact reload).

Every export is verified before it is moved into place: the file is reloaded (MINDIR: `ms.load` + `nn.GraphCell`,
ONNX: onnxruntime) and its logits are compared with the checkpoint's logits on a fixed random batch. A sidecar
`<file>.json` records shapes, names, the GELU used and the measured difference. Nothing is left behind on failure.
"""
import json
import os
import shutil
from typing import Optional

import numpy as np
import mindspore as ms
from mindspore import nn

from src.errors import UserError
from src.ort_cpu import ort_session
from src.tinybert_model import BertConfig, LogitsOnly
from src.checkpoint import checkpoint_head_kind, load_into, pick_head_type, resolve_head_type
from src.fileio import atomic_json, require_file
from src.tinybert_model import build_classifier, load_bert_config

FORMATS = {"MINDIR": ".mindir", "ONNX": ".onnx", "AIR": ".air"}
GELU_MODES = ("auto", "erf_poly", "tanh", "exact")
INPUT_NAMES = ("input_ids", "token_type_ids", "input_mask")
EXACT_ACTS = ("gelu", "gelu_exact")
# Parity tolerances on the logits (verified after every export).
TOLERANCE = {"MINDIR": 1e-5, "ONNX": 1e-4}
# Models with 8-bit activation fake-quant (TernaryBERT): floor(x * s + 0.5) turns any fp32 rounding difference that
# lands x * s on the other side of a .5 into a whole quantization step, and with a per-tensor scale over the batch
# every row can move. The real W2E2A8 artefact at batch 32 differs from its checkpoint by 0.03-0.11 (fp32 ONNX) and
# 0.03-0.17 (--int8) on logits of about 1.4, argmax 97-100 % equal, over six random batches in onnxruntime; a wrong
# graph (weights, scales) differs by about the logits themselves. Such exports pass at |diff| <= 0.5 * max(1,
# max|logits|), and the dev metric (run_eval_onnx.py) is the real check (docs/export.md).
ACT_QUANT_TOLERANCE = 0.5
# --nbits 2, the rewrite itself: every MatMulNBits run alone in onnxruntime on random activations equals the fp32
# Gemm it replaced within 1e-5 x max(1, max|y|) (measured 4.5e-7 on the MiniLM-L6 shape: only the order of the fp32
# sums differs; one wrong code, scale or zero point is ~1e-2), and the 2-bit word embedding gives every row exactly.
# End to end the 2-bit file cannot be held that tight: the 8-bit fake-quant after each Dense turns those 1e-7
# differences into whole quantization steps (MiniLM-L6 shape, random init, batch 1: 2.2e-3 against the fp32 graph on
# logits of ~0.05, where the fp32 graph itself is 1.2e-3 from the packed model), so it is held to the rule of every
# 8-bit-activation ONNX export, against the packed model and against the fp32 graph it was rewritten from.
NBITS_OP_TOLERANCE = 1e-5
NBITS = (2,)
# What --int8 and --nbits 2 write for a ternary model's ONNX, alone and together (src/ternary_int8.py,
# src/ternary_nbits.py):
#   --nbits 2         2-bit storage, fp32 compute: MatMulNBits (onnxruntime contrib op) on 2-bit codes, unpacked to
#                     fp32 on every call, the trained fake-quant in front (the smallest file, not a fast one)
#   --int8            int8 storage, int8 compute: MatMulInteger on int8 codes with the trained 8-bit activation grid
#   --int8 --nbits 2  2-bit storage, int8 compute: the --int8 graph with its int8 code tensors stored as packed 2-bit
#                     codes and rebuilt by standard ops on constants, which onnxruntime folds once when the session
#                     starts; its logits equal the --int8 file's bit for bit (checked before writing)
NBITS_MODES = {(False, True): "2-bit storage, fp32 compute (MatMulNBits)",
               (True, False): "int8 storage, int8 compute (MatMulInteger)",
               (True, True): "2-bit storage, int8 compute (MatMulInteger on int8 codes rebuilt from 2-bit codes when "
                             "the session starts)"}


def check_format(file_format: str, device_target: str) -> str:
    fmt = str(file_format).upper()
    if fmt not in FORMATS:
        raise UserError(f"--file_format '{file_format}': expected one of {', '.join(FORMATS)}")
    if fmt == "AIR" and device_target != "Ascend":
        raise UserError(f"--file_format AIR needs --device_target Ascend (MindSpore writes AIR only with the Ascend "
                        f"backend; this run uses {device_target}): export MINDIR or ONNX instead")
    return fmt


def export_activation(cfg: BertConfig, file_format: str, gelu: str):
    """(config to build the exported graph with, note). Only the activation may change, never the weights."""
    if gelu not in GELU_MODES:
        raise UserError(f"--gelu '{gelu}': expected one of {', '.join(GELU_MODES)}")
    exact = cfg.hidden_act in EXACT_ACTS or cfg.hidden_act == "gelu_erf_poly"
    if not exact:
        if gelu in ("erf_poly", "exact"):
            raise UserError(f"--gelu {gelu}: the checkpoint's config uses hidden_act '{cfg.hidden_act}' (tanh "
                            f"GELU); use --gelu auto or tanh")
        return cfg, f"checkpoint GELU '{cfg.hidden_act}' (tanh approximation) exported as is"
    if gelu == "tanh":
        return cfg.replace(hidden_act="gelu_tanh"), ("exported with the tanh GELU approximation while the checkpoint "
                                                     "was trained with the exact erf GELU: logits differ (see parity)")
    if gelu == "erf_poly":
        return cfg.replace(hidden_act="gelu_erf_poly"), ("exact GELU exported with erf from Abramowitz-Stegun "
                                                         "7.1.26 (|err| < 1.5e-7), kept as that polynomial")
    if file_format == "ONNX":
        return cfg.replace(hidden_act="gelu_erf_poly"), ("exact GELU: built from exportable ops (MindSpore 2.10 "
                                                         "cannot export Erf), rewritten to ONNX Erf")
    return cfg, "exact erf GELU exported as is"


def _require_onnx(what: str):
    """UserError unless the onnx package imports (src/onnx_graph.py and src/ternary_int8.py import it only when they
    run, so a guard around importing them would never fire)."""
    try:
        import onnx  # noqa: F401
    except ImportError as e:
        raise UserError(f"{what} needs the onnx package ({e}): pip install -r requirements.txt") from None


def standardize_onnx(path: str, gelu_to_erf: bool = True) -> dict:
    """Rewrite a MindSpore-written .onnx in place into the patterns runtimes fuse (src/onnx_graph.py)."""
    _require_onnx("ONNX export")
    from src.onnx_graph import standardize_file
    return standardize_file(path, gelu=gelu_to_erf)


def _width_model(cfg: BertConfig, ckpt_file: str, width_mult: float, head_type: str, depth_mult: float = 1.0):
    """Slice a supernet checkpoint (DynaBERT/OFA) to a physically smaller model at `width_mult` (and
    `depth_mult`: DynaBERT's kept layers) (src/width.py)."""
    from src.width import slice_to_width
    supernet = build_classifier(cfg, head_type, checkpoint_head_kind(ckpt_file))
    load_into(supernet, ckpt_file, "--ckpt_file (supernet)", strict=True, allow_unexpected=("fit_dense.",))
    try:
        sub = slice_to_width(supernet, float(width_mult), float(depth_mult))
    except ValueError as e:
        raise UserError(f"--width_mult {width_mult} --depth_mult {depth_mult}: {e}") from None
    return sub.config, sub


def _ternary_model(cfg: BertConfig, packed_file: str, head_type: str):
    """The inference model of a packed TernaryBERT artefact (.tpack from tools/pack_ternary.py, src/packing.py):
    ternary weights rebuilt bit-exactly, activation fake-quant as trained. The shape, quantization and head come
    from the artefact itself; only the activation of --config_path (e.g. gelu_erf_poly for ONNX) is applied."""
    from src.packing import build_ternary_inference_model, header_head_kind, unpack
    state, packed_cfg, qcfg, packed_head, header = unpack(packed_file)
    pick_head_type(head_type, packed_head, "--head_type", packed_file)
    hidden_act = cfg.hidden_act if cfg.hidden_act != packed_cfg.hidden_act else None
    net = build_ternary_inference_model(state, packed_cfg, qcfg, packed_head, hidden_act=hidden_act,
                                        head_kind=header_head_kind(header))
    model_cfg = packed_cfg.replace(hidden_act=hidden_act) if hidden_act else packed_cfg
    return model_cfg, net.net


def build_model(config_path: str, ckpt_file: str, num_labels: Optional[int] = None, head_type: str = "auto",
                width_mult: Optional[float] = None, ternary: bool = False, hidden_act: Optional[str] = None,
                depth_mult: Optional[float] = None):
    """(config, classifier in inference mode) from a model config.json + checkpoint, strictly loaded.

    head_type "auto": the one the checkpoint (or packed artefact) records, else dense; an explicit one must match
    the record. hidden_act overrides the activation only (e.g. "gelu_erf_poly" for ONNX); the weights are the
    same."""
    over = {}
    if num_labels:
        over["num_labels"] = int(num_labels)
    cfg = load_bert_config(config_path, "--config_path", **over)
    require_file(ckpt_file, "--ckpt_file")
    if hidden_act:
        cfg = cfg.replace(hidden_act=hidden_act)
    if (width_mult is not None or depth_mult is not None) and ternary:
        raise UserError("--width_mult/--depth_mult and --ternary together are not supported: export one at a time")
    if not ternary:
        head_type = resolve_head_type(head_type, ckpt_file, "--head_type", "--ckpt_file")
    if width_mult is not None or depth_mult is not None:
        cfg, model = _width_model(cfg, ckpt_file, 1.0 if width_mult is None else width_mult, head_type,
                                  1.0 if depth_mult is None else depth_mult)
    elif ternary:
        cfg, model = _ternary_model(cfg, ckpt_file, head_type)
    else:
        model = build_classifier(cfg, head_type, checkpoint_head_kind(ckpt_file))
        load_into(model, ckpt_file, "--ckpt_file", strict=True, allow_unexpected=("fit_dense.",))
    model.set_train(False)
    return cfg, model


def sample_inputs(batch: int, seq: int, vocab: int, seed: int = 0):
    """A fixed, realistic batch: [CLS] ... [SEP] with varied lengths, padding masked, two segments."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000 if vocab > 2000 else 1, vocab, size=(batch, seq)).astype(np.int32)
    lengths = rng.integers(max(2, seq // 4), seq + 1, size=batch)
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int32)
    types = ((np.arange(seq)[None, :] >= (lengths[:, None] // 2)) & (mask > 0)).astype(np.int32)
    ids = ids * mask
    return ids, types, mask


class OnnxRunner:
    """onnxruntime session with the export's input names; __call__(ids, types, mask) -> numpy logits."""

    def __init__(self, path: str, threads: int = 0):
        try:
            self.sess = ort_session(path, threads)
        except Exception as e:       # onnxruntime raises its own exception types for unreadable models
            raise UserError(f"'{path}': onnxruntime cannot load it ({str(e).splitlines()[0][:200]})") from None
        self.inputs = self.sess.get_inputs()
        self.names = [i.name for i in self.inputs]
        self.shape = tuple(self.inputs[0].shape)

    def __call__(self, *arrays):
        feeds = {n: np.asarray(a, np.int32) for n, a in zip(self.names, arrays)}
        return self.sess.run(None, feeds)[0]


class MindirRunner:
    """ms.load + nn.GraphCell; __call__(ids, types, mask) -> numpy logits."""

    def __init__(self, path: str):
        try:
            self.net = nn.GraphCell(ms.load(path))
        except (RuntimeError, ValueError) as e:
            raise UserError(f"'{path}': MindSpore cannot load it as MINDIR ({str(e).splitlines()[0][:200]})") from None

    def __call__(self, *arrays):
        return self.net(*[ms.Tensor(np.asarray(a, np.int32)) for a in arrays]).asnumpy()


def runner_for(path: str, threads: int = 0):
    ext = os.path.splitext(path)[1].lower()
    require_file(path, "exported model")
    if ext == ".onnx":
        return OnnxRunner(path, threads)
    if ext == ".mindir":
        return MindirRunner(path)
    raise UserError(f"'{path}': expected a .onnx or .mindir file")


def output_path(file_name: str, fmt: str) -> str:
    ext = FORMATS[fmt]
    return file_name if file_name.lower().endswith(ext) else file_name + ext


def integerize_onnx(path: str) -> dict:
    """Rewrite a ternary model's .onnx in place so its quantized matmuls run in integer kernels
    (src/ternary_int8.py)."""
    _require_onnx("--int8")
    from src.ternary_int8 import integerize_file
    return integerize_file(path)


def int8_nbits_onnx(path: str) -> dict:
    """Rewrite an integerized ternary .onnx in place so its int8 code tensors are stored as 2-bit codes rebuilt by
    standard ops on constants (src/ternary_nbits.py int8_codes_to_2bit_file)."""
    _require_onnx("--int8 --nbits")
    from src.ternary_nbits import int8_codes_to_2bit_file
    return int8_codes_to_2bit_file(path, check=True)


def ort_optimized_ops(path: str, out_path: str) -> dict:
    """{op type: count} of the graph onnxruntime runs for `path` (this project's session, written to out_path)."""
    import onnx
    ort_session(path, 0, optimized_model_filepath=out_path)
    counts = {}
    for n in onnx.load(out_path, load_external_data=False).graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return dict(sorted(counts.items()))


def nbits_onnx(path: str) -> dict:
    """Rewrite a ternary model's .onnx in place so its ternary Dense run as 2-bit MatMulNBits and its word embedding
    is stored as 2-bit codes (src/ternary_nbits.py)."""
    _require_onnx("--nbits")
    from src.ternary_nbits import nbits_file
    return nbits_file(path, check=True)


def check_nbits(nbits: int, int8: bool, ternary: bool, fmt: str):
    """UserError for a --nbits that cannot be written (checked before any work). --nbits 2 alone: 2-bit storage, fp32
    compute (MatMulNBits); with --int8: 2-bit storage, int8 compute (NBITS_MODES)."""
    if not nbits:
        return
    if nbits not in NBITS:
        raise UserError(f"--nbits {nbits}: expected {' or '.join(map(str, NBITS))} (ternary weights as 2-bit "
                        f"MatMulNBits codes)")
    if not (ternary and fmt == "ONNX"):
        flags = "--int8 --nbits" if int8 else "--nbits"
        raise UserError(f"{flags} rewrites the ONNX of a TernaryBERT model: it needs --ternary and --file_format ONNX "
                        f"(got {'--ternary' if ternary else 'no --ternary'}, --file_format {fmt}); --nbits 2 alone: "
                        f"{NBITS_MODES[False, True]}; with --int8: {NBITS_MODES[True, True]}")


def has_act_quant(model: nn.Cell) -> bool:
    """True when the model holds 8-bit activation fake-quant (src/quant.py ActQuantizer)."""
    from src.quant import ActQuantizer
    return any(isinstance(c, ActQuantizer) for _, c in model.cells_and_names())


def export_checkpoint(config_path: str, ckpt_file: str, file_name: str, file_format: str = "MINDIR",
                      batch_size: int = 32, seq_length: int = 64, num_labels: Optional[int] = None,
                      head_type: str = "auto", gelu: str = "auto", width_mult: Optional[float] = None,
                      ternary: bool = False, device_target: str = "CPU", verify: bool = True, log=print,
                      depth_mult: Optional[float] = None, int8: bool = False, nbits: int = 0) -> dict:
    """Export, reload, compare with the checkpoint, then move the file into place. Returns the sidecar dict.
    int8 (ONNX of a ternary model only): its quantized matmuls become MatMulInteger (src/ternary_int8.py).
    nbits 2 (ONNX of a ternary model only), alone: its ternary Dense become 2-bit MatMulNBits and the word
    embedding 2-bit codes (src/ternary_nbits.py); also checked against the fp32 graph it was rewritten from.
    nbits 2 with int8: the int8 graph, its int8 code tensors stored as 2-bit codes that standard ops rebuild
    (onnxruntime folds them when the session starts); its logits must equal the int8 file's bit for bit and the
    graph onnxruntime runs must be the int8 file's (the same op counts after its optimizer)."""
    fmt = check_format(file_format, device_target)
    if batch_size < 1 or seq_length < 1:
        raise UserError(f"--batch_size {batch_size} / --seq_length {seq_length}: both must be >= 1")
    check_nbits(nbits, int8, ternary, fmt)
    if int8 and not (ternary and fmt == "ONNX"):
        raise UserError(f"--int8 rewrites the ONNX of a TernaryBERT model: it needs --ternary and --file_format ONNX "
                        f"(got {'--ternary' if ternary else 'no --ternary'}, --file_format {fmt})")
    ref_cfg, ref_model = build_model(config_path, ckpt_file, num_labels, head_type, width_mult, ternary,
                                     depth_mult=depth_mult)
    if seq_length > ref_cfg.max_position_embeddings:
        raise UserError(f"--seq_length {seq_length} exceeds max_position_embeddings "
                        f"{ref_cfg.max_position_embeddings} of '{config_path}'")
    exp_cfg, note = export_activation(ref_cfg, fmt, gelu)
    if exp_cfg.hidden_act != ref_cfg.hidden_act:
        _, exp_model = build_model(config_path, ckpt_file, num_labels, head_type, width_mult, ternary,
                                   hidden_act=exp_cfg.hidden_act, depth_mult=depth_mult)
    else:
        exp_model = ref_model
    token = ref_model.HEAD_KIND in ("token", "span")    # per-position logits [batch, seq, num_labels] (NER, QA)
    net = LogitsOnly(exp_model)
    net.set_train(False)
    ids, types, mask = sample_inputs(batch_size, seq_length, ref_cfg.vocab_size)
    inputs = [ms.Tensor(x) for x in (ids, types, mask)]

    final = output_path(file_name, fmt)
    os.makedirs(os.path.dirname(os.path.abspath(final)), exist_ok=True)
    tmp_base = f"{final}.tmp{os.getpid()}"
    tmp = tmp_base + FORMATS[fmt]
    tmp_fp32 = tmp_base + ".fp32" + FORMATS[fmt]          # --nbits: the fake-quant graph before the rewrite
    tmp_int8 = tmp_base + ".int8" + FORMATS[fmt]          # --int8 --nbits: the int8 graph before the rewrite
    tmp_opt = [tmp_base + f".opt{k}" + FORMATS[fmt] for k in range(2)]      # onnxruntime's optimized graphs
    try:
        ms.export(net, *inputs, file_name=tmp_base, file_format=fmt)
        if not os.path.exists(tmp):
            raise RuntimeError(f"ms.export reported success but wrote no {tmp}")
        rewritten = None
        if fmt == "ONNX":
            rewritten = standardize_onnx(tmp, gelu_to_erf=gelu != "erf_poly" and exp_cfg.hidden_act == "gelu_erf_poly")
            log(f"ONNX rewritten to standard patterns: {rewritten['layernorm']} LayerNorm, {rewritten['gelu']} GELU "
                f"-> Erf")
        int8_counts = None
        if int8:
            int8_counts = integerize_onnx(tmp)
            if not int8_counts["dense"]:
                raise UserError(f"--int8: '{ckpt_file}' has no ternary Dense with symmetric 8-bit activations to run "
                                f"in integer kernels ({int8_counts['dense_fp32']} quantized Dense without ternary "
                                f"weights; asymmetric activations, activation_mode asym, are not rewritten)")
            log(f"ONNX int8: {int8_counts['dense']} ternary Dense and {int8_counts['attention']} attention matmuls as "
                f"MatMulInteger, {int8_counts['embedding']} word embedding as int8 codes; "
                f"{int8_counts['dense_fp32']} quantized Dense left in fp32 (weights not ternary)")
        nbits_counts = None
        if nbits and int8:
            shutil.copyfile(tmp, tmp_int8)
            nbits_counts = int8_nbits_onnx(tmp)
            chk = nbits_counts.get("check", {})
            if nbits_counts["not_ternary"] or not nbits_counts["dense"]:
                raise UserError(f"--int8 --nbits {nbits}: '{ckpt_file}' has {nbits_counts['not_ternary']} int8 code "
                                f"tensors with values outside {{-1, 0, 1}} (or not 2-D) and {nbits_counts['dense']} "
                                f"ternary ones: it cannot be stored as 2-bit codes; --int8 alone writes int8 codes")
            if chk.get("tensors") != nbits_counts["dense"] + nbits_counts["embedding"] or chk.get("mismatched"):
                raise RuntimeError(f"--int8 --nbits: the 2-bit codes do not rebuild the int8 codes they replace "
                                   f"({chk}): not writing {final}")
            log(f"ONNX int8 from 2-bit codes: {nbits_counts['dense']} MatMulInteger weights and "
                f"{nbits_counts['embedding']} word embedding stored as 2-bit codes ({nbits_counts['weight_bytes']} "
                f"bytes instead of {nbits_counts['int8_bytes']}), each rebuilt exactly to its int8 codes by "
                f"Cast / Gather / Reshape on constants")
        elif nbits:
            shutil.copyfile(tmp, tmp_fp32)
            nbits_counts = nbits_onnx(tmp)
            if not nbits_counts["dense"]:
                raise UserError(f"--nbits: '{ckpt_file}' has no ternary Dense to write as 2-bit MatMulNBits "
                                f"({nbits_counts['dense_fp32']} Dense with weights that are not ternary)")
            chk = nbits_counts.get("check", {})
            if not (chk.get("dense_max_rel_diff", np.inf) <= NBITS_OP_TOLERANCE
                    and chk.get("embedding_max_diff", 0.0) == 0.0):
                raise RuntimeError(f"--nbits: a rewritten site differs from the fp32 one it replaced ({chk}; "
                                   f"tolerance {NBITS_OP_TOLERANCE:.0e} x max(1, max|y|), embedding exact): not "
                                   f"writing {final}")
            blocks = ", ".join(f"K {k}: {b}" for k, b in sorted(nbits_counts["block_sizes"].items(),
                                                                 key=lambda kv: int(kv[0])))
            log(f"ONNX 2-bit: {nbits_counts['dense']} ternary Dense as MatMulNBits (bits 2, block size {blocks}), "
                f"{nbits_counts['embedding']} word embedding as 2-bit codes; {nbits_counts['dense_fp32']} Dense left "
                f"in fp32 (weights not ternary)")
        info = {"format": fmt, "file": os.path.basename(final), "config": config_path, "ckpt": ckpt_file,
                "inputs": [{"name": n, "dtype": "int32", "shape": [batch_size, seq_length]} for n in INPUT_NAMES],
                "output": {"name": "logits", "dtype": "float32",
                           "shape": [batch_size] + ([seq_length] if token else []) + [ref_cfg.num_labels],
                           "meaning": {"token": "per-token classifier logits (no softmax)",
                                       "span": "start and end logits of every position (no softmax)"}.get(
                                           ref_model.HEAD_KIND, "classifier logits (no softmax)")},
                "batch_size": batch_size, "seq_length": seq_length, "num_labels": ref_cfg.num_labels,
                "hidden_act": exp_cfg.hidden_act, "checkpoint_hidden_act": ref_cfg.hidden_act, "gelu_note": note,
                "width_mult": width_mult, "depth_mult": depth_mult, "ternary": bool(ternary),
                "head_type": ref_model.head_type, "head_kind": ref_model.HEAD_KIND,
                "model_config": ref_cfg.to_dict()}
        if rewritten is not None:
            info["onnx_rewrite"] = rewritten
        if int8_counts is not None:
            info["int8_rewrite"] = int8_counts
        if nbits_counts is not None and int8:
            info["nbits_rewrite"] = dict(nbits_counts, bits=nbits, mode=NBITS_MODES[True, True],
                                         op="MatMulInteger on int8 codes rebuilt from 2-bit codes (Cast, Gather of "
                                            "a 256 x 4 int8 sign table, Reshape)")
        elif nbits_counts is not None:
            info["nbits_rewrite"] = dict(nbits_counts, bits=nbits, op="com.microsoft::MatMulNBits",
                                         accuracy_level=0, zero_point=2, mode=NBITS_MODES[False, True])
        if verify and fmt != "AIR":
            ref_net = LogitsOnly(ref_model)
            ref_net.set_train(False)
            ref = ref_net(*inputs).asnumpy()
            got = runner_for(tmp)(ids, types, mask)
            if got.shape != ref.shape:
                raise RuntimeError(f"exported {fmt} returns shape {got.shape}, checkpoint logits are {ref.shape}")
            diff = float(np.abs(got - ref).max())
            agree = float(np.mean(got.argmax(-1) == ref.argmax(-1)))
            tol, rule = TOLERANCE[fmt], f"{TOLERANCE[fmt]:.0e}"
            if fmt == "ONNX" and has_act_quant(ref_model):
                tol = ACT_QUANT_TOLERANCE * max(1.0, float(np.abs(ref).max()))
                rule = f"{ACT_QUANT_TOLERANCE:g} x max(1, max|logits|) = {tol:.3g} (8-bit activations)"
            info["parity"] = {"max_abs_logit_diff": diff, "argmax_agreement": agree, "rows": batch_size,
                              "tolerance": tol, "tolerance_rule": rule}
            exact_graph = exp_cfg.hidden_act == ref_cfg.hidden_act or exp_cfg.hidden_act == "gelu_erf_poly"
            log(f"parity {fmt} vs checkpoint: max|logits diff| {diff:.3e}, argmax agreement {agree:.4f} "
                f"({batch_size} rows; tolerance {rule})")
            if exact_graph and not diff <= tol:
                raise RuntimeError(f"exported {fmt} differs from the checkpoint by {diff:.3e} > {rule}: "
                                   f"not writing {final}")
            if nbits and int8:
                want = runner_for(tmp_int8)(ids, types, mask)
                same = bool(got.shape == want.shape and np.array_equal(got, want))
                ops_int8, ops_2bit = ort_optimized_ops(tmp_int8, tmp_opt[0]), ort_optimized_ops(tmp, tmp_opt[1])
                info["int8_parity"] = {"against": "the --int8 file of the same model", "bit_identical": same,
                                       "max_abs_logit_diff": float(np.abs(got - want).max()),
                                       "ort_optimized_ops": ops_2bit,
                                       "ort_optimized_same_as_int8": ops_int8 == ops_2bit}
                log(f"parity int8-from-2-bit ONNX vs the --int8 ONNX: logits bit-identical {same}; onnxruntime's "
                    f"optimized graph {'the same as' if ops_int8 == ops_2bit else 'DIFFERS from'} the --int8 one "
                    f"({ops_2bit.get('MatMulIntegerToFloat', 0)} MatMulIntegerToFloat, "
                    f"{ops_2bit.get('MatMulInteger', 0)} MatMulInteger)")
                if not same:
                    raise RuntimeError(f"--int8 --nbits: logits differ from the --int8 file's by "
                                       f"{info['int8_parity']['max_abs_logit_diff']:.3e} (must be bit-identical): "
                                       f"not writing {final}")
                if ops_int8 != ops_2bit:
                    diff_ops = {k: (ops_int8.get(k, 0), ops_2bit.get(k, 0)) for k in set(ops_int8) | set(ops_2bit)
                                if ops_int8.get(k, 0) != ops_2bit.get(k, 0)}
                    raise RuntimeError(f"--int8 --nbits: onnxruntime does not run the --int8 graph for this file (op "
                                       f"counts after its optimizer, --int8 vs this file: {diff_ops}; the 2-bit "
                                       f"codes were not folded): not writing {final}")
            elif nbits:
                fp32 = runner_for(tmp_fp32)(ids, types, mask)
                d2 = float(np.abs(got - fp32).max())
                info["nbits_parity"] = {"against": "the fp32 fake-quant ONNX graph before the rewrite",
                                        "max_abs_logit_diff": d2, "argmax_agreement":
                                            float(np.mean(got.argmax(-1) == fp32.argmax(-1))),
                                        "tolerance": tol, "tolerance_rule": rule}
                log(f"parity 2-bit ONNX vs the fp32 fake-quant ONNX: max|logits diff| {d2:.3e} (tolerance {rule}); "
                    f"each MatMulNBits alone vs its fp32 Gemm: {chk['dense_max_rel_diff']:.1e} x max|y|")
                if not d2 <= tol:
                    raise RuntimeError(f"2-bit ONNX differs from the fp32 graph it was rewritten from by {d2:.3e} > "
                                       f"{rule}: not writing {final}")
        os.replace(tmp, final)
    finally:
        for path in (tmp, tmp_fp32, tmp_int8, *tmp_opt):
            if os.path.exists(path):
                os.remove(path)
    atomic_json(final + ".json", info, sort_keys=True)
    log(f"exported {fmt} to {final} ({os.path.getsize(final)} bytes); {note}")
    return info


def exported_shape(path: str, runner=None, batch_size: Optional[int] = None, seq_length: Optional[int] = None):
    """(batch, seq) of an exported model: ONNX from its input shape, MINDIR from the sidecar JSON or flags."""
    side = path + ".json"
    b, s = None, None
    if isinstance(runner, OnnxRunner) and len(runner.shape) == 2 and all(isinstance(x, int) for x in runner.shape):
        b, s = runner.shape
    elif os.path.exists(side):
        with open(side, encoding="utf-8") as f:
            meta = json.load(f)
        b, s = meta.get("batch_size"), meta.get("seq_length")
    if batch_size and b and batch_size != b:
        raise UserError(f"--batch_size {batch_size}: '{path}' was exported with fixed batch {b}")
    if seq_length and s and seq_length != s:
        raise UserError(f"--seq_length {seq_length}: '{path}' was exported with fixed seq length {s}")
    b, s = b or batch_size, s or seq_length
    if not b or not s:
        raise UserError(f"'{path}': no {path}.json beside it; give --batch_size and --seq_length it was exported with")
    return int(b), int(s)
