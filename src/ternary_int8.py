"""TernaryBERT in integer kernels: rewrite the ONNX export of a ternary model so that its quantized matmuls run as
`MatMulInteger` (uint8 activations x int8 ternary codes, int32 sums) instead of fp32 GEMMs on fake-quantized values.
Standard ONNX ops only (opset 10: QuantizeLinear, MatMulInteger), so any runtime with them runs the file;
onnxruntime fuses each MatMulInteger with its scale into one kernel (MatMulIntegerToFloat, VNNI on this CPU).

What the export holds at each quantized matmul (src/quant.py: symmetric 8-bit activations, ternary weights):

    amax = max|x| of this tensor (scale "dynamic") or the frozen EMA value (scale "ema")
    y    = floor(x * 127 / amax + 0.5) * amax / 127      (+ x - x, the straight-through term)
    Gemm(y, W, bias) with W = alpha * C, C in {-1, 0, 1}   (alpha one value, or one per output row:
                                                            `quant.weight_rowwise`)

The same product in integers, with a = amax / 127:

    Gemm(y, W, bias) = (a * alpha) * (Q @ C^T) + bias,    Q = round(x / a) in [-127, 127]

written as QuantizeLinear(x, a, zero point 128) (uint8 Q + 128) -> MatMulInteger(., C^T int8, a_zero_point 128)
-> Cast(float) * Mul(a, alpha) -> Add(bias). The attention matmuls, whose two inputs are both quantized activations
(Q K^T and probs V), take both as uint8 with zero point 128 and the scale a_a * a_b. Not int8 for the second: x86
CPUs without VNNI run uint8 x int8 products through 16-bit pair sums that overflow for 8-bit values on both sides
(onnxruntime converts only constant weights for that, `session.x64quantprecision`), while ternary codes {-1, 0, 1}
cannot overflow; uint8 x uint8 ran as fast here (VNNI) and gave the same logits.
The ternary word embedding (one alpha per row) is stored as its int8 codes and rebuilt at lookup as
Gather(codes) * Gather(alpha): the same fp32 values, a quarter of the bytes. Position / token-type embeddings,
LayerNorm, biases and the classifier stay fp32, as trained.

What differs from the fp32 graph: QuantizeLinear rounds half to even where training rounds half up (x / a landing
exactly on a .5), and the integer sums are exact where fp32 rounds each partial sum. Both move a value by at most
one quantization step, the same size of change that any fp32 difference near a .5 already makes between MindSpore
and onnxruntime (src/export.py's ACT_QUANT_TOLERANCE); the dev metric is the check (benchmarks/bench_int8.py). The
floor(x * s + 0.5) form, bit-exact to training, was 1.3x slower in onnxruntime (five element-wise passes per
quantization point instead of one) and is not used.

With frozen (EMA) scales onnxruntime folds Mul(a, alpha) into a constant before its MatMulIntegerToFloat fusion
looks for it, so those files run MatMulInteger, Cast and Mul as three kernels (the default dynamic scale fuses).
Matmuls whose weight is not ternary (4/8-bit weights) stay fp32 and are counted; asymmetric activations (the
MindSpore anchor's EMA min/max, `activation_mode: asym`) are not matched, so such a model rewrites nothing.
"""
from typing import Dict, Optional

import numpy as np

from src.onnx_graph import _Graph, replace_nodes
from src.packing import dense_ternary, ternary_signs

ZP = 128                     # uint8 zero point: Q in [-127, 127] -> Q + 128 in [1, 255]


