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
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tl_latentlens.evaluate.judges import KINDS, Verdict

__all__ = [
    "LENSES",
    "JudgementLog",
    "aggregate",
    "image_interval",
    "latest_records",
    "record_key",
    "wilson_interval",
]

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


def latest_records(
    records: str | os.PathLike | Iterable[dict[str, Any]],
) -> dict[Key, dict[str, Any]]:
    """The latest record per key of a ``judgements.jsonl`` path or of the records themselves."""
    if isinstance(records, (str, os.PathLike)):
        return JudgementLog(records).latest()
    return {record_key(r): r for r in records}


def image_interval(
    per_image: Sequence[tuple[int, int]], n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """A 95 % interval of a hit rate whose patches come in images, widened to hold Wilson's.

    Patches of one image (often of one object) are not independent, so Wilson's interval, which
    counts every patch as a draw, is too narrow when a few objects fill many patches. This
    resamples whole images (a percentile bootstrap of ``sum(hits) / sum(patches)``) and returns
    the hull of that interval and :func:`wilson_interval` of the pooled counts: the bootstrap is
    degenerate at 0 hits, where Wilson's is not.

    Args:
        per_image: ``(hits, patches)`` of every image.
        n_boot: Bootstrap resamples.
        seed: Their seed (the interval is reproducible).
        level: Coverage.

    Example:
        >>> [round(x, 3) for x in image_interval([(5, 5), (0, 5), (0, 5), (0, 5)])]
        [0.0, 0.75]
    """
    counts = np.asarray(per_image, dtype=np.float64).reshape(-1, 2)
    hits, n = int(counts[:, 0].sum()), int(counts[:, 1].sum())
    lo, hi = wilson_interval(hits, n)
    if n == 0 or len(counts) < 2:
        return lo, hi
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(counts), size=(n_boot, len(counts)))
    sums = counts[picks].sum(axis=1)  # [n_boot, 2]
    rates = sums[:, 0] / np.maximum(sums[:, 1], 1.0)
    tail = (1.0 - level) / 2
    b_lo, b_hi = np.quantile(rates, [tail, 1.0 - tail])
    return min(lo, float(b_lo)), max(hi, float(b_hi))


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
        Wilson interval of the top-k rate (``<lens>_top<k>_lo`` / ``_hi``), the top-k rate
        of each verdict kind alone (``<lens>_concrete``, ``_abstract``, ``_global``), and last
        the 95 % interval that resamples whole images (``<lens>_top<k>_img_lo`` / ``_img_hi``,
        :func:`image_interval`).

    Raises:
        ValueError: Unknown kinds, or records judged with different numbers of candidates.
    """
    import pandas as pd

    bad = [x for x in kinds if x not in KINDS]
    if bad:
        raise ValueError(f"unknown verdict kinds {bad}; known: {KINDS}")
    latest = latest_records(records)
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
    cols += [f"{lens}_top{top}_img_{end}" for lens in LENSES for end in ("lo", "hi")]
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
                image,
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
            images = [x[0] for x in row.get(lens, [])]
            vals = [x[1:] for x in row.get(lens, [])]
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
            per_image: dict[str, list[int]] = {}
            for image, x in zip(images, vals):
                per_image.setdefault(image, [0, 0])
                per_image[image][0] += int(x[0])
                per_image[image][1] += 1
            lo, hi = image_interval([tuple(c) for c in per_image.values()])
            out[f"{lens}_top{top}_img_lo"], out[f"{lens}_top{top}_img_hi"] = 100 * lo, 100 * hi
        rows.append(out)
    return pd.DataFrame(rows, columns=["layer", "n_patches", *cols])
