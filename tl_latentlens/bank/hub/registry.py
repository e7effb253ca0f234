"""Prebuilt indices by name: the registry of the official ``latentlens`` indices on the hub.

The registry is a JSON data file shipped inside the package (``pretrained.json`` beside this
module, read with :mod:`importlib.resources`, so it is there in a wheel as in a checkout). Each
entry names one index the official package published (model, hub repository, layers, size),
as the official README lists them; an entry whose facts could not be confirmed there says so
in its ``note``. :meth:`Bank.from_latentlens <tl_latentlens.bank.Bank.from_latentlens>` takes
a registry name wherever it takes a folder or a repository id.

Example:
    >>> from tl_latentlens import pretrained
    >>> pretrained()                       # a table of every entry
    >>> pretrained().to_dataframe()        # the same as a pandas DataFrame
    >>> pretrained()["qwen2.5-vl-7b"].repo_id
    'McGill-NLP/contextual_embeddings-qwen2.5-vl-7b'
"""

from __future__ import annotations

import html
import json
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

from tl_latentlens.bank.errors import BankError, BankFormatError

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "REGISTRY_FILE",
    "PretrainedIndex",
    "PretrainedIndices",
    "UnknownPretrainedError",
    "parse_registry",
    "pretrained",
    "resolve_source",
]

logger = logging.getLogger(__name__)

#: The registry's file name inside this package.
REGISTRY_FILE = "pretrained.json"

#: What an index's model is: a language model, or the language model of a VLM.
Kind = Literal["llm", "vlm"]
#: How an entry is stored: an index of the official package (``Bank.from_latentlens``) or a
#: tl_latentlens bank pushed to the hub (``Bank.from_pretrained``).
Format = Literal["latentlens", "tl_latentlens"]

_COLUMNS = ("name", "model", "kind", "repo_id", "layers", "size_gb")


class UnknownPretrainedError(BankError):
    """A name is not in the registry and is not a folder or hub repository id either (the
    message lists the known names)."""


@dataclass(frozen=True)
class PretrainedIndex:
    """One prebuilt index of the official ``latentlens`` package.

    Attributes:
        name: The registry name (what :meth:`Bank.from_latentlens` accepts).
        model: The model as the official README names it.
        kind: ``"llm"`` or ``"vlm"`` (text-only passes through the VLM's language model).
        repo_id: Its Hugging Face hub repository.
        layers: Official layer numbers (Hugging Face ``hidden_states`` indices; tl_latentlens
            layer ``N`` for ``N < n_layers``).
        size_gb: Download size of every layer in GB (``None``: not stated by its source).
        hf_model: The hub id of the model, where the official README shows it (else ``None``).
        corpus: The corpus the index was built from (``None``: not stated).
        revision: A pinned hub revision (``None``: the repository's ``main``).
        note: Where the facts come from, and what could not be confirmed.
        format: ``"latentlens"`` (an official index: :meth:`Bank.from_latentlens`) or
            ``"tl_latentlens"`` (a published bank: :meth:`Bank.from_pretrained`).

    Example:
        >>> entry = pretrained()["llama3.1-8b"]
        >>> entry.repo_id, entry.layers[-1]
        ('McGill-NLP/contextual_embeddings-llama3.1-8b', 31)
    """

    name: str
    model: str
    kind: Kind
    repo_id: str
    layers: tuple[int, ...]
    size_gb: float | None = None
    hf_model: str | None = None
    corpus: str | None = None
    revision: str | None = None
    note: str = ""
    format: Format = "latentlens"

    def to_dict(self) -> dict[str, object]:
        """All fields, JSON-ready (``layers`` as a list)."""
        out = asdict(self)
        out["layers"] = list(self.layers)
        return out