def _fake_quant_site(G: _Graph, name: str):
    """(x, amax) of the symmetric 8-bit fake-quant whose output (the straight-through Add) is `name`, else None:
    Add(Div(Floor(Add(Mul(x, s), 0.5)), s), Sub(x, x)) with s = Div(127, Max(amax, eps)), amax = ReduceMax(Abs(x))
    or a constant."""
    ste = G.producer.get(name)
    if ste is None or ste.op_type != "Add":
        return None
    parts = [G.producer.get(i) for i in ste.input]
    if any(p is None for p in parts):
        return None
    subs = [p for p in parts if p.op_type == "Sub" and p.input[0] == p.input[1]]
    divs = [p for p in parts if p.op_type == "Div"]
    if len(subs) != 1 or len(divs) != 1:
        return None
    x, div = subs[0].input[0], divs[0]
    floor, scale = G.producer.get(div.input[0]), div.input[1]
    if floor is None or floor.op_type != "Floor":
        return None
    add_half = G.producer.get(floor.input[0])
    if add_half is None or add_half.op_type != "Add" or len(add_half.input) != 2:
        return None
    halves = [i for i in add_half.input if G.is_scalar(i, 0.5)]
    if len(halves) != 1:
        return None
    mul = G.producer.get(G.other_input(add_half, halves[0]))
    if mul is None or mul.op_type != "Mul" or sorted(mul.input) != sorted([x, scale]):
        return None
    s_div = G.producer.get(scale)
    if s_div is None or s_div.op_type != "Div" or not G.is_scalar(s_div.input[0], 127.0):
        return None
    mx = G.producer.get(s_div.input[1])
    if mx is None or mx.op_type != "Max" or len(mx.input) != 2:
        return None
    red = [G.producer[i] for i in mx.input if i in G.producer and G.producer[i].op_type == "ReduceMax"]
    if red:                                          # dynamic: max|x| over the whole tensor (one scale)
        ab = G.producer.get(red[0].input[0])
        if ab is None or ab.op_type != "Abs" or ab.input[0] != x or len(red[0].input) != 1 \
                or any(a.name == "axes" and len(a.ints) for a in red[0].attribute):     # MindSpore: axes = []
            return None
    elif any(G.const(i) is None or G.const(i).size != 1 for i in mx.input):  # ema: a frozen max (x clipped to it)
        return None
    return x, mx.output[0]


