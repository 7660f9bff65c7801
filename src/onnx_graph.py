"""Rewrite MindSpore's ONNX export of a BERT classifier into the standard patterns that runtimes fuse.

MindSpore 2.10 writes each LayerNorm as ReduceMean, Sub, ReduceSumSquare, Div(N), Add(eps), Sqrt, Div, Mul, Add, and
cannot export `Erf`, so the exact GELU leaves as the Abramowitz-Stegun polynomial of `ErfPolyGELU` (about 20
element-wise nodes per layer). onnxruntime (like TensorRT and OpenVINO) recognises the PyTorch-style patterns
instead and replaces them with one fused kernel each. Two local rewrites, same math:

- LayerNorm: `ReduceSumSquare(c) / N` -> `ReduceMean(Pow(c, 2))` (the variance; N is the normalised axis' length).
  onnxruntime then fuses the whole decomposition into `LayerNormalization` (and, with the residual `Add` before it,
  `SkipLayerNormalization`, a fusion this project's CPU sessions turn off: src/ort_cpu.py).
- GELU: the polynomial `0.5 * (x + |x| * (1 - P(t) exp(-x^2 / 2)))` -> `x * 0.5 * (1 + Erf(x / sqrt 2))`, the
  exact GELU with ONNX's own `Erf` (opset 9); onnxruntime fuses `Gelu` / `BiasGelu`.

Everything else is left alone; nodes that no longer feed an output are dropped. The opset stays MindSpore's (11).
The caller verifies the rewritten file against the checkpoint (src/export.py parity check), so a pattern that is
matched wrongly cannot pass silently. Needs the `onnx` package (requirements.txt).
"""
import math
from typing import Dict, List, Optional

import numpy as np

SQRT2 = math.sqrt(2.0)


class _Graph:
    """Name lookups over an onnx GraphProto: producer of each tensor, consumers, constant values."""

    def __init__(self, graph):
        from onnx import numpy_helper
        self.g = graph
        self.np = numpy_helper
        self.producer = {o: n for n in graph.node for o in n.output}
        self.consumers: Dict[str, List] = {}
        for n in graph.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.inits = {t.name: t for t in graph.initializer}

    def const(self, name: str) -> Optional[np.ndarray]:
        """Value of a constant tensor: an initializer, a Constant node, or a float->float Cast of one."""
        if name in self.inits:
            return self.np.to_array(self.inits[name])
        n = self.producer.get(name)
        if n is None:
            return None
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            return self.np.to_array(n.attribute[0].t)
        if n.op_type == "Cast" and len(n.input) == 1:
            v = self.const(n.input[0])
            return None if v is None else v.astype(np.float32)
        return None

    def is_scalar(self, name: str, value: float, tol: float = 1e-6) -> bool:
        v = self.const(name)
        return v is not None and v.size == 1 and abs(float(v.reshape(-1)[0]) - value) <= tol * max(1.0, abs(value))

    def only(self, name: str, op_type: str):
        """The single consumer of `name` with this op type, else None."""
        found = [n for n in self.consumers.get(name, []) if n.op_type == op_type]
        return found[0] if len(found) == 1 else None

    def other_input(self, node, name: str) -> Optional[str]:
        ins = list(node.input)
        if len(ins) != 2 or name not in ins:
            return None
        return ins[1] if ins[0] == name else ins[0]


def _scalar(name: str, value: float):
    from onnx import helper, TensorProto
    return helper.make_tensor(name, TensorProto.FLOAT, [], [float(value)])


def _layernorm_sites(G: _Graph):
    """(ReduceSumSquare node, Div-by-N node, ReduceMean axes, keepdims) of each MindSpore LayerNorm variance."""
    from onnx import helper
    sites = []
    for r in G.g.node:
        if r.op_type != "ReduceSumSquare":
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in r.attribute}
        centered = G.producer.get(r.input[0])
        div = G.only(r.output[0], "Div")
        if centered is None or centered.op_type != "Sub" or div is None or div.input[0] != r.output[0]:
            continue
        mean = G.producer.get(centered.input[1])
        if mean is None or mean.op_type != "ReduceMean" or mean.input[0] != centered.input[0]:
            continue
        n = G.const(div.input[1])
        if n is None or n.size != 1 or not float(n.reshape(-1)[0]) >= 1:
            continue
        sites.append((r, div, list(attrs.get("axes", [])), int(attrs.get("keepdims", 1))))
    return sites