@dataclass(frozen=True)
class PretrainedIndices:
    """The registry: :class:`PretrainedIndex` records in file order, indexable by position or
    name; printed (or shown in a notebook) as a table.

    Attributes:
        entries: The records.
        source: Where the registry's facts come from (a URL).

    Example:
        >>> indices = pretrained()
        >>> [e.name for e in indices if e.kind == "vlm"]
        >>> print(indices)
    """

    entries: tuple[PretrainedIndex, ...]
    source: str = ""

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[PretrainedIndex]:
        return iter(self.entries)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.find(name) is not None

    def __getitem__(self, key: int | str) -> PretrainedIndex:
        if isinstance(key, str):
            return self.get(key)
        return self.entries[key]

    @property
    def names(self) -> tuple[str, ...]:
        """Every registry name, in file order."""
        return tuple(e.name for e in self.entries)

    def find(self, name: str) -> PretrainedIndex | None:
        """The entry called ``name`` (case-insensitive), else ``None``."""
        key = name.strip().lower()
        return next((e for e in self.entries if e.name.lower() == key), None)

    def find_repo(self, repo_id: str) -> PretrainedIndex | None:
        """The entry whose hub repository is ``repo_id`` (case-insensitive), else ``None``."""
        key = repo_id.strip().lower()
        return next((e for e in self.entries if e.repo_id.lower() == key), None)

    def get(self, name: str) -> PretrainedIndex:
        """The entry called ``name`` (case-insensitive).

        Raises:
            UnknownPretrainedError: No such entry (the message lists the known names).
        """
        found = self.find(name)
        if found is None:
            raise UnknownPretrainedError(
                f"no pretrained index is called {name!r}; known: {', '.join(self.names)} "
                "(tl_latentlens.pretrained() lists them with their models and repositories)"
            )
        return found

    def rows(self) -> list[dict[str, object]]:
        """One dict per entry: name, model, kind, repo_id, layers, size_gb."""
        return [{c: getattr(e, c) for c in _COLUMNS} for e in self.entries]

    def to_dataframe(self) -> pd.DataFrame:
        """Every field of every entry as a :class:`pandas.DataFrame`, one row per entry.

        Example:
            >>> pretrained().to_dataframe()[["name", "repo_id", "size_gb"]]
        """
        import pandas as pd

        return pd.DataFrame([e.to_dict() for e in self.entries])

    def table(self) -> str:
        """A fixed-width text table of name, model, kind, repo_id, layers and size."""
        cells = [list(_COLUMNS)] + [
            [_cell(row[c]) for c in _COLUMNS] for row in self.rows()
        ]  # fmt: skip
        widths = [max(len(r[i]) for r in cells) for i in range(len(_COLUMNS))]
        lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def __repr__(self) -> str:
        return f"PretrainedIndices({len(self)} entries)\n{self.table()}"

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in _COLUMNS)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(_cell(row[c]))}</td>" for c in _COLUMNS) + "</tr>"
            for row in self.rows()
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(value: object) -> str:
    if value is None:
        return "?"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, float) and value.is_integer():
        return f"{int(value)} GB"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value} GB"
    return str(value)


