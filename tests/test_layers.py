"""The layers of src/ and the direction of their imports: runs -> engine -> algorithms -> model -> io -> base, and
deploy (export, ONNX rewrites, onnxruntime sessions, Hugging Face conversion) beside the engine. A module may
import its own layer or a lower one, never a higher one (lazy imports inside functions included), so each layer
can be read and tested without the ones above it. A new module must be given a layer here."""
import ast
import os

from conftest import ROOT

LAYERS = {
    "base": ["errors", "fileio", "cli"],
    "io": ["config", "checkpoint", "corpus", "dataset", "records", "tokenization", "outputs", "tasks", "metrics",
           "ner", "squad", "rank_table"],
    "model": ["tinybert_model", "cpu_kernels", "mlm_head"],
    "algorithms": ["losses", "distill", "quant", "packing", "ternary", "width", "vocab_prune", "augment"],
    "engine": ["train_step", "batching", "evaluation", "trainer", "runlog", "runtime", "teacher_cache"],
    "deploy": ["export", "export_folder", "predict", "onnx_graph", "ternary_int8", "ternary_nbits", "ort_cpu",
               "hf_checkpoint"],
    "runs": ["runs.common", "runs.general_distill", "runs.task_distill", "runs.td_phases", "runs.ternary",
             "runs.width", "runs.compress", "runs.compress_stages", "runs.compress_steps",
             "runs.compress_report"],
}
RANK = {"base": 0, "io": 1, "model": 2, "algorithms": 3, "engine": 4, "deploy": 4, "runs": 5}
LAYER_OF = {m: layer for layer, mods in LAYERS.items() for m in mods}


def _src_modules():
    out = []
    for base, _, files in os.walk(os.path.join(ROOT, "src")):
        for f in files:
            if f.endswith(".py") and f != "__init__.py":
                rel = os.path.relpath(os.path.join(base, f), os.path.join(ROOT, "src"))
                out.append(rel[:-3].replace(os.sep, "."))
    return sorted(out)


def _imports(module: str):
    tree = ast.parse(open(os.path.join(ROOT, "src", *module.split(".")) + ".py", encoding="utf-8").read())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("src"):
            if node.module == "src":
                yield from (a.name for a in node.names)
            else:
                yield node.module[len("src."):]
        elif isinstance(node, ast.Import):
            yield from (a.name[len("src."):] for a in node.names if a.name.startswith("src."))


def test_every_module_has_a_layer():
    assert [m for m in _src_modules() if m not in LAYER_OF] == []
    assert [m for m in LAYER_OF if m not in _src_modules()] == []


def test_imports_point_down():
    upward = []
    for module in _src_modules():
        layer = LAYER_OF[module]
        for target in _imports(module):
            other = LAYER_OF[target]
            same_rank_other_layer = RANK[other] == RANK[layer] and other != layer
            if RANK[other] > RANK[layer] or same_rank_other_layer:
                upward.append(f"{module} ({layer}) imports {target} ({other})")
    assert upward == []



def test_readme_layer_table_names_every_module():
    """The README's layer table is where a newcomer looks a module up: each row names its layer's modules."""
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read().splitlines()
    rows = {line.split("|")[1].strip().split(" ")[0]: line for line in readme
            if line.startswith("| ") and line.split("|")[1].strip().split(" ")[0] in LAYERS}
    missing = [f"{layer}: src/{m.replace('.', '/')}.py" for layer, mods in LAYERS.items() for m in mods
               if f"src/{m.replace('.', '/')}.py" not in rows.get(layer, "")]
    assert sorted(rows) == sorted(LAYERS)
    assert missing == []
