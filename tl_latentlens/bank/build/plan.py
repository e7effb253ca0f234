"""The fixed order in which pass 2 runs the model, and the entries table it produces.

Sentences holding chosen tokens are batched longest-first (by the position of their last chosen
token: nothing after it needs to run), so padding is small and the first batches show the peak
memory. Entries (and vector rows) are stored in exactly this order, batch after batch, so the
vectors of a batch are one contiguous row range.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tl_latentlens.bank.build.select import Selection

__all__ = ["ENTRY_DTYPE", "Plan", "make_plan"]

#: Row of the entries table: stored sentence id, token position, token id.
ENTRY_DTYPE = np.dtype([("sentence_id", "<i4"), ("position", "<i4"), ("token_id", "<i4")])


@dataclass(frozen=True)
class Plan:
    """Batches of pass 2 and the entries table.

    Attributes:
        corpus_index: Corpus index of each stored sentence, ascending ``[n_sentences]``
            (stored sentence ``i`` is corpus sentence ``corpus_index[i]``).
        entries: ``ENTRY_DTYPE`` rows in storage order ``[n_entries]``.
        batch_offsets: Entry offset of each batch, ``[n_batches + 1]``.
    """

    corpus_index: np.ndarray
    entries: np.ndarray
    batch_offsets: np.ndarray

    @property
    def n_batches(self) -> int:
        """Forward passes of pass 2."""
        return int(self.batch_offsets.shape[0]) - 1

    @property
    def n_entries(self) -> int:
        """Stored occurrences."""
        return int(self.entries.shape[0])

    def batch(self, b: int) -> np.ndarray:
        """Entries of batch ``b``."""
        return self.entries[self.batch_offsets[b] : self.batch_offsets[b + 1]]


def make_plan(selection: Selection, batch_size: int) -> Plan:
    """Order the chosen entries into batches of ``batch_size`` sentences.

    Example:
        >>> plan = make_plan(selection, batch_size=32)
        >>> plan.batch(0)["sentence_id"]   # the longest sentences first
    """
    corpus_index, sentence_id = np.unique(selection.sentence, return_inverse=True)
    sentence_id = sentence_id.reshape(-1)
    n_sent = corpus_index.shape[0]
    first = np.searchsorted(sentence_id, np.arange(n_sent), side="left")
    count = np.diff(np.append(first, sentence_id.shape[0]))
    needed = selection.position[first + count - 1].astype(np.int64) + 1
    order = np.argsort(-needed, kind="stable")
    count_o = count[order]
    out_start = np.concatenate([[0], np.cumsum(count_o)[:-1]])
    perm = np.arange(sentence_id.shape[0]) + np.repeat(first[order] - out_start, count_o)
    entries = np.empty(perm.shape[0], dtype=ENTRY_DTYPE)
    entries["sentence_id"] = sentence_id[perm]
    entries["position"] = selection.position[perm]
    entries["token_id"] = selection.token_id[perm]
    bounds = np.concatenate([[0], np.cumsum(count_o)])
    batch_offsets = bounds[np.append(np.arange(0, n_sent, batch_size), n_sent)].astype(np.int64)
    return Plan(corpus_index=corpus_index, entries=entries, batch_offsets=batch_offsets)
