"""Tolerant reading of a judge model's answer into a verdict.

The judge is asked for one JSON object ``{"interpretable": "yes"|"no", "candidates": [1, 3],
"kind": "concrete"|"abstract"|"global"|"none"}``. Small or chatty models wrap it in prose or
code fences, use single quotes or Python booleans, name words instead of numbers, or write
``"candidate": 2``. :func:`parse_answer` accepts all of that; what it cannot read raises
:class:`MalformedAnswer` (the judge then asks again, and finally records an error; it never
turns an unreadable answer into "no").

Example:
    >>> parse_answer('Sure! ```json\\n{"interpretable": "yes", "candidates": [2], '
    ...              '"kind": "concrete"}\\n```', ("the", "dog", "run")).matches
    (1,)
"""

from __future__ import annotations

import json
import re
from typing import Any

from tl_latentlens.evaluate.judges import KINDS, Verdict
from tl_latentlens.evaluate.matching import normalise_word

__all__ = ["MalformedAnswer", "parse_answer"]

_YES = {"yes", "y", "true", "1", "interpretable"}
_NO = {"no", "n", "false", "0", "not interpretable", "none"}
_FIELD = r"[\"']?{name}[\"']?\s*[:=]\s*"


class MalformedAnswer(ValueError):
    """The answer holds no readable verdict."""


def _objects(text: str) -> list[dict[str, Any]]:
    """Every JSON object that decodes at some ``{`` of ``text`` (leniently re-quoted)."""
    found: list[dict[str, Any]] = []
    decoder = json.JSONDecoder()
    for variant in (text, _pythonish(text)):
        for m in re.finditer(r"\{", variant):
            try:
                obj, _ = decoder.raw_decode(variant, m.start())
            except ValueError:
                continue
            if isinstance(obj, dict):
                found.append({str(k).strip().lower(): v for k, v in obj.items()})
        if found:
            break
    return found


def _pythonish(text: str) -> str:
    text = re.sub(r"\bTrue\b", "true", re.sub(r"\bFalse\b", "false", text))
    text = re.sub(r"\bNone\b", "null", text)
    text = re.sub(r",\s*([}\]])", r"\1", text)  # trailing commas
    return re.sub(r"'([^'\n]*)'", r'"\1"', text)


def _regex_fields(text: str) -> dict[str, Any]:
    """Last resort: ``interpretable: yes`` / ``candidates: 1, 2`` / ``kind: concrete`` in prose."""
    out: dict[str, Any] = {}
    m = re.search(_FIELD.format(name="interpretable") + r"[\"']?(yes|no|true|false)", text, re.I)
    if m:
        out["interpretable"] = m.group(1)
    m = re.search(_FIELD.format(name="candidates?") + r"\[?([^\]\n}]*)", text, re.I)
    if m:
        out["candidates"] = [p for p in re.split(r"[,\s]+", m.group(1).strip(" \"'")) if p]
    m = re.search(_FIELD.format(name="kind") + r"[\"']?(\w+)", text, re.I)
    if m:
        out["kind"] = m.group(1)
    return out


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    s = str(value).strip().strip(".").lower()
    if s in _YES:
        return True
    if s in _NO:
        return False
    raise MalformedAnswer(f"'interpretable' is neither yes nor no: {value!r}")


def _indices(value: Any, candidates: tuple[str, ...]) -> tuple[int, ...]:
    """0-based indices from 1-based numbers or candidate words (unknown ones dropped)."""
    if value is None:
        return ()
    items = value if isinstance(value, (list, tuple)) else [value]
    words = [normalise_word(c) for c in candidates]
    out: list[int] = []
    for item in items:
        if isinstance(item, bool):
            continue
        idx: int | None = None
        if isinstance(item, (int, float)) and float(item).is_integer():
            idx = int(item) - 1
        elif isinstance(item, str):
            s = item.strip()
            if re.fullmatch(r"#?\d+", s):
                idx = int(s.lstrip("#")) - 1
            elif normalise_word(s) in words:
                idx = words.index(normalise_word(s))
        if idx is not None and 0 <= idx < len(candidates) and idx not in out:
            out.append(idx)
    return tuple(sorted(out))


def parse_answer(text: str, candidates: tuple[str, ...]) -> Verdict:
    """Read a judge model's answer.

    Args:
        text: The model's reply.
        candidates: The candidate words the model was shown (in order).

    Returns:
        The :class:`Verdict` (``raw`` = ``text``).

    Raises:
        MalformedAnswer: No verdict could be read, or it says "yes" without naming a shown
            candidate or a kind.
    """
    fields = next((o for o in _objects(text) if "interpretable" in o), None)
    if fields is None:
        fields = _regex_fields(text)
    if "interpretable" not in fields:
        raise MalformedAnswer(f"no 'interpretable' field in the answer: {text[:200]!r}")
    if not _as_bool(fields["interpretable"]):
        n = len(candidates)
        return Verdict(False, None, "none", (), ("none",) * n, raw=text)
    value = fields.get(
        "candidates", fields.get("candidate", fields.get("words", fields.get("word")))
    )
    matches = _indices(value, candidates)
    if not matches:
        raise MalformedAnswer(f"'yes' without a shown candidate: {value!r}")
    kind = str(fields.get("kind", "")).strip().lower()
    if kind not in KINDS:
        raise MalformedAnswer(f"'yes' with kind {kind!r}; expected one of {KINDS}")
    kinds = tuple(kind if i in matches else "none" for i in range(len(candidates)))
    return Verdict(True, matches[0], kind, matches, kinds, raw=text)
