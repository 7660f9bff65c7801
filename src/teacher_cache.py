"""Teacher outputs of task distillation computed once and reused: the phase-1 tensors across epochs
(`td1.cache_teacher_outputs: true`) and the teacher logits from phase 1 into phase 2 (`td2.cache_teacher_logits`).

Phase 1 distils the teacher's attention scores and hidden states of the mapped layers. The teacher is frozen and
runs in inference mode, so for a training row that is not augmented those tensors are the same in every epoch.
With the cache, a batch that has a row never seen before runs the normal live step (teacher and student in one
graph, where MindSpore overlaps the two forwards), which also hands back the teacher tensors of the layer map; they
are kept per row. A batch whose rows are all kept runs `CachedTeacherPhase1Loss`: a student forward/backward only.
Both steps share one optimizer, so the run is the live run with some teacher forwards skipped: same losses and
weights (tests/test_tinybert_pipeline.py), and benchmarks/bench_td_throughput.py measures what it saves.

The first epoch is all live (it fills the cache at no extra teacher cost). Batches reshuffle every epoch and each
bucket drops a different remainder, so in the second epoch a batch can still hold a row that was dropped in the
first (on MR ~1% of the rows, so ~70% of the batches are read from the cache); from the third epoch on nearly all.
Rows are stored at their length-bucket width (ArrayBatcher always gives a row the same bucket), one array pair per
bucket: hidden [n_hidden, rows, L, D] and scores [n_att, rows, H, L, L], float32, in RAM. Not for augmented data
(the rows change between epochs) or data parallel runs (each worker sees other rows every epoch).

Phase 2 needs only the teacher's logits, which the live phase-1 step computes anyway: phase 1 keeps them per row
(with the training state too, so a resumed phase 1 still has the rows seen before the crash) and writes
`teacher_logits.npz` beside its student; phase 2 takes the rows found there (after recomputing a sample of them: a
file from another teacher or other data is not used) and runs the teacher only over the rest. A phase 1 of at least
one epoch leaves phase 2 with nothing to compute.
"""
import base64
import os
from typing import Dict, Optional

import numpy as np
import mindspore as ms

from src.train_step import TrainStep
from src.errors import UserError
from src.fileio import atomic_write
from src.batching import MODEL_INPUTS, pad_positions
from src.evaluation import predict

ROW_ID = "row_id"           # column added to the training arrays: the row's index, so the cache can find it


class Phase1TeacherCache:
    """Per-row store of the phase-1 teacher tensors, one array pair per bucket width, allocated on first use."""

    def __init__(self, buckets, bucket_of: np.ndarray, n_hidden: int, n_att: int, hidden_size: int, heads: int):
        self.n_hidden, self.n_att, self.hidden_size, self.heads = n_hidden, n_att, hidden_size, heads
        self.rows_in = {int(length): int((bucket_of == b).sum()) for b, length in enumerate(buckets)}
        self.slot = np.zeros(len(bucket_of), np.int64)          # row -> position within its bucket's arrays
        for b in range(len(buckets)):
            rows = np.flatnonzero(bucket_of == b)
            self.slot[rows] = np.arange(len(rows))
        self.filled = np.zeros(len(bucket_of), bool)
        self.store: Dict[int, tuple] = {}        # bucket width -> (hidden, scores)

    def max_bytes(self) -> int:
        """Bytes held once every row has been seen."""
        return sum(n * (self.n_hidden * L * self.hidden_size + self.n_att * self.heads * L * L) * 4
                   for L, n in self.rows_in.items())

    @property
    def nbytes(self) -> int:
        return sum(h.nbytes + s.nbytes for h, s in self.store.values())

    def get(self, rows: np.ndarray, length: int):
        """(hidden, scores) for these rows in batch order, or None when one of them was never stored."""
        if not self.filled[rows].all():
            return None
        hidden, scores = self.store[length]
        slots = self.slot[rows]
        return hidden[:, slots], scores[:, slots]

    def put(self, rows: np.ndarray, length: int, hidden: np.ndarray, scores: np.ndarray):
        if length not in self.store:
            n = self.rows_in[length]
            self.store[length] = (np.empty((self.n_hidden, n, length, self.hidden_size), np.float32),
                                  np.empty((self.n_att, n, self.heads, length, length), np.float32))
        h, s = self.store[length]
        slots = self.slot[rows]
        h[:, slots] = hidden
        s[:, slots] = scores
        self.filled[rows] = True


