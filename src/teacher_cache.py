"""Teacher-output cache for TD phase 1 (`td1.cache_teacher_outputs: true`).

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
"""
from typing import Dict

import numpy as np
import mindspore as ms

from src.distill import TrainStep
from src.errors import UserError

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


class CachingPhase1Step:
    """The Trainer's step for phase 1 with the cache. `live` is a TrainStep over TaskDistillPhase1Loss with
    return_targets=True; `cached` a TrainStep over CachedTeacherPhase1Loss on the same student, fit_dense and
    optimizer. Takes the batch with its `row_id` column, returns what a TrainStep returns. The training state and
    set_train go to the two TrainSteps; this object only picks one and routes tensors."""

    def __init__(self, live: TrainStep, cached: TrainStep, cache: Phase1TeacherCache):
        self.live, self.cached, self.cache = live, cached, cache
        self.live_batches = self.cached_batches = 0

    def __call__(self, input_ids, segment_ids, input_mask, label_ids, row_id):
        rows = row_id.asnumpy().astype(np.int64)
        length = int(input_ids.shape[1])
        hit = self.cache.get(rows, length)
        if hit is not None:
            self.cached_batches += 1
            return self.cached(input_ids, segment_ids, input_mask, label_ids, ms.Tensor(hit[0]), ms.Tensor(hit[1]))
        self.live_batches += 1
        loss, (att, rep, hidden, scores), norm = self.live(input_ids, segment_ids, input_mask, label_ids)
        self.cache.put(rows, length, hidden.asnumpy(), scores.asnumpy())
        return loss, (att, rep), norm

    def summary(self) -> str:
        return (f"phase-1 teacher outputs: {self.live_batches} batches ran the teacher, {self.cached_batches} read "
                f"it from the cache ({int(self.cache.filled.sum())} rows, {self.cache.nbytes / 1e6:.1f} MB)")


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
