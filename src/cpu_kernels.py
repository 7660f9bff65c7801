"""Fused CPU kernels as MindSpore AOT custom ops: LayerNorm and the exact GELU (forward and backward) for the model,
the padding-masked squared-error sum of the distillation losses, and a reproducible dropout.

Why: MindSpore 2.10's CPU kernels for these ops are 10-30x slower than PyTorch's. In a TD phase-1 step (MiniLM-L6
teacher -> 3-layer student, batch 32, seq 64, ~1.9 s) Erf (the exact GELU) took ~130 ms, LayerNormGrad ~130 ms,
LayerNorm ~80 ms, and the masked loss sums (Square, Mul, ReduceSum, and Tile in their backward) ~90 ms; the
kernels of src/cpu_kernels.cc do the same math in one vectorized pass per op, on the run's threads
(docs/benchmarks.md has the measured steps).

How: src/cpu_kernels.cc is compiled once with g++ (-O3; AVX2 + FMA when this CPU has both) into
build/cpu_kernels/cpu_kernels-<hash>.so, the hash covering source, flags and compiler (TINYBERT_KERNEL_DIR moves
the folder). The library is written under a temporary name and renamed, so workers starting together never load
a half-written file. `FusedLayerNorm` / `FusedGELU` / `MaskedSquaredError` wrap the ops with their backward
(`bprop`) for graph mode. `set_threads` (called by runtime.init_context with the run's `threads`) sets how many
threads a kernel may split its rows over.

Dropout: MindSpore 2.10's CPU Dropout kernel draws every element from one shared std::default_random_engine
while its rows run on several threads, so at threads > 1 the mask of a call depends on how the threads interleave
(and on the thread count its parallel auto-search settles on): two runs with one seed differ after a few steps.
Its state is not saved either, so a resumed run draws other masks than an uninterrupted one. `DeterministicDropout`
draws element i's keep bit from a hash of (i, seed, op id, step, a fingerprint of the input): the same mask at
any thread count and in any launch order, and the trainer's step (`set_dropout_step`) makes a resumed run draw the
masks the uninterrupted run drew. `set_deterministic` (runtime.init_context, the YAML key `deterministic`)
makes `dropout(p)` build it instead of nn.Dropout.

Who uses them: BertConfig.fused_cpu_kernels (runtime only, never written to config.json), set by the runs from
the YAML key `fused_cpu_kernels` on CPU (src/runtime.py:fused_kernels); the distillation losses follow the
student's setting. Without g++ a run logs why and uses MindSpore's ops. Exported models (MINDIR/ONNX) always use
MindSpore's ops: a custom AOT op would tie the file to this machine's library.
"""
import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile

import numpy as np
import mindspore as ms
from mindspore import nn, ops
from mindspore.common.initializer import initializer

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpu_kernels.cc")
DEFAULT_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "build", "cpu_kernels")


class KernelBuildError(RuntimeError):
    pass


def _cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def compile_flags() -> list:
    flags = ["-O3", "-std=c++17", "-shared", "-fPIC", "-pthread", "-fno-trapping-math", "-fno-math-errno"]
    if {"avx2", "fma"} <= _cpu_flags():
        flags += ["-mavx2", "-mfma"]
    return flags


@functools.lru_cache(maxsize=None)
def library() -> str:
    """Path of the compiled kernel library, building it on first use. Raises KernelBuildError."""
    cxx = shutil.which(os.environ.get("CXX", "g++"))
    if cxx is None:
        raise KernelBuildError(f"no C++ compiler: '{os.environ.get('CXX', 'g++')}' is not on PATH")
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout.splitlines()[:1]
    flags = compile_flags()
    with open(SOURCE, "rb") as f:
        key = hashlib.sha256(f.read() + " ".join(flags + version).encode()).hexdigest()[:16]
    folder = os.environ.get("TINYBERT_KERNEL_DIR") or DEFAULT_DIR
    path = os.path.join(folder, f"cpu_kernels-{key}.so")
    if os.path.exists(path):
        return path
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".cpu_kernels-", suffix=".so", dir=folder)
    os.close(fd)
    try:
        res = subprocess.run([cxx, *flags, "-o", tmp, SOURCE], capture_output=True, text=True)
        if res.returncode != 0:
            tail = " | ".join(res.stderr.strip().splitlines()[-3:])
            raise KernelBuildError(f"{cxx} failed on {SOURCE}: {tail}")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


