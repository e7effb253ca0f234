"""Raw judgements as JSON Lines, and the per-layer table computed from them.

One line per (image, patch, layer, lens), appended (and flushed) as soon as the judge answers,
so an interrupted study resumes where it stopped and a finished one can be re-aggregated
without asking the judge again. Fields of a line::

    image, patch, row, col, layer, hook, lens, label, candidates: [{token, word, score, ...}],
    words (what the judge saw), verdict: {interpretable, matched, kind, matches, ...}, judge, t

Reading tolerates a torn last line (a crash mid-write). When a key occurs several times the
last line wins; ``error`` verdicts do not count as done (a resumed run asks again).

Example:
    >>> table = aggregate("study/judgements.jsonl")
    >>> table[["layer", "latent_top5", "logit_top5", "embedding_top5"]]
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tl_latentlens.evaluate.judges import KINDS, Verdict

__all__ = ["LENSES", "JudgementLog", "aggregate", "record_key", "wilson_interval"]

logger = logging.getLogger(__name__)

#: Lens names in table order.
LENSES = ("latent", "logit", "embedding")

Key = tuple[str, int, float, str]


def record_key(rec: dict[str, Any]) -> Key:
    """``(image, patch, layer, lens)`` of a record."""
    return (str(rec["image"]), int(rec["patch"]), float(rec["layer"]), str(rec["lens"]))


class JudgementLog:
    """Append-only JSONL file of judgement records (thread-safe appends).

    Args:
        path: The ``.jsonl`` file (created on first append).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def read(self) -> list[dict[str, Any]]:
        """Every readable record in file order (unreadable lines are logged and skipped)."""
        if not self.path.is_file():
            return []
        out = []
        with open(self.path, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    record_key(rec)
                except (ValueError, KeyError, TypeError):
                    logger.warning("%s:%d: skipping an unreadable line", self.path, n)
                    continue
                out.append(rec)
        return out

    def latest(self) -> dict[Key, dict[str, Any]]:
        """The last record of each key."""
        return {record_key(r): r for r in self.read()}

    def done(self) -> set[Key]:
        """Keys whose latest record is a real verdict (not an error)."""
        return {k for k, r in self.latest().items() if r["verdict"].get("kind") != "error"}

    def append(self, record: dict[str, Any]) -> None:
        """Append one record and flush it to disk."""
        line = json.dumps(record, ensure_ascii=False)
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            needs_newline = (
                self.path.is_file()
                and self.path.stat().st_size > 0
                and not _ends_with_newline(self.path)
            )
            with open(self.path, "a", encoding="utf-8") as fh:
                if needs_newline:  # a torn line from a crash: start on a fresh line
                    fh.write("\n")
                fh.write(line + "\n")
                fh.flush()
                os.fsync(fh.fileno())


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) == b"\n"


def wilson_interval(hits: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a proportion (95 % by default); ``(nan, nan)`` for ``n == 0``.

    Example:
        >>> [round(x, 3) for x in wilson_interval(20, 100)]
        [0.133, 0.289]
    """
    if n <= 0:
        return float("nan"), float("nan")
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def aggregate(
    records: str | os.PathLike | Iterable[dict[str, Any]],
    kinds: tuple[str, ...] = KINDS,
    k: int | None = None,
) -> Any:
    """Per-layer percentages of interpretable patches, per lens.

    Args:
        records: A JSONL path or the records themselves.
        kinds: Verdict kinds that count as interpretable (default: all three, as in the paper).
        k: Judge only the first ``k`` candidates of each record (default: all of them; must not
            exceed what was judged, and only per-candidate verdicts can be cut).

    Returns:
        pandas DataFrame, one row per layer: ``layer``, ``n_patches`` (distinct image/patch
        pairs), then per lens ``<lens>_top<k>`` and ``<lens>_pass1`` (percent, over verdicts that
        are not errors), ``<lens>_n`` and ``<lens>_errors``; after those, per lens, the 95 %
        Wilson interval of the top-k rate (``<lens>_top<k>_lo`` / ``_hi``) and the top-k rate
        of each verdict kind alone (``<lens>_concrete``, ``_abstract``, ``_global``).

    Raises:
        ValueError: Unknown kinds, or records judged with different numbers of candidates.
    """
    import pandas as pd

    bad = [x for x in kinds if x not in KINDS]
    if bad:
        raise ValueError(f"unknown verdict kinds {bad}; known: {KINDS}")
    if isinstance(records, (str, os.PathLike)):
        latest = JudgementLog(records).latest()
    else:
        latest = {record_key(r): r for r in records}
    judged_k = {len(r["words"]) for r in latest.values()}
    if len(judged_k) > 1:
        raise ValueError(
            f"records were judged with different numbers of candidates: {sorted(judged_k)}"
        )
    top = k if k is not None else (judged_k.pop() if judged_k else 0)
    stats = (f"top{top}", "pass1", "n", "errors")
    cols = [f"{lens}_{s}" for lens in LENSES for s in stats]
    extra = (f"top{top}_lo", f"top{top}_hi", *KINDS)
    cols += [f"{lens}_{s}" for lens in LENSES for s in extra]
    acc: dict[float, dict[str, Any]] = {}
    for (image, patch, layer, lens), rec in sorted(latest.items()):
        row = acc.setdefault(
            layer, {"patches": set(), **{lens_: [] for lens_ in LENSES}, "errors": {}}
        )
        row["patches"].add((image, patch))
        v = Verdict.from_dict(rec["verdict"])
        if v.is_error:
            row["errors"][lens] = row["errors"].get(lens, 0) + 1
            continue
        if k is not None and k < len(rec["words"]) and not v.candidate_kinds:
            raise ValueError("k below the judged number of candidates needs per-candidate verdicts")
        row.setdefault(lens, []).append(
            (
                v.counts(kinds, top=k),
                v.counts(kinds, top=1),
                *(v.counts((kind,), top=k) for kind in KINDS),
            )
        )
    rows = []
    for layer in sorted(acc):
        row = acc[layer]
        out: dict[str, Any] = {"layer": int(layer) if float(layer).is_integer() else layer}
        out["n_patches"] = len(row["patches"])
        for lens in LENSES:
            vals = row.get(lens, [])
            n = len(vals)
            hits = sum(x[0] for x in vals)
            out[f"{lens}_top{top}"] = 100.0 * hits / n if n else float("nan")
            out[f"{lens}_pass1"] = 100.0 * sum(x[1] for x in vals) / n if n else float("nan")
            out[f"{lens}_n"] = n
            out[f"{lens}_errors"] = row["errors"].get(lens, 0)
            lo, hi = wilson_interval(hits, n)
            out[f"{lens}_top{top}_lo"], out[f"{lens}_top{top}_hi"] = 100.0 * lo, 100.0 * hi
            for j, kind in enumerate(KINDS):
                share = sum(x[2 + j] for x in vals) / n if n else float("nan")
                out[f"{lens}_{kind}"] = 100.0 * share
        rows.append(out)
    return pd.DataFrame(rows, columns=["layer", "n_patches", *cols])
