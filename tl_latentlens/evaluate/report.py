"""Outputs of a study: the table (CSV + text), plots, leap heatmap and ``report.json``."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tl_latentlens.evaluate.chance import constant_answer, sentence_words, shuffled_label_rates
from tl_latentlens.evaluate.controls import ControlResult, control_cell
from tl_latentlens.evaluate.hubness import hubness
from tl_latentlens.evaluate.records import latest_records
from tl_latentlens.lens.leap import mid_layer_leap
from tl_latentlens.render.pictures import layer_curve_png, leap_heatmap_png

__all__ = ["LENS_NAMES", "chance_level", "format_chance", "format_table", "write_outputs"]

logger = logging.getLogger(__name__)

#: Record lens name -> display name.
LENS_NAMES = {"latent": "LatentLens", "logit": "LogitLens", "embedding": "EmbeddingLens"}


def _topk_col(table: Any) -> str:
    cols = [c for c in table.columns if c.startswith("latent_top")]
    if not cols:
        raise ValueError("not a study table: no latent_top<k> column")
    return cols[0][len("latent_") :]


def format_table(table: Any, controls: Sequence[ControlResult] = ()) -> str:
    """The per-layer table as aligned text (percentages, one decimal), the positive controls'
    rows first when given.

    Control rows (:mod:`~tl_latentlens.evaluate.controls`) are labelled ``text <layer>``
    (every bank layer) and ``visual 0`` (layer 0, where the injected word must come back); their
    cells add the 95 % interval resampling sentences (words); the text control's LogitLens is
    scored on the next word (``next``). A line under the table says how they were made.

    Example:
        >>> print(format_table(aggregate("study/judgements.jsonl"), [text, visual]))
        layer  n  LatentLens top5 / @1  LogitLens top5 / @1  EmbeddingLens top5 / @1
    """
    top = _topk_col(table)

    def pct(x: float) -> str:
        return "  -  " if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:5.1f}"

    head = ["layer", "patches"] + [f"{name} {top} / @1" for name in LENS_NAMES.values()]
    rows = _control_rows(controls)
    for _, r in table.iterrows():
        layer = float(r["layer"])
        cells = [str(int(layer)) if layer.is_integer() else str(layer), str(int(r["n_patches"]))]
        for lens in LENS_NAMES:
            errs = int(r[f"{lens}_errors"])
            cell = f"{pct(r[f'{lens}_{top}'])} / {pct(r[f'{lens}_pass1'])}"
            cells.append(cell + (f" ({errs} err)" if errs else ""))
        rows.append(cells)
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in [head, *rows]]
    lines += [f"{c.label}: {c.description}" for c in controls]
    lines += [f"! {f}" for c in controls for f in c.failures()]
    return "\n".join(lines)


def _control_rows(controls: Sequence[ControlResult]) -> list[list[str]]:
    """Table rows of the controls: the text control at every layer, the visual one at 0."""
    rows = []
    for c in controls:
        layers = c.layers if c.kind == "text" else [x for x in c.layers if x == 0]
        for layer in layers:
            cells = [f"{c.kind} {layer}", str(max(r.n for r in c.rows if r.layer == layer))]
            for lens in LENS_NAMES:
                try:
                    r = c.row(lens, layer)
                except KeyError:
                    cells.append("-")
                    continue
                cells.append(control_cell(r) + (" next" if r.target == "next word" else ""))
            rows.append(cells)
    return rows


def format_chance(chance: dict[str, Any] | None) -> str:
    """The study's chance levels in words (``""`` without them): the constant answer, and
    LatentLens's rate with the labels shuffled between images, per layer."""
    if not chance:
        return ""
    lines = []
    if chance.get("words"):
        lines.append(
            f"Chance level: answering the same {len(chance['words'])} bank words for every patch "
            f"({', '.join(chance['words'])}) names the object of {chance['strict']:.0f} % of these "
            "patches under the strict judge (hypernyms count: 'animal' names every animal)."
        )
    shuffled = chance.get("shuffled", {}).get("latent")
    if shuffled:
        lines.append(
            "LatentLens's own words against another image's labels (its chance level, %): "
            + ", ".join(f"{layer}: {v:.1f}" for layer, v in shuffled.items())
        )
    return "\n".join(lines)


def _curves(table: Any, column: str) -> dict[str, dict[float, float]]:
    out: dict[str, dict[float, float]] = {}
    for lens, name in LENS_NAMES.items():
        pts = {
            float(r["layer"]): float(r[f"{lens}_{column}"])
            for _, r in table.iterrows()
            if not math.isnan(float(r[f"{lens}_{column}"]))
        }
        if pts:
            out[name] = pts
    return out


def _plots(
    out: Path, table: Any, explanations: Sequence[Any], config: Any, files: dict[str, Path]
) -> None:
    top = _topk_col(table)
    for column, name, what in (
        (top, "layers.png", f"any of the top-{top[3:]} words"),
        ("pass1", "layers_pass1.png", "top-1 word"),
    ):
        curves = _curves(table, column)
        if curves:
            files[name] = layer_curve_png(
                curves, out / name, title=f"% interpretable ({what}) per layer"
            )
    if config.per_layer:
        logger.info("leap heatmap skipped: per-layer search has no cross-layer matches")
        return
    usable = [e for e in explanations if e.patches]
    if not usable:
        return
    leap = mid_layer_leap(usable)
    leap.to_dataframe("counts").to_csv(out / "leap.csv")
    files["leap.csv"] = out / "leap.csv"
    files["leap.png"] = leap_heatmap_png(leap, out / "leap.png")


