"""Training loop shared by every method: batches in, TrainStep out, logs, evals, best checkpoint.

- `ArrayBatcher`: in-memory training batches, reshuffled every epoch with a seeded generator, optionally grouped
  by length into buckets (each bucket trims the padding columns to its length, so a short batch costs a short
  batch; each bucket is one compiled graph). Padding is masked, so trimming it does not change any output.
  Data parallel: the GLOBAL batches (batch_size x world rows) are formed identically on every rank and rank r
  takes rows r::world of each, so every rank runs the same number of steps with the same bucket length (no
  collective hang) and N workers at batch b see exactly what 1 worker sees at batch N*b.
- `TrainState`: atomic periodic checkpoints of the whole training state (trainable weights incl. fit_dense,
  optimizer moments and step, epoch and batch position, best metric) for `--resume`.
- `evaluate`: full dev set in fixed-size batches, tail padded and sliced off (never dropped, never shuffled).
- `Trainer.fit`: the loop, with the model-zoo log lines, eval every N steps and per epoch, and keep-best.
"""
import glob
import json
import math
import os
import re
import time
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import mindspore as ms
from mindspore import nn

from src.callbacks import RunLog, eval_line, train_line
from src.errors import UserError

SEQ_COLUMNS = ("input_ids", "input_mask", "segment_ids")
MODEL_INPUTS = ("input_ids", "segment_ids", "input_mask")


