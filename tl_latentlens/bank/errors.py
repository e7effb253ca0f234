"""Exceptions of the contextual text bank (all subclass :class:`ValueError`)."""

from __future__ import annotations

from tl_latentlens.hooks import UnknownHookError

__all__ = [
    "BankError",
    "BankExistsError",
    "BankFormatError",
    "BankLockedError",
    "BankModelMismatchError",
    "BankQueryError",
    "CorpusError",
    "CorruptBankError",
    "MissingHookError",
]


class BankError(ValueError):
    """Base class: a bank cannot be built, opened or searched as asked."""


class BankFormatError(BankError):
    """The directory is not a bank of a format version this code reads."""


class CorruptBankError(BankError):
    """A bank file is missing, truncated or its checksum does not match the manifest."""


class BankLockedError(BankError):
    """Another process is building a bank into the same directory (the message names it)."""


class BankModelMismatchError(BankError):
    """The bank was built with a different model (the message names the differing fields)."""


class BankExistsError(BankError):
    """``out_dir`` holds something else than the bank asked for and ``overwrite`` is False."""


class MissingHookError(BankError, UnknownHookError, KeyError):
    """A hook (or layer) the bank does not store; the message lists the stored ones."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class BankQueryError(BankError):
    """Query vectors of the wrong shape or dimension, non-finite values or a bad ``k``."""


class CorpusError(BankError):
    """The corpus source cannot be read (unknown kind, missing column, non-string item …)."""
