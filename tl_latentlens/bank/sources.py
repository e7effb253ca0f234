"""Corpus sources: text files, JSONL/CSV tables, Hugging Face datasets, iterables of strings.

Every source is read lazily, one sentence at a time, and empty or whitespace-only sentences are
skipped (sentence ``i`` of a corpus is the ``i``-th non-empty one).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tl_latentlens.bank.errors import CorpusError

__all__ = ["iter_corpus", "describe_corpus", "CorpusSource"]

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


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix.lower() == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


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


def iter_corpus(corpus: Any, text_column: str = "text", split: str = "train") -> Iterator[str]:
    """Yield the non-empty sentences of a corpus, in order.

    Args:
        corpus: One of

            * a ``.txt`` path: one sentence per line (line ends stripped);
            * a ``.jsonl`` path: one JSON object per line, text under ``text_column``;
            * a ``.csv``/``.tsv`` path with a header row naming ``text_column``;
              each of these may be ``.gz``-compressed;
            * a directory written by ``datasets.Dataset.save_to_disk``;
            * a Hugging Face ``datasets`` ``Dataset``/``IterableDataset``/``DatasetDict``;
            * a hub dataset name (``"owner/name"``), loaded with ``datasets.load_dataset``;
            * any other iterable of strings (a list, a generator …).
        text_column: Column or key holding the text.
        split: Split used for hub names and ``DatasetDict`` objects.

    Raises:
        CorpusError: Unknown source kind, missing column, or a non-string item.

    Example:
        >>> list(iter_corpus(["a cat", "", "a dog"]))
        ['a cat', 'a dog']
    """
    kind = _kind_of(corpus)
    if kind == "txt":
        items: Iterable[Any] = _iter_txt(Path(corpus))
    elif kind == "jsonl":
        items = _iter_jsonl(Path(corpus), text_column)
    elif kind == "csv":
        items = _iter_csv(Path(corpus), text_column)
    elif kind in ("hf_disk", "hf_hub", "hf_dataset"):
        items = _iter_dataset(_load_dataset(corpus, kind, split), text_column, split)
    else:
        items = corpus
    for i, item in enumerate(items):
        if item is None:
            continue
        if not isinstance(item, str):
            raise CorpusError(
                f"corpus item {i} is a {type(item).__name__}, not a string: {item!r:.80}"
            )
        if item.strip():
            yield item


def _iter_txt(path: Path) -> Iterator[str]:
    with _open_text(path) as f:
        for line in f:
            yield line.rstrip("\r\n")


def _iter_jsonl(path: Path, column: str) -> Iterator[Any]:
    with _open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise CorpusError(f"{path}:{lineno}: invalid JSON ({err.msg})") from err
            if not isinstance(record, dict) or column not in record:
                keys = sorted(record) if isinstance(record, dict) else type(record).__name__
                raise CorpusError(f"{path}:{lineno}: no {column!r} field (has {keys})")
            yield record[column]


def _iter_csv(path: Path, column: str) -> Iterator[Any]:
    delimiter = "\t" if _suffix(path) == ".tsv" else ","
    with _open_text(path) as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        if reader.fieldnames is None or column not in reader.fieldnames:
            raise CorpusError(
                f"{path}: no {column!r} column in the header (columns: {reader.fieldnames}); "
                "pass text_column="
            )
        for row in reader:
            yield row[column]


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