_THREADS = [1]        # what set_threads asked for; applied when the library is loaded
_DROPOUT_STEP = [0]   # what set_dropout_step asked for; applied when the library is loaded
_DETERMINISTIC = [False]  # set_deterministic: dropout(p) builds DeterministicDropout
_LOADED = []          # the ctypes handle (keeps the library, and its thread setting, loaded in this process)


def set_threads(n: int):
    """Threads a kernel may split its rows over (the run's `threads`, as MindSpore's own kernels use). The value
    lives in the loaded library, shared with the custom ops MindSpore loads from the same file. Returns the
    previous value."""
    previous, _THREADS[0] = _THREADS[0], max(1, int(n))
    if _LOADED:
        _LOADED[0].SetThreads(_THREADS[0])
    return previous


def set_dropout_step(step: int):
    """The optimizer step the next DeterministicDropout masks belong to (the Trainer calls it before each step; a
    resumed run continues with the steps it restored)."""
    _DROPOUT_STEP[0] = int(step)
    if _LOADED:
        _LOADED[0].SetDropoutStep(ctypes.c_int64(_DROPOUT_STEP[0]))


def set_deterministic(on: bool):
    """Whether `dropout(p)` builds DeterministicDropout (runtime.init_context, the YAML key `deterministic`).
    Returns the previous value."""
    previous, _DETERMINISTIC[0] = _DETERMINISTIC[0], bool(on)
    return previous


def deterministic_dropout() -> bool:
    """`set_deterministic(True)` and the kernel library builds."""
    return _DETERMINISTIC[0] and available()[0]


def dropout(p: float) -> nn.Cell:
    """The model's dropout cell: DeterministicDropout when deterministic_dropout(), else nn.Dropout. Either takes
    the next of MindSpore's dropout op seeds, so both see the same seeds for one ms.set_seed."""
    return DeterministicDropout(p) if deterministic_dropout() else nn.Dropout(p=p)


def _load(path: str):
    if not _LOADED:
        _LOADED.append(ctypes.CDLL(path))
    _LOADED[0].SetThreads(_THREADS[0])
    _LOADED[0].SetDropoutStep(ctypes.c_int64(_DROPOUT_STEP[0]))


def available():
    """(True, library path) or (False, why not)."""
    try:
        return True, library()
    except (KernelBuildError, OSError) as e:
        return False, str(e)


def _same(*args):
    return args[0]


def _ln_shapes(x, *_):
    return x, x[:-1], x[:-1]


def _ln_dtypes(x, *_):
    return x, x, x


def _sq_err_shape(s, t, w):
    """[1]; the student and target tensors must have one shape (the kernel reads t with s's layout)."""
    if list(s) != list(t):
        raise ValueError(f"MaskedSquaredError: student tensor {list(s)} and target {list(t)} differ in shape")
    return [1]


