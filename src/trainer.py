"""The training loop shared by every method: batches in, TrainStep out, logs, evals, best checkpoint, resume.

- `Trainer.fit`: the loop, with the model-zoo log lines (`epoch: N, step: N, outputs are ...`, `The best acc is X`),
  eval every N steps and per epoch, keep-best, and a stop with no checkpoint written from a diverged state.
- `TrainState`: atomic periodic checkpoints of the whole training state (trainable weights incl. fit_dense,
  optimizer moments and step, epoch and batch position, best metric) for `--resume`.
- The Trainer's interface is named: `Schedule` (how long), `Evaluation` (what to evaluate, how often, how to keep
  the best), `StepCounter` (the steps done, for the objects that need them: a width sampler, a per-width keep-best)
  and `extra_state` (any object with state_dict / load_state_dict, saved with the training state).
"""
import glob
import json
import math
import os
import re
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import mindspore as ms
from mindspore import nn

from src import cpu_kernels
from src.batching import to_tensors
from src.errors import UserError
from src.runlog import RunLog, eval_line, train_line
from src.train_step import epochs_to_run, total_steps

# A finite loss above this multiple of the run's first step's loss stops the run like a NaN does.
DIVERGENCE_FACTOR = 1e4
# Crash-simulation hook for tests only: with TINYBERT_EXIT_AFTER_STEP=N in the environment the process exits at once
# with status 137 (no cleanup, as after a SIGKILL) right after optimizer step N and its mid-epoch state save if one
# is due, so the resume tests crash at a known step instead of racing a kill against the run.
EXIT_AFTER_STEP_ENV = "TINYBERT_EXIT_AFTER_STEP"


class TrainingDiverged(UserError):
    """Loss or gradient norm became NaN/inf: the run stops before any checkpoint is written from that state
    (its log and the checkpoints written before stay: keep_outputs)."""
    keep_outputs = True


class TrainState:
    """Periodic, atomic checkpoints of everything a run needs to continue after a crash (`--resume true`).

    Saved: every trainable parameter the step cell updates (model, fit_dense, ...), every optimizer parameter
    (Adam moments, global_step, which drives the LR schedule), the frozen parameters under the `buffers` name
    prefixes (state a forward pass updates: activation-quantizer ranges, the LAT Hessian), and as metadata the
    step, epoch, batches consumed in that epoch, best metric and its step, steps per epoch, world size and the
    caller's extra state (Trainer `extra_state`, JSON). Frozen parameters are state when the step cell says so
    (`StateOf(..., frozen_state=True)`). Other frozen parameters (the teacher) are rebuilt from
    their own checkpoints and not repeated. Files: <folder>/state_step<step>.ckpt, the newest
    `keep_last` kept; rank 0 writes, every rank reads (shared output folder). The data position is enough to
    restore the data order because ArrayBatcher's order is a pure function of (seed, epoch), and the dropout masks:
    with `deterministic` on (src/cpu_kernels.DeterministicDropout) they are a function of (seed, op, step, input),
    and the Trainer sets the step before each batch. MindSpore's own Dropout (deterministic false) keeps an RNG
    state that is not saved, so there a resumed run with dropout > 0 is equivalent in distribution only.
    """

    PATTERN = re.compile(r"state_step(\d+)\.ckpt\Z")

    def __init__(self, step_cell, folder: str, every_steps: int, keep_last: int = 2, is_main: bool = True):
        if every_steps < 0 or keep_last < 1:
            raise UserError(f"checkpoint.every_steps {every_steps} / checkpoint.keep_last {keep_last}: expected "
                            f"every_steps >= 0 and keep_last >= 1")
        self.folder = folder
        self.every_steps = every_steps
        self.keep_last = keep_last
        self.is_main = is_main
        buffers = getattr(step_cell, "frozen_state_prefixes", ())   # frozen params that are state (EMA ranges)
        self.params = {n: p for n, p in step_cell.parameters_and_names()
                       if p.requires_grad or n.startswith("optimizer.") or (buffers and n.startswith(buffers))}

    def files(self) -> List[str]:
        found = []
        for path in glob.glob(os.path.join(self.folder, "state_step*.ckpt")):
            m = self.PATTERN.match(os.path.basename(path))
            if m:
                found.append((int(m.group(1)), path))
        return [p for _, p in sorted(found)]

    def latest(self) -> Optional[str]:
        files = self.files()
        return files[-1] if files else None

    def clear(self):
        """A fresh (not resumed) run drops the states of an earlier run in the same folder; a finished run drops
        its own (they exist for crash recovery; best/last checkpoints are the results)."""
        if self.is_main:
            for path in self.files():
                os.remove(path)
            if os.path.isdir(self.folder) and not os.listdir(self.folder):
                os.rmdir(self.folder)

    def save(self, meta: dict) -> Optional[str]:
        if not self.is_main:
            return None
        from src.checkpoint import save_checkpoint_atomic
        arrays = {n: p.asnumpy() for n, p in self.params.items()}
        bad = [n for n, a in arrays.items() if a.dtype.kind == "f" and not np.isfinite(a).all()]
        if bad:
            raise TrainingDiverged(f"non-finite values in {bad[0]} at step {meta['step']}: training state not "
                                   f"saved (the last good state stays in {self.folder})")
        path = os.path.join(self.folder, f"state_step{meta['step']:09d}.ckpt")
        save_checkpoint_atomic(arrays, path, extra={k: v for k, v in meta.items()})
        for old in self.files()[:-self.keep_last]:
            os.remove(old)
        return path

    def load(self, path: str) -> dict:
        """Parameters back into the live cells (strict: same model and optimizer); returns the metadata."""
        from src.checkpoint import check_state, read_ms_checkpoint
        tensors, meta = read_ms_checkpoint(path, with_extra=True)
        check_state({k: tuple(p.shape) for k, p in self.params.items()},
                    {k: tuple(v.shape) for k, v in tensors.items()}, source=f"training state '{path}'", strict=True)
        missing = [k for k in ("step", "epoch", "batch", "best", "best_step", "steps_per_epoch", "world")
                   if k not in meta]
        if missing:
            raise UserError(f"training state '{path}': metadata {missing} missing (not written by TrainState)")
        for k, p in self.params.items():
            p.set_data(ms.Tensor(tensors[k], p.dtype))
        return meta


