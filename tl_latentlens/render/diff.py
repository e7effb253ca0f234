"""A small standalone page for an :class:`~tl_latentlens.lens.diff.ExplanationDiff`.

Per layer: the mean top-k overlap (a bar), and the patch grid with each cell coloured by its
overlap (red: none of the neighbours kept, green: all kept), the top word after the
intervention in the cell and the before / after words on hover; below it, a table of the
visual tokens whose neighbours changed. No script, no external resource: it works offline.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

from tl_latentlens._io import atomic_write_text
from tl_latentlens.render._markup import esc, fmt_layer

__all__ = ["diff_html"]

logger = logging.getLogger(__name__)

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:24px;color:#1f2933}
h1{font-size:20px;margin:0 0 8px} h2{font-size:16px;margin:24px 0 6px}
table{border-collapse:collapse;font-size:13px} td,th{padding:3px 6px;border:1px solid #d9dee3}
.ll-bar{display:inline-block;height:10px;background:#2f855a;vertical-align:middle}
.ll-grid td{width:64px;height:40px;text-align:center;font-size:11px;overflow:hidden}
.ll-note{color:#52606d;font-size:13px} code{font-size:12px}
"""


def _colour(overlap: float) -> str:
    """Red (0) through yellow to green (1), light enough for dark text."""
    x = min(1.0, max(0.0, float(overlap)))
    red = int(250 - 90 * x) if x > 0.5 else 250
    green = int(160 + 90 * min(1.0, 2 * x))
    return f"rgb({red},{green},160)"


def _interventions(records: Sequence[dict]) -> str:
    if not records:
        return "<i>none (plain run)</i>"
    return ", ".join(
        f"<code>{esc(r.get('fn', '?'))}</code> at <code>{esc(r.get('hook', '?'))}</code>"
        for r in records
    )


def diff_html(
    diff: Any,
    path: str | os.PathLike | None = None,
    title: str = "How the intervention moved the LatentLens neighbours",
    max_rows: int = 50,
) -> str:
    """The page (see the module docstring) as a string; written atomically to ``path``.

    Args:
        diff: An :class:`~tl_latentlens.lens.diff.ExplanationDiff`.
        path: Where to write it (``None``: only return it).
        title: Page title.
        max_rows: At most this many changed visual tokens listed per layer.

    Example:
        >>> diff_html(plain.diff(ablated), "diff.html")
    """
    summary = diff.summary()
    parts = [
        f"<h1>{esc(title)}</h1>",
        f'<p class="ll-note">before: {_interventions(diff.before_interventions)} · after: '
        f"{_interventions(diff.after_interventions)} · k = {int(diff.k)} · overlap = share "
        "of the top-k neighbours (text hook, sentence, position) both runs have</p>",
        "<h2>Mean overlap per layer</h2><table><tr><th>hook</th><th>layer</th>"
        "<th>overlap</th><th>RBO</th><th>token Jaccard</th><th>Δ similarity</th>"
        "<th>top-1 changed</th><th>entered most</th></tr>",
    ]
    for row in summary.itertuples(index=False):
        parts.append(
            f"<tr><td><code>{esc(row.hook)}</code></td><td>{fmt_layer(row.layer)}</td>"
            f'<td><span class="ll-bar" style="width:{100 * row.overlap:.0f}px"></span> '
            f"{row.overlap:.2f}</td><td>{row.rbo:.2f}</td><td>{row.jaccard:.2f}</td>"
            f"<td>{row.similarity_change:+.3f}</td><td>{row.top1_changed:.0%}</td>"
            f"<td>{esc(row.entered)}</td></tr>"
        )
    parts.append("</table>")
    rows_n, cols_n = (int(x) for x in diff.grid)
    for row in summary.itertuples(index=False):
        patches = diff.at(row.hook)
        parts.append(
            f"<h2>Layer {fmt_layer(row.layer)} · <code>{esc(row.hook)}</code> · mean overlap "
            f"{row.overlap:.2f}</h2>"
        )
        for image in sorted({p.image_index for p in patches}):
            cells = {(p.row, p.col): p for p in patches if p.image_index == image and p.row >= 0}
            if not cells:
                continue
            grid = ['<table class="ll-grid">']
            for r in range(rows_n):
                grid.append("<tr>")
                for c in range(cols_n):
                    p = cells.get((r, c))
                    if p is None:
                        grid.append("<td></td>")
                        continue
                    tip = f"before: {', '.join(p.before)}\nafter: {', '.join(p.after)}"
                    word = p.after[0] if p.after else ""
                    grid.append(
                        f'<td style="background:{_colour(p.overlap)}" title="{esc(tip)}">'
                        f"{esc(word)}<br><small>{p.overlap:.1f}</small></td>"
                    )
                grid.append("</tr>")
            grid.append("</table>")
            parts.append("".join(grid))
        changed = [p for p in patches if p.overlap < 1.0][:max_rows]
        if changed:
            parts.append(
                "<table><tr><th>token</th><th>row, col</th><th>overlap</th><th>before</th>"
                "<th>after</th><th>entered</th><th>left</th></tr>"
            )
            for p in changed:
                parts.append(
                    f"<tr><td>{p.index}</td><td>{p.row}, {p.col}</td><td>{p.overlap:.2f}</td>"
                    f"<td>{esc(', '.join(p.before))}</td><td>{esc(', '.join(p.after))}</td>"
                    f"<td>{esc(', '.join(p.entered))}</td><td>{esc(', '.join(p.left))}</td></tr>"
                )
            parts.append("</table>")
        else:
            parts.append('<p class="ll-note">every visual token kept all its neighbours</p>')
    page = (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{esc(title)}</title>'
        f"<style>{_CSS}</style></head><body>{''.join(parts)}</body></html>"
    )
    if path is not None:
        atomic_write_text(path, page, parents=True)
        logger.info("wrote %s", path)
    return page
