"""Corpus sources: text files, JSONL/CSV tables, Hugging Face datasets, iterables of strings.

Every source is read lazily, one sentence at a time, and empty or whitespace-only sentences are
skipped (sentence ``i`` of a corpus is the ``i``-th non-empty one).

Files are read as UTF-8 (a leading byte-order mark is dropped) and split into lines at ``\n``
only (``\r\n`` ends a line too); a lone ``\r`` inside a line is whitespace, not a line break.
What is skipped (empty sentences, ``null`` texts, CSV rows without the text column) is counted
in a :class:`CorpusStats`; undecodable bytes and truncated ``.gz`` files are errors naming the
file and line.
"""

from __future__ import annotations

import csv
import gzip
import json
import logging
import os
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tl_latentlens.bank.errors import CorpusError

__all__ = ["CorpusSource", "CorpusStats", "describe_corpus", "iter_corpus"]

logger = logging.getLogger(__name__)

#: Anything :func:`iter_corpus` reads.
CorpusSource = str | os.PathLike | Iterable[str] | Any

_TEXT = (".txt",)
_JSONL = (".jsonl", ".ndjson")
_CSV = (".csv", ".tsv")


def _kind_of(corpus: Any) -> str:
    if isinstance(corpus, (str, os.PathLike)):
        path = Path(corpus)
        if path.is_dir():
            return "hf_disk"
        if path.is_file():
            suffix = _suffix(path)
            if suffix in _TEXT:
                return "txt"
            if suffix in _JSONL:
                return "jsonl"
            if suffix in _CSV:
                return "csv"
            raise CorpusError(
                f"corpus file {str(path)!r} has an unknown extension {suffix!r}; use .txt (one "
                "sentence per line), .jsonl or .csv/.tsv (optionally .gz-compressed)"
            )
        looks_like_file = _suffix(path) in _TEXT + _JSONL + _CSV
        if (
            isinstance(corpus, str)
            and not looks_like_file
            and not corpus.startswith((".", "/", "~"))
        ):
            return "hf_hub"
        raise CorpusError(f"corpus path {str(path)!r} does not exist")
    if isinstance(corpus, (bytes, bytearray)):
        raise CorpusError("corpus must be text, not bytes")
    if type(corpus).__module__.split(".")[0] == "datasets":
        return "hf_dataset"
    if isinstance(corpus, Iterable):
        return "iterable"
    raise CorpusError(f"cannot read a corpus from a {type(corpus).__name__}")


def _suffix(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


@dataclass
class CorpusStats:
    """What :func:`iter_corpus` skipped, by reason (filled in while it is iterated).

    Reasons: ``"empty"`` (empty or whitespace-only), ``"null"`` (a ``null``/``None`` text),
    ``"short_row"`` (a CSV row with fewer fields than the header, so no text).

    Example:
        >>> stats = CorpusStats()
        >>> list(iter_corpus(["a", "", None], stats=stats)), stats.skipped
        (['a'], {'empty': 1, 'null': 1})
    """

    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str, where: str) -> None:
        """Count one skipped item (the first of each reason is logged with its location)."""
        if reason not in self.skipped:
            logger.warning("corpus: skipping %s (%s); further ones are counted", where, reason)
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    @property
    def n_skipped(self) -> int:
        """All skipped items."""
        return sum(self.skipped.values())


