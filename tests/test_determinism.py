"""Reproducible runs (`deterministic: true`, src/cpu_kernels.DeterministicDropout and the fixed-order kernel sums).

- in process: the dropout kernel drops about p of the elements, scales the rest by 1 / (1 - p) and multiplies the
  gradient by the same mask; its mask is bitwise the same at 1, 2 and 3 threads, a function of (seed, op, step,
  input) and nothing else; inference mode is the identity;
- end to end, at 2 threads with dropout on (the student of tiny_run.td1_args): two td1 runs with one seed end with
  bit-identical weights, and a run crashed mid-epoch (the Trainer's TINYBERT_EXIT_AFTER_STEP hook), then resumed,
  ends bit-identical to an uninterrupted one. With `--deterministic false` (MindSpore's CPU Dropout, whose threads share
  one random engine, and whose state a resume does not restore) both end-to-end tests fail.
"""
import os
import shutil
import sys

import numpy as np
import pytest
import mindspore as ms
from mindspore import nn, ops

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_run  # noqa: E402
from test_resume import _crash_after_step, _resumed_line  # noqa: E402

from src import cpu_kernels  # noqa: E402

needs_gxx = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not on PATH: the kernels cannot be built")


class _Grad(nn.Cell):
    def __init__(self, net):
        super().__init__()
        self.net = net
        self.grad = ops.GradOperation(get_all=True, sens_param=True)

    def construct(self, x, sens):
        return self.net(x), self.grad(self.net)(x, sens)


def _dropout(p=0.1, seed=5):
    ms.set_seed(seed)
    cell = cpu_kernels.DeterministicDropout(p)
    cell.set_train(True)
    return cell


@pytest.fixture
def dropout_step():
    """set_dropout_step for the test; the process's step is 0 again afterwards."""
    yield cpu_kernels.set_dropout_step
    cpu_kernels.set_dropout_step(0)


@needs_gxx
def test_dropout_rate_scale_and_gradient(dropout_step):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 384)).astype(np.float32)
    sens = rng.normal(size=x.shape).astype(np.float32)
    dropout_step(0)
    y, (gx,) = _Grad(_dropout(0.1))(ms.Tensor(x), ms.Tensor(sens))
    y, gx = y.asnumpy(), gx.asnumpy()
    kept = y != 0
    assert abs(kept.mean() - 0.9) < 0.01                                  # 24576 draws: 5 standard deviations
    np.testing.assert_array_equal(y[kept], x[kept] * np.float32(1 / 0.9))
    np.testing.assert_array_equal(gx, np.where(kept, sens * np.float32(1 / 0.9), 0.0).astype(np.float32))
    cell = _dropout(0.1)
    cell.set_train(False)
    np.testing.assert_array_equal(cell(ms.Tensor(x)).asnumpy(), x)    # inference: identity
    assert (_dropout(0.0)(ms.Tensor(x)).asnumpy() == x).all()


@needs_gxx
def test_dropout_mask_depends_on_seed_op_step_and_input_only(dropout_step):
    """The same (seed, op, step, input) gives the same mask at any thread count (a tensor of 3 x 65536 elements,
    split over the threads) and on every call; another step, seed, op or input gives another one."""
    x = ms.Tensor(np.ones((512, 384), np.float32))

    def mask(cell, step, inp=x):
        dropout_step(step)
        return cell(inp).asnumpy() != 0

    previous = cpu_kernels.set_threads(1)
    try:
        by_threads = {}
        for threads in (1, 2, 3):
            cpu_kernels.set_threads(threads)
            by_threads[threads] = mask(_dropout(), 7)
    finally:
        cpu_kernels.set_threads(previous)
    first = by_threads[1]
    for threads in (2, 3):
        np.testing.assert_array_equal(by_threads[threads], first)
    cell = _dropout()
    np.testing.assert_array_equal(mask(cell, 7), first)                   # called again: the same mask
    assert (mask(cell, 8) != first).any()                                  # next step
    assert (mask(_dropout(seed=6), 7) != first).any()                      # another seed
    assert (mask(cell, 7, ms.Tensor(np.full((512, 384), 2.0, np.float32))) != first).any()    # another input
    ms.set_seed(5)
    one, two = cpu_kernels.DeterministicDropout(0.1), cpu_kernels.DeterministicDropout(0.1)
    one.set_train(True)
    two.set_train(True)
    np.testing.assert_array_equal(mask(one, 7), first)                     # the first op built after set_seed
    assert (mask(two, 7) != first).any()                                   # the second op: its own mask


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return tiny_run.make_workspace(str(tmp_path_factory.mktemp("determinism_ws")))


def _assert_same_student(a: str, b: str):
    ta = tiny_run.read_ckpt(os.path.join(a, "td1", "student.ckpt"))[0]
    tb = tiny_run.read_ckpt(os.path.join(b, "td1", "student.ckpt"))[0]
    assert sorted(ta) == sorted(tb)
    for k in ta:
        np.testing.assert_array_equal(ta[k], tb[k], err_msg=k)


@needs_gxx
def test_two_runs_at_2_threads_with_dropout_are_bit_identical(ws, tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    for out in (a, b):
        res = tiny_run.run_script("run_task_distill.py", tiny_run.td1_args(ws, out, threads=2))
        assert res.returncode == 0, res.stderr[-2000:]
    _assert_same_student(a, b)
    with open(os.path.join(a, "td1", "log.txt")) as f:
        assert "deterministic: true (dropout masks from seed, op, step and input" in f.read()


@needs_gxx
def test_crash_and_resume_at_2_threads_with_dropout_equals_uninterrupted(ws, tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    extra = {"threads": 2, "epochs": 4, "checkpoint.every_steps": 3, "checkpoint.keep_last": 2}
    ref = tiny_run.run_script("run_task_distill.py", tiny_run.td1_args(ws, a, **extra))
    assert ref.returncode == 0, ref.stderr[-2000:]

    _crash_after_step("run_task_distill.py", tiny_run.td1_args(ws, b, **extra), 10)
    res = tiny_run.run_script("run_task_distill.py", tiny_run.td1_args(ws, b, resume=True, **extra))
    assert res.returncode == 0, res.stderr[-2000:]
    resumed = _resumed_line(res)                  # states at 8 (epoch end) and 9: mid-epoch 2
    assert "state_step000000009.ckpt: epoch 2, 1 of 8 batches done, step 9," in resumed, resumed
    _assert_same_student(a, b)
