"""TernaryBERT with real 2-bit weights in the ONNX file. `export.py --nbits 2` (nbits_model; 2-bit storage, fp32
compute): rewrite the fp32 export of a ternary model so that each ternary Dense is onnxruntime's contrib op
`com.microsoft::MatMulNBits` (bits=2) on packed 2-bit codes, and the ternary word embedding is stored as packed 2-bit
codes too. `export.py --int8 --nbits 2` (int8_codes_to_2bit_model, at the end): the --int8 graph with its int8
codes stored as 2-bit codes.

What the export holds at a ternary Dense: Gemm(y, W, bias) with W = alpha * C, C in {-1, 0, 1} (one alpha per
tensor; one per output row is handled the same way), y the 8-bit activation fake-quant as trained. MatMulNBits
computes Y = A @ dequant(B)^T + bias with B block-quantized along K:

    dequant(B)[n, k] = (code[n, k] - zero_point[n, k // block_size]) * scale[n, k // block_size]

so a ternary W is exact with code = C + 2 in {1, 2, 3}, zero point 2 and every block's scale = alpha (the row's
alpha repeated over its blocks). Layouts (onnxruntime's contrib op spec, checked numerically in the tests):
B uint8 [N, n_blocks, block_size / 4], four codes per byte, low bits first along K (code k in bits 2 (k % 4));
scales float [N * n_blocks], row-major; zero points uint8 [N * ceil(n_blocks / 4)], packed the same way, each row
padded to whole bytes. K is padded to whole blocks with code 2 (the value 0).

The fake-quant nodes in front stay as they are, and `accuracy_level` stays 0 (fp32 compute: onnxruntime's CPU
kernel dequantizes the codes and runs an fp32 GEMM), so the file computes what the fp32 fake-quant graph computes,
up to the order of fp32 sums. accuracy_level 4 would let the kernel quantize A again, per row and block of K, to
int8 (its VNNI 2-bit kernels): faster, but that grid is not the trained per-tensor one, and the logits move
(docs/export.md measures both). The attention matmuls (two activations) stay fp32 with their fake-quant.

The word embedding (ternary, one alpha per row) becomes Gather(packed codes [V, H / 4] uint8) -> Cast(int32) ->
Gather(a 256 x 4 table of the four signs in each byte) -> Reshape -> Mul(Gather(alpha)): standard ONNX ops, the same
fp32 values, 2 bits per entry. Position / token-type embeddings, LayerNorm, biases and the classifier stay fp32.
Gemms whose weight is not ternary (4/8-bit weights, the classifier) stay fp32 and are counted.

`export.py --int8 --nbits 2` (int8_codes_to_2bit_model) starts instead from the --int8 graph (src/ternary_int8.py):
2-bit storage, int8 compute. Each int8 code tensor there (the [K, N] weight of every MatMulInteger on a constant,
the [V, H] code table of the word embedding) is replaced by its packed 2-bit codes, uint8 [rows, ceil(cols / 4)]
(pack_2bit along the last axis), and Cast(int32) -> Gather(a 256 x 4 int8 sign table) -> Reshape (-> Slice when
cols % 4) that rebuild it exactly under its own name. All their inputs are constants, so onnxruntime folds them
(level-1 constant folding) before its level-2 fusions look at the graph: the session runs the --int8 graph, the same
MatMulIntegerToFloat kernels on the same int8 codes, and the logits equal the --int8 file's bit for bit (export.py
checks both before writing). Packing along the last axis of each tensor needs no Transpose in the rebuild; the
tensors and the graph around MatMulInteger are those of the --int8 file, so its fusions see the same pattern.
"""
from typing import Dict, Optional

import numpy as np

from src.onnx_graph import _Graph, replace_nodes
from src.packing import dense_ternary, ternary_signs

BITS = 2
ZERO_POINT = 2                    # code = sign + 2: {-1, 0, 1} -> {1, 2, 3}
MAX_BLOCK = 128                   # onnxruntime: a power of two >= 16; 2-bit blocks at most 256
MIN_BLOCK = 16
DOMAIN = "com.microsoft"


