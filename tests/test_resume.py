"""Resume after a crash and NaN handling (src/trainer.py TrainState / Trainer).

- in process: a run interrupted at step 5 and resumed ends with exactly the weights, optimizer moments and best
  metric of an uninterrupted run; NaN stops with the step named and leaves the last good state and best
  checkpoint untouched; an inf gradient norm is a skipped step with skip_overflow_steps and a stop without it;
  --resume with no state / a different data layout is a one-line UserError;
- end to end: run_task_distill.py crashed mid-epoch (the Trainer's TINYBERT_EXIT_AFTER_STEP hook: exit 137 right
  after a given step, nothing cleaned up, as after a SIGKILL), then `--resume true`, ends bit-identical to an
  uninterrupted run with the same seed (best.ckpt, last.ckpt, "The best acc is" lines); the same for
  run_ternary.py (with quantizer state) and run_ofa_width.py (sampled widths, per-width bests).
"""
import os
import subprocess
import sys

import numpy as np
import pytest
import mindspore as ms
from mindspore import Parameter, nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_run  # noqa: E402

from src.batching import ArrayBatcher  # noqa: E402
from src.errors import UserError  # noqa: E402
from src.runlog import RunLog  # noqa: E402
from src.train_step import TrainStep, WarmupLinearDecayLR, build_optimizer  # noqa: E402
from src.trainer import Evaluation, Schedule, Trainer, TrainingDiverged, TrainState  # noqa: E402


# ---------------------------------------------------------------- in process, tiny linear model

class Regression(nn.Cell):
    """loss = mean((x . w + b - y)^2) over the batch; x rides in `input_ids` (float) so ArrayBatcher batches it."""

    def __init__(self):
        super().__init__()
        self.w = Parameter(ms.Tensor(np.array([0.5, -0.3, 0.2], np.float32)), name="w")
        self.bias = Parameter(ms.Tensor(np.zeros(1, np.float32)), name="bias")

    def construct(self, x, y):
        err = (x * self.w).sum(axis=1) + self.bias - y
        loss = (err * err).mean()
        return loss, (loss,)


def _arrays(n=24, nan_row=None, big_row=None):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 3)).astype(np.float32)
    y = (x @ np.array([1.0, 2.0, -1.0], np.float32) + 0.5).astype(np.float32)
    if nan_row is not None:
        x[nan_row, 0] = np.nan
    if big_row is not None:
        y[big_row] = 1e5                  # a finite loss far above the first step's
    return {"input_ids": x, "input_mask": np.ones((n, 3), np.int32), "label_ids": y}


class CrashAt:
    """Wraps a step cell; raises after `n` calls (a crash in the middle of an epoch)."""

    def __init__(self, cell, n):
        self.cell, self.n, self.calls = cell, n, 0

    def __call__(self, *a):
        self.calls += 1
        if self.calls > self.n:
            raise KeyboardInterrupt("simulated crash")
        return self.cell(*a)


def _trainer(out, arrays, resume=False, crash_after=0, every=2, lr=0.05, evals=None, epochs=3, max_steps=0):
    net = Regression()
    sched = WarmupLinearDecayLR(lr, 18, 2)
    step = TrainStep(net, build_optimizer(net.trainable_params(), sched, 0.01), clip_mode="none")
    step.set_train(True)
    batcher = ArrayBatcher(arrays, 4, seed=3)                           # 6 steps per epoch
    evals = [] if evals is None else evals

    def eval_fn():                                                      # metric: -|w - w*|, depends on weights
        evals.append(net.w.asnumpy().copy())
        return {"acc": -float(np.abs(net.w.asnumpy() - [1.0, 2.0, -1.0]).sum())}

    saved = {}

    def save_best(metrics):
        saved["best"] = (net.w.asnumpy().copy(), metrics["acc"])
        np.save(os.path.join(out, "best_w.npy"), net.w.asnumpy())

    state = TrainState(step, os.path.join(out, "state"), every, keep_last=2)
    cell = CrashAt(step, crash_after) if crash_after else step
    log = RunLog(out, echo=False)
    tr = Trainer(cell, batcher, inputs=["input_ids", "label_ids"], parts=["mse"], log=log,
                 schedule=Schedule(epochs=epochs, max_steps=max_steps, lr_value=sched.value), log_every=10,
                 evaluation=Evaluation(eval_fn, "acc", every=4, save_best=save_best), state=state, resume=resume)
    return tr, net, step, log