class TeacherLogits:
    """The teacher logits of the training rows that went through a live phase-1 step, by row. TD phase 1 writes
    them beside its student (`teacher_logits.npz`); phase 2 (`td2.cache_teacher_logits`) takes them instead of
    running the teacher over those rows again (`logits_for_phase2`)."""

    FILE = "teacher_logits.npz"

    def __init__(self, n_rows: int, seq_length: int):
        self.logits = None
        self.seen = np.zeros(n_rows, bool)
        self.seq_length = seq_length            # per-position logits (token tasks) are kept at the full length

    def put(self, rows: np.ndarray, logits: np.ndarray):
        logits = pad_positions(logits, self.seq_length)
        if self.logits is None:
            self.logits = np.zeros((len(self.seen),) + logits.shape[1:], np.float32)
        self.logits[rows] = logits
        self.seen[rows] = True

    def state_dict(self) -> dict:
        """The logits kept so far, for the training state (Trainer `extra_state`): a resumed phase 1 writes the
        rows seen before the crash too. float32 bytes and the seen flags, base64 (exact, JSON-safe)."""
        if self.logits is None:
            return {"rows": len(self.seen)}
        return {"rows": len(self.seen), "shape": list(self.logits.shape),
                "logits": base64.b64encode(self.logits.astype("<f4").tobytes()).decode("ascii"),
                "seen": base64.b64encode(np.packbits(self.seen).tobytes()).decode("ascii")}

    def load_state_dict(self, state: dict):
        if state["rows"] != len(self.seen):
            raise UserError(f"resume: the training state keeps teacher logits of {state['rows']} rows, this split "
                            f"has {len(self.seen)}")
        if "logits" in state:
            self.logits = np.frombuffer(base64.b64decode(state["logits"]), "<f4").reshape(state["shape"]).copy()
            self.seen = np.unpackbits(np.frombuffer(base64.b64decode(state["seen"]), np.uint8),
                                      count=len(self.seen)).astype(bool)

    def save(self, folder: str) -> str:
        """Atomic write (temp name, then rename); nothing is written when no row was seen."""
        path = os.path.join(folder, self.FILE)
        if self.logits is None:
            return path
        atomic_write(path, lambda f: np.savez(f, logits=self.logits, seen=self.seen), "wb")
        return path


class Phase1Step:
    """The Trainer's step for TD phase 1: takes the batch with its `row_id` column, returns what a TrainStep
    returns, and keeps the teacher logits of every live batch (`logits`). `live` is a TrainStep over
    TaskDistillPhase1Loss. With a cache (`cached`: a TrainStep over CachedTeacherPhase1Loss on the same student,
    fit_dense and optimizer; `live` built with return_targets=True) a batch whose rows are all kept runs `cached`,
    the others run `live` and are kept. The training state and set_train go to the TrainSteps; this object only
    picks one and routes tensors."""

    def __init__(self, live: TrainStep, logits: TeacherLogits, cached: Optional[TrainStep] = None,
                 cache: Optional[Phase1TeacherCache] = None):
        self.live, self.logits, self.cached, self.cache = live, logits, cached, cache
        self.live_batches = self.cached_batches = 0

    def __call__(self, input_ids, segment_ids, input_mask, label_ids, row_id):
        rows = row_id.asnumpy().astype(np.int64)
        length = int(input_ids.shape[1])
        hit = self.cache.get(rows, length) if self.cache is not None else None
        if hit is not None:
            self.cached_batches += 1
            return self.cached(input_ids, segment_ids, input_mask, label_ids, ms.Tensor(hit[0]), ms.Tensor(hit[1]))
        self.live_batches += 1
        loss, parts, norm = self.live(input_ids, segment_ids, input_mask, label_ids)
        self.logits.put(rows, parts[2].asnumpy())
        if self.cache is not None:
            self.cache.put(rows, length, parts[3].asnumpy(), parts[4].asnumpy())
        return loss, parts[:2], norm

    def summary(self) -> str:
        return (f"phase-1 teacher outputs: {self.live_batches} batches ran the teacher, {self.cached_batches} read "
                f"it from the cache ({int(self.cache.filled.sum())} rows, {self.cache.nbytes / 1e6:.1f} MB)")


