"""Wiring shared by the entry scripts: MindSpore context, seeds, data-parallel setup, building models from
config files and checkpoints, loading record splits. Nothing algorithmic lives here."""
import contextlib
import os
import random
from typing import Dict, Optional, Sequence

import numpy as np
import mindspore as ms

from src.errors import UserError
from src.tinybert_model import BertConfig, BertForSequenceClassification, BertModel

RECORD_EXT = {"tfrecord": ".tf_record", "mindrecord": ".mindrecord"}


def init_context(device_target: str = "CPU", mode: str = "graph", threads: int = 0, distributed: bool = False):
    """Graph mode by default (PyNative is 4-6x slower on CPU: debugging only). Returns (rank, world)."""
    if device_target not in ("CPU", "GPU", "Ascend"):
        raise UserError(f"device_target '{device_target}': expected CPU, GPU or Ascend")
    if mode not in ("graph", "pynative"):
        raise UserError(f"mode '{mode}': expected graph or pynative")
    device_id = os.environ.get("DEVICE_ID", "")       # zoo rank-table launch: one device per process
    if device_target != "CPU" and device_id.isdigit():
        ms.set_device(device_target, int(device_id))
    else:
        ms.set_device(device_target)
    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)
    if device_target == "CPU" and threads:
        _set_cpu_threads(int(threads))
    if device_target == "CPU":        # the fused kernels (src/cpu_kernels.py) use as many threads as MindSpore's
        from src import cpu_kernels
        cpu_kernels.set_threads(int(threads) or _cpus())
    if not distributed:
        return 0, 1
    from mindspore.communication import get_group_size, get_rank, init
    init()
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True)
    return get_rank(), get_group_size()


_THREADS_SET = []


def start_run(cfg, out_dir: str, save_resolved, manifest_extra: dict):
    """The opening every training run shares: MindSpore context (mode, threads, data parallel), seed, the
    output-folder check, the per-rank log, and on rank 0 the resolved config and the run manifest.
    Returns (rank, world, log)."""
    from src.callbacks import RunLog, write_manifest
    rank, world = init_context(cfg.device_target, cfg.mode, cfg.threads, cfg.distributed)
    set_seed(cfg.seed)
    if os.path.isfile(out_dir):
        raise UserError(f"output_dir: '{out_dir}' is a file, expected a directory")
    log = RunLog(out_dir, rank)
    log.info(kernels_line(cfg))
    if rank == 0:
        save_resolved(cfg, out_dir)
        write_manifest(out_dir, cfg.to_dict(), cfg.seed, {**manifest_extra, "rank_size": world})
    return rank, world, log


def kernel_choice(cfg):
    """(use the fused kernels of src/cpu_kernels.py, the run's log line saying which kernels run and why): the key
    `fused_cpu_kernels`, on CPU, when the kernel library builds; else MindSpore's ops."""
    from src import cpu_kernels
    if not cfg.fused_cpu_kernels:
        return False, "kernels: MindSpore ops (fused_cpu_kernels false)"
    if cfg.device_target != "CPU":
        return False, (f"kernels: MindSpore ops (fused_cpu_kernels applies to CPU only, device_target is "
                       f"{cfg.device_target})")
    ok, detail = cpu_kernels.available()
    if ok:
        return True, f"kernels: fused CPU LayerNorm, GELU, masked loss sums ({os.path.basename(detail)})"
    return False, f"kernels: MindSpore ops, fused_cpu_kernels unavailable: {detail}"


def fused_kernels(cfg) -> bool:
    return kernel_choice(cfg)[0]


def kernels_line(cfg) -> str:
    return kernel_choice(cfg)[1]


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _set_cpu_threads(threads: int):
    """MindSpore accepts the kernel thread count once per process. A second run in the same process (tests,
    notebooks) keeps the first value; asking for another one is an error, not a silent change."""
    from mindspore.device_context.cpu import op_tuning
    if _THREADS_SET:
        if _THREADS_SET[0] != threads:
            raise UserError(f"threads: this process already runs MindSpore with {_THREADS_SET[0]} CPU threads, "
                            f"cannot switch to {threads}")
        return
    try:
        op_tuning.threads_num(threads)
    except RuntimeError:   # set before us by the caller (e.g. a test harness): keep theirs
        pass
    _THREADS_SET.append(threads)