def test_interrupted_then_resumed_equals_uninterrupted(tmp_path):
    arrays = _arrays()
    a_dir, b_dir = str(tmp_path / "a"), str(tmp_path / "b")
    tr, net_a, step_a, _ = _trainer(a_dir, arrays)
    res_a = tr.fit()
    assert res_a["steps"] == 18
    first_loss = tr.first_loss                                          # the divergence rule's reference

    tr, _, _, log = _trainer(b_dir, arrays, crash_after=7)               # dies in epoch 2 (batch 1 of 6)
    with pytest.raises(KeyboardInterrupt):
        tr.fit()
    log.close()
    states = sorted(os.listdir(os.path.join(b_dir, "state")))
    assert states == ["state_step000000004.ckpt", "state_step000000006.ckpt"]   # keep_last=2; 6 = epoch end
    # the newest state is the epoch-1 end; drop it to resume from step 4, i.e. mid-epoch (batch 4 of 6)
    os.remove(os.path.join(b_dir, "state", states[-1]))

    tr, net_b, step_b, _ = _trainer(b_dir, arrays, resume=True)
    res_b = tr.fit()
    assert res_b["steps"] == 18 and tr.first_loss == first_loss         # kept from step 1, not step 5's
    assert not os.path.exists(os.path.join(b_dir, "state"))             # a finished run drops its states
    np.testing.assert_array_equal(net_b.w.asnumpy(), net_a.w.asnumpy())
    np.testing.assert_array_equal(net_b.bias.asnumpy(), net_a.bias.asnumpy())
    for (na, pa), (nb, pb) in zip(step_a.optimizer.parameters_and_names(), step_b.optimizer.parameters_and_names()):
        assert na == nb
        np.testing.assert_array_equal(pa.asnumpy(), pb.asnumpy())       # Adam moments and global_step
    assert (res_b["best"], res_b["best_step"]) == (res_a["best"], res_a["best_step"])
    np.testing.assert_array_equal(np.load(os.path.join(b_dir, "best_w.npy")),
                                  np.load(os.path.join(a_dir, "best_w.npy")))
    with open(os.path.join(b_dir, "log.txt")) as f:
        text = f.read()
    assert "resumed from" in text and "epoch 1, 4 of 6 batches done, step 4" in text


def test_nan_loss_stops_naming_the_step_and_keeps_good_state(tmp_path):
    # shuffled order of epoch 1 decides when the NaN row is met: find that step first
    arrays = _arrays(nan_row=5)
    batcher = ArrayBatcher(arrays, 4, seed=3)
    bad_step = next(i + 1 for i, b in enumerate(batcher.epoch(1)) if np.isnan(b["input_ids"]).any())
    assert bad_step > 2
    out = str(tmp_path)
    tr, net, _, _ = _trainer(out, arrays, every=1)
    with pytest.raises(TrainingDiverged, match=rf"loss is nan at epoch 1, step {bad_step}:"):
        tr.fit()
    states = sorted(os.listdir(os.path.join(out, "state")))
    assert states[-1] == f"state_step{bad_step - 1:09d}.ckpt"          # nothing written from the NaN step
    tensors, meta = tiny_run.read_ckpt(os.path.join(out, "state", states[-1]))
    assert all(np.isfinite(v).all() for v in tensors.values()) and meta["step"] == bad_step - 1
    assert issubclass(TrainingDiverged, UserError)                      # entry scripts: one line, exit 2


def test_finite_loss_blowup_stops_like_nan_and_keeps_good_state(tmp_path):
    """A finite loss above DIVERGENCE_FACTOR x the first step's stops the run as a NaN does: nothing is saved from
    that step on (the earlier state stays), and the error names the step and both losses."""
    from src.trainer import DIVERGENCE_FACTOR
    arrays = _arrays(big_row=5)
    batcher = ArrayBatcher(arrays, 4, seed=3)
    bad_step = next(i + 1 for i, b in enumerate(batcher.epoch(1)) if (b["label_ids"] == 1e5).any())
    assert bad_step > 2
    out = str(tmp_path)
    tr, net, _, _ = _trainer(out, arrays, every=1)
    with pytest.raises(TrainingDiverged, match=rf"loss is [0-9.e+]+, more than {DIVERGENCE_FACTOR:g}x the first "
                                               rf"step's [0-9.e+-]+ \(diverging\) at epoch 1, step {bad_step}:"):
        tr.fit()
    assert tr.first_loss is not None and 0 < tr.first_loss < 10
    states = sorted(os.listdir(os.path.join(out, "state")))
    assert states[-1] == f"state_step{bad_step - 1:09d}.ckpt"          # nothing written from the diverged step