class StateOf(nn.Cell):
    """What a TrainState saves when the train step is not one cell (width subsets: several TrainSteps sharing one
    optimizer) or wraps another (LAT): the model as `network.*`, the optimizer as `optimizer.*`. With
    `frozen_state=True` the model's frozen parameters are training state too (activation-quantizer ranges, the
    LAT Hessian: a forward pass updates them)."""

    def __init__(self, network: nn.Cell, optimizer: nn.Cell, frozen_state: bool = False):
        super().__init__(auto_prefix=False)          # parameter names stay those of the model
        self.network = network
        self.optimizer = optimizer
        self.frozen_state_prefixes = ("network.",) if frozen_state else ()


def train_state_from_config(cfg, step_cell, out_dir: str, is_main: bool):
    """(TrainState, resume) from the `checkpoint: {every_steps, keep_last}` and `resume` keys. States live in
    <out_dir>/state/."""
    state = TrainState(step_cell, os.path.join(out_dir, "state"), cfg.checkpoint.every_steps,
                       cfg.checkpoint.keep_last, is_main)
    return state, cfg.resume


class StepCounter:
    """Optimizer steps done in this run (resumed steps included). The Trainer advances it; objects that act by
    step (a width sampler, a per-width keep-best) read `value`."""

    def __init__(self, value: int = 0):
        self.value = value


@dataclass(frozen=True)
class Schedule:
    """How long a run trains: `epochs` epochs, capped at `max_steps` optimizer steps when > 0 (epochs 0: max_steps
    steps, over as many epochs as they need). `lr_value(step)` is the host-side learning rate for the log line."""
    epochs: int
    max_steps: int
    lr_value: Callable[[int], float]


@dataclass(frozen=True)
class Evaluation:
    """`fn()` -> metrics on the eval split(s); `metric` the key kept-best by; every `every` steps (0 = once per
    epoch) and after each epoch; `save_best(metrics)` is called on each improvement (rank 0)."""
    fn: Callable[[], Dict[str, float]]
    metric: str
    every: int = 0
    save_best: Optional[Callable[[dict], None]] = None


