"""Training loop shared by every method: batches in, TrainStep out, logs, evals, best checkpoint.

- `ArrayBatcher`: in-memory training batches, reshuffled every epoch with a seeded generator, sharded by
  rank, optionally grouped by length into buckets (each bucket trims the padding columns to its length, so a
  short batch costs a short batch; each bucket is one compiled graph). Padding is masked, so trimming it does
  not change any output.
- `evaluate`: full dev set in fixed-size batches, tail padded and sliced off (never dropped, never shuffled).
- `Trainer.fit`: the loop, with the model-zoo log lines, eval every N steps and per epoch, and keep-best.
"""
import math
import time
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np
import mindspore as ms

from src.callbacks import RunLog, eval_line, train_line
from src.errors import UserError

SEQ_COLUMNS = ("input_ids", "input_mask", "segment_ids")
MODEL_INPUTS = ("input_ids", "segment_ids", "input_mask")


class ArrayBatcher:
    def __init__(self, arrays: Dict[str, np.ndarray], batch_size: int, shuffle: bool = True, seed: int = 0,
                 drop_remainder: bool = True, rank: int = 0, world: int = 1,
                 length_buckets: Optional[Sequence[int]] = None):
        self.arrays = arrays
        n = len(next(iter(arrays.values())))
        self.indices = np.arange(n)[rank::world]
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_remainder = drop_remainder
        seq_len = arrays["input_ids"].shape[1]
        buckets = sorted(set(int(b) for b in (length_buckets or [seq_len]) if int(b) <= seq_len) | {seq_len})
        self.buckets = buckets
        lengths = arrays["input_mask"][self.indices].sum(axis=1)
        self.bucket_of = np.searchsorted(np.array(buckets), lengths, side="left")
        if len(self.indices) < batch_size and drop_remainder:
            raise UserError(f"training set has {len(self.indices)} rows per worker, fewer than one batch "
                            f"({batch_size}): lower train batch_size or add data")

    def __len__(self):
        total = 0
        for b in range(len(self.buckets)):
            k = int((self.bucket_of == b).sum())
            total += k // self.batch_size if self.drop_remainder else math.ceil(k / self.batch_size)
        return total

    def epoch(self, epoch: int):
        rng = np.random.default_rng([self.seed, epoch])
        batches = []
        for b, length in enumerate(self.buckets):
            idx = self.indices[self.bucket_of == b]
            if self.shuffle:
                idx = rng.permutation(idx)
            stop = (len(idx) // self.batch_size) * self.batch_size if self.drop_remainder else len(idx)
            for s in range(0, stop, self.batch_size):
                batches.append((length, idx[s:s + self.batch_size]))
        if self.shuffle:
            order = rng.permutation(len(batches))
            batches = [batches[i] for i in order]
        for length, idx in batches:
            yield {k: (v[idx, :length] if k in SEQ_COLUMNS else v[idx]) for k, v in self.arrays.items()}


def to_tensors(batch: dict, names: Sequence[str]):
    out = []
    for n in names:
        v = batch[n]
        dtype = ms.float32 if v.dtype.kind == "f" else ms.int32
        out.append(ms.Tensor(v, dtype))
    return out


def predict(logits_fn, arrays: Dict[str, np.ndarray], batch_size: int) -> np.ndarray:
    """Logits for every row in order: fixed batch shape, last batch padded with zero rows, then sliced off."""
    n = len(arrays["input_ids"])
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


class Trainer:
    """Runs a TrainStep over a batcher, logs, evaluates and keeps the best checkpoint (rank 0 only)."""

    def __init__(self, step_cell, batcher, input_names: Sequence[str], part_names: Sequence[str], log: RunLog,
                 epochs: int, lr_value: Callable[[int], float], log_every: int = 10,
                 eval_fn: Optional[Callable[[], Dict[str, float]]] = None, main_metric: Optional[str] = None,
                 eval_every: int = 0, save_best: Optional[Callable[[dict], None]] = None,
                 save_last: Optional[Callable[[], None]] = None, is_main: bool = True,
                 max_steps: int = 0):
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
        self.best = -math.inf
        self.best_step = -1
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

    def fit(self):
        total = self.total_steps
        step = 0
        t_start = time.time()
        seen = 0
        window_t, window_seq = time.time(), 0
        for epoch in range(1, self.epochs + 1):
            for batch in self.batcher.epoch(epoch):
                loss, parts, gnorm = self.step_cell(*to_tensors(batch, self.input_names))
                step += 1
                n = len(batch["input_ids"])
                seen += n
                window_seq += n
                loss_v = float(loss.asnumpy())
                if not math.isfinite(loss_v):
                    raise FloatingPointError(f"loss is {loss_v} at epoch {epoch}, step {step}: stopping before "
                                             f"any checkpoint is written from this state (lower the learning "
                                             f"rate or check the data)")
                if step % self.log_every == 0 or step == total:
                    now = time.time()
                    rate = window_seq / max(now - window_t, 1e-9)
                    eta = (total - step) * (now - t_start) / step
                    part_vals = {k: float(v.asnumpy()) for k, v in zip(self.part_names, parts)}
                    lr = self.lr_value(step)
                    self.log.info(train_line(epoch, step, loss_v, part_vals, lr, rate, eta))
                    self.log.record("train", epoch=epoch, step=step, loss=loss_v, lr=lr, seq_per_s=rate,
                                    grad_norm=float(gnorm.asnumpy()), **part_vals)
                    window_t, window_seq = time.time(), 0
                if self.eval_every and step % self.eval_every == 0:
                    self._eval(epoch, step)
                if self.max_steps and step >= self.max_steps:
                    break
            if not (self.eval_every and step % self.eval_every == 0):
                self._eval(epoch, step)
            if self.save_last is not None and self.is_main:
                self.save_last()
            if self.max_steps and step >= self.max_steps:
                break
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

    def __len__(self):
        return self._size

    def epoch(self, epoch: int):
        if self._it is None:
            self._it = self.dataset.create_dict_iterator(num_epochs=self.epochs, output_numpy=True)
        for _ in range(self._size):
            yield next(self._it)
