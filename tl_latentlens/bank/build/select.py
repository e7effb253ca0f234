"""Pass 1 of a bank build: tokenise the corpus and choose which token occurrences to store.

No model runs here. Two rules decide what is stored:

* **Prefix deduplication.** In a causal LM a token's residual depends only on its token-id
  prefix, so an identical prefix is stored once (its first occurrence in the corpus). Prefixes
  are identified by a chained 64-bit hash ``h_i = mix(h_{i-1} ^ mix(id_i + 1))`` (``mix`` is the
  SplitMix64 finaliser, a bijection, so two prefixes that differ only in their last token never
  collide), computed for a whole batch with vectorised numpy.
* **Per-token cap.** Of the distinct prefixes ending in a token id, at most ``max_per_token``
  are kept, a uniform sample drawn by reservoir sampling with random keys: each prefix gets the
  key ``mix(h ^ mix(seed))`` and each token keeps the prefixes with the smallest keys. Because a
  prefix's key is a function of the prefix, seeing a duplicate again never changes the sample,
  so no set of all seen prefixes is needed: memory is bounded by ``n_token_types *
  max_per_token`` entries, and the sample is deterministic for a seed.

The sentences (text and token ids) are spooled to disk so pass 2 need not read the corpus again.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from tl_latentlens.bank.format.config import BankConfig
from tl_latentlens.bank.errors import BankError, CorpusError
from tl_latentlens.bank.build.sources import CorpusStats
from tl_latentlens.bank.format.store import RaggedWriter
from tl_latentlens.models.base import VLM, TextBatch

__all__ = ["PrefixReservoir", "Selection", "prefix_hashes", "select_entries", "splitmix64"]

logger = logging.getLogger(__name__)

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_ROOT = np.uint64(0x243F6A8885A308D3)  # hash of the empty prefix
_MAX = np.iinfo(np.uint64).max


def splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser of a uint64 array (a bijection on 64-bit integers)."""
    with np.errstate(over="ignore"):
        z = np.asarray(x, dtype=np.uint64) + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def prefix_hashes(ids: np.ndarray) -> np.ndarray:
    """Chained prefix hash of every position of a right-padded ``[batch, pos]`` id array.

    Example:
        >>> h = prefix_hashes(np.array([[1, 5, 7], [1, 5, 8]]))
        >>> bool(h[0, 1] == h[1, 1]), bool(h[0, 2] == h[1, 2])
        (True, False)
    """
    ids = np.asarray(ids)
    token_mix = splitmix64(ids.astype(np.uint64) + np.uint64(1))
    out = np.empty(ids.shape, dtype=np.uint64)
    h = np.full(ids.shape[0], _ROOT, dtype=np.uint64)
    for i in range(ids.shape[1]):
        h = splitmix64(h ^ token_mix[:, i])
        out[:, i] = h
    return out


