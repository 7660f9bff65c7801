"""Training and evaluation batches from record arrays.

- One length-bucket rule (`length_buckets_of`, `bucket_of`): rows are grouped by their real length into buckets (each
  bucket trims the padding columns to its length, so a short batch costs a short batch; each bucket is one compiled
  graph). Padded positions are masked in the model and the losses.
- `ArrayBatcher`: in-memory training batches, reshuffled every epoch with a seeded generator. Data parallel: the
  GLOBAL batches (batch_size x world rows) are formed identically on every rank and rank r takes rows r::world of
  each, so every rank runs the same number of steps with the same bucket length (no collective hang) and N workers
  at batch b see exactly what 1 worker sees at batch N*b.
- `DatasetBatcher`: the same interface over a streamed MindSpore dataset (large corpora).
- `ShardBatcher`: the same interface over the shards of a GD corpus (src/corpus.py), streamed, each data-parallel rank
  reading its own rows, in an order that is a pure function of (seed, epoch, rank) (exact resume).
"""
import math
from typing import Dict, Optional, Sequence

import numpy as np
import mindspore as ms

from src.errors import UserError

SEQ_COLUMNS = ("input_ids", "input_mask", "segment_ids")
MODEL_INPUTS = ("input_ids", "segment_ids", "input_mask")
# the other columns with one value per position, by task kind (src/tasks.py): a token task's labels and teacher
# logits, a span task's start / end teacher logits (its label_ids are two positions, not per position)
POSITION_COLUMNS = {"token": ("label_ids", "teacher_logits"), "span": ("teacher_logits",)}


def position_columns(kind: str) -> tuple:
    return POSITION_COLUMNS[kind] if kind in POSITION_COLUMNS else ()


def pad_positions(a: np.ndarray, seq_len: int) -> np.ndarray:
    """Per-position outputs of a trimmed batch ([B, length, C] logits of a length bucket) zero-padded back to
    `seq_len` positions, so rows of every bucket fit one [N, seq_len, C] array; per-row outputs ([B, C]) as they
    are. The padded positions are padding of the input too: masked in the losses, dropped by the metrics."""
    if a.ndim < 3 or a.shape[1] == seq_len:
        return a
    return np.pad(a, [(0, 0), (0, seq_len - a.shape[1])] + [(0, 0)] * (a.ndim - 2))


def length_buckets_of(seq_len: int, buckets: Optional[Sequence[int]]) -> list:
    """The sorted bucket lengths in use: the configured ones up to `seq_len`, and `seq_len` itself (so every row
    has a bucket). None or [] = one bucket at `seq_len`."""
    return sorted(set(int(b) for b in (buckets or [seq_len]) if int(b) <= seq_len) | {seq_len})


def bucket_of(lengths: np.ndarray, buckets: Sequence[int]) -> np.ndarray:
    """Index into the sorted `buckets` of each row of real length `lengths` (input_mask.sum(axis=1)): the
    shortest bucket that holds it."""
    return np.searchsorted(np.asarray(buckets), lengths, side="left")


class ArrayBatcher:
    def __init__(self, arrays: Dict[str, np.ndarray], batch_size: int, shuffle: bool = True, seed: int = 0,
                 drop_remainder: bool = True, rank: int = 0, world: int = 1,
                 length_buckets: Optional[Sequence[int]] = None, batch_key: str = "train.batch_size",
                 kind: str = "classification"):
        self.arrays = arrays
        # columns trimmed to a bucket's length: the model inputs and the task kind's per-position columns
        self.seq_columns = SEQ_COLUMNS + position_columns(kind)
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
        buckets = length_buckets_of(seq_len, length_buckets)
        self.buckets = buckets
        self.bucket_of = bucket_of(arrays["input_mask"].sum(axis=1), buckets)
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
            yield {k: (v[idx, :length] if k in self.seq_columns else v[idx]) for k, v in self.arrays.items()}


def to_tensors(batch: dict, names: Sequence[str]):
    out = []
    for n in names:
        v = batch[n]
        dtype = ms.float32 if v.dtype.kind == "f" else ms.int32
        out.append(ms.Tensor(v, dtype))
    return out


