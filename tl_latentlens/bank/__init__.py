"""Contextual text bank: residuals of corpus tokens, deduplicated by prefix, searchable by HNSW.

Example:
    >>> from tl_latentlens.bank import build_bank, Bank
    >>> bank = build_bank(vlm, "captions.txt", "banks/captions")
    >>> bank = Bank.open("banks/captions", vlm)
    >>> for n in bank.search(visual_vectors, k=5)[0]:
    ...     print(f"{n.similarity:.3f} L{n.layer} {n.highlighted()}")
"""

from tl_latentlens.bank.bank import Bank, Verify
from tl_latentlens.bank.build import build_bank
from tl_latentlens.bank.config import FORMAT_VERSION, BankConfig
from tl_latentlens.bank.errors import (
    BankError,
    BankExistsError,
    BankFormatError,
    BankModelMismatchError,
    BankQueryError,
    CorpusError,
    CorruptBankError,
    MissingHookError,
)
from tl_latentlens.bank.results import Neighbour
from tl_latentlens.bank.sources import describe_corpus, iter_corpus

__all__ = [
    "FORMAT_VERSION",
    "Bank",
    "BankConfig",
    "BankError",
    "BankExistsError",
    "BankFormatError",
    "BankModelMismatchError",
    "BankQueryError",
    "CorpusError",
    "CorruptBankError",
    "MissingHookError",
    "Neighbour",
    "Verify",
    "build_bank",
    "describe_corpus",
    "iter_corpus",
]