def logits_for_phase2(net, arrays: Dict[str, np.ndarray], batch_size: int, buckets, td1_dir: str, log,
                      check_rows: int = 64, tol: float = 1e-4) -> np.ndarray:
    """Teacher logits of every training row for TD phase 2 (`net`: LogitsOnly(teacher), inference mode): the rows
    TD phase 1 kept in <td1_dir>/teacher_logits.npz are taken from there once `check_rows` of them, recomputed
    here, agree to `tol` (same teacher and same records: anything else, e.g. a re-trained teacher or other data,
    fails the check and every row is recomputed); the other rows are computed, bucket by bucket."""
    n = len(arrays["input_ids"])
    path = os.path.join(td1_dir, TeacherLogits.FILE)
    logits, seen, note = None, np.zeros(n, bool), f"no {path}"
    if os.path.exists(path):
        with np.load(path) as f:
            kept, kept_seen = f["logits"], f["seen"]
        if kept.shape[0] != n or kept_seen.shape != (n,):
            note = f"{path} holds {kept.shape[0]} rows, this split {n}: not used"
        else:
            idx = np.flatnonzero(kept_seen)
            probe = idx[np.linspace(0, len(idx) - 1, min(check_rows, len(idx))).astype(int)] if len(idx) else idx
            sub = {k: arrays[k][probe] for k in MODEL_INPUTS}
            diff = float(np.abs(predict(net, sub, batch_size, buckets) - kept[probe]).max()) if len(probe) else 0.0
            if diff <= tol:
                logits, seen = kept.astype(np.float32), kept_seen
                note = f"{int(seen.sum())} rows from {path} (checked on {len(probe)} rows, max diff {diff:.1e})"
            else:
                note = (f"{path} does not match this teacher and data (max diff {diff:.1e} on {len(probe)} rows): "
                        f"not used")
    missing = np.flatnonzero(~seen)
    if len(missing):
        part = predict(net, {k: arrays[k][missing] for k in MODEL_INPUTS}, batch_size, buckets)
        logits = np.zeros((n,) + part.shape[1:], np.float32) if logits is None else logits
        logits[missing] = part
    log.info(f"teacher logits for phase 2: {note}; {len(missing)} rows computed")
    return logits


def cached_step(live: TrainStep, cached_loss) -> TrainStep:
    """The TrainStep of `cached_loss` on `live`'s optimizer, clipping and loss scale (one optimizer, two graphs)."""
    step = TrainStep(cached_loss, live.optimizer, live.clip_norm, live.clip_mode, live.loss_scale,
                     data_parallel=live.reducer is not None)
    step.set_train(True)
    return step


def check_cache_size(need: int, max_gb: float, rows: int):
    if need > max_gb * 1e9:
        raise UserError(f"td1.cache_teacher_outputs: the phase-1 teacher cache for {rows} training rows needs "
                        f"{need / 1e6:.1f} MB, more than td1.teacher_cache_max_gb {max_gb} GB: raise the limit or set "
                        f"td1.cache_teacher_outputs false")