class OverflowAt:
    """A stub step cell: loss 1.0 and grad norm 2.0, except an inf grad norm at call `n` (a loss-scaled step that
    overflowed and was skipped by the step itself); counts its calls."""

    def __init__(self, n):
        self.n, self.calls = n, 0

    def __call__(self, *inputs):
        self.calls += 1
        norm = np.inf if self.calls == self.n else 2.0
        loss = ms.Tensor(1.0, ms.float32)
        return loss, (loss,), ms.Tensor(norm, ms.float32)


@pytest.mark.parametrize("skip", [True, False])
def test_inf_grad_norm_is_skipped_only_with_skip_overflow_steps(tmp_path, skip):
    """skip_overflow_steps (loss scale > 1): an inf gradient norm with a finite loss is a skipped step, the run
    goes on to its last step; without it the same step stops the run naming the epoch and step."""
    step = OverflowAt(3)
    log = RunLog(str(tmp_path), echo=False)
    tr = Trainer(step, ArrayBatcher(_arrays(), 4, seed=3), inputs=["input_ids", "label_ids"], parts=["mse"],
                 log=log, schedule=Schedule(epochs=1, max_steps=0, lr_value=lambda s: 0.0), log_every=1,
                 skip_overflow_steps=skip)
    if skip:
        assert tr.fit()["steps"] == 6 and step.calls == 6
    else:
        with pytest.raises(TrainingDiverged, match="gradient norm is inf at epoch 1, step 3:"):
            tr.fit()
        assert step.calls == 3
    log.close()


def test_epochs_0_trains_exactly_max_steps_over_the_epochs_they_need(tmp_path):
    """epochs 0 with max_steps 9 at 6 steps per epoch: 9 steps, the second epoch cut after 3 batches, and the
    epoch-end eval of both epochs (eval every 4 steps: 4, 8, then the end of epoch 2 at step 9)."""
    tr, _, _, _ = _trainer(str(tmp_path), _arrays(), every=0, epochs=0, max_steps=9)
    res = tr.fit()
    assert res["steps"] == 9 and tr.total_steps == 9
    assert [(h["epoch"], h["step"]) for h in tr.history] == [(1, 4), (1, 6), (2, 8), (2, 9)]


def test_state_refuses_to_save_nonfinite_weights(tmp_path):
    arrays = _arrays()
    tr, net, step, _ = _trainer(str(tmp_path), arrays)
    net.w.set_data(ms.Tensor(np.array([1.0, np.inf, 0.0], np.float32)))
    with pytest.raises(TrainingDiverged, match="non-finite values in w at step 7"):
        tr.state.save({"step": 7})
    assert not os.path.exists(os.path.join(str(tmp_path), "state"))


def test_resume_errors(tmp_path):
    arrays = _arrays()
    tr, _, _, _ = _trainer(str(tmp_path / "none"), arrays, resume=True)
    with pytest.raises(UserError, match=r"resume: no training state .* rerun without --resume true"):
        tr.fit()
    tr, _, _, log = _trainer(str(tmp_path / "r"), arrays, crash_after=3)
    with pytest.raises(KeyboardInterrupt):
        tr.fit()
    log.close()
    tr, _, _, _ = _trainer(str(tmp_path / "r"), _arrays(n=40), resume=True)          # 10 steps per epoch now
    with pytest.raises(UserError, match="written with 6 steps per epoch on 1 worker.*has 10 on 1"):
        tr.fit()


# ---------------------------------------------------------------- end to end: crash (exit 137), then resume

@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return tiny_run.make_workspace(str(tmp_path_factory.mktemp("resume_ws")))


def _tensors(path):
    return tiny_run.read_ckpt(path)[0]