_BOM = b"\xef\xbb\xbf"


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` of a UTF-8 text file (``.gz`` decompressed), split at ``\n``,
    without the line end, a first-line BOM removed and a lone ``\r`` turned into a space."""
    gz = path.suffix.lower() == ".gz"
    lineno = 0
    try:
        with gzip.open(path, "rb") if gz else open(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                if lineno == 1 and raw.startswith(_BOM):
                    raw = raw[len(_BOM) :]
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    bad = raw[max(0, err.start - 12) : err.end + 12]
                    raise CorpusError(
                        f"{path}:{lineno}: invalid UTF-8 at byte {err.start} of the line "
                        f"(near {bad!r}); convert the file to UTF-8 (e.g. iconv -t UTF-8)"
                    ) from None
                if line.endswith("\n"):
                    line = line[:-1]
                if line.endswith("\r"):
                    line = line[:-1]
                yield lineno, line.replace("\r", " ")
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise CorpusError(
            f"{path}: the gzip data is truncated or corrupt after line {lineno} ({err}); "
            "re-create or re-download the file"
        ) from None


def describe_corpus(corpus: Any, text_column: str = "text", split: str = "train") -> dict[str, Any]:
    """A JSON-ready description of a corpus source, for the manifest.

    Example:
        >>> describe_corpus("captions.txt")["kind"]
        'txt'
    """
    kind = _kind_of(corpus)
    desc: dict[str, Any] = {"kind": kind}
    if kind in ("txt", "jsonl", "csv", "hf_disk"):
        desc["path"] = str(Path(corpus).resolve())
    elif kind == "hf_hub":
        desc["name"], desc["split"] = str(corpus), split
    elif kind == "hf_dataset":
        desc["type"] = type(corpus).__name__
    if kind in ("jsonl", "csv", "hf_disk", "hf_hub", "hf_dataset"):
        desc["text_column"] = text_column
    return desc


def iter_corpus(
    corpus: Any,
    text_column: str = "text",
    split: str = "train",
    stats: CorpusStats | None = None,
) -> Iterator[str]:
    """Yield the non-empty sentences of a corpus, in order.

    Args:
        corpus: One of

            * a ``.txt`` path: one sentence per line (see the module docstring for line ends);
            * a ``.jsonl`` path: one JSON object per line, text under ``text_column``;
            * a ``.csv``/``.tsv`` path with a header row naming ``text_column``;
              each of these may be ``.gz``-compressed;
            * a directory written by ``datasets.Dataset.save_to_disk``;
            * a Hugging Face ``datasets`` ``Dataset``/``IterableDataset``/``DatasetDict``;
            * a hub dataset name (``"owner/name"``), loaded with ``datasets.load_dataset``;
            * any other iterable of strings (a list, a generator …).
        text_column: Column or key holding the text.
        split: Split used for hub names and ``DatasetDict`` objects.
        stats: Receives the counts of skipped items.

    Raises:
        CorpusError: Unknown source kind, missing column, a non-string item, invalid UTF-8 or
            a truncated ``.gz`` (file errors name the path and line).

    Example:
        >>> list(iter_corpus(["a cat", "", "a dog"]))
        ['a cat', 'a dog']
    """
    stats = stats if stats is not None else CorpusStats()
    kind = _kind_of(corpus)
    if kind == "txt":
        items: Iterable[tuple[Any, str]] = _iter_txt(Path(corpus))
    elif kind == "jsonl":
        items = _iter_jsonl(Path(corpus), text_column)
    elif kind == "csv":
        items = _iter_csv(Path(corpus), text_column, stats)
    elif kind in ("hf_disk", "hf_hub", "hf_dataset"):
        items = _numbered(_iter_dataset(_load_dataset(corpus, kind, split), text_column, split))
    else:
        items = _numbered(corpus)
    for item, where in items:
        if item is None:
            stats.skip("null", where)
            continue
        if not isinstance(item, str):
            raise CorpusError(f"{where} is a {type(item).__name__}, not a string: {item!r:.80}")
        if item.strip():
            yield item
        else:
            stats.skip("empty", where)


def _numbered(items: Iterable[Any]) -> Iterator[tuple[Any, str]]:
    for i, item in enumerate(items):
        yield item, f"corpus item {i}"


def _iter_txt(path: Path) -> Iterator[tuple[str, str]]:
    for lineno, line in _lines(path):
        yield line, f"{path}:{lineno}"


def _iter_jsonl(path: Path, column: str) -> Iterator[tuple[Any, str]]:
    for lineno, line in _lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise CorpusError(f"{path}:{lineno}: invalid JSON ({err.msg})") from err
        if not isinstance(record, dict) or column not in record:
            keys = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise CorpusError(f"{path}:{lineno}: no {column!r} field (has {keys})")
        yield record[column], f"{path}:{lineno}"


def _iter_csv(path: Path, column: str, stats: CorpusStats) -> Iterator[tuple[Any, str]]:
    delimiter = "\t" if _suffix(path) == ".tsv" else ","
    # csv gets the lines with "\n" back so quoted fields may span lines
    reader = csv.reader((line + "\n" for _, line in _lines(path)), delimiter=delimiter)
    try:
        header = next(reader, None)
        if header is None or column not in header:
            raise CorpusError(
                f"{path}: no {column!r} column in the header (columns: {header}); pass text_column="
            )
        col = header.index(column)
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if not row:
                stats.skip("empty", where)
                continue
            if col >= len(row):
                stats.skip("short_row", where)
                continue
            yield row[col], where
    except csv.Error as err:
        raise CorpusError(f"{path}:{reader.line_num}: malformed CSV ({err})") from err


def _load_dataset(corpus: Any, kind: str, split: str) -> Any:
    try:
        import datasets
    except ImportError as err:  # pragma: no cover - datasets is installed with the dev extras
        raise CorpusError(
            "reading a Hugging Face dataset needs the 'datasets' package (pip install datasets)"
        ) from err
    if kind == "hf_dataset":
        return corpus
    if kind == "hf_disk":
        return datasets.load_from_disk(str(corpus))
    try:
        return datasets.load_dataset(str(corpus), split=split, streaming=True)
    except Exception as err:  # noqa: BLE001 - any loader failure means "not a usable source"
        raise CorpusError(
            f"{corpus!r} is not an existing file or directory and could not be loaded as a "
            f"Hugging Face hub dataset (split {split!r}): {err}"
        ) from err


def _iter_dataset(ds: Any, column: str, split: str) -> Iterator[Any]:
    if type(ds).__name__ in ("DatasetDict", "IterableDatasetDict"):
        if split not in ds:
            raise CorpusError(f"dataset has no split {split!r} (splits: {sorted(ds)})")
        ds = ds[split]
    names = getattr(ds, "column_names", None)
    if names is not None and column not in names:
        raise CorpusError(f"dataset has no {column!r} column (columns: {names}); pass text_column=")
    if hasattr(ds, "iter") and names is not None and hasattr(ds, "__len__"):
        for chunk in ds.select_columns([column]).iter(batch_size=1000):
            yield from chunk[column]
        return
    for record in ds:
        if column not in record:
            raise CorpusError(f"dataset record has no {column!r} field (has {sorted(record)})")
        yield record[column]