def student_layer_map(cfg, teacher_cfg, student_cfg, attention_weight: float):
    """(attention map, hidden map) from the config's `layer_map` (uniform when null), range-checked, and the check
    that an attention loss has equal head counts on both sides. Shared by GD, TD phase 1 and TernaryBERT."""
    from src.losses import resolve_layer_map
    try:
        maps = resolve_layer_map(teacher_cfg.num_hidden_layers, student_cfg.num_hidden_layers,
                                 layer_list(cfg.layer_map.attention, "layer_map.attention"),
                                 layer_list(cfg.layer_map.hidden, "layer_map.hidden"))
    except ValueError as e:
        raise UserError(str(e)) from None
    if attention_weight:                     # per mapped layer: width sub-models have per-layer head counts
        for s_layer, t_layer in enumerate(maps[0]):
            s_heads, t_heads = student_cfg.heads(s_layer), teacher_cfg.heads(t_layer)
            if s_heads != t_heads:
                raise UserError(f"attention loss needs equal head counts: student layer {s_layer} has {s_heads}, "
                                f"teacher layer {t_layer} has {t_heads} (set loss.attention_weight 0 or match "
                                f"heads)")
    return maps


def set_seed(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    ms.set_seed(seed)


def check_output_dir(out_dir: str, what: str = "output_dir") -> str:
    """UserError if `out_dir` or one of its existing ancestors is a file (makedirs would fail with a traceback)."""
    path = os.path.abspath(out_dir)
    while path and not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{what}: '{path}' is a file, expected a directory (for '{out_dir}')")
    return out_dir


def _stamp(path: str):
    try:
        st = os.stat(path)
        return st.st_size, st.st_mtime_ns
    except OSError:
        return None


def _files_under(folder: str) -> set:
    out = set()
    for base, _, files in os.walk(folder):
        out.update(os.path.join(base, f) for f in files)
    return out


RUN_DESCRIPTION_FILES = ("config_resolved.yaml", "manifest.json", "config.json", "quant.json")


@contextlib.contextmanager
def output_guard(out_dir: str, what: str = "output_dir"):
    """No partial outputs on user errors: files (and folders) that did not exist before and were created inside
    the block are removed again when it raises a UserError, unless the error says keep_outputs (a run that
    diverged keeps its logs and last good checkpoints). A rerun into a folder that holds an earlier run rewrites
    that run's description (RUN_DESCRIPTION_FILES: resolved config, manifest, model and quant configs) as it
    starts; on such an error, if the earlier run's other outputs (checkpoints, ...; logs aside) are all unchanged,
    those files get their earlier content back, so they still describe the checkpoints beside them. Other
    pre-existing files are never touched."""
    check_output_dir(out_dir, what)
    out_dir = os.path.abspath(out_dir)
    missing = []                                      # folders this run creates, deepest first
    path = out_dir
    while not os.path.exists(path):
        missing.append(path)
        path = os.path.dirname(path)
    before = _files_under(out_dir) if not missing else set()
    dirs_before = {b for b, _, _ in os.walk(out_dir)}
    described, outputs = {}, {}
    for f in before:
        if os.path.basename(f) in RUN_DESCRIPTION_FILES:
            with open(f, "rb") as fh:
                described[f] = fh.read()
        elif not f.endswith((".txt", ".jsonl")):                 # logs are appended to, not replaced
            outputs[f] = _stamp(f)
    try:
        yield
    except UserError as e:
        if not getattr(e, "keep_outputs", False):
            for f in sorted(_files_under(out_dir) - before):
                with contextlib.suppress(OSError):
                    os.remove(f)
            replaced = any(_stamp(f) != stamp for f, stamp in outputs.items())
            for f, data in ({} if replaced else described).items():
                try:
                    with open(f, "rb") as fh:
                        same = fh.read() == data
                except OSError:
                    same = False
                if not same:
                    with contextlib.suppress(OSError):
                        with open(f + ".restore", "wb") as fh:
                            fh.write(data)
                        os.replace(f + ".restore", f)
            for base in sorted({b for b, _, _ in os.walk(out_dir)} - dirs_before, reverse=True):
                with contextlib.suppress(OSError):
                    os.rmdir(base)                          # new and empty (deepest first)
            for folder in missing:
                with contextlib.suppress(OSError):
                    os.rmdir(folder)
        raise


def layer_list(value, field: str):
    """A layer-map entry from YAML/CLI: null, one index (`--layer_map.attention 3` parses as an int) or a list
    of ints; anything else is a UserError naming the field."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return value
    raise UserError(f"{field}: expected null or a list of layer indices, e.g. [1, 3, 5], got {value!r}")


def require_file(path: str, what: str) -> str:
    if not path:
        raise UserError(f"{what}: no path given")
    if not os.path.exists(path):
        raise UserError(f"{what}: '{path}' does not exist")
    return path


def load_bert_config(path: str, what: str, **overrides) -> BertConfig:
    require_file(path, what)
    try:
        cfg = BertConfig.from_json_file(path)
        return cfg.replace(**overrides) if overrides else cfg
    except (ValueError, TypeError, OSError) as e:
        raise UserError(f"{what} '{path}': {e}") from None


def student_config(teacher_cfg: BertConfig, spec: dict) -> BertConfig:
    """Student shape from the YAML `student.arch` block; vocab/positions/types always follow the teacher."""
    keys = ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size", "hidden_act",
            "hidden_dropout_prob", "attention_probs_dropout_prob")
    kw = {k: spec[k] for k in keys if spec.get(k) is not None}
    try:
        return teacher_cfg.replace(layer_num_heads=None, layer_intermediate_sizes=None, **kw)
    except ValueError as e:
        raise UserError(f"student.arch: {e}") from None


def build_classifier(cfg: BertConfig, head_type: str) -> BertForSequenceClassification:
    try:
        return BertForSequenceClassification(cfg, head_type=head_type)
    except ValueError as e:
        raise UserError(str(e)) from None


def cell_state(cell, extra_cells: Optional[dict] = None, prefix: str = "") -> Dict[str, "ms.Parameter"]:
    """Parameters by name relative to `cell` (stable whatever wrapper cells the model sits in), optionally
    under `prefix`, plus the parameters of `extra_cells` (e.g. {"fit_dense": FitDense}) under their key."""
    state = {prefix + n: p for n, p in cell.parameters_and_names()}
    for key, extra in (extra_cells or {}).items():
        state.update({f"{key}.{n}": p for n, p in extra.parameters_and_names()})
    return state


def head_meta(cell) -> dict:
    """{"head_type": ...} for a classifier (recorded in its checkpoints: the ReLU of a relu_pooler head has no
    parameter, so the weights alone cannot tell the heads apart), else {}."""
    head = getattr(cell, "head_type", None)
    return {"head_type": head} if isinstance(head, str) else {}


def save_cell(cell, path: str, extra: Optional[dict] = None, prefix: str = "", **extra_cells):
    """Atomic checkpoint of a cell (names relative to it, under `prefix`) + extra cells + scalar metadata; a
    classifier's head type is recorded too (head_meta)."""
    from src.checkpoint import save_checkpoint_atomic
    params = [{"name": n, "data": p} for n, p in cell_state(cell, extra_cells, prefix).items()]
    save_checkpoint_atomic(params, path, extra={**head_meta(cell), **(extra or {})})


def checkpoint_head_type(ckpt: str) -> Optional[str]:
    """The head type a checkpoint records (save_cell / save_quantized), or None (older files, HF conversions,
    backbone-only checkpoints)."""
    from src.checkpoint import read_ms_checkpoint
    head = read_ms_checkpoint(ckpt, with_extra=True)[1].get("head_type")
    return head if isinstance(head, str) else None


def pick_head_type(requested: str, recorded: Optional[str], flag: str, source: str) -> str:
    """`requested` "auto" (or "") -> the head `source` records, else "dense"; an explicit head type must match the
    recorded one (one clear error instead of a model that silently drops or adds the pooler ReLU). `flag` names
    the head-type option in the errors."""
    if requested in ("", "auto"):
        return recorded or "dense"
    if requested not in BertForSequenceClassification.HEAD_TYPES:
        raise UserError(f"{flag} '{requested}': expected auto or one of {BertForSequenceClassification.HEAD_TYPES}")
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
    A classifier checkpoint that records its head type (save_cell) loads only into a classifier with that head.
    """
    from src.checkpoint import check_state, read_ms_checkpoint
    require_file(ckpt, what)
    loaded, meta = read_ms_checkpoint(ckpt, with_extra=True)
    recorded, head = meta.get("head_type"), getattr(cell, "head_type", None)
    if isinstance(recorded, str) and isinstance(head, str) and recorded != head and not prefix_map:
        raise UserError(f"{what} '{ckpt}' was saved with head_type {recorded}, the model to load it into has "
                        f"head_type {head}: set the head type the checkpoint was trained with")
    for old, new in (prefix_map or {}).items():
        loaded = {(new + k[len(old):] if k.startswith(old) else k): v for k, v in loaded.items()}
    state = cell_state(cell, extra_cells)
    check_state({k: tuple(p.shape) for k, p in state.items()}, {k: tuple(v.shape) for k, v in loaded.items()},
                source=f"{what} '{ckpt}'", strict=strict, allow_missing=allow_missing,
                allow_unexpected=allow_unexpected)
    for k, p in state.items():
        if k in loaded and tuple(loaded[k].shape) == tuple(p.shape):
            p.set_data(ms.Tensor(loaded[k], p.dtype))


def copy_teacher_layers(student, teacher, layers: Sequence[int]):
    """DistilBERT-style init: embeddings, pooler and the chosen encoder layers copied from the teacher.
    Requires equal hidden size; student layer i <- teacher layer layers[i]."""
    s_bert = student.bert if hasattr(student, "bert") else student
    t_bert = teacher.bert if hasattr(teacher, "bert") else teacher
    if s_bert.config.hidden_size != t_bert.config.hidden_size:
        raise UserError(f"student.init=teacher_layers needs equal hidden sizes (student "
                        f"{s_bert.config.hidden_size}, teacher {t_bert.config.hidden_size})")
    if len(layers) != s_bert.num_layers or any(not 0 <= i < t_bert.num_layers for i in layers):
        raise UserError(f"student.teacher_layers {list(layers)}: expected {s_bert.num_layers} indices in "
                        f"[0, {t_bert.num_layers - 1}]")

    def copy(dst_cell, src_cell):
        src = dict(src_cell.parameters_and_names())       # names relative to the cell
        for key, p in dst_cell.parameters_and_names():
            if src[key].shape != p.shape:
                raise UserError(f"student.init=teacher_layers: {p.name} shape {p.shape} differs from teacher "
                                f"{src[key].shape} (heads/FFN sizes must match the teacher)")
            p.set_data(ms.Tensor(src[key].asnumpy()))

    copy(s_bert.embeddings, t_bert.embeddings)
    copy(s_bert.pooler, t_bert.pooler)
    for i, ti in enumerate(layers):
        copy(s_bert.encoder[i], t_bert.encoder[ti])


def split_files(data_dir: str, split: str, dataset_type: str):
    if dataset_type not in RECORD_EXT:
        raise UserError(f"data.dataset_type '{dataset_type}': expected one of {list(RECORD_EXT)}")
    return (os.path.join(data_dir, split + RECORD_EXT[dataset_type]),
            os.path.join(data_dir, f"{split}_schema.json"))


def load_split(data_dir: str, split: str, dataset_type: str, seq_length: int, task=None,
               columns: Sequence[str] = ("input_ids", "input_mask", "segment_ids", "label_ids"),
               ) -> Dict[str, np.ndarray]:
    """All rows of one split as numpy arrays (file order), validated against the expected sequence length and
    the task's label set."""
    from src.dataset import check_labels, read_all
    records, schema = split_files(data_dir, split, dataset_type)
    require_file(records, f"data split '{split}'")
    arrays = read_all(records, schema, list(columns), dataset_type)
    got = arrays["input_ids"].shape[1]
    if got != seq_length:
        raise UserError(f"{records}: input_ids has length {got}, config data.max_seq_length is {seq_length}")
    if task is not None and "label_ids" in arrays:
        if task.regression:
            arrays["label_ids"] = arrays["label_ids"].astype(np.float32)
        else:
            check_labels(arrays["label_ids"], task, source=records)
            arrays["label_ids"] = arrays["label_ids"].astype(np.int32)
    for k in ("input_ids", "input_mask", "segment_ids"):
        if k in arrays:
            arrays[k] = arrays[k].astype(np.int32)
    return arrays


def task_from_config(cfg):
    """The Task of `cfg.task` (name, and labels for task csv); an unknown name is a UserError naming task.name."""
    from src.tasks import get_task
    try:
        return get_task(cfg.task.name, list(cfg.task.labels) or None)
    except ValueError as e:
        raise UserError(f"task.name: {e}") from None


def load_eval_sets(cfg, task) -> Dict[str, Dict[str, np.ndarray]]:
    """The full eval split(s) of the run: the task's dev splits (MNLI: matched and mismatched) or cfg.eval.split."""
    split = cfg.eval.split
    splits = task.eval_splits if split == "dev" else (split,)
    return {s: load_split(cfg.data.dir, s, cfg.data.dataset_type, cfg.data.max_seq_length, task) for s in splits}
