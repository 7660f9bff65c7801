"""The MindSpore process a run starts in: device and mode, CPU threads, the fused-kernel choice, determinism, seeds,
data-parallel setup, and `start_run`, the opening every training run shares."""
import gc
import os
import random

import numpy as np
import mindspore as ms

from src.errors import UserError


def init_context(device_target: str = "CPU", mode: str = "graph", threads: int = 0, distributed: bool = False,
                 deterministic: bool = False):
    """Graph mode by default (PyNative is 4-6x slower on CPU: debugging only). `deterministic` (the YAML key): on
    CPU the models built from now on use DeterministicDropout (src/cpu_kernels.py: of the ops a training step
    runs, MindSpore's CPU Dropout is the one whose result changed from run to run at threads > 1), on GPU / Ascend
    MindSpore's own switch (ms.set_deterministic, not run here). Returns (rank, world)."""
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
        cpu_kernels.set_deterministic(deterministic)
    elif deterministic and not _DETERMINISTIC_SET:
        ms.set_deterministic(True)    # MindSpore accepts it once per process
        _DETERMINISTIC_SET.append(True)
    if not distributed:
        return 0, 1
    from mindspore.communication import get_group_size, get_rank, init
    init()
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True)
    return get_rank(), get_group_size()


_THREADS_SET = []
_DETERMINISTIC_SET = []


def start_run(cfg, out_dir: str, save_resolved, manifest_extra: dict):
    """The opening every training run shares: MindSpore context (mode, threads, data parallel), seed, the
    output-folder check, the per-rank log, and on rank 0 the resolved config and the run manifest.
    Returns (rank, world, log)."""
    from src.runlog import RunLog, write_manifest
    rank, world = init_context(cfg.device_target, cfg.mode, cfg.threads, cfg.distributed, cfg.deterministic)
    set_seed(cfg.seed)
    if os.path.isfile(out_dir):
        raise UserError(f"output_dir: '{out_dir}' is a file, expected a directory")
    log = RunLog(out_dir, rank)
    log.info(kernels_line(cfg))
    log.info(determinism_line(cfg))
    if rank == 0:
        save_resolved(cfg, out_dir)
        write_manifest(out_dir, cfg.to_dict(), cfg.seed, {**manifest_extra, "rank_size": world})
    return rank, world, log


def release_compiled_graphs() -> None:
    """Give back the memory of every graph MindSpore compiled so far. MindSpore keeps each compiled graph's
    runtime memory until ms_memory_recycle, whether or not its cell is still referenced (deleting a cell frees
    its graph, not that memory); gc.collect first frees cells and tensors that went out of scope. A cell still
    in use compiles again at its next call."""
    gc.collect()
    ms.ms_memory_recycle()


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


def determinism_line(cfg) -> str:
    """The run's log line saying whether two runs with its seed end with the same weights, and why (after
    init_context)."""
    if not cfg.deterministic:
        return "deterministic: false (MindSpore's Dropout: with dropout > 0 at threads > 1 runs differ)"
    if cfg.device_target != "CPU":
        return "deterministic: true (MindSpore's set_deterministic)"
    from src import cpu_kernels
    if cpu_kernels.deterministic_dropout():
        return "deterministic: true (dropout masks from seed, op, step and input; fixed-order kernel sums)"
    return (f"deterministic: true, but MindSpore's Dropout runs (the kernel library is unavailable: "
            f"{cpu_kernels.available()[1]}): with dropout > 0 at threads > 1 runs differ")


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


def set_seed(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    ms.set_seed(seed)