class Trainer:
    """Runs a TrainStep over a batcher, logs, evaluates and keeps the best checkpoint (rank 0 only).

    With `state` (a TrainState), saves the training state every `state.every_steps` steps and at each epoch end;
    `resume=True` continues from the newest state: skips the batches already consumed in that epoch, so the run
    ends where an uninterrupted run with the same seed ends. `skip_overflow_steps`: the step skips steps whose
    gradients overflow itself (loss scale > 1), so an inf gradient norm there is not a divergence.
    Test hook: EXIT_AFTER_STEP_ENV (crash simulation for the resume tests)."""

    def __init__(self, step_cell, batcher, *, inputs: Sequence[str], parts: Sequence[str], log: RunLog,
                 schedule: Schedule, log_every: int, evaluation: Optional[Evaluation] = None,
                 save_last: Optional[Callable[[], None]] = None, state: Optional[TrainState] = None,
                 resume: bool = False, is_main: bool = True, skip_overflow_steps: bool = False,
                 extra_state=None, counter: Optional[StepCounter] = None):
        self.step_cell = step_cell
        self.batcher = batcher
        self.inputs = list(inputs)
        self.parts = list(parts)
        self.log = log
        self.schedule = schedule
        self.log_every = max(1, log_every)
        self.evaluation = evaluation
        self.save_last = save_last
        self.state = state
        self.resume = resume
        self.is_main = is_main
        self.skip_overflow_steps = skip_overflow_steps
        self.extra_state = extra_state            # state_dict() -> JSON dict, load_state_dict(dict)
        self.counter = counter if counter is not None else StepCounter()
        self.world = getattr(batcher, "world", 1)
        self.best = -math.inf
        self.best_step = -1
        self.first_loss = None
        self.history: List[dict] = []
        self.exit_after_step = int(os.environ.get(EXIT_AFTER_STEP_ENV) or 0)     # test hook, see EXIT_AFTER_STEP_ENV

    @property
    def step(self) -> int:
        return self.counter.value

    @property
    def total_steps(self) -> int:
        return total_steps(len(self.batcher), self.schedule.epochs, self.schedule.max_steps)

    def _done(self) -> bool:
        return bool(self.schedule.max_steps) and self.step >= self.schedule.max_steps

    def fit(self):
        total, every = self.total_steps, self.state.every_steps if self.state is not None else 0
        eval_every = self.evaluation.every if self.evaluation is not None else 0
        start_epoch, skip = self._restore()
        self.t_start, self.first_step, self.seen = time.time(), self.step, 0
        self.window_t, self.window_seq = time.time(), 0
        last_epoch = epochs_to_run(len(self.batcher), self.schedule.epochs, self.schedule.max_steps)
        for epoch in range(start_epoch, last_epoch + 1):
            resuming_mid_epoch = epoch == start_epoch and skip > 0
            if self._done() and not resuming_mid_epoch:
                break                             # resumed from the state written after the last step
            for i, batch in enumerate(self.batcher.epoch(epoch)):
                if epoch == start_epoch and i < skip:
                    continue                      # consumed before the crash: same order, skip it
                if self._done():
                    break
                loss, parts, gnorm = self._train_batch(batch, epoch)
                if self.step % self.log_every == 0 or self.step == total:
                    self._log(epoch, loss, parts, gnorm, total)
                if eval_every and self.step % eval_every == 0:
                    self._eval(epoch)
                if every and self.step % every == 0 and i + 1 < len(self.batcher):   # epoch end: saved below
                    self._save_state(epoch, i + 1)
                if self.step == self.exit_after_step:
                    os._exit(137)                 # simulated crash (tests), see EXIT_AFTER_STEP_ENV
                if self._done():
                    break
            if not (eval_every and self.step % eval_every == 0):
                self._eval(epoch)
            if self.save_last is not None and self.is_main:
                self.save_last()
            self._save_state(epoch + 1, 0)
            if self._done():
                break
        if self.state is not None and self.state.every_steps:
            self.state.clear()
        elapsed = time.time() - self.t_start
        self.log.info(f"training done: {self.step} steps, {self.seen} sequences in {elapsed:.1f}s "
                      f"({self.seen / max(elapsed, 1e-9):.1f} seq/s)")
        return {"steps": self.step, "seconds": elapsed, "best": self.best, "best_step": self.best_step}

    def _train_batch(self, batch: dict, epoch: int):
        """One optimizer step; (loss, parts, grad norm) as Python values, or TrainingDiverged."""
        cpu_kernels.set_dropout_step(self.step)      # the masks of DeterministicDropout belong to this step
        loss, parts, gnorm = self.step_cell(*to_tensors(batch, self.inputs))
        self.counter.value += 1
        n = len(batch["input_ids"]) * self.world     # all workers' rows: seq/s and counts are global
        self.seen += n
        self.window_seq += n
        loss_v, gnorm_v = float(loss.asnumpy()), float(gnorm.asnumpy())
        what = None
        if not math.isfinite(loss_v):
            what = f"loss is {loss_v}"
        elif not (math.isfinite(gnorm_v) or self.skip_overflow_steps):
            what = f"gradient norm is {gnorm_v}"
        elif self.first_loss is None:
            self.first_loss = loss_v
        elif self.first_loss > 0 and loss_v > DIVERGENCE_FACTOR * self.first_loss:
            what = (f"loss is {loss_v:.6g}, more than {DIVERGENCE_FACTOR:g}x the first step's {self.first_loss:.6g} "
                    f"(diverging)")
        if what is not None:
            raise TrainingDiverged(f"{what} at epoch {epoch}, step {self.step}: stopped before any checkpoint is "
                                   f"written from this state (lower the learning rate or check the data; "
                                   f"--resume true restarts from the last good state)")
        return loss_v, parts, gnorm_v

    def _log(self, epoch: int, loss_v: float, parts, gnorm_v: float, total: int):
        now = time.time()
        rate = self.window_seq / max(now - self.window_t, 1e-9)
        eta = (total - self.step) * (now - self.t_start) / max(self.step - self.first_step, 1)
        part_vals = {k: float(v.asnumpy() if hasattr(v, "asnumpy") else v)    # a term not built is a plain 0.0
                     for k, v in zip(self.parts, parts)}
        lr = self.schedule.lr_value(self.step)
        self.log.info(train_line(epoch, self.step, loss_v, part_vals, lr, rate, eta))
        self.log.record("train", epoch=epoch, step=self.step, loss=loss_v, lr=lr, seq_per_s=rate,
                        grad_norm=gnorm_v, **part_vals)
        self.window_t, self.window_seq = time.time(), 0

    def _eval(self, epoch: int):
        if self.evaluation is None or not self.is_main:
            return
        t, step = time.time(), self.step
        metrics = self.evaluation.fn()
        value = metrics[self.evaluation.metric]
        improved = value > self.best
        if improved:
            self.best, self.best_step = value, step
            if self.evaluation.save_best is not None:
                self.evaluation.save_best(metrics)
        self.log.info(eval_line(epoch, step, metrics, self.evaluation.metric, self.best, self.best_step)
                      + f" | {time.time() - t:.1f}s")
        if improved:
            self.log.info(f"The best acc is {self.best:.6f}")
        self.log.record("eval", epoch=epoch, step=step, best=self.best, best_step=self.best_step, **metrics)
        self.history.append({"epoch": epoch, "step": step, **metrics})

    def _save_state(self, epoch: int, batch: int):
        if self.state is None or not self.state.every_steps:
            return
        meta = {"step": self.step, "epoch": epoch, "batch": batch, "best": float(self.best),
                "best_step": self.best_step, "steps_per_epoch": len(self.batcher), "world": self.world,
                "first_loss": float(self.first_loss) if self.first_loss is not None else -1.0}
        if self.extra_state is not None:
            meta["extra"] = json.dumps(self.extra_state.state_dict(), sort_keys=True)
        self.state.save(meta)

    def _restore(self):
        """(epoch, batches consumed in that epoch) from the newest state (the counter set to its step), or a
        fresh start."""
        if not self.resume:
            if self.state is not None:
                self.state.clear()
            return 1, 0
        path = self.state.latest() if self.state is not None else None
        if path is None:
            folder = self.state.folder if self.state is not None else "the output folder"
            raise UserError(f"resume: no training state (state_step*.ckpt) in {folder}; it is written every "
                            f"checkpoint.every_steps steps (must be > 0); rerun without --resume true")
        meta = self.state.load(path)
        if (meta["steps_per_epoch"], meta["world"]) != (len(self.batcher), self.world):
            raise UserError(f"resume: {path} was written with {meta['steps_per_epoch']} steps per epoch on "
                            f"{meta['world']} worker(s), this run has {len(self.batcher)} on {self.world}: resume "
                            f"with the same data, batch_size and worker count")
        self.best, self.best_step = float(meta["best"]), int(meta["best_step"])
        if float(meta.get("first_loss", -1.0)) >= 0:      # the divergence rule's reference (states written before
            self.first_loss = float(meta["first_loss"])   # it was recorded: the first step after the resume)
        if self.extra_state is not None:
            if "extra" not in meta:
                raise UserError(f"resume: {path} has no extra state (written by another kind of run)")
            self.extra_state.load_state_dict(json.loads(meta["extra"]))
        self.log.info(f"resumed from {path}: epoch {meta['epoch']}, {meta['batch']} of {len(self.batcher)} "
                      f"batches done, step {meta['step']}, best {self.best:.6f} (step {self.best_step})")
        self.counter.value = int(meta["step"])
        return int(meta["epoch"]), int(meta["batch"])