class PrefixReservoir:
    """Per-token-id bottom-k sample of distinct prefixes (see the module docstring).

    Args:
        max_per_token: Sample size per token id; ``None`` keeps every distinct prefix.
        seed: Seed of the sampling keys.
    """

    def __init__(self, max_per_token: int | None, seed: int) -> None:
        self.cap = max_per_token
        self._seed_key = splitmix64(np.array([seed % (1 << 64)], dtype=np.uint64))[0]
        self._threshold = np.full(1024, _MAX, dtype=np.uint64)
        self._heaps: dict[int, list[tuple[int, int]]] = {}
        self._kept: dict[int, tuple[int, int, int]] = {}

    def offer(
        self, sentence: np.ndarray, position: np.ndarray, token: np.ndarray, hashes: np.ndarray
    ) -> None:
        """Offer occurrences in corpus order (1-D arrays of equal length)."""
        if token.size == 0:
            return
        top = int(token.max())
        if top >= self._threshold.shape[0]:
            grown = np.full(max(top + 1, 2 * self._threshold.shape[0]), _MAX, dtype=np.uint64)
            grown[: self._threshold.shape[0]] = self._threshold
            self._threshold = grown
        keys = splitmix64(hashes ^ self._seed_key)
        cand = keys <= self._threshold[token]
        rows = zip(
            sentence[cand].tolist(),
            position[cand].tolist(),
            token[cand].tolist(),
            hashes[cand].tolist(),
            keys[cand].tolist(),
        )
        kept, heaps, cap = self._kept, self._heaps, self.cap
        for s, p, t, h, key in rows:
            if h in kept:
                continue  # a duplicate prefix: its first occurrence is (still) in the sample
            heap = heaps.setdefault(t, [])
            if cap is None or len(heap) < cap:
                heapq.heappush(heap, (-key, h))
                kept[h] = (s, p, t)
                if cap is not None and len(heap) == cap:
                    self._threshold[t] = -heap[0][0]
            elif key < -heap[0][0]:
                _, evicted = heapq.heapreplace(heap, (-key, h))
                del kept[evicted]
                kept[h] = (s, p, t)
                self._threshold[t] = -heap[0][0]

    @property
    def n_full(self) -> int:
        """Token ids whose sample reached the cap."""
        return 0 if self.cap is None else sum(len(h) == self.cap for h in self._heaps.values())

    def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(sentence, position, token_id)`` of the sample, sorted by (sentence, position)."""
        arr = np.array(list(self._kept.values()), dtype=np.int64).reshape(-1, 3)
        order = np.lexsort((arr[:, 1], arr[:, 0]))
        arr = arr[order]
        return arr[:, 0], arr[:, 1].astype(np.int32), arr[:, 2].astype(np.int32)


@dataclass(frozen=True)
class Selection:
    """Outcome of pass 1.

    Attributes:
        sentence: Corpus index of each chosen occurrence ``[n]`` (sorted with ``position``).
        position: Token position inside its sentence (BOS/special tokens counted) ``[n]``.
        token_id: ``[n]``.
        n_corpus_sentences: Non-empty sentences read.
        n_corpus_tokens: Storable (non-special) tokens read, duplicates included.
        n_full_types: Token ids whose sample hit ``max_per_token``.
        corpus_fingerprint: SHA-256 of the sentences (each length-prefixed UTF-8).
        n_truncated: Sentences longer than ``max_tokens`` (cut to it).
        skipped: Items the corpus reader skipped, by reason (see
            :class:`~tl_latentlens.bank.build.sources.CorpusStats`).
    """

    sentence: np.ndarray
    position: np.ndarray
    token_id: np.ndarray
    n_corpus_sentences: int
    n_corpus_tokens: int
    n_full_types: int
    corpus_fingerprint: str
    n_truncated: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def n_entries(self) -> int:
        """Chosen occurrences."""
        return int(self.sentence.shape[0])


def _chunks(sentences: Iterable[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for s in sentences:
        chunk.append(s)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def select_entries(
    vlm: VLM,
    sentences: Iterable[str],
    cfg: BankConfig,
    spool_dir: str | Path,
    chunk: int = 512,
    stats: CorpusStats | None = None,
) -> Selection:
    """Run pass 1: tokenise, spool, deduplicate and sample.

    Args:
        vlm: Model handle (only its tokenizer is used, via :meth:`VLM.tokenize_sentences`).
        sentences: The corpus, e.g. from :func:`~tl_latentlens.bank.build.sources.iter_corpus`.
        cfg: Build options (``max_tokens``, ``max_per_token``, ``seed``).
        spool_dir: Existing directory receiving ragged stores ``texts`` and ``ids``.
        chunk: Sentences tokenised at once.
        stats: The corpus reader's skip counts (copied into the selection once read).

    Raises:
        CorpusError: The corpus has no non-empty sentence.
        BankError: No token of the corpus can be stored (all special).
    """
    spool_dir = Path(spool_dir)
    texts = RaggedWriter(spool_dir, "texts", np.uint8)
    ids_out = RaggedWriter(spool_dir, "ids", np.int32)
    corpus_hash = hashlib.sha256()
    reservoir = PrefixReservoir(cfg.max_per_token, cfg.seed)
    n_sent = n_tok = n_cut = 0
    start = time.perf_counter()
    bar = tqdm(desc="bank: select tokens (pass 1)", unit="sent", disable=not cfg.progress)
    try:
        for batch_texts in _chunks(sentences, chunk):
            for text in batch_texts:
                data = text.encode("utf-8")
                corpus_hash.update(len(data).to_bytes(8, "little"))
                corpus_hash.update(data)
                texts.append(data)
            # one token more than kept tells which sentences were cut (counted, not silent)
            limit = None if cfg.max_tokens is None else cfg.max_tokens + 1
            tb = vlm.tokenize_sentences(batch_texts, limit, padding_side="right")
            if cfg.max_tokens is not None:
                n_cut += int((tb.attention_mask.sum(dim=1) > cfg.max_tokens).sum())
                tb = _cut(tb, cfg.max_tokens)
            ids = tb.input_ids.numpy()
            lengths = tb.attention_mask.sum(dim=1).numpy()
            for row, length in zip(ids, lengths):
                ids_out.append(row[:length])
            rows, cols = np.nonzero(tb.keep.numpy())
            reservoir.offer(rows + n_sent, cols, ids[rows, cols], prefix_hashes(ids)[rows, cols])
            n_sent += len(batch_texts)
            n_tok += int(rows.shape[0])
            bar.update(len(batch_texts))
            bar.set_postfix_str(f"{n_tok / max(time.perf_counter() - start, 1e-9):,.0f} tok/s")
    finally:
        bar.close()
        texts.close()
        ids_out.close()
    if n_sent == 0:
        raise CorpusError("the corpus has no non-empty sentence")
    sentence, position, token_id = reservoir.result()
    if sentence.shape[0] == 0:
        raise BankError(
            f"none of the {n_sent} sentences has a storable token (all are special tokens)"
        )
    skipped = dict(stats.skipped) if stats is not None else {}
    logger.info(
        "pass 1: %d sentences, %d storable tokens -> %d entries (%d token ids at the cap); "
        "%d sentences cut to max_tokens=%s; skipped: %s",
        n_sent,
        n_tok,
        sentence.shape[0],
        reservoir.n_full,
        n_cut,
        cfg.max_tokens,
        ", ".join(f"{v} {k}" for k, v in sorted(skipped.items())) or "none",
    )
    return Selection(
        sentence=sentence,
        position=position,
        token_id=token_id,
        n_corpus_sentences=n_sent,
        n_corpus_tokens=n_tok,
        n_full_types=reservoir.n_full,
        corpus_fingerprint=corpus_hash.hexdigest(),
        n_truncated=n_cut,
        skipped=skipped,
    )


def _cut(tb: TextBatch, max_tokens: int) -> TextBatch:
    """The first ``max_tokens`` positions of a right-padded batch."""
    return TextBatch(
        input_ids=tb.input_ids[:, :max_tokens],
        attention_mask=tb.attention_mask[:, :max_tokens],
        keep=tb.keep[:, :max_tokens],
        positions=tb.positions[:, :max_tokens],
    )
