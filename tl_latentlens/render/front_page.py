"""The demo's front page (``index.html``): what the reader sees, the showcased images linked to
their reports, the per-layer table in words and numbers, timings in words.

It takes plain data (:class:`FrontPage`), so any app can write one; every string is escaped
and every link must be relative (the page travels with its folder, never names the machine).

Example:
    >>> page = FrontPage(showcase=(ShowcaseEntry("cat", "cat.html", "cat_patches.png"),),
    ...                  timings={"model_load_s": 3.6, "bank_s": 654.0})
    >>> html = front_page_html(page, "latentlens_demo/index.html")
"""

from __future__ import annotations

import logging
import math
import numbers
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any
from urllib.parse import quote, urlsplit

from tl_latentlens._io import atomic_write_text
from tl_latentlens.render._markup import esc

logger = logging.getLogger(__name__)

__all__ = [
    "AbsoluteLinkError",
    "FrontPage",
    "ShowcaseEntry",
    "format_duration",
    "front_page_html",
    "timings_in_words",
]

#: Study-table lens prefix -> display name, in column order.
LENSES = {"latent": "LatentLens", "logit": "LogitLens", "embedding": "EmbeddingLens"}
#: Verdict levels of the study table -> what they mean.
LEVELS = {
    "concrete": "names the object",
    "abstract": "a related concept",
    "global": "another object in the image",
}
#: Hubness-table columns -> headers (others are shown with their name made readable).
HUBNESS_HEADERS = {
    "layer": "Layer",
    "slots": "Top-1 slots",
    "distinct": "Distinct words",
    "max_k_occurrence": "Most slots of one word",
    "top5_share": "Share of the 5 most frequent words (%)",
    "hubs": "Most frequent words",
}
#: Timing keys (``<what>_s``) -> words.
TIMING_WORDS = {"model_load": "model", "bank": "bank", "explain": "explanations", "study": "study"}


class AbsoluteLinkError(ValueError):
    """A front-page link is absolute (a machine path or a URL) instead of relative."""


@dataclass(frozen=True)
class ShowcaseEntry:
    """One explained image on the front page (links relative to the page's folder).

    Attributes:
        name: What the image is called (the report's name).
        report: Link to its HTML report.
        picture: Link to its patch-words picture (image, patch grid, top word per patch).
        thumbnail: Link to a plain picture of the image, shown beside ``picture``.
    """

    name: str
    report: str
    picture: str | None = None
    thumbnail: str | None = None


@dataclass(frozen=True)
class FrontPage:
    """Everything the front page shows, as plain data.

    Attributes:
        title: Page title.
        showcase: The explained images.
        table: Per-layer study rows (``DataFrame.to_dict("records")``: ``layer``,
            ``n_patches``, ``<lens>_top<k>``, ``<lens>_pass1``, intervals, levels); rows whose
            ``layer`` is not a number (a control) are shown with their label.
        chance: The study's chance levels (``strict``, ``per_layer``, ``shuffled``; other
            per-layer mappings become columns of their own).
        chance_text: The chance levels in words.
        hubness: Per-layer hubness rows of LatentLens's top-1 words.
        timings: Seconds per stage (``model_load_s``, ``bank_s``, ...).
        bank: What the bank is, in words (no paths).
        notes: Further lines (e.g. the bank's number format).
        leap: Link to the mid-layer-leap picture.
        hook_note: Which layer the patch-words pictures show.
        controls: The lens's positive controls, rows in the study table's columns with
            ``layer`` as a label (``"text 8"``, ``"visual 0"``) and ``n_patches`` the positions
            scored (:meth:`tl_latentlens.evaluate.controls.ControlResult.table`).
        control_notes: What the controls ran and any failure, one line each.
    """

    title: str = "LatentLens demo"
    showcase: tuple[ShowcaseEntry, ...] = ()
    table: tuple[Mapping[str, Any], ...] = ()
    chance: Mapping[str, Any] | None = None
    chance_text: str = ""
    hubness: tuple[Mapping[str, Any], ...] = ()
    timings: Mapping[str, float] = field(default_factory=dict)
    bank: str = ""
    notes: tuple[str, ...] = ()
    leap: str | None = None
    hook_note: str = "a middle layer"
    controls: tuple[Mapping[str, Any], ...] = ()
    control_notes: tuple[str, ...] = ()


