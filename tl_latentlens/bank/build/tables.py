"""Write the hook-independent tables of a bank being built: sentences, tokens, entries."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from tl_latentlens.bank.format import manifest as mf
from tl_latentlens.bank.errors import BankError
from tl_latentlens.bank.build.plan import Plan
from tl_latentlens.bank.format.store import RaggedReader, RaggedWriter, atomic_save_npy

__all__ = ["write_tables", "token_strings"]

logger = logging.getLogger(__name__)


def token_strings(tokenizer: Any, n: int) -> list[str]:
    """``tokenizer.decode([i])`` for ids ``0 … n-1`` (the raw token where decoding fails)."""
    out = []
    for i in range(n):
        try:
            out.append(tokenizer.decode([i]))
        except Exception:  # noqa: BLE001 - some tokenizers cannot decode unused ids
            out.append(str(tokenizer.convert_ids_to_tokens(i)))
    return out


def write_tables(stage: Path, plan: Plan, spool: Path, tokenizer: Any) -> int:
    """Write ``entries.npy``, ``sentences/*`` and ``tokens/*`` into ``stage``.

    Sentences are copied from the pass-1 spool (corpus order, only those holding entries).

    Returns:
        The vocabulary size of the token-string table.

    Raises:
        BankError: A planned token does not match the spooled token ids (internal error).
    """
    texts_in = RaggedReader(spool, "texts", np.uint8)
    ids_in = RaggedReader(spool, "ids", np.int32)
    (stage / mf.SENTENCES).mkdir(parents=True, exist_ok=True)
    (stage / mf.TOKENS).mkdir(parents=True, exist_ok=True)
    texts = RaggedWriter(stage / mf.SENTENCES, "text", np.uint8)
    ids = RaggedWriter(stage / mf.SENTENCES, "ids", np.int32)
    max_id = 0
    for c in plan.corpus_index.tolist():
        texts.append(texts_in[c].tobytes())
        row = ids_in[c]
        ids.append(row)
        if row.size:
            max_id = max(max_id, int(row.max()))
    texts.close()
    ids.close()
    atomic_save_npy(stage / mf.SENTENCES / "corpus_index.npy", plan.corpus_index.astype("<i8"))
    atomic_save_npy(stage / mf.ENTRIES, plan.entries)

    stored = RaggedReader(stage / mf.SENTENCES, "ids", np.int32)
    flat = np.asarray(stored.offsets)[plan.entries["sentence_id"]] + plan.entries["position"]
    if not np.array_equal(np.asarray(stored.data)[flat], plan.entries["token_id"]):
        raise BankError("internal error: planned token ids do not match the spooled sentences")

    vocab = max(len(tokenizer), max_id + 1)
    strings = RaggedWriter(stage / mf.TOKENS, "strings", np.uint8)
    for s in token_strings(tokenizer, vocab):
        strings.append(s.encode("utf-8"))
    strings.close()
    special = np.zeros(vocab, dtype=bool)
    special[[i for i in tokenizer.all_special_ids if 0 <= i < vocab]] = True
    atomic_save_npy(stage / mf.TOKENS / "special.npy", special)
    logger.info(
        "tables: %d sentences, %d entries, %d token strings", len(stored), plan.n_entries, vocab
    )
    return vocab
