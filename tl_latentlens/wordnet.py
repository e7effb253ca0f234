"""The one WordNet module: nltk's ``WordNetCorpusReader`` over the Debian ``wordnet-base`` files,
and the one parser of sense names (``"dog.n.01"``).

nltk reads the standard database files (``index.<pos>``, ``data.<pos>``, ``<pos>.exc``;
wndb(5WN)); callers get nltk ``Synset`` objects and use nltk's API on them (``hypernyms()``,
``min_depth()``, ``definition()``, ...). :class:`WordNet` adds only what nltk does not offer:

* exact lemma lookup (:meth:`WordNet.synsets`): nltk's ``synsets()`` lemmatises its argument
  first (``"dogs"`` finds ``dog``), which a label or a word list must not;
* every base form of a word (:meth:`WordNet.morphy`): nltk's public ``morphy()`` keeps only the
  shortest one;
* sense names resolved without lemmatising and ``None`` for unknown ones (:meth:`WordNet.sense`);
* a breadth-first :func:`closure` over several start synsets and several relations.

Two things the Debian files lack are supplied here: ``lexnames`` (the lexicographer file names
of lexnames(5WN), which nltk's reader insists on) and the version mapping nltk would load from
its own downloaded ``wordnet`` corpus (only used by the multilingual OMW functions, not here).

Example:
    >>> wn = WordNet.default()              # Debian wordnet-base (tl-latentlens fetch-data)
    >>> wn.synsets("cat")[0].lemma_names()[:2]
    ['cat', 'true_cat']
    >>> wn.morphy("mice", "n")
    ['mouse']
    >>> parse_sense("dog.n.01")
    SenseName(lemma='dog', pos='n', number=1)
"""

from __future__ import annotations

import io
import logging
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import nltk.data
from nltk.corpus.reader.wordnet import Synset, WordNetCorpusReader

from tl_latentlens.packaged_data import deb_root

__all__ = [
    "POS",
    "SenseName",
    "Synset",
    "WordNet",
    "closure",
    "display_label",
    "lemma_names",
    "parse_sense",
    "sense_name",
    "strip_sense",
    "wordnet_dir",
]

logger = logging.getLogger(__name__)

#: Parts of speech and the suffixes of their files.
POS = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}

# ---- sense names ------------------------------------------------------------------------------
_SENSE = re.compile(r"^(?P<lemma>.+)\.(?P<pos>[nvasr])\.(?P<number>\d{1,3})$")


@dataclass(frozen=True)
class SenseName:
    """A parsed sense name such as ``"dog.n.01"``: the ``number``-th ``pos`` sense of
    ``lemma`` (WordNet orders senses by frequency)."""

    lemma: str
    pos: str
    number: int

    def __str__(self) -> str:
        return sense_name(self.lemma, self.pos, self.number)


def parse_sense(name: str) -> SenseName | None:
    """``"dog.n.01"`` -> ``SenseName("dog", "n", 1)``; ``None`` when ``name`` is a plain word.

    The lemma is lower-cased, spaces become ``_``; ``s`` (adjective satellite) is read as ``a``.

    Example:
        >>> parse_sense("Pot plant.n.02"), parse_sense("dog")
        (SenseName(lemma='pot_plant', pos='n', number=2), None)
    """
    m = _SENSE.match(name.strip())
    if m is None:
        return None
    pos = "a" if m["pos"] == "s" else m["pos"]
    return SenseName(_key(m["lemma"]), pos, int(m["number"]))


def sense_name(lemma: str, pos: str, number: int) -> str:
    """``("dog", "n", 1)`` -> ``"dog.n.01"`` (WordNet's and nltk's spelling; the lemma as given)."""
    return f"{lemma}.{pos}.{number:02d}"


def strip_sense(label: str) -> str:
    """A label without its sense suffix: ``"letter.n.02"`` -> ``"letter"``; other labels as given."""
    parsed = _SENSE.match(label.strip())
    return parsed["lemma"] if parsed else label


def display_label(label: str) -> str:
    """A label for people: sense suffix dropped, ``_`` as spaces (``"pot_plant.n.01"`` -> ``"pot plant"``)."""
    return strip_sense(label).replace("_", " ")


def lemma_names(synset: Synset) -> tuple[str, ...]:
    """The synset's words, lower-case, multi-word ones joined with ``_`` (``("dog", "domestic_dog", ...)``)."""
    return tuple(name.lower() for name in synset.lemma_names())


def _key(word: str) -> str:
    return word.strip().lower().replace(" ", "_")


# ---- the reader -------------------------------------------------------------------------------
#: lexnames(5WN): the lexicographer files, by number (Debian's wordnet-base omits the file).
_LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute "
    "noun.body noun.cognition noun.communication noun.event noun.feeling noun.food noun.group "
    "noun.location noun.motive noun.object noun.person noun.phenomenon noun.plant "
    "noun.possession noun.process noun.quantity noun.relation noun.shape noun.state "
    "noun.substance noun.time verb.body verb.change verb.cognition verb.communication "
    "verb.competition verb.consumption verb.contact verb.creation verb.emotion verb.motion "
    "verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()
_SYNTACTIC_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}


def _lexnames_file() -> str:
    return "".join(
        f"{i:02d}\t{name}\t{_SYNTACTIC_CATEGORY[name.split('.')[0]]}\n"
        for i, name in enumerate(_LEXNAMES)
    )


class _Reader(WordNetCorpusReader):
    """nltk's reader, given the two things a bare WordNet database directory lacks."""

    def open(self, file: str) -> Any:
        if file == "lexnames" and not (Path(str(self.root)) / "lexnames").is_file():
            return io.StringIO(_lexnames_file())
        return super().open(file)

    def map_wn(self, version: str = "wordnet") -> None:
        """No mapping: nltk would load its downloaded ``wordnet`` corpus to map this database's
        synsets for the multilingual (OMW) functions, which are not used."""
        return None


