"""Contextual text bank: residuals of corpus tokens (identical vectors once), searched exactly or
through calibrated hnswlib routes.

Example:
    >>> from tl_latentlens.bank import build_bank, Bank
    >>> bank = build_bank(vlm, "captions.txt", "banks/captions")
    >>> bank = Bank.open("banks/captions", vlm)
    >>> for n in bank.search(visual_vectors, k=5)[0]:
    ...     print(f"{n.similarity:.3f} L{n.layer} {n.highlighted()}")
"""

from tl_latentlens.bank.bank import Bank, Verify
from tl_latentlens.bank.build.distributed import DistributedBuildError
from tl_latentlens.bank.build.pipeline import build_bank
from tl_latentlens.bank.build.sources import describe_corpus, iter_corpus
from tl_latentlens.bank.errors import (
    BankError,
    BankExistsError,
    BankFormatError,
    BankLockedError,
    BankModelMismatchError,
    BankQueryError,
    CorpusError,
    CorruptBankError,
    MissingHookError,
)
from tl_latentlens.bank.format.config import FORMAT_VERSION, BankConfig, RetiredCodecError
from tl_latentlens.bank.format.manifest import BankManifest
from tl_latentlens.bank.hub.registry import (
    PretrainedIndex,
    PretrainedIndices,
    UnknownPretrainedError,
    pretrained,
)
from tl_latentlens.bank.results import Neighbour, SearchReport
from tl_latentlens.bank.search.calibrate import HookCalibration, ProvingSet, calibrate_bank
from tl_latentlens.bank.search.dispatch import RECALL_BAR, HookHits
from tl_latentlens.bank.search.routes import RouteParams

__all__ = [
    "FORMAT_VERSION",
    "Bank",
    "BankConfig",
    "BankError",
    "BankExistsError",
    "BankFormatError",
    "BankLockedError",
    "BankManifest",
    "BankModelMismatchError",
    "BankQueryError",
    "CorpusError",
    "CorruptBankError",
    "DistributedBuildError",
    "MissingHookError",
    "HookCalibration",
    "HookHits",
    "Neighbour",
    "PretrainedIndex",
    "PretrainedIndices",
    "ProvingSet",
    "RECALL_BAR",
    "RetiredCodecError",
    "RouteParams",
    "SearchReport",
    "UnknownPretrainedError",
    "Verify",
    "build_bank",
    "calibrate_bank",
    "describe_corpus",
    "iter_corpus",
    "pretrained",
]