def block_size_for(k: int, max_block: int = MAX_BLOCK) -> int:
    """The largest power of two in [16, max_block] that divides K; 16 when none does (K is then padded)."""
    b = max_block
    while b > MIN_BLOCK and k % b:
        b //= 2
    return b


def pack_2bit(codes: np.ndarray) -> np.ndarray:
    """uint8 codes in 0..3, last axis a multiple of 4 -> uint8 [..., n / 4], four per byte, low bits first."""
    c = np.asarray(codes, np.uint8)
    c = c.reshape(c.shape[:-1] + (c.shape[-1] // 4, 4))
    return (c[..., 0] | (c[..., 1] << 2) | (c[..., 2] << 4) | (c[..., 3] << 6)).astype(np.uint8)


def nbits_weight(signs: np.ndarray, alpha: np.ndarray, block_size: int):
    """(B uint8 [N, n_blocks, block_size / 4], scales float32 [N * n_blocks], zero points uint8
    [N * ceil(n_blocks / 4)]) of W = alpha[:, None] * signs, signs int8 [N, K] in {-1, 0, 1}, alpha [N] or [1]."""
    n, k = signs.shape
    nb = -(-k // block_size)
    codes = np.full((n, nb * block_size), ZERO_POINT, np.uint8)        # padding: code 2 = value 0
    codes[:, :k] = (signs.astype(np.int16) + ZERO_POINT).astype(np.uint8)
    b = pack_2bit(codes.reshape(n, nb, block_size))
    scales = np.repeat(np.broadcast_to(np.asarray(alpha, np.float32).reshape(-1, 1), (n, 1)), nb, axis=1)
    zp = pack_2bit(np.full((n, -(-nb // 4) * 4), ZERO_POINT, np.uint8))
    return b, np.ascontiguousarray(scales, np.float32).reshape(-1), zp.reshape(-1)


def _sign_table() -> np.ndarray:
    """[256, 4] float32: the four values (code - 2) held in each byte of pack_2bit."""
    byte = np.arange(256, dtype=np.uint16)
    return np.stack([((byte >> s) & 3).astype(np.float32) - ZERO_POINT for s in (0, 2, 4, 6)], axis=1)


def _dense_weight(G: _Graph, n):
    """(input name, signs int8 [N, K], alpha [N] or [1], bias name or None) of a Gemm / MatMul on a constant 2-D
    weight; signs None when that weight is not ternary (per tensor or per output row); None for other nodes."""
    from onnx import helper
    if n.op_type == "Gemm":
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        w = G.const(n.input[1]) if len(n.input) > 1 else None
        if w is None or w.ndim != 2 or attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 \
                or attrs.get("beta", 1.0) != 1.0:
            return None
        w = w if attrs.get("transB", 0) else w.T                           # [N, K]
        bias = n.input[2] if len(n.input) > 2 and n.input[2] else None
        if bias is not None:
            c = G.const(bias)
            if c is None or c.size != w.shape[0] or c.ndim > 1:              # only a per-output bias is fused
                return None
    elif n.op_type == "MatMul":
        w = G.const(n.input[1])
        if w is None or w.ndim != 2:
            return None
        w, bias = w.T, None
    else:
        return None
    t = dense_ternary(w)
    if t is None:                                                           # not ternary, or all zero
        return n.input[0], None, None, bias
    alpha, signs = t
    return n.input[0], signs, alpha, bias


def nbits_model(model, accuracy_level: int = 0, max_block: int = MAX_BLOCK,
                sites: Optional[list] = None) -> Dict[str, object]:
    """Rewrite an onnx ModelProto in place. Returns counts: "dense" (ternary Dense now MatMulNBits), "embedding"
    (word embedding stored as 2-bit codes), "dense_fp32" (Gemm / MatMul on a constant weight that is not ternary,
    left in fp32: the classifier, 4/8-bit weights), "block_sizes" ({K: block size}), "weight_bytes" (bytes of the
    2-bit codes, scales and zero points written). `sites` (a list) receives (kind, replaced node, new nodes, input
    name) of each rewrite, for check_rewrite."""
    from onnx import TensorProto, helper, numpy_helper
    g = model.graph
    G = _Graph(g)
    new_nodes, inits = {}, []
    counts = {"dense": 0, "embedding": 0, "dense_fp32": 0, "block_sizes": {}, "weight_bytes": 0}

    def const(name, value, dtype=np.float32):
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    table = None
    for k, n in enumerate(g.node):
        p = f"nbits.{k}"
        found = _dense_weight(G, n)
        if found is not None:
            a_in, signs, alpha, bias = found
            if signs is None:
                counts["dense_fp32"] += 1
                continue
            n_out, k_in = signs.shape
            bs = block_size_for(k_in, max_block)
            b, scales, zp = nbits_weight(signs, alpha, bs)
            ins = [a_in, const(p + ".codes", b, np.uint8), const(p + ".scales", scales),
                   const(p + ".zero_points", zp, np.uint8)]
            if bias is not None:
                ins += ["", bias]                                           # g_idx unused
            new_nodes[id(n)] = [helper.make_node("MatMulNBits", ins, [n.output[0]], name=p + ".MatMulNBits",
                                                 domain=DOMAIN, K=k_in, N=n_out, bits=BITS, block_size=bs,
                                                 accuracy_level=accuracy_level)]
            counts["dense"] += 1
            if sites is not None:
                sites.append(("dense", _copy(n), new_nodes[id(n)], a_in))
            counts["block_sizes"][str(k_in)] = bs
            counts["weight_bytes"] += b.nbytes + scales.nbytes + zp.nbytes
        elif n.op_type == "Gather":            # the ternary word embedding: the only table whose rows are each
            w = G.const(n.input[0])            # 0 / +-one alpha
            if w is None or w.ndim != 2 or w.shape[0] < 3 or w.shape[1] % 4:
                continue
            t = ternary_signs(w, rowwise=True)
            attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
            if t is None or attrs.get("axis", 0) != 0:
                continue
            if table is None:
                table = const("nbits.sign_table", _sign_table())
            codes = pack_2bit((t[1].astype(np.int16) + ZERO_POINT).astype(np.uint8))       # [V, H / 4]
            idx = n.input[1]
            new_nodes[id(n)] = [
                helper.make_node("Gather", [const(p + ".codes", codes, np.uint8), idx], [p + ".b"],
                                 name=p + ".GatherCodes"),
                helper.make_node("Cast", [p + ".b"], [p + ".bi"], name=p + ".Cast", to=TensorProto.INT32),
                helper.make_node("Gather", [table, p + ".bi"], [p + ".signs"], name=p + ".GatherSigns"),
                helper.make_node("Shape", [idx], [p + ".idx_shape"], name=p + ".Shape"),
                helper.make_node("Concat", [p + ".idx_shape", const(p + ".width", [w.shape[1]], np.int64)],
                                 [p + ".shape"], name=p + ".Concat", axis=0),
                helper.make_node("Reshape", [p + ".signs", p + ".shape"], [p + ".c"], name=p + ".Reshape"),
                helper.make_node("Gather", [const(p + ".alpha", t[0].reshape(-1, 1)), idx], [p + ".a"],
                                 name=p + ".GatherAlpha"),
                helper.make_node("Mul", [p + ".c", p + ".a"], [n.output[0]], name=p + ".Mul")]
            counts["embedding"] += 1
            if sites is not None:
                sites.append(("embedding", _copy(n), new_nodes[id(n)], idx))
            counts["weight_bytes"] += codes.nbytes + t[0].nbytes
    if not new_nodes:
        return counts
    replace_nodes(g, new_nodes, inits)
    if counts["dense"] and not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    return counts


def _copy(node):
    from onnx import NodeProto
    c = NodeProto()
    c.CopyFrom(node)
    return c


def _site_model(nodes, inputs, outputs, const_of, dtype_of):
    """A model of `nodes` with `inputs` as graph inputs ([rows, width] of dtype_of(name)) and the constants they
    read (const_of(name) -> TensorProto or None)."""
    from onnx import helper
    inits, seen = [], set(inputs)
    for n in nodes:
        for i in n.input:
            if i and i not in seen:
                seen.add(i)
                t = const_of(i)
                if t is not None:
                    inits.append(t)
    made = {o for n in nodes for o in n.output}
    ins = [helper.make_tensor_value_info(name, dtype_of(name), None) for name in inputs]
    outs = [helper.make_tensor_value_info(o, 1, None) for o in outputs if o in made]
    g = helper.make_graph(list(nodes), "check", ins, outs, inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid(DOMAIN, 1)])


def check_rewrite(before, after, sites, rows: int = 8, seed: int = 0, threads: int = 0) -> Dict[str, object]:
    """Run every rewritten site alone in onnxruntime, before (fp32 Gemm / Gather of `before`, the model as it was)
    and after (MatMulNBits / the 2-bit embedding nodes of `after`), on the same inputs: random normal activations
    [rows, K] for each Dense, every row id for the embedding. No fake-quant is in between, so the fp32 sums differ
    only by their order: returns {"dense": n, "dense_max_rel_diff": max over sites of max|after - before| /
    max(1, max|before|), "embedding_rows": n, "embedding_max_diff": max|after - before| (0.0: exact)}."""
    import onnxruntime as ort
    from onnx import TensorProto
    rng = np.random.default_rng(seed)
    inits_before = {t.name: t for t in before.graph.initializer}
    inits_after = {t.name: t for t in after.graph.initializer}
    consts = {n.output[0]: n for n in before.graph.node if n.op_type == "Constant"}

    def const_of(table):
        def get(name):
            if name in table:
                return table[name]
            if name in consts:                 # a Constant node's value, as an initializer of the check model
                from onnx import numpy_helper
                return numpy_helper.from_array(numpy_helper.to_array(consts[name].attribute[0].t), name)
            return None
        return get

    out = {"dense": 0, "dense_max_rel_diff": 0.0, "embedding_rows": 0, "embedding_max_diff": 0.0}
    for kind in ("dense", "embedding"):
        group = [s for s in sites if s[0] == kind]
        if not group:
            continue
        feeds = {}
        for _, node, _, inp in group:
            if inp in feeds:
                continue
            if kind == "dense":
                k = int(next(a.i for a in _new_attrs(group, inp) if a.name == "K"))
                feeds[inp] = rng.normal(size=(rows, k)).astype(np.float32)
            else:
                feeds[inp] = np.arange(_const_rows(node, inits_before, consts), dtype=np.int64)
        dtype = (lambda _: TensorProto.FLOAT) if kind == "dense" else (lambda _: TensorProto.INT64)
        outputs = [node.output[0] for _, node, _, _ in group]
        old = _site_model([node for _, node, _, _ in group], list(feeds), outputs, const_of(inits_before), dtype)
        new = _site_model([m for _, _, nodes, _ in group for m in nodes], list(feeds), outputs,
                          const_of(inits_after), dtype)
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        res = [dict(zip(outputs, ort.InferenceSession(m.SerializeToString(), opts,
                                                      providers=["CPUExecutionProvider"]).run(outputs, feeds)))
               for m in (old, new)]
        for o in outputs:
            d = float(np.abs(res[1][o] - res[0][o]).max())
            if kind == "dense":
                out["dense"] += 1
                out["dense_max_rel_diff"] = max(out["dense_max_rel_diff"],
                                                d / max(1.0, float(np.abs(res[0][o]).max())))
            else:
                out["embedding_rows"] += len(next(iter(feeds.values())))
                out["embedding_max_diff"] = max(out["embedding_max_diff"], d)
    return out


def _new_attrs(group, inp):
    """The attributes of the first MatMulNBits reading `inp`."""
    for _, _, nodes, i in group:
        if i == inp:
            return nodes[0].attribute
    raise KeyError(inp)


def _const_rows(gather, inits, consts) -> int:
    from onnx import numpy_helper
    name = gather.input[0]
    t = inits[name] if name in inits else consts[name].attribute[0].t
    return int(numpy_helper.to_array(t).shape[0])


def nbits_file(path: str, out_path: Optional[str] = None, accuracy_level: int = 0,
               max_block: int = MAX_BLOCK, check: bool = False) -> Dict[str, object]:
    """Rewrite an .onnx file (in place, or into out_path); see nbits_model. check: also run check_rewrite (its
    result under "check")."""
    import onnx
    model = onnx.load(path)
    before = onnx.ModelProto()
    if check:
        before.CopyFrom(model)
    sites = []
    counts = nbits_model(model, accuracy_level, max_block, sites)
    onnx.checker.check_model(model)
    if check and sites:
        counts["check"] = check_rewrite(before, model, sites)
    onnx.save(model, out_path or path)
    return counts


# --int8 --nbits 2: the int8 graph of src/ternary_int8.py with its code tensors stored as 2-bit codes.

def _int8_sign_table() -> np.ndarray:
    """[256, 4] int8: the four signs (code - 2) held in each byte of pack_2bit (code 0, never written, gives -2)."""
    return _sign_table().astype(np.int8)


def _int8_code_tensors(G: _Graph):
    """{initializer name: (kind, consumers)} of the int8 code tensors of an integerized graph: the constant weight
    (input 1) of each MatMulInteger ("dense") and the constant table (input 0) of each int8 Gather ("embedding")."""
    from onnx import TensorProto
    found = {}
    for n in G.g.node:
        if n.op_type == "MatMulInteger" and len(n.input) > 1:
            name, kind = n.input[1], "dense"
        elif n.op_type == "Gather":
            name, kind = n.input[0], "embedding"
        else:
            continue
        t = G.inits.get(name)
        if t is not None and t.data_type == TensorProto.INT8:
            found.setdefault(name, [kind, []])[1].append(n)
    return found


def int8_codes_to_2bit_model(model) -> Dict[str, object]:
    """Rewrite an integerized onnx ModelProto (src/ternary_int8.py) in place: every int8 code tensor (the weight of
    each MatMulInteger on a constant, the word embedding's code table) is replaced by packed 2-bit codes (uint8
    [rows, ceil(cols / 4)], four per byte, low bits first along the last axis, code = sign + 2, as pack_2bit) and
    standard ops that rebuild it under its own name: Cast(int32) -> Gather(a 256 x 4 int8 sign table) -> Reshape
    [rows, 4 * ceil(cols / 4)] (-> Slice to cols when cols % 4). Every input of those ops is a constant, so a runtime
    that folds constants (onnxruntime, when the session starts) runs the integerized graph itself.

    Returns counts: "dense", "embedding" (tensors rewritten), "not_ternary" (int8 code tensors left as they were:
    values outside {-1, 0, 1}, or not 2-D), "weight_bytes" (bytes of the packed codes written), "int8_bytes"
    (bytes of the int8 tensors they replace) and "tensors" ({name: int8 array replaced}, for check_int8_codes)."""
    from onnx import TensorProto, helper, numpy_helper
    g = model.graph
    G = _Graph(g)
    counts = {"dense": 0, "embedding": 0, "not_ternary": 0, "weight_bytes": 0, "int8_bytes": 0, "tensors": {}}
    found = _int8_code_tensors(G)
    new_nodes, new_inits, drop = [], [], set()
    for k, (name, (kind, _)) in enumerate(found.items()):
        c = numpy_helper.to_array(G.inits[name])
        if c.ndim != 2 or c.size == 0 or c.min() < -1 or c.max() > 1:
            counts["not_ternary"] += 1
            continue
        rows, cols = c.shape
        width = -(-cols // 4) * 4
        codes = np.full((rows, width), ZERO_POINT, np.uint8)                 # padding: code 2 = sign 0
        codes[:, :cols] = (c.astype(np.int16) + ZERO_POINT).astype(np.uint8)
        packed = pack_2bit(codes)                                            # [rows, width / 4]
        p = f"int8nbits.{k}"
        new_inits += [numpy_helper.from_array(packed, p + ".codes"),
                      numpy_helper.from_array(np.array([rows, width], np.int64), p + ".shape")]
        full = name if width == cols else p + ".padded"
        new_nodes += [helper.make_node("Cast", [p + ".codes"], [p + ".i"], name=p + ".Cast", to=TensorProto.INT32),
                      helper.make_node("Gather", ["int8nbits.sign_table", p + ".i"], [p + ".s"],
                                       name=p + ".GatherSigns"),
                      helper.make_node("Reshape", [p + ".s", p + ".shape"], [full], name=p + ".Reshape")]
        if width != cols:
            new_inits += [numpy_helper.from_array(np.array(v, np.int64), p + s) for s, v in
                          ((".lo", [0]), (".hi", [cols]), (".axis", [1]))]
            new_nodes.append(helper.make_node("Slice", [full, p + ".lo", p + ".hi", p + ".axis"], [name],
                                              name=p + ".Slice"))
        drop.add(name)
        counts[kind] += 1
        counts["weight_bytes"] += packed.nbytes
        counts["int8_bytes"] += c.nbytes
        counts["tensors"][name] = c
    if not drop:
        return counts
    new_inits.append(numpy_helper.from_array(_int8_sign_table(), "int8nbits.sign_table"))
    kept = [t for t in g.initializer if t.name not in drop]
    del g.initializer[:]
    g.initializer.extend(kept + new_inits)
    nodes = new_nodes + list(g.node)                # the rebuild reads only initializers: first keeps it topological
    del g.node[:]
    g.node.extend(nodes)
    if model.opset_import[0].version < 10:                                   # Slice with inputs: opset 10
        model.opset_import[0].version = 10
    return counts


def check_int8_codes(model, tensors: Dict[str, np.ndarray], threads: int = 0) -> Dict[str, object]:
    """Run the rebuild of every rewritten code tensor of `model` (int8_codes_to_2bit_model's output) in onnxruntime
    and compare it with the int8 tensor it replaced: {"tensors": n, "mismatched": [names not equal bit for bit]}."""
    import onnxruntime as ort
    from onnx import TensorProto, helper
    G = _Graph(model.graph)
    nodes, need = [], list(tensors)
    seen = set()
    while need:                                                              # the nodes that make those tensors
        n = G.producer.get(need.pop())
        if n is None or id(n) in seen:
            continue
        seen.add(id(n))
        nodes.append(n)
        need += [i for i in n.input if i in G.producer]
    order = {id(n): i for i, n in enumerate(model.graph.node)}
    nodes.sort(key=lambda n: order[id(n)])
    used = {i for n in nodes for i in n.input}
    inits = [t for t in model.graph.initializer if t.name in used]
    outs = [helper.make_tensor_value_info(name, TensorProto.INT8, None) for name in tensors]
    m = helper.make_model(helper.make_graph(nodes, "check", [], outs, inits),
                          opset_imports=[helper.make_opsetid("", max(10, model.opset_import[0].version))])
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL     # run the ops, not their folding
    if threads:
        opts.intra_op_num_threads = threads
    got = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(list(tensors), {})
    bad = [name for name, v in zip(tensors, got) if v.dtype != np.int8 or not np.array_equal(v, tensors[name])]
    return {"tensors": len(tensors), "mismatched": bad}


def int8_codes_to_2bit_file(path: str, out_path: Optional[str] = None, check: bool = True) -> Dict[str, object]:
    """Rewrite an integerized .onnx file (in place, or into out_path); see int8_codes_to_2bit_model. check: also
    run check_int8_codes (its result under "check"). The returned counts hold no arrays."""
    import onnx
    model = onnx.load(path)
    counts = int8_codes_to_2bit_model(model)
    tensors = counts.pop("tensors")
    onnx.checker.check_model(model)
    if check and tensors:
        counts["check"] = check_int8_codes(model, tensors)
    onnx.save(model, out_path or path)
    return counts