def _crash_after_step(script, args, step):
    """Run `script` until it dies right after optimizer `step` (the Trainer's crash-simulation hook: exit status
    137, nothing cleaned up, as after a SIGKILL)."""
    from src.trainer import EXIT_AFTER_STEP_ENV
    env = dict(tiny_run.env(), **{EXIT_AFTER_STEP_ENV: str(step)})
    proc = subprocess.run([sys.executable, os.path.join(tiny_run.ROOT, script)] + args, cwd=tiny_run.ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 137, proc.stderr[-2000:]


def _resumed_line(res):
    resumed = [line for line in res.stdout.splitlines() if line.startswith("resumed from")]
    assert len(resumed) == 1, res.stdout[-2000:]
    return resumed[0]


def test_crash_mid_epoch_then_resume_is_bit_identical(ws, tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    extra = {"checkpoint.every_steps": 3, "checkpoint.keep_last": 2, "finetune.epochs": 3}
    ref = tiny_run.run_script("run_task_distill.py", tiny_run.finetune_args(ws, a, **extra))
    assert ref.returncode == 0, ref.stderr[-2000:]

    _crash_after_step("run_task_distill.py", tiny_run.finetune_args(ws, b, **extra), 7)
    with open(os.path.join(b, "teacher", "log.txt")) as f:
        assert "training done" not in f.read()

    res = tiny_run.run_script("run_task_distill.py", tiny_run.finetune_args(ws, b, resume=True, **extra))
    assert res.returncode == 0, res.stderr[-2000:]
    resumed = _resumed_line(res)                  # the newest state before step 7: step 6, mid-epoch 1
    assert "state_step000000006.ckpt: epoch 1, 6 of 16 batches done, step 6," in resumed, resumed

    for name in ("best.ckpt", "last.ckpt"):
        ta, tb = _tensors(os.path.join(a, "teacher", name)), _tensors(os.path.join(b, "teacher", name))
        assert sorted(ta) == sorted(tb)
        for k in ta:
            np.testing.assert_array_equal(ta[k], tb[k], err_msg=f"{name}:{k}")
    best_a = tiny_run.best_acc(os.path.join(a, "teacher", "log.txt"))
    best_b = tiny_run.best_acc(os.path.join(b, "teacher", "log.txt"))
    assert best_a and best_b[-1] == best_a[-1]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["ternary", "width", "width_stage2"])
def test_ternary_and_width_crash_then_resume_is_bit_identical(method, ws, tmp_path):
    """TernaryBERT with 8-bit activations on EMA ranges (frozen quantizer state that a resume must restore, not
    only weights and Adam moments), the width supernet training a sampled width per step (the sampled
    sequence and the per-width bests must continue where they stopped) and stage 2 from a width supernet (the
    frozen supernet teacher reloaded from supernet.init_ckpt, no rewiring on resume): crashed after step 20,
    resumed from the state of step 18 (mid-epoch 2), bit-identical to an uninterrupted run."""
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    if method == "ternary":
        script, make, sub = "run_ternary.py", tiny_run.ternary_args, "w2e2a8"
        extra = {"quant.activation_scale": "ema", "train.epochs": 2, "eval.every": 4}
        files = ("best.ckpt", "best_quant.ckpt")
    else:
        script, make, sub = "run_ofa_width.py", tiny_run.ofa_args, ""
        extra = {"train.sample_widths": 1, "train.epochs": 2, "eval.every": 4}
        files = ("supernet.ckpt", "best_w1.000.ckpt", "best_w0.500.ckpt")
    if method == "width_stage2":
        s1 = str(tmp_path / "stage1")
        assert tiny_run.run_script(script, make(ws, s1)).returncode == 0
        extra = {"train.distill_from": "supernet", "supernet.init_ckpt": os.path.join(s1, "supernet.ckpt"),
                 "train.epochs": 2, "eval.every": 4}
    extra.update({"checkpoint.every_steps": 3, "checkpoint.keep_last": 2})
    ref = tiny_run.run_script(script, make(ws, a, **extra))
    assert ref.returncode == 0, ref.stderr[-2000:]

    _crash_after_step(script, make(ws, b, **extra), 20)
    with open(os.path.join(b, sub, "log.txt")) as f:
        assert "training done" not in f.read()
    res = tiny_run.run_script(script, make(ws, b, resume=True, **extra))
    assert res.returncode == 0, res.stderr[-2000:]
    resumed = _resumed_line(res)                  # states at 16 (epoch end) and 18: mid-epoch 2, after an eval
    assert "state_step000000018.ckpt: epoch 2, 2 of 16 batches done, step 18," in resumed, resumed

    for name in files:
        ta, tb = _tensors(os.path.join(a, sub, name)), _tensors(os.path.join(b, sub, name))
        assert sorted(ta) == sorted(tb)
        for k in ta:
            np.testing.assert_array_equal(ta[k], tb[k], err_msg=f"{name}:{k}")
    if method == "ternary":                    # the EMA activation ranges (0-d tensors) were part of what was compared
        assert [k for k in _tensors(os.path.join(b, sub, "best.ckpt")) if k.endswith("amax")]
    with open(os.path.join(a, sub, "log.txt")) as fa, open(os.path.join(b, sub, "log.txt")) as fb:
        best = [[ln for ln in f.read().splitlines() if ln.startswith("The best acc")] for f in (fa, fb)]
    assert best[0] and best[1] and best[1][-1] == best[0][-1]
