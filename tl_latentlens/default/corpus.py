"""The WordNet text corpus: example sentences and glosses from Debian ``wordnet-base``.

Each synset line of ``data.{noun,verb,adj,adv}`` ends with ``| gloss``; the gloss is a
definition followed by quoted examples separated by ``;``. :func:`wordnet_sentences` yields each
example as a sentence and each definition as ``"<lemma>: <definition>."``.

Example:
    >>> it = wordnet_sentences()
    >>> next(it)
    'entity: that which is perceived or known or inferred to have its own distinct existence.'
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

from tl_latentlens.default import assets

__all__ = ["parse_synset_line", "wordnet_sentences"]

logger = logging.getLogger(__name__)

_POS_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
_EXAMPLE = re.compile(r'"([^"]+)"')


def parse_synset_line(line: str) -> tuple[str, str, list[str]] | None:
    """``(lemma, definition, examples)`` of one ``data.*`` line (None for header lines).

    Example:
        >>> parse_synset_line('00001 03 n 01 dog 0 000 | a pet; "the dog barked"')
        ('dog', 'a pet', ['the dog barked'])
    """
    if not line or line[0] == " " or "|" not in line:
        return None
    head, gloss = line.split("|", 1)
    fields = head.split()
    if len(fields) < 5:
        return None
    lemma = re.sub(r"\(\w+\)$", "", fields[4]).replace("_", " ")
    examples = [e.strip() for e in _EXAMPLE.findall(gloss) if e.strip()]
    definition = _EXAMPLE.sub("", gloss)
    definition = "; ".join(p.strip() for p in definition.split(";") if p.strip())
    return lemma, definition.strip(" ;"), examples


def _sentence(text: str) -> str:
    text = text.strip()
    if text and text[-1] not in ".!?":
        text += "."
    return text


def wordnet_sentences(
    root: str | Path | None = None, examples: bool = True, glosses: bool = True
) -> Iterator[str]:
    """Sentences of WordNet 3.0: glosses (``"lemma: definition."``) and usage examples.

    Args:
        root: Folder with the ``data.*`` files; default installs/uses Debian ``wordnet-base``.
        examples: Yield the quoted usage examples.
        glosses: Yield the definitions.
    """
    root = Path(root) if root is not None else assets.wordnet_dir()
    for name in _POS_FILES:
        path = root / name
        if not path.is_file():
            logger.warning("WordNet file %s is missing; skipped", path)
            continue
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                parsed = parse_synset_line(line)
                if parsed is None:
                    continue
                lemma, definition, exs = parsed
                if glosses and definition:
                    yield _sentence(f"{lemma}: {definition}")
                if examples:
                    yield from (_sentence(e) for e in exs)