@functools.lru_cache(maxsize=None)
def _ops():
    """The custom ops, made once per process (they are stateless primitives shared by every cell)."""
    lib = library()
    _load(lib)
    gelu_bwd = ops.Custom(f"{lib}:GeluBackward", out_shape=_same, out_dtype=_same, func_type="aot")

    def gelu_bprop(x, out, dout):
        return (gelu_bwd(x, dout),)

    gelu = ops.Custom(f"{lib}:GeluForward", out_shape=_same, out_dtype=_same, func_type="aot", bprop=gelu_bprop)
    ln_bwd = ops.Custom(f"{lib}:LayerNormBackward", out_shape=lambda dy, x, g, m, r: (x, g, g),
                        out_dtype=lambda dy, x, g, m, r: (x, g, g), func_type="aot")

    def ln_bprop(x, gamma, beta, eps, out, dout):
        dx, dgamma, dbeta = ln_bwd(dout[0], x, gamma, out[1], out[2])
        return dx, dgamma, dbeta, ops.zeros_like(eps)

    ln = ops.Custom(f"{lib}:LayerNormForward", out_shape=_ln_shapes, out_dtype=_ln_dtypes, func_type="aot",
                    bprop=ln_bprop)
    sq_err_grad = ops.Custom(f"{lib}:MaskedSquaredErrorGrad", out_shape=_same, out_dtype=_same, func_type="aot")

    def sq_err_bprop(s, t, w, out, dout):
        return sq_err_grad(s, t, w, dout), ops.zeros_like(t), ops.zeros_like(w)

    sq_err = ops.Custom(f"{lib}:MaskedSquaredErrorSum", out_shape=_sq_err_shape, out_dtype=_same,
                        func_type="aot", bprop=sq_err_bprop)

    def dropout_bprop(x, p, key, out, dout):
        return dout[0] * out[1], ops.zeros_like(p), ops.zeros_like(key)

    drop = ops.Custom(f"{lib}:DropoutForward", out_shape=lambda x, p, key: (x, x),
                      out_dtype=lambda x, p, key: (x, x), func_type="aot", bprop=dropout_bprop)
    return gelu, ln, sq_err, drop


class FusedGELU(nn.Cell):
    """Exact GELU x * Phi(x) (erf from Abramowitz-Stegun 7.1.26, as ErfPolyGELU), one kernel each way. float32."""

    def __init__(self):
        super().__init__()
        self.gelu = _ops()[0]

    def construct(self, x):
        return self.gelu(x)


class FusedLayerNorm(nn.Cell):
    """LayerNorm over the last axis with the parameter names of nn.LayerNorm (gamma, beta), so checkpoints are the
    same either way. float32."""

    def __init__(self, hidden: int, eps: float):
        super().__init__()
        self.gamma = ms.Parameter(initializer("ones", (hidden,), ms.float32), name="gamma")
        self.beta = ms.Parameter(initializer("zeros", (hidden,), ms.float32), name="beta")
        self.eps = ms.Tensor(np.array([eps], np.float32))
        self.layer_norm = _ops()[1]

    def construct(self, x):
        return self.layer_norm(x, self.gamma, self.beta, self.eps)[0]


class MaskedSquaredError(nn.Cell):
    """sum((s - t)^2 * w) with w broadcast over the one axis where it has size 1 ([B, 1, L, L] for attention scores
    [B, H, L, L]; [B, L, 1] for hidden states [B, L, D]): the numerator of the padding-masked distillation MSEs
    (src/losses.py), one pass each way, summed in double. The target t gets no gradient: it is always the frozen
    teacher's (or the cache's) tensor. Returns shape [1]. float32."""

    def __init__(self):
        super().__init__()
        self.sq_err = _ops()[2]

    def construct(self, s, t, w):
        return self.sq_err(s, t, w)


class DeterministicDropout(nn.Cell):
    """Dropout with probability `p` in training mode, identity otherwise (as nn.Dropout; no parameters either, so
    checkpoints do not depend on it). Element i of a call is kept iff hash(i, seed, op id, step, input) is below
    1 - p; kept elements are scaled by 1 / (1 - p), and the backward multiplies by the same mask. seed and op id
    are those nn.Dropout would get (ms.set_seed, then one per dropout cell built), the step is set_dropout_step's,
    and input is a fingerprint of x (its size and 64 evenly spaced values): calls of one cell on different tensors
    in one step (a width supernet's widths) get different masks whatever order they run in; calls on the same
    tensor in one step get the same mask. float32."""

    def __init__(self, p: float):
        super().__init__()
        from mindspore.common.seed import _get_graph_seed      # nn.Dropout's seeds: (global seed, op seed)
        if not 0 <= p < 1:
            raise ValueError(f"DeterministicDropout: p must be in [0, 1), got {p}")
        self.p = float(p)
        seed, op_id = _get_graph_seed(0, "dropout")
        self.key = ms.Tensor(np.array([seed, op_id], np.int64))
        self.prob = ms.Tensor(np.array([self.p], np.float32))
        self.drop = _ops()[3]

    def construct(self, x):
        if not self.training or self.p == 0:
            return x
        return self.drop(x, self.prob, self.key)[0]