def integerize_model(model) -> Dict[str, int]:
    """Rewrite an onnx ModelProto in place. Returns counts: "dense" (ternary Dense now MatMulInteger), "attention"
    (Q K^T and probs V now MatMulInteger), "embedding" (word embedding stored as int8 codes), "dense_fp32"
    (quantized Dense whose weight is not ternary, left in fp32)."""
    from onnx import TensorProto, helper, numpy_helper
    g = model.graph
    G = _Graph(g)
    new_nodes, inits, quantized = {}, [], {}
    counts = {"dense": 0, "attention": 0, "embedding": 0, "dense_fp32": 0}

    def const(name, value, dtype=np.float32):
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    zp_u8, c127 = const("int8.zp_u8", ZP, np.uint8), const("int8.c127", 127.0)

    def quantize(site):
        """(name of x quantized to uint8 (Q + 128), its scale a = amax / 127, new nodes); built once per x and
        placed before the first matmul that reads it."""
        x, amax = site
        if x in quantized:
            return quantized[x] + ([],)
        p = f"int8.q{len(quantized)}"
        nodes = [helper.make_node("Div", [amax, c127], [p + ".a"], name=p + ".Scale"),
                 helper.make_node("QuantizeLinear", [x, p + ".a", zp_u8], [p], name=p + ".QuantizeLinear")]
        quantized[x] = (p, p + ".a")
        return p, p + ".a", nodes

    for k, n in enumerate(g.node):
        p = f"int8.{k}"
        if n.op_type == "Gemm":
            attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
            w = G.const(n.input[1]) if len(n.input) > 1 else None
            if w is None or w.ndim != 2 or attrs.get("transA", 0) or not attrs.get("transB", 0) \
                    or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
                continue
            a_in, shape = n.input[0], None
            reshape = G.producer.get(a_in)
            if reshape is not None and reshape.op_type == "Reshape":
                a_in, shape = reshape.input[0], reshape.input[1]
            site = _fake_quant_site(G, a_in)
            if site is None:
                continue
            t = dense_ternary(w)                                     # w is [out, in]: alphas per output row
            if t is None:                                            # not ternary, or all zero: left in fp32
                counts["dense_fp32"] += 1
                continue
            alpha, codes = t
            if alpha.size == 1:                                      # one alpha for the tensor: a scalar
                alpha = alpha[0]
            q, a, nodes = quantize(site)
            if shape is not None:
                nodes.append(helper.make_node("Reshape", [q, shape], [p + ".q2d"], name=p + ".Reshape"))
                q = p + ".q2d"
            codes_t = const(p + ".codes", codes.T.copy(), np.int8)             # [in, out]
            nodes += [helper.make_node("MatMulInteger", [q, codes_t, zp_u8], [p + ".i32"], name=p + ".MatMulInteger"),
                      helper.make_node("Cast", [p + ".i32"], [p + ".f"], name=p + ".Cast", to=TensorProto.FLOAT),
                      helper.make_node("Mul", [a, const(p + ".alpha", alpha)], [p + ".scale"], name=p + ".Scale"),
                      helper.make_node("Mul", [p + ".f", p + ".scale"], [p + ".y"], name=p + ".Mul")]
            if len(n.input) > 2 and n.input[2]:
                nodes.append(helper.make_node("Add", [p + ".y", n.input[2]], [n.output[0]], name=p + ".AddBias"))
            else:
                nodes[-1].output[0] = n.output[0]
            new_nodes[id(n)] = nodes
            counts["dense"] += 1
        elif n.op_type == "MatMul":
            b_in, tr = n.input[1], G.producer.get(n.input[1])
            if tr is not None and tr.op_type == "Transpose":                   # K^T
                b_in = tr.input[0]
            else:
                tr = None
            sa, sb = _fake_quant_site(G, n.input[0]), _fake_quant_site(G, b_in)
            if sa is None or sb is None:
                continue
            qa, a_a, nodes = quantize(sa)
            qb, a_b, more = quantize(sb)
            nodes += more
            if tr is not None:                                                 # the same permutation, on uint8
                t_node = helper.make_node("Transpose", [qb], [p + ".qbT"], name=p + ".Transpose")
                t_node.attribute.extend(tr.attribute)
                nodes.append(t_node)
                qb = p + ".qbT"
            nodes += [helper.make_node("MatMulInteger", [qa, qb, zp_u8, zp_u8], [p + ".i32"],
                                       name=p + ".MatMulInteger"),
                      helper.make_node("Cast", [p + ".i32"], [p + ".f"], name=p + ".Cast", to=TensorProto.FLOAT),
                      helper.make_node("Mul", [a_a, a_b], [p + ".scale"], name=p + ".Scale"),
                      helper.make_node("Mul", [p + ".f", p + ".scale"], [n.output[0]], name=p + ".Mul")]
            new_nodes[id(n)] = nodes
            counts["attention"] += 1
        elif n.op_type == "Gather":            # the ternary word embedding: the only table whose rows are each
            w = G.const(n.input[0])            # 0 / +-one alpha
            t = None if w is None or w.ndim != 2 or w.shape[0] < 3 else ternary_signs(w, rowwise=True)
            if t is None:
                continue
            alpha, codes = t[0].reshape(-1, 1), t[1]
            attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
            new_nodes[id(n)] = [
                helper.make_node("Gather", [const(p + ".codes", codes, np.int8), n.input[1]], [p + ".c"],
                                 name=p + ".GatherCodes", **attrs),
                helper.make_node("Cast", [p + ".c"], [p + ".cf"], name=p + ".Cast", to=TensorProto.FLOAT),
                helper.make_node("Gather", [const(p + ".alpha", alpha), n.input[1]], [p + ".a"],
                                 name=p + ".GatherAlpha", **attrs),
                helper.make_node("Mul", [p + ".cf", p + ".a"], [n.output[0]], name=p + ".Mul")]
            counts["embedding"] += 1
    if not new_nodes:
        return counts
    replace_nodes(g, new_nodes, inits)
    if model.opset_import[0].version < 10:
        model.opset_import[0].version = 10
    return counts


def integerize_file(path: str, out_path: Optional[str] = None) -> Dict[str, int]:
    """Rewrite an .onnx file (in place, or into out_path); see integerize_model."""
    import onnx
    model = onnx.load(path)
    counts = integerize_model(model)
    onnx.checker.check_model(model)
    onnx.save(model, out_path or path)
    return counts