class WordNet:
    """A WordNet database directory (``index.noun``, ``data.noun``, ...) read by nltk.

    Args:
        root: Directory holding the database files.

    Attributes:
        root: That directory.
        reader: The nltk ``WordNetCorpusReader`` (for anything this class does not wrap).

    Raises:
        FileNotFoundError: ``root`` lacks ``index.noun`` / ``data.noun``.

    Example:
        >>> wn = WordNet("/usr/share/wordnet")
        >>> wn.synsets("dog")[0].name()
        'dog.n.01'
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        for name in ("index.noun", "data.noun"):
            if not (self.root / name).is_file():
                raise FileNotFoundError(f"{self.root} is not a WordNet database: no {name}")
        # nltk reads corpora only from its data path (a guard against path tricks).
        if str(self.root) not in nltk.data.path:
            nltk.data.path.append(str(self.root))
        with warnings.catch_warnings():  # "multilingual functions are not available": fine
            warnings.simplefilter("ignore", UserWarning)
            self.reader = _Reader(str(self.root), None)

    @classmethod
    def default(cls) -> WordNet:
        """The Debian ``wordnet-base`` database (fetched by ``tl-latentlens fetch-data``)."""
        return _default_wordnet()

    def synsets(self, lemma: str, pos: str | None = "n") -> list[Synset]:
        """Synsets of ``lemma`` itself (not lemmatised), most frequent sense first.

        Args:
            lemma: The word; spaces and ``_`` are equivalent; case-insensitive.
            pos: ``n``, ``v``, ``a`` (adjectives with their satellites) or ``r``; ``None``:
                all four.
        """
        key = _key(lemma)
        out: list[Synset] = []
        for p in POS if pos is None else (pos,):
            # nltk lemmatises: keep the synsets of the word itself (the first form tried).
            out += [s for s in self.reader.synsets(key, p) if key in lemma_names(s)]
        return list(dict.fromkeys(out))

    def has_lemma(self, lemma: str, pos: str) -> bool:
        """True when WordNet has ``lemma`` (``_`` for spaces) as a ``pos`` word."""
        return bool(self.synsets(lemma, pos))

    def sense(self, name: str | SenseName) -> Synset | None:
        """The synset a sense name stands for (``"dog.n.01"``), or ``None`` when WordNet has
        no such sense."""
        parsed = parse_sense(name) if isinstance(name, str) else name
        if parsed is None:
            return None
        found = self.synsets(parsed.lemma, parsed.pos)
        return found[parsed.number - 1] if 1 <= parsed.number <= len(found) else None

    def morphy(self, word: str, pos: str) -> list[str]:
        """Base forms of ``word`` in ``pos`` that WordNet knows (WordNet's ``morphy``): the
        word itself first when WordNet has it.

        Example:
            >>> wn.morphy("churches", "n"), wn.morphy("running", "v")
            (['church'], ['run'])
        """
        # nltk's public morphy() returns only the shortest base; _morphy() lists them all.
        return list(dict.fromkeys(self.reader._morphy(_key(word), pos)))

    def base_forms(self, word: str) -> dict[str, list[str]]:
        """:meth:`morphy` in every part of speech: ``{pos: [bases]}`` (non-empty ones only)."""
        out = {pos: self.morphy(word, pos) for pos in POS}
        return {pos: bases for pos, bases in out.items() if bases}

    def all_synsets(self, pos: str) -> Iterable[Synset]:
        """Every synset of ``pos`` in file order (adjectives with their satellites)."""
        return self.reader.all_synsets(pos)


#: Relations of :func:`closure`, as nltk ``Synset`` methods.
Relation = Callable[[Synset], list[Synset]]
RELATIONS: dict[str, Relation] = {
    "hypernyms": Synset.hypernyms,
    "instance_hypernyms": Synset.instance_hypernyms,
    "hyponyms": Synset.hyponyms,
    "part_meronyms": Synset.part_meronyms,
    "part_holonyms": Synset.part_holonyms,
}


def closure(
    start: Sequence[Synset], relations: Sequence[str], max_levels: int | None = None
) -> list[Synset]:
    """Synsets reachable from ``start`` over ``relations`` (names of :data:`RELATIONS`),
    breadth first, each once, ``start`` excluded; at most ``max_levels`` steps (``None``: any).

    nltk's ``Synset.closure`` walks one synset and one relation; the judge and the labels need
    the union over several of each, level by level.

    Example:
        >>> ups = closure(wn.synsets("dog")[:1], ("hypernyms", "instance_hypernyms"))
    """
    steps = [RELATIONS[r] for r in relations]
    seen = set(start)
    frontier, out, level = list(start), [], 0
    while frontier and (max_levels is None or level < max_levels):
        nxt = []
        for synset in frontier:
            for step in steps:
                for rel in step(synset):
                    if rel not in seen:
                        seen.add(rel)
                        nxt.append(rel)
                        out.append(rel)
        frontier, level = nxt, level + 1
    return out


def wordnet_dir() -> Path:
    """``usr/share/wordnet`` (``data.noun`` ...) of Debian ``wordnet-base`` in the data directory.

    Raises:
        MissingDataError: Not fetched (the message names ``tl-latentlens fetch-data``).
    """
    return deb_root("wordnet-base") / "usr" / "share" / "wordnet"


@lru_cache(maxsize=1)
def _default_wordnet() -> WordNet:
    return WordNet(wordnet_dir())