class DatasetBatcher:
    """Streams batches from a MindSpore dataset (large general-distillation corpora) with the same interface
    as ArrayBatcher. One iterator spans all epochs so MindSpore reshuffles between epochs; it stops
    (StopIteration) at the end of each epoch and continues with the next one when iterated again."""

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
            for _ in self._it:
                pass
            self._next_epoch += 1
        self._next_epoch = epoch + 1
        yield from self._it                      # to this epoch's end


class ShardBatcher:
    """Streams training batches from record shards (a GD corpus of src/corpus.py; one file counts as one shard) with
    the ArrayBatcher interface, in an order that is a pure function of (seed, epoch, rank), so the Trainer's resume
    (it reads past the batches consumed before the crash) continues exactly where an uninterrupted run would be.

    Each epoch: the shards are put in a seeded random order (seed, epoch) and read as one stream of N rows; rank r of
    `world` takes rows [r * N // world, (r + 1) * N // world) of that stream, i.e. only the shards (and parts of a
    shard) that hold them, disjoint between ranks and covering the corpus but for N mod world rows. A shuffle buffer
    of `shuffle_buffer` rows (generator seeded by (seed, epoch, rank)) mixes rows across shard boundaries; batches of
    `batch_size` rows at full length; every rank runs the same number of steps (its rows // batch_size). Rows read
    count in `rows_read` (tests)."""

    def __init__(self, files: Sequence[str], rows: Sequence[int], schema_file: str, columns: Sequence[str],
                 batch_size: int, seq_length: int, dataset_type: str, seed: int = 0, rank: int = 0, world: int = 1,
                 shuffle_buffer: int = 10000, batch_key: str = "train.batch_size"):
        from src.dataset import read_schema, schema_columns
        self.files, self.rows = list(files), [int(n) for n in rows]
        self.schema = read_schema(schema_file)
        specs = schema_columns(self.schema)
        for c in columns:
            if c not in specs:
                raise UserError(f"schema {schema_file}: no column {c} (it has {', '.join(specs)})")
            if c in SEQ_COLUMNS and specs[c][1] != seq_length:
                raise UserError(f"{self.files[0]}: {c} has length {specs[c][1]}, config data.max_seq_length is "
                                f"{seq_length}")
        self.columns, self.batch_size, self.dataset_type = list(columns), batch_size, dataset_type
        self.seed, self.rank, self.world, self.shuffle_buffer = seed, rank, world, max(1, shuffle_buffer)
        self.total = sum(self.rows)
        self.per_rank = self.total // world
        if self.per_rank < batch_size:
            raise UserError(f"training set has {self.total} rows, fewer than one batch ({batch_size} x {world} "
                            f"worker(s)): lower {batch_key} or add data")
        self.steps = self.per_rank // batch_size
        self.rows_read = 0

    def __len__(self):
        return self.steps

    def segments(self, epoch: int):
        """(file, first row, stop row, rows in the file) of this rank's rows in `epoch`, in reading order."""
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.files))
        lo, hi = self.rank * self.per_rank, (self.rank + 1) * self.per_rank
        pos, out = 0, []
        for i in order:
            a, b = max(lo, pos), min(hi, pos + self.rows[i])
            if a < b:
                out.append((self.files[i], a - pos, b - pos, self.rows[i]))
            pos += self.rows[i]
        return out

    def _stream(self, epoch: int):
        from src.corpus import read_rows
        for path, start, stop, n in self.segments(epoch):
            for row in read_rows(path, self.schema, self.columns, self.dataset_type, start, stop, expected_rows=n):
                self.rows_read += 1
                yield row

    def epoch(self, epoch: int):
        rng = np.random.default_rng([self.seed, epoch, self.rank])
        size, buf, out, done = self.shuffle_buffer, [], [], 0

        def batch():
            return {c: np.stack([r[c] for r in out]) for c in self.columns}

        for row in self._stream(epoch):
            if len(buf) < size:
                buf.append(row)
                continue
            j = int(rng.integers(size))
            out.append(buf[j])
            buf[j] = row
            if len(out) == self.batch_size:
                yield batch()
                out, done = [], done + 1
                if done == self.steps:
                    return
        for j in rng.permutation(len(buf)):
            out.append(buf[j])
            if len(out) == self.batch_size:
                yield batch()
                out, done = [], done + 1
                if done == self.steps:
                    return