class ArrayBatcher:
    def __init__(self, arrays: Dict[str, np.ndarray], batch_size: int, shuffle: bool = True, seed: int = 0,
                 drop_remainder: bool = True, rank: int = 0, world: int = 1,
                 length_buckets: Optional[Sequence[int]] = None, batch_key: str = "train.batch_size"):
        self.arrays = arrays
        n = len(next(iter(arrays.values())))
        self.indices = np.arange(n)
        self.batch_size = batch_size            # per worker
        self.rank, self.world = rank, world
        self.global_batch = batch_size * world
        self.shuffle = shuffle
        self.seed = seed
        self.drop_remainder = drop_remainder
        if world > 1 and not drop_remainder:
            raise ValueError("data-parallel batches need drop_remainder=True (equal rows on every rank)")
        seq_len = arrays["input_ids"].shape[1]
        buckets = sorted(set(int(b) for b in (length_buckets or [seq_len]) if int(b) <= seq_len) | {seq_len})
        self.buckets = buckets
        lengths = arrays["input_mask"][self.indices].sum(axis=1)
        self.bucket_of = np.searchsorted(np.array(buckets), lengths, side="left")
        if n < self.global_batch and drop_remainder:
            raise UserError(f"training set has {n} rows, fewer than one batch ({batch_size} x {world} "
                            f"worker(s)): lower {batch_key} or add data")
        if drop_remainder and len(self) == 0:        # each length bucket drops its own remainder
            counts = [int((self.bucket_of == b).sum()) for b in range(len(buckets))]
            raise UserError(f"training set has {n} rows but no length bucket holds a full batch ({batch_size} x "
                            f"{world} worker(s)); rows per bucket {dict(zip(buckets, counts))}: lower {batch_key} "
                            f"or use fewer data.length_buckets")

    def __len__(self):
        total = 0
        for b in range(len(self.buckets)):
            k = int((self.bucket_of == b).sum())
            total += k // self.global_batch if self.drop_remainder else math.ceil(k / self.global_batch)
        return total

    def epoch(self, epoch: int):
        rng = np.random.default_rng([self.seed, epoch])
        batches = []
        for b, length in enumerate(self.buckets):
            idx = self.indices[self.bucket_of == b]
            if self.shuffle:
                idx = rng.permutation(idx)
            stop = (len(idx) // self.global_batch) * self.global_batch if self.drop_remainder else len(idx)
            for s in range(0, stop, self.global_batch):
                batches.append((length, idx[s:s + self.global_batch]))
        if self.shuffle:
            order = rng.permutation(len(batches))
            batches = [batches[i] for i in order]
        for length, idx in batches:
            idx = idx[self.rank::self.world]
            yield {k: (v[idx, :length] if k in SEQ_COLUMNS else v[idx]) for k, v in self.arrays.items()}


def to_tensors(batch: dict, names: Sequence[str]):
    out = []
    for n in names:
        v = batch[n]
        dtype = ms.float32 if v.dtype.kind == "f" else ms.int32
        out.append(ms.Tensor(v, dtype))
    return out


def predict(logits_fn, arrays: Dict[str, np.ndarray], batch_size: int,
            length_buckets: Optional[Sequence[int]] = None) -> np.ndarray:
    """Logits for every row in order: fixed batch shape, last batch padded with zero rows, then sliced off.

    With `length_buckets` (e.g. the training buckets) rows are grouped by length and each group runs with its
    padding columns trimmed to the bucket length (one compiled graph per bucket): same logits up to float
    rounding (padding is masked), at a fraction of the cost when most rows are short."""
    n = len(arrays["input_ids"])
    if length_buckets:
        seq_len = arrays["input_ids"].shape[1]
        buckets = np.array(sorted(set(int(b) for b in length_buckets if int(b) <= seq_len) | {seq_len}))
        which = np.searchsorted(buckets, arrays["input_mask"].sum(axis=1), side="left")
        out = None
        for b, length in enumerate(buckets):
            idx = np.flatnonzero(which == b)
            if len(idx):
                part = predict(logits_fn, {k: arrays[k][idx, :length] for k in MODEL_INPUTS}, batch_size)
                out = np.zeros((n,) + part.shape[1:], part.dtype) if out is None else out
                out[idx] = part
        return out
    outs = []
    for s in range(0, n, batch_size):
        batch = {k: arrays[k][s:s + batch_size] for k in MODEL_INPUTS}
        real = len(batch["input_ids"])
        if real < batch_size:
            batch = {k: np.concatenate([v, np.zeros((batch_size - real,) + v.shape[1:], v.dtype)])
                     for k, v in batch.items()}
            batch["input_mask"][real:, 0] = 1     # keep padded rows well-defined (one visible token)
        out = logits_fn(*to_tensors(batch, MODEL_INPUTS))
        outs.append(out.asnumpy()[:real])
    return np.concatenate(outs)


def evaluate(logits_fn, eval_sets: Dict[str, Dict[str, np.ndarray]], batch_size: int, task) -> Dict[str, float]:
    """Metrics on every eval split (MNLI: dev_matched and dev_mismatched, prefixed 'mm_' for the second)."""
    from src.metrics import compute_metrics
    results = {}
    for i, (split, arrays) in enumerate(eval_sets.items()):
        logits = predict(logits_fn, arrays, batch_size)
        m = compute_metrics(task, logits, arrays["label_ids"].reshape(-1))
        prefix = "" if i == 0 else "mm_" if split == "dev_mismatched" else f"{split}_"
        results.update({prefix + k: v for k, v in m.items()})
    return results


def teacher_baseline(teacher, eval_sets: Dict[str, Dict[str, np.ndarray]], batch_size: int, task, log) -> dict:
    """The fine-tuned teacher's own score before training, logged and recorded as `teacher_eval` (the reference
    of the ternary and width tables: tools/pack_ternary.py, tools/readme_results.py)."""
    from src.tinybert_model import LogitsOnly
    net = LogitsOnly(teacher)
    net.set_train(False)
    metrics = evaluate(net, eval_sets, batch_size, task)
    log.info("teacher fp32 " + ", ".join(f"{k} {v:.6f}" for k, v in metrics.items()))
    log.record("teacher_eval", **metrics)
    return metrics


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
    caller's extra state (Trainer `extra_state`, JSON). Other frozen parameters (the teacher) are rebuilt from
    their own checkpoints and not repeated. Files: <folder>/state_step<step>.ckpt, the newest
    `keep_last` kept; rank 0 writes, every rank reads (shared output folder). The data position is enough to
    restore the data order because ArrayBatcher's order is a pure function of (seed, epoch); MindSpore's
    dropout RNG is not restored, so with dropout > 0 a resumed run is equivalent in distribution only.
    """

    PATTERN = re.compile(r"state_step(\d+)\.ckpt\Z")

    def __init__(self, step_cell, folder: str, every_steps: int, keep_last: int = 2, is_main: bool = True,
                 buffers: Sequence[str] = ()):
        if every_steps < 0 or keep_last < 1:
            raise UserError(f"checkpoint.every_steps {every_steps} / checkpoint.keep_last {keep_last}: expected "
                            f"every_steps >= 0 and keep_last >= 1")
        self.folder = folder
        self.every_steps = every_steps
        self.keep_last = keep_last
        self.is_main = is_main
        buffers = tuple(buffers)                 # name prefixes whose frozen params are state too (EMA ranges)
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
    optimizer) or wraps another (LAT): the model as `network.*`, the optimizer as `optimizer.*`."""

    def __init__(self, network: nn.Cell, optimizer: nn.Cell):
        super().__init__(auto_prefix=False)          # parameter names stay those of the model
        self.network = network
        self.optimizer = optimizer


def train_state_from_config(cfg, step_cell, out_dir: str, is_main: bool, buffers: Sequence[str] = ()):
    """(TrainState, resume) from the `checkpoint: {every_steps, keep_last}` and `resume` keys (every config has
    them). States live in <out_dir>/state/."""
    ck = cfg.checkpoint
    every, keep, resume = ck.every_steps, ck.keep_last, cfg.resume
    for name, value, typ in (("checkpoint.every_steps", every, int), ("checkpoint.keep_last", keep, int),
                             ("resume", resume, bool)):
        if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
            raise UserError(f"{name}: expected {typ.__name__}, got {value!r}")
    return TrainState(step_cell, os.path.join(out_dir, "state"), every, keep, is_main, buffers), resume


class Trainer:
    """Runs a TrainStep over a batcher, logs, evaluates and keeps the best checkpoint (rank 0 only).
    With `state` (a TrainState), saves the training state every `state.every_steps` steps and at each epoch end;
    `resume=True` continues from the newest state: skips the batches already consumed in that epoch, so the run
    ends where an uninterrupted run with the same seed ends."""

    def __init__(self, step_cell, batcher, input_names: Sequence[str], part_names: Sequence[str], log: RunLog,
                 epochs: int, lr_value: Callable[[int], float], log_every: int = 10,
                 eval_fn: Optional[Callable[[], Dict[str, float]]] = None, main_metric: Optional[str] = None,
                 eval_every: int = 0, save_best: Optional[Callable[[dict], None]] = None,
                 save_last: Optional[Callable[[], None]] = None, is_main: bool = True,
                 max_steps: int = 0, state: Optional[TrainState] = None, resume: bool = False,
                 overflow_skips: bool = False,
                 extra_state: Optional[Tuple[Callable[[], dict], Callable[[dict], None]]] = None):
        self.step_cell = step_cell
        self.batcher = batcher
        self.input_names = list(input_names)
        self.part_names = list(part_names)
        self.log = log
        self.epochs = epochs
        self.lr_value = lr_value
        self.log_every = max(1, log_every)
        self.eval_fn = eval_fn
        self.main_metric = main_metric
        self.eval_every = eval_every
        self.save_best = save_best
        self.save_last = save_last
        self.is_main = is_main
        self.max_steps = max_steps
        self.state = state
        self.resume = resume
        self.overflow_skips = overflow_skips      # loss scale > 1: TrainStep skips overflowing steps itself
        self.extra_state = extra_state            # (get() -> JSON dict, set(dict)): e.g. per-width bests
        self.world = getattr(batcher, "world", 1)
        self.best = -math.inf
        self.best_step = -1
        self.step = 0                             # optimizer steps done (read by eval_fn / a step cell's sampler)
        self.history: List[dict] = []

    @property
    def total_steps(self) -> int:
        per_epoch = len(self.batcher)
        total = per_epoch * self.epochs
        return min(total, self.max_steps) if self.max_steps else total

    def _eval(self, epoch: int, step: int):
        if self.eval_fn is None or not self.is_main:
            return
        t = time.time()
        metrics = self.eval_fn()
        value = metrics[self.main_metric]
        improved = value > self.best
        if improved:
            self.best, self.best_step = value, step
            if self.save_best is not None:
                self.save_best(metrics)
        self.log.info(eval_line(epoch, step, metrics, self.main_metric, self.best, self.best_step)
                      + f" | {time.time() - t:.1f}s")
        if improved:
            self.log.info(f"The best acc is {self.best:.6f}")
        self.log.record("eval", epoch=epoch, step=step, best=self.best, best_step=self.best_step, **metrics)
        self.history.append({"epoch": epoch, "step": step, **metrics})

    def _save_state(self, epoch: int, batch: int, step: int):
        if self.state is None or not self.state.every_steps:
            return
        meta = {"step": step, "epoch": epoch, "batch": batch, "best": float(self.best),
                "best_step": self.best_step, "steps_per_epoch": len(self.batcher), "world": self.world}
        if self.extra_state is not None:
            meta["extra"] = json.dumps(self.extra_state[0](), sort_keys=True)
        self.state.save(meta)

    def _restore(self):
        """(step, epoch, batches consumed in that epoch) from the newest state, or a fresh start."""
        if not self.resume:
            if self.state is not None:
                self.state.clear()
            return 0, 1, 0
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
        if self.extra_state is not None:
            if "extra" not in meta:
                raise UserError(f"resume: {path} has no extra state (written by another kind of run)")
            self.extra_state[1](json.loads(meta["extra"]))
        self.log.info(f"resumed from {path}: epoch {meta['epoch']}, {meta['batch']} of {len(self.batcher)} "
                      f"batches done, step {meta['step']}, best {self.best:.6f} (step {self.best_step})")
        return int(meta["step"]), int(meta["epoch"]), int(meta["batch"])

    def fit(self):
        total = self.total_steps
        step, start_epoch, skip = self._restore()
        self.step = first_step = step
        t_start = time.time()
        seen = 0
        window_t, window_seq = time.time(), 0
        every = self.state.every_steps if self.state is not None else 0
        for epoch in range(start_epoch, self.epochs + 1):
            resuming_mid_epoch = epoch == start_epoch and skip > 0
            if self.max_steps and step >= self.max_steps and not resuming_mid_epoch:
                break                             # resumed from the state written after the last step
            for i, batch in enumerate(self.batcher.epoch(epoch)):
                if epoch == start_epoch and i < skip:
                    continue                      # consumed before the crash: same order, skip it
                if self.max_steps and step >= self.max_steps:
                    break
                loss, parts, gnorm = self.step_cell(*to_tensors(batch, self.input_names))
                self.step = step = step + 1
                n = len(batch["input_ids"]) * self.world     # all workers' rows: seq/s and counts are global
                seen += n
                window_seq += n
                loss_v = float(loss.asnumpy())
                gnorm_v = float(gnorm.asnumpy())
                if not math.isfinite(loss_v) or not (math.isfinite(gnorm_v) or self.overflow_skips):
                    what = f"loss is {loss_v}" if not math.isfinite(loss_v) else f"gradient norm is {gnorm_v}"
                    raise TrainingDiverged(f"{what} at epoch {epoch}, step {step}: stopped before any checkpoint "
                                           f"is written from this state (lower the learning rate or check the "
                                           f"data; --resume true restarts from the last good state)")
                if step % self.log_every == 0 or step == total:
                    now = time.time()
                    rate = window_seq / max(now - window_t, 1e-9)
                    eta = (total - step) * (now - t_start) / max(step - first_step, 1)
                    part_vals = {k: float(v.asnumpy()) for k, v in zip(self.part_names, parts)}
                    lr = self.lr_value(step)
                    self.log.info(train_line(epoch, step, loss_v, part_vals, lr, rate, eta))
                    self.log.record("train", epoch=epoch, step=step, loss=loss_v, lr=lr, seq_per_s=rate,
                                    grad_norm=gnorm_v, **part_vals)
                    window_t, window_seq = time.time(), 0
                if self.eval_every and step % self.eval_every == 0:
                    self._eval(epoch, step)
                if every and step % every == 0 and i + 1 < len(self.batcher):   # epoch end: saved below
                    self._save_state(epoch, i + 1, step)
                if self.max_steps and step >= self.max_steps:
                    break
            if not (self.eval_every and step % self.eval_every == 0):
                self._eval(epoch, step)
            if self.save_last is not None and self.is_main:
                self.save_last()
            self._save_state(epoch + 1, 0, step)
            if self.max_steps and step >= self.max_steps:
                break
        if self.state is not None and self.state.every_steps:
            self.state.clear()
        elapsed = time.time() - t_start
        self.log.info(f"training done: {step} steps, {seen} sequences in {elapsed:.1f}s "
                      f"({seen / max(elapsed, 1e-9):.1f} seq/s)")
        return {"steps": step, "seconds": elapsed, "best": self.best, "best_step": self.best_step}


class DatasetBatcher:
    """Streams batches from a MindSpore dataset (large general-distillation corpora) with the same interface
    as ArrayBatcher. One iterator spans all epochs so MindSpore reshuffles between epochs."""

    def __init__(self, dataset, epochs: int):
        self.dataset = dataset
        self.epochs = epochs
        self._it = None
        self._size = dataset.get_dataset_size()
        self._next_epoch = 1

    def __len__(self):
        return self._size

    def epoch(self, epoch: int):
        if self._it is None:
            self._it = self.dataset.create_dict_iterator(num_epochs=self.epochs, output_numpy=True)
        while self._next_epoch < epoch:          # resumed run: read past earlier epochs to get epoch's order
            for _ in range(self._size):
                next(self._it)
            self._next_epoch += 1
        self._next_epoch = epoch + 1
        for _ in range(self._size):
            yield next(self._it)