#: Sentences of the bank whose words make the constant answer's vocabulary (a paper-size bank has
#: millions; its first sentences hold its common words).
CHANCE_SENTENCES = 100_000
#: Bump when what :func:`chance_level` records changes (an older report's entry is recomputed).
CHANCE_VERSION = 2


def chance_level(
    judgements: Path,
    judge: Any,
    bank: Any,
    k: int,
    bank_identity: Any = None,
    previous: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """The chance levels of a mask-judged study (:mod:`~.chance`), or ``None``.

    ``shuffled``: per lens and layer, the rate of the lens's own words against the labels of
    other images' patches. ``words`` / ``strict`` / ``per_layer`` / ``n``: the constant answer
    from the words of the bank's first :data:`CHANCE_SENTENCES` sentences (what LatentLens could
    answer; only for a bank of sentences). Judges without a WordNet rule (the LLM judge) get
    ``None``.
    ``previous`` (the last report's entry) is returned as it is when it was computed from the same
    judgements, bank, judge rule and ``k``: a resumed study does not load WordNet for it again.
    """
    rule = getattr(judge, "rule", None)
    if rule is None:
        return None
    n = getattr(bank, "n_sentences", None)
    digest = hashlib.sha256(Path(judgements).read_bytes()).hexdigest()
    ident = json.dumps(
        [bank_identity, rule.to_dict(), k, CHANCE_SENTENCES, CHANCE_VERSION], sort_keys=True
    )
    key = f"{digest}:{hashlib.sha256(ident.encode()).hexdigest()}"
    if previous and previous.get("key") == key:
        return previous
    records = list(latest_records(judgements).values())  # read once for both measures
    shuffled = shuffled_label_rates(records, judge.matcher, k)
    out: dict[str, Any] = {
        "shuffled": {
            lens: {str(layer): round(v, 2) for layer, v in rates.items()}
            for lens, rates in shuffled.items()
        },
        "key": key,
    }
    if isinstance(n, int):  # a bank of sentences: the words LatentLens could answer
        words = sentence_words(bank.sentence(i) for i in range(min(n, CHANCE_SENTENCES)))
        out.update(constant_answer(records, words, judge.matcher, k).to_dict())
    return out


def _previous_chance(path: Path) -> dict[str, Any] | None:
    """The ``chance`` entry of an earlier ``report.json`` (``None`` when unreadable)."""
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("chance")
    except (OSError, ValueError, AttributeError):
        return None


def write_outputs(
    out: Path,
    table: Any,
    explanations: Sequence[Any],
    lens: Any,
    images: Sequence[Any],
    judge: Any,
    config: Any,
    plan: Any,
    identity: dict[str, Any],
    controls: Sequence[ControlResult] = (),
) -> tuple[dict[str, Path], dict[str, Any]]:
    """Write ``table.csv``, the plots, ``leap.*``, ``controls.csv`` (with controls) and
    ``report.json``; return (files, report)."""
    files: dict[str, Path] = {"judgements": out / "judgements.jsonl", "plan": out / "plan.json"}
    table.to_csv(out / "table.csv", index=False, float_format="%.2f")
    files["table.csv"] = out / "table.csv"
    if controls:
        import pandas as pd

        pd.concat([c.table() for c in controls]).to_csv(
            out / "controls.csv", index=False, float_format="%.2f"
        )
        files["controls.csv"] = out / "controls.csv"
    hubs = {lens: hubness(files["judgements"], lens=lens) for lens in LENS_NAMES}
    hubs["latent"].to_csv(out / "hubness.csv", index=False, float_format="%.2f")
    files["hubness.csv"] = out / "hubness.csv"
    if config.plots:
        _plots(out, table, explanations, config, files)
    bank = lens.bank
    report = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "protocol": config.protocol,
        "config": config.to_dict(),
        "k": config.k,
        "seed": config.seed,
        "model": identity["model"],
        "bank": {
            "path": str(getattr(bank, "root", getattr(bank, "path", ""))),
            "identity": identity["bank"],
        },
        "judge": judge.describe(),
        "images": [
            {
                "id": im.id,
                "source": im.source,
                "fingerprint": fp,
                "annotated": im.annotated,
                "labels": list(im.labels),
            }
            for im, (_, fp, _labels) in zip(images, identity["images"])
        ],
        "sampling": {
            "requested_per_layer": plan.requested,
            "paired": plan.paired,
            "per_layer": plan.stats,
        },
        "table": json.loads(table.to_json(orient="records")),
        "hubness": {lens: json.loads(h.to_json(orient="records")) for lens, h in hubs.items()},
        "chance": chance_level(
            files["judgements"],
            judge,
            bank,
            config.k,
            identity["bank"],
            _previous_chance(out / "report.json"),
        ),
        "controls": [c.to_dict() for c in controls],
        "files": {name: str(path.name) for name, path in files.items()},
    }
    (out / "report.json").write_text(
        json.dumps(report, indent=1, ensure_ascii=False), encoding="utf-8"
    )
    files["report.json"] = out / "report.json"
    return files, report