def format_duration(seconds: float) -> str:
    """Seconds in words: ``3.6 s``, ``10.9 min``, ``1.5 h``.

    Example:
        >>> format_duration(654)
        '10.9 min'
    """
    if seconds != seconds:
        return "?"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def timings_in_words(timings: Mapping[str, float]) -> str:
    """``{"model_load_s": 3.6, "bank_s": 654, "total_s": 700}`` ->
    ``"model 3.6 s, bank 10.9 min; total 11.7 min"``.

    Example:
        >>> timings_in_words({"model_load_s": 3.6, "bank_s": 654.0})
        'model 3.6 s, bank 10.9 min'
    """
    parts, total = [], None
    for key, value in timings.items():
        what = key[:-2] if key.endswith("_s") else key
        if what == "total":
            total = value
            continue
        parts.append(f"{TIMING_WORDS.get(what, what.replace('_', ' '))} {format_duration(value)}")
    text = ", ".join(parts)
    if total is not None:
        text += f"{'; ' if text else ''}total {format_duration(total)}"
    return text


def _href(link: str) -> str:
    """A relative link, URL-quoted and escaped for an attribute.

    Raises:
        AbsoluteLinkError: ``link`` is a URL or an absolute path.
    """
    parts = urlsplit(link)
    if (
        parts.scheme
        or parts.netloc
        or PurePosixPath(link).is_absolute()
        or PureWindowsPath(link).is_absolute()
        or PureWindowsPath(link).drive
    ):
        raise AbsoluteLinkError(
            f"front-page link {link!r} is absolute; give it relative to the page's folder "
            "(e.g. os.path.relpath(path, out_dir)) so the folder can be moved or shared"
        )
    return esc(quote(link.replace(os.sep, "/"), safe="/#?=&%"))