def _gelu_sites(G: _Graph):
    """(x, output Mul node) of each ErfPolyGELU: y = Mul(Add(x, Mul(Abs(x), s)), 0.5)."""
    sites = []
    for a in G.g.node:
        if a.op_type != "Abs":
            continue
        x = a.input[0]
        for m1 in G.consumers.get(a.output[0], []):
            if m1.op_type != "Mul" or G.other_input(m1, a.output[0]) is None:
                continue
            add = G.only(m1.output[0], "Add")
            if add is None or G.other_input(add, m1.output[0]) != x:
                continue
            out = G.only(add.output[0], "Mul")
            if out is None or not G.is_scalar(G.other_input(out, add.output[0]) or "", 0.5):
                continue
            sites.append((x, out))
    return sites


def _drop_dead(graph):
    """Remove nodes whose outputs reach no graph output, then initializers nobody reads."""
    live = {o.name for o in graph.output}
    keep = []
    for n in reversed(list(graph.node)):
        if any(o in live for o in n.output):
            keep.append(n)
            live.update(n.input)
    keep.reverse()
    del graph.node[:]
    graph.node.extend(keep)
    used = [t for t in graph.initializer if t.name in live]
    del graph.initializer[:]
    graph.initializer.extend(used)


def replace_nodes(graph, new_nodes: Dict[int, List], initializers: List):
    """Put each list new_nodes[id(node)] in its node's place (the order stays topological when the new nodes read
    only tensors made before that node), add the initializers, and drop what no longer feeds an output."""
    nodes = []
    for n in graph.node:
        nodes.extend(new_nodes.get(id(n), [n]))
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(initializers)
    _drop_dead(graph)


def standardize_model(model, gelu: bool = True) -> Dict[str, int]:
    """Rewrite an onnx ModelProto in place; returns {"layernorm": n, "gelu": m} (patterns rewritten). gelu=False
    keeps the GELU polynomial."""
    from onnx import helper
    g = model.graph
    G = _Graph(g)
    ln = _layernorm_sites(G)
    gelus = _gelu_sites(G) if gelu else []
    new_nodes = {}                                     # node id to replace -> list of new nodes
    extra_inits = []
    if ln:
        extra_inits.append(_scalar("std_pattern.two", 2.0))
    for k, (r, div, axes, keepdims) in enumerate(ln):
        sq = f"std_pattern.ln{k}.sq"
        pow_node = helper.make_node("Pow", [r.input[0], "std_pattern.two"], [sq], name=f"std_pattern.ln{k}.Pow")
        mean_kw = {"keepdims": keepdims}
        if axes:
            mean_kw["axes"] = axes
        mean_node = helper.make_node("ReduceMean", [sq], [div.output[0]], name=f"std_pattern.ln{k}.ReduceMean",
                                     **mean_kw)
        new_nodes[id(div)] = [pow_node, mean_node]
    if gelus:
        extra_inits += [_scalar("std_pattern.sqrt2", SQRT2), _scalar("std_pattern.one", 1.0),
                        _scalar("std_pattern.half", 0.5)]
    for k, (x, out) in enumerate(gelus):
        p = f"std_pattern.gelu{k}"
        new_nodes[id(out)] = [
            helper.make_node("Div", [x, "std_pattern.sqrt2"], [p + ".z"], name=p + ".Div"),
            helper.make_node("Erf", [p + ".z"], [p + ".erf"], name=p + ".Erf"),
            helper.make_node("Add", [p + ".erf", "std_pattern.one"], [p + ".phi2"], name=p + ".Add"),
            helper.make_node("Mul", [x, p + ".phi2"], [p + ".xphi2"], name=p + ".Mul"),
            helper.make_node("Mul", [p + ".xphi2", "std_pattern.half"], [out.output[0]], name=p + ".Mul_half"),
        ]
    if not new_nodes:
        return {"layernorm": 0, "gelu": 0}
    replace_nodes(g, new_nodes, extra_inits)
    return {"layernorm": len(ln), "gelu": len(gelus)}


def standardize_file(path: str, gelu: bool = True) -> Dict[str, int]:
    """Rewrite an .onnx file in place (see standardize_model). Weights stay inside the file."""
    import onnx
    model = onnx.load(path)
    counts = standardize_model(model, gelu)
    if counts["layernorm"] or counts["gelu"]:
        onnx.checker.check_model(model)
        onnx.save(model, path)
    return counts