def parse_registry(data: Mapping[str, object]) -> PretrainedIndices:
    """Registry records from the registry's JSON object (``{"source", "indices": {name:
    fields}}``), checked field by field.

    Raises:
        BankFormatError: A malformed entry (the message names it and the field).

    Example:
        >>> parse_registry({"indices": {"tiny": {"model": "m", "kind": "llm",
        ...     "repo_id": "org/tiny", "layers": [1]}}})["tiny"].repo_id
        'org/tiny'
    """
    indices = data.get("indices")
    if not isinstance(indices, Mapping):
        raise BankFormatError("the pretrained registry has no 'indices' object")
    out = []
    for name, fields in indices.items():
        if not isinstance(fields, Mapping):
            raise BankFormatError(f"pretrained registry entry {name!r} is not an object")
        where = f"pretrained registry entry {name!r}"
        for req in ("model", "kind", "repo_id", "layers"):
            if req not in fields:
                raise BankFormatError(f"{where} has no {req!r}")
        unknown = set(fields) - {f for f in PretrainedIndex.__dataclass_fields__} - {"name"}
        if unknown:
            raise BankFormatError(f"{where} has unknown fields {sorted(unknown)}")
        repo = fields["repo_id"]
        if not isinstance(repo, str) or repo.count("/") != 1:
            raise BankFormatError(f"{where}: repo_id must be 'org/name', got {repo!r}")
        if fields["kind"] not in get_args(Kind):
            raise BankFormatError(f"{where}: kind must be one of {get_args(Kind)}")
        fmt = fields.get("format", "latentlens")
        if fmt not in get_args(Format):
            raise BankFormatError(f"{where}: format must be one of {get_args(Format)}")
        layers = fields["layers"]
        if not isinstance(layers, list) or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in layers
        ):
            raise BankFormatError(f"{where}: layers must be a list of non-negative ints")
        size = fields.get("size_gb")
        if size is not None and (not isinstance(size, (int, float)) or isinstance(size, bool)):
            raise BankFormatError(f"{where}: size_gb must be a number or null")
        out.append(
            PretrainedIndex(
                name=str(name),
                model=str(fields["model"]),
                kind=fields["kind"],
                repo_id=repo,
                layers=tuple(layers),
                size_gb=None if size is None else float(size),
                hf_model=fields.get("hf_model"),
                corpus=fields.get("corpus"),
                revision=fields.get("revision"),
                note=str(fields.get("note") or ""),
                format=fmt,
            )  # fmt: skip
        )
    names = [e.name.lower() for e in out]
    if len(set(names)) != len(names):
        raise BankFormatError("the pretrained registry repeats a name (names are case-blind)")
    return PretrainedIndices(tuple(out), str(data.get("source") or ""))


@cache
def _package_registry() -> PretrainedIndices:
    """The registry shipped with the package (read once)."""
    text = resources.files(__package__).joinpath(REGISTRY_FILE).read_text(encoding="utf-8")
    return parse_registry(json.loads(text))


def pretrained(kind: Kind | None = None) -> PretrainedIndices:
    """The prebuilt indices of the official ``latentlens`` package, by name.

    Args:
        kind: ``"llm"`` or ``"vlm"`` to list only those; ``None``: every entry.

    Returns:
        The records (printed as a table; ``.to_dataframe()`` for pandas).

    Example:
        >>> print(tl_latentlens.pretrained("vlm"))
        >>> bank = Bank.from_latentlens("qwen2.5-vl-7b", vlm, trust_pickle=True, layers=[8, 16])
    """
    every = _package_registry()
    if kind is None:
        return every
    if kind not in get_args(Kind):
        raise ValueError(f"kind must be one of {get_args(Kind)} or None, got {kind!r}")
    return PretrainedIndices(tuple(e for e in every if e.kind == kind), every.source)


def resolve_source(
    name_or_path_or_repo: str | os.PathLike,
) -> tuple[str | Path, PretrainedIndex | None]:
    """Where an official index is: an existing folder, a registry name (-> its repository id)
    or a hub repository id (``org/name``), in that order; with its registry entry if any.

    Raises:
        UnknownPretrainedError: None of the three (the message lists the registry's names).

    Example:
        >>> resolve_source("gemma2-9b")[0]
        'McGill-NLP/contextual_embeddings-gemma2-9b'
    """
    path = Path(name_or_path_or_repo).expanduser()
    if path.is_dir():
        return path, None
    registry = pretrained()
    text = str(name_or_path_or_repo)
    if isinstance(name_or_path_or_repo, str):
        entry = registry.find(text)
        if entry is not None:
            return entry.repo_id, entry
        if text.count("/") == 1 and not text.startswith((".", "/", "~")):
            return text, registry.find_repo(text)
    raise UnknownPretrainedError(
        f"{text!r} is not a folder, a hub repository id (org/name) or a pretrained index name; "
        f"the known names: {', '.join(registry.names)} (tl_latentlens.pretrained() lists them "
        "with their models and repositories)"
    )