def _is_num(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def _pct(x: Any) -> str:
    """A percentage without noise: one decimal below 10, none above."""
    if not _is_num(x):
        return "–"
    return f"{x:.1f}".removesuffix(".0") if abs(x) < 10 else f"{x:.0f}"


def _layer_label(layer: Any) -> str:
    if _is_num(layer):
        return str(int(layer)) if float(layer).is_integer() else f"{layer:g}"
    return str(layer)


def _top_k(rows: Sequence[Mapping[str, Any]]) -> str | None:
    """``"top5"`` from a ``latent_top5`` column (``None``: not a study table)."""
    for row in rows:
        for key in row:
            m = re.fullmatch(r"latent_(top\d+)", str(key))
            if m:
                return m.group(1)
    return None


def _interval(row: Mapping[str, Any], lens: str, top: str) -> str:
    """The 95 % interval as a range (resampling whole images where recorded, else Wilson)."""
    for lo_key, hi_key in ((f"{lens}_{top}_img_lo", f"{lens}_{top}_img_hi"),
                           (f"{lens}_{top}_lo", f"{lens}_{top}_hi")):  # fmt: skip
        lo, hi = row.get(lo_key), row.get(hi_key)
        if _is_num(lo) and _is_num(hi):
            return f"{_pct(lo)}-{_pct(hi)} %"
    return ""


def _per_layer(value: Any, layer: Any) -> Any:
    """``value[layer]`` of a per-layer mapping (keys as numbers or strings)."""
    if not isinstance(value, Mapping):
        return None
    for key in (layer, _layer_label(layer), str(layer)):
        if key in value:
            return value[key]
    return None


def _chance_columns(chance: Mapping[str, Any] | None) -> list[tuple[str, Any]]:
    """(header, per-layer mapping or constant) of each chance level / control to show."""
    if not chance:
        return []
    cols: list[tuple[str, Any]] = []
    if chance.get("words"):
        cols.append(
            (
                "Chance: the same words for every patch (%)",
                chance.get("per_layer") or chance.get("strict"),
            )
        )
    shuffled = chance.get("shuffled")
    if isinstance(shuffled, Mapping) and isinstance(shuffled.get("latent"), Mapping):
        cols.append(("Chance: LatentLens vs shuffled labels (%)", shuffled["latent"]))
    known = {"words", "strict", "per_layer", "n", "key", "shuffled"}
    for key, value in chance.items():  # a control added later: shown as it comes
        if key in known:
            continue
        name = str(key).replace("_", " ")
        if isinstance(value, Mapping) and value and all(_is_num(v) for v in value.values()):
            cols.append((f"{name[:1].upper()}{name[1:]} (%)", value))
        elif isinstance(value, Mapping) and isinstance(value.get("latent"), Mapping):
            cols.append((f"{name[:1].upper()}{name[1:]}, LatentLens (%)", value["latent"]))
    return cols


def _study_table(rows: Sequence[Mapping[str, Any]], chance: Mapping[str, Any] | None) -> str:
    top = _top_k(rows)
    if top is None:
        return ""
    k = top[3:]
    lenses = [lens for lens in LENSES if any(f"{lens}_{top}" in r for r in rows)]
    extra = _chance_columns(chance)
    head = ["Layer", "Patches judged"] + [f"{LENSES[lens]} top-{k} (%)" for lens in lenses]
    head += [h for h, _ in extra]
    body = []
    for row in rows:
        layer = row.get("layer")
        control = not _is_num(layer)
        cells = [f"<th>{esc(_layer_label(layer))}</th>"]
        n = row.get("n_patches")
        cells.append(f'<td class="n">{esc(int(n)) if _is_num(n) else "–"}</td>')
        for lens in lenses:
            value = row.get(f"{lens}_{top}")
            rng = _interval(row, lens, top)
            one = row.get(f"{lens}_pass1")
            errs = row.get(f"{lens}_errors")
            sub = [f'<span class="rng">{esc(rng)}</span>'] if rng else []
            if _is_num(one):
                sub.append(f'<span class="one">top-1 {esc(_pct(one))} %</span>')
            if _is_num(errs) and errs:
                sub.append(f'<span class="err">{int(errs)} judge errors</span>')
            cells.append(f"<td><b>{esc(_pct(value))}</b>{''.join(sub)}</td>")
        for _, source in extra:
            value = source if _is_num(source) else _per_layer(source, layer)
            cells.append(f'<td class="ctl">{esc(_pct(value))}</td>')
        body.append(f"<tr{' class=control' if control else ''}>{''.join(cells)}</tr>")
    heads = "".join(f"<th>{esc(h)}</th>" for h in head)
    table = f'<table class="study"><thead><tr>{heads}</tr></thead><tbody>{"".join(body)}</tbody></table>'
    return f'<div class="scroll">{table}</div>{_levels_table(rows, lenses)}'


def _levels_table(rows: Sequence[Mapping[str, Any]], lenses: Sequence[str]) -> str:
    """Per lens and level, the share of patches (in a fold-out)."""
    present = [lv for lv in LEVELS if any(f"{lens}_{lv}" in r for r in rows for lens in lenses)]
    if not present:
        return ""
    head = "<th>Layer</th>" + "".join(
        f"<th>{esc(LENSES[lens])}: {esc(LEVELS[lv])} (%)</th>" for lens in lenses for lv in present
    )
    body = "".join(
        f"<tr><th>{esc(_layer_label(r.get('layer')))}</th>"
        + "".join(
            f"<td>{esc(_pct(r.get(f'{lens}_{lv}')))}</td>" for lens in lenses for lv in present
        )
        + "</tr>"
        for r in rows
    )
    return (
        "<details><summary>By level: the word names the object, a related concept, or another "
        f'object in the image</summary><div class="scroll"><table class="study levels">'
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div></details>"
    )


def _hubness_table(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return ""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(
        f"<th>{esc(HUBNESS_HEADERS.get(k, str(k).replace('_', ' ').capitalize()))}</th>"
        for k in keys
    )

    def cell(key: str, value: Any) -> str:
        if key == "layer":
            return f"<th>{esc(_layer_label(value))}</th>"
        if _is_num(value):
            text = _pct(value) if isinstance(value, float) else str(value)
            return f'<td class="n">{esc(text)}</td>'
        return f"<td>{esc(value)}</td>"

    body = "".join(f"<tr>{''.join(cell(k, r.get(k)) for k in keys)}</tr>" for r in rows)
    return (
        "<h2>Hubness (LatentLens top-1 words)</h2><p>A few words that answer for many patches "
        "(hubs) make a lens look better or worse than it is: per layer, how many top-1 slots, "
        "how many distinct words, the most slots one word takes, the share of the 5 most "
        f'frequent words, and those words.</p><div class="scroll"><table class="study hub">'
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"
    )


def _showcase(entries: Sequence[ShowcaseEntry], hook_note: str) -> str:
    if not entries:
        return ""
    cards = []
    for e in entries:
        report = _href(e.report)
        pics = []
        if e.thumbnail:
            pics.append(
                f'<a href="{report}"><img class="thumb" loading="lazy" src="{_href(e.thumbnail)}" '
                f'alt="{esc(e.name)}"></a>'
            )
        if e.picture:
            pics.append(
                f'<a href="{report}"><img class="words" loading="lazy" src="{_href(e.picture)}" '
                f'alt="{esc(e.name)}: the top LatentLens word of every patch"></a>'
            )
        cards.append(
            f'<figure class="show"><div class="pics">{"".join(pics)}</div>'
            f'<figcaption><a href="{report}">{esc(e.name)}</a> <small>open the report: every '
            "layer, every patch, three lenses</small></figcaption></figure>"
        )
    return (
        f"<h2>Explained images</h2><p class=note>Each picture shows the top LatentLens word of "
        f"every patch at {esc(hook_note)}. Click one for its report.</p>"
        f'<div class="shows">{"".join(cards)}</div>'
    )


CSS = """
body{margin:0;background:#fff;color:#1f2933;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
main{max-width:1180px;margin:0 auto;padding:12px 24px 48px;box-sizing:border-box}
h1{font-size:26px;margin:12px 0 6px}
h2{font-size:19px;margin:30px 0 8px;padding-bottom:4px;border-bottom:2px solid #d9e2ec}
p{max-width:860px;margin:6px 0}
.note,.facts{color:#52606d}
.facts{font-size:14px}
a{color:#1e63c4}
code{font-family:ui-monospace,"DejaVu Sans Mono",Menlo,monospace;font-size:13px}
.shows{display:grid;grid-template-columns:repeat(auto-fill,minmax(340px,1fr));gap:18px}
.show{margin:0;border:1px solid #d9e2ec;border-radius:8px;padding:10px;background:#f8fafc;min-width:0}
.pics{display:flex;gap:8px;align-items:flex-start}
.pics a{display:block;min-width:0}
.pics img{display:block;max-width:100%;height:auto;border-radius:4px}
.pics .thumb{width:120px;flex:0 0 auto}
.show figcaption{margin-top:6px;font-weight:600}
.show figcaption small{font-weight:400;color:#616e7c}
.scroll{overflow-x:auto;max-width:100%}
table.study{border-collapse:collapse;font-size:13.5px;margin:8px 0}
.study th,.study td{padding:5px 10px;border-bottom:1px solid #e4e7eb;text-align:right;vertical-align:top}
.study thead th{font-weight:600;color:#52606d;border-bottom:2px solid #cbd2d9;text-align:right;max-width:11em}
.study tbody th{text-align:left}
.study td b{font-size:15px;font-variant-numeric:tabular-nums}
.study td span{display:block;font-size:12px;color:#616e7c;white-space:nowrap}
.study td span.err{color:#b44d12}
.study td.ctl{color:#52606d;background:#f5f7fa}
.study tr.control th{font-style:italic}
.study.hub td:last-child{text-align:left}
details{margin:6px 0 12px}
summary{cursor:pointer;color:#1e63c4}
.leap img{max-width:100%;width:720px;height:auto}
"""


def front_page_html(page: FrontPage, path: str | os.PathLike | None = None) -> str:
    """The demo's front page as one HTML document (no scripts; links relative).

    Args:
        page: What to show.
        path: If given, the page is also written there (atomically, UTF-8).

    Returns:
        The HTML text.

    Raises:
        AbsoluteLinkError: A link in ``page`` is absolute (a machine path or a URL).

    Example:
        >>> front_page_html(FrontPage(timings={"model_load_s": 3.6}))[:15]
        '<!doctype html>'
    """
    parts = [f"<h1>{esc(page.title)}</h1>"]
    parts.append(
        "<p>A small vision-language model (an image encoder feeding a language model) looked at "
        "each image below. LatentLens explains what the language model sees in every image "
        "patch by the nearest word among the contextual representations of real sentences (a "
        "bank of text run through the same model), at every layer, beside two baselines: "
        "LogitLens (the model's own next-token guess) and EmbeddingLens (the nearest input "
        "embedding). The table measures how often each lens's words name the object under the "
        "patch.</p>"
    )
    facts = []
    if page.bank:
        facts.append(f"Bank: {esc(page.bank)}.")
    if page.timings:
        facts.append(f"Run time: {esc(timings_in_words(page.timings))}.")
    facts += [esc(n) for n in page.notes if n]
    if facts:
        parts.append(f'<p class="facts">{" ".join(facts)}</p>')
    parts.append(_showcase(page.showcase, page.hook_note))
    if page.controls:
        parts.append(
            "<h2>Positive controls: does the lens find a known answer?</h2><p>Before asking "
            "whether the model's visual tokens are interpretable: does the lens work where the "
            "answer is known? <b>text</b>: residuals of held-out sentences (never in the bank) "
            "at each layer, a hit when the top-k holds the same word (LogitLens: the next word, "
            "which is what it predicts). <b>visual</b>: visual tokens replaced by the input "
            "embedding of a known word, which must come back as that word at layer 0. Below "
            "each number its 95 % interval (resampling whole sentences or words).</p>"
            + _study_table(page.controls, None)
            + "".join(f'<p class="note">{esc(line)}</p>' for line in page.control_notes if line)
        )
    if page.table:
        top = _top_k(page.table) or "top-k"
        parts.append(
            "<h2>Per-layer table: do the words name the object?</h2><p>Percent of labelled "
            "patches of held-out objects (exact search) whose top-"
            f"{esc(top[3:])} words name the object under the patch (strict mask judge); below "
            "each number its 95 % interval (resampling whole images, whose patches are not "
            "independent) and the top-1 rate. LatentLens words are judged as the whole word "
            "containing the matched token. The shaded columns are what chance gets.</p>"
            + _study_table(page.table, page.chance)
        )
    if page.chance_text:
        parts.append(
            "".join(f'<p class="note">{esc(line)}</p>' for line in page.chance_text.splitlines())
        )
    parts.append(_hubness_table(page.hubness))
    if page.leap:
        parts.append(
            '<h2>Mid-layer leap</h2><p class="note">For each layer of the visual tokens (rows), '
            "the text layers (columns) their best matches come from. The LatentLens paper finds "
            "that visual tokens entering the language model match middle text layers best.</p>"
            f'<figure class="leap"><img src="{_href(page.leap)}" alt="mid-layer leap heatmap">'
            "</figure>"
        )
    html = (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta name="generator" content="tl_latentlens"><title>{esc(page.title)}</title>'
        f"<style>{CSS}</style></head><body><main>{''.join(parts)}</main></body></html>\n"
    )
    if path is not None:
        atomic_write_text(path, html, parents=True)
        logger.info("wrote %s", path)
    return html
