"""Write a small database in WordNet's file format (for tests and custom label vocabularies).

Synsets are given by a key, their lemmas and their pointers to other keys; byte offsets are
computed so that :class:`~tl_latentlens.evaluate.wordnet.WordNet` reads the result like the
real database.

Example:
    >>> root = write_wordnet(tmp_path, [
    ...     SynsetSpec("entity", "n", ("entity",)),
    ...     SynsetSpec("animal", "n", ("animal", "beast"), (("@", "entity"),)),
    ...     SynsetSpec("dog", "n", ("dog",), (("@", "animal"),)),
    ... ], exceptions={"n": {"mice": "mouse"}})
    >>> WordNet(root).synsets("dog")[0].lemmas
    ('dog',)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tl_latentlens.evaluate.wordnet import POS

__all__ = ["SynsetSpec", "write_wordnet"]

_HEADER = "  1 A tiny WordNet-format database written by tl_latentlens.  \n"


@dataclass(frozen=True)
class SynsetSpec:
    """One synset to write.

    Attributes:
        key: Unique name used by pointers.
        pos: ``n``, ``v``, ``a`` or ``r``.
        lemmas: Its words (``_`` for spaces), in sense order of appearance.
        pointers: ``(symbol, target_key)`` semantic pointers, or
            ``(symbol, target_key, source_word, target_word)`` lexical ones (1-based).
        gloss: Definition.
    """

    key: str
    pos: str
    lemmas: tuple[str, ...]
    pointers: tuple[tuple, ...] = ()
    gloss: str = "a synset"


def _line(spec: SynsetSpec, offset: int, offsets: dict[str, tuple[str, int]]) -> str:
    words = " ".join(f"{w} 0" for w in spec.lemmas)
    ptrs = []
    for p in spec.pointers:
        symbol, target = p[0], p[1]
        src, dst = (p[2], p[3]) if len(p) == 4 else (0, 0)
        tpos, toff = offsets.get(target, ("n", 0))
        ptrs.append(f"{symbol} {toff:08d} {tpos} {src:02x}{dst:02x}")
    body = f"{offset:08d} 03 {spec.pos} {len(spec.lemmas):02x} {words} {len(ptrs):03d}"
    if ptrs:
        body += " " + " ".join(ptrs)
    return f"{body} | {spec.gloss}  \n"


def write_wordnet(
    root: str | Path,
    synsets: Sequence[SynsetSpec],
    exceptions: dict[str, dict[str, str]] | None = None,
) -> Path:
    """Write ``index.<pos>``, ``data.<pos>`` and ``<pos>.exc`` files into ``root``.

    Args:
        root: Output directory (created).
        synsets: The synsets; a lemma's senses are numbered in the order given.
        exceptions: ``{pos: {inflected: base}}`` for the exception lists.

    Raises:
        ValueError: Duplicate keys or unknown parts of speech.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    keys = [s.key for s in synsets]
    if len(set(keys)) != len(keys):
        raise ValueError("synset keys must be unique")
    if any(s.pos not in POS for s in synsets):
        raise ValueError(f"parts of speech must be among {sorted(POS)}")
    offsets: dict[str, tuple[str, int]] = {}
    for pos in POS:
        pos_synsets = [s for s in synsets if s.pos == pos]
        # Lines have a fixed length whatever the offsets are, so one pass with dummies suffices.
        at = len(_HEADER.encode())
        for s in pos_synsets:
            offsets[s.key] = (pos, at)
            at += len(_line(s, 0, {}).encode("latin-1"))
    for pos, name in POS.items():
        pos_synsets = [s for s in synsets if s.pos == pos]
        data = _HEADER + "".join(_line(s, offsets[s.key][1], offsets) for s in pos_synsets)
        (root / f"data.{name}").write_bytes(data.encode("latin-1"))
        senses: dict[str, list[int]] = {}
        symbols: dict[str, set[str]] = {}
        for s in pos_synsets:
            for lemma in s.lemmas:
                senses.setdefault(lemma.lower(), []).append(offsets[s.key][1])
                symbols.setdefault(lemma.lower(), set()).update(p[0] for p in s.pointers)
        lines = []
        for lemma in sorted(senses):
            offs, syms = senses[lemma], sorted(symbols[lemma])
            fields = [lemma, pos, str(len(offs)), str(len(syms)), *syms, str(len(offs)), "0"]
            lines.append(" ".join(fields + [f"{o:08d}" for o in offs]) + "  \n")
        (root / f"index.{name}").write_text(_HEADER + "".join(lines), encoding="latin-1")
        exc = (exceptions or {}).get(pos, {})
        (root / f"{name}.exc").write_text(
            "".join(f"{k} {v}\n" for k, v in sorted(exc.items())), encoding="latin-1"
        )
    return root
