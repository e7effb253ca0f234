"""Static CSS and JS of the explanation page (all rules scoped under ``.ll-root``)."""

from __future__ import annotations

__all__ = ["PAGE_CSS", "INIT_JS"]

PAGE_CSS = """
.ll-root{--ll-ink:#1f2933;--ll-mute:#616e7c;--ll-line:#d9e2ec;--ll-soft:#f5f7fa;
 --ll-accent:#1e63c4;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
 color:var(--ll-ink);max-width:1500px;margin:0 auto;padding:8px 20px 40px}
.ll-root h1{font-size:22px;margin:8px 0 12px}
.ll-root h2{font-size:17px;margin:28px 0 10px;padding-bottom:4px;border-bottom:2px solid var(--ll-line)}
.ll-root h2 code{font-size:15px}
.ll-root h2 small,.ll-root figcaption small{color:var(--ll-mute);font-weight:400}
.ll-root code,.ll-root .ll-tok{font-family:ui-monospace,"DejaVu Sans Mono",Menlo,monospace;font-size:12.5px}
.ll-root .ll-tok{white-space:pre;background:#eef2f7;border:1px solid #dde3ea;border-radius:3px;padding:0 3px}
.ll-root .ll-head-body{display:flex;gap:24px;align-items:flex-start;flex-wrap:wrap}
.ll-root .ll-meta{display:grid;grid-template-columns:max-content 1fr;gap:4px 14px;margin:0;flex:1 1 480px}
.ll-root .ll-meta dt{color:var(--ll-mute);font-weight:600}
.ll-root .ll-meta dd{margin:0;overflow-wrap:anywhere}
.ll-root .ll-prompt{white-space:pre-wrap;background:var(--ll-soft);border-radius:4px;padding:2px 6px;display:inline-block}
.ll-root .ll-thumb{position:relative;width:300px;flex:0 0 auto;border:1px solid var(--ll-line);border-radius:4px;overflow:hidden}
.ll-root .ll-thumb img{display:block;width:100%;height:auto}
.ll-root .ll-thumb-grid{position:absolute;inset:0;display:grid}
.ll-root .ll-thumb-grid a{border:1px solid rgba(255,255,255,.55);box-shadow:inset 0 0 0 1px rgba(0,0,0,.15)}
.ll-root .ll-thumb-grid a:hover{background:rgba(255,255,255,.35)}
.ll-root .ll-grids{display:flex;flex-wrap:wrap;gap:18px 28px}
.ll-root .ll-grid{margin:0;max-width:100%;overflow-x:auto}
.ll-root .ll-grid figcaption{font-weight:600;margin-bottom:4px}
.ll-root table{border-collapse:collapse}
.ll-root .ll-grid td{border:1px solid #fff;padding:0;text-align:center;font-size:12px}
.ll-root .ll-grid td a,.ll-root .ll-grid td span{display:block;max-width:9em;min-width:3.2em;padding:3px 5px;
 overflow:hidden;text-overflow:ellipsis;white-space:pre;color:var(--ll-ink);text-decoration:none}
.ll-root .ll-grid td a:hover{outline:2px solid var(--ll-accent)}
.ll-root .ll-dense td{font-size:10.5px}
.ll-root .ll-dense td a,.ll-root .ll-dense td span{max-width:4.6em;min-width:2.4em;padding:1px 2px}
.ll-root .ll-grid .ll-extra{display:inline-block;margin:1px}
.ll-root .ll-grid th{font-weight:400;color:var(--ll-mute);font-size:11px;padding:0 4px}
.ll-root .ll-note{color:var(--ll-mute);margin:4px 0 10px}
.ll-root .ll-card{border:1px solid var(--ll-line);border-radius:6px;margin:0 0 14px;background:#fff;scroll-margin-top:12px}
.ll-root .ll-card:target{border-color:var(--ll-accent);box-shadow:0 0 0 3px rgba(30,99,196,.2)}
.ll-root .ll-card-head{background:var(--ll-soft);border-bottom:1px solid var(--ll-line);padding:6px 12px;
 border-radius:6px 6px 0 0;display:flex;gap:14px;align-items:baseline;flex-wrap:wrap}
.ll-root .ll-card-head b{font-size:15px}
.ll-root .ll-card-head .ll-where{color:var(--ll-mute)}
.ll-root .ll-card-body{display:grid;grid-template-columns:minmax(0,1fr) auto;gap:8px 18px;padding:4px 12px 10px}
.ll-root .ll-cv{min-width:0;min-height:40px}
.ll-root .ll-cv>div{margin:0!important}
.ll-root .ll-cv[data-compact]>div>div:first-child,
.ll-root .ll-cv div:has(>div>label[for="layer-selector"]),
.ll-root .ll-cv div:has(>div>label[for="neuron-selector"]){display:none!important}
.ll-root .ll-cv div:has(>.colored-tokens){border:1px solid #cbd5e1!important;border-radius:5px!important;
 background:#f8fafc!important;padding:6px 10px!important;margin:6px 0!important}
.ll-root .ll-cv[data-compact]>div{counter-reset:llrank}
.ll-root .ll-cv[data-compact] div:has(>.colored-tokens){counter-increment:llrank;display:flex!important;
 gap:8px;align-items:baseline}
.ll-root .ll-cv[data-compact] div:has(>.colored-tokens)::before{content:counter(llrank);color:var(--ll-mute);
 font-size:12px;min-width:1.2em;text-align:right}
.ll-root .ll-fallback{margin:0;padding:0;list-style:none;counter-reset:llrank;display:flex;
 flex-direction:column}
.ll-root .ll-fallback li{counter-increment:llrank;display:flex;gap:8px;align-items:baseline;
 white-space:pre-wrap;border:1px solid #cbd5e1;border-radius:5px;background:#f8fafc;
 padding:6px 10px;margin:6px 0;line-height:1.6;box-sizing:border-box;min-height:37px}
.ll-root .ll-fallback li::before{content:counter(llrank);color:var(--ll-mute);font-size:12px;
 min-width:1.2em;text-align:right}
.ll-root mark{background:#1e63c4;color:#fff;border-radius:2px;padding:0 1px}
.ll-root .ll-lenses{font-size:12.5px;margin-top:6px;align-self:start;width:230px}
.ll-root .ll-lenses.ll-n2{width:370px}
.ll-root .ll-lenses.ll-n3{width:500px}
.ll-root .ll-lenses th{text-align:left;color:var(--ll-mute);font-weight:600;border-bottom:1px solid var(--ll-line);padding:3px 8px}
.ll-root .ll-lenses td{padding:3px 8px;border-bottom:1px solid #eef2f7;vertical-align:baseline}
.ll-root .ll-lenses td.ll-num{text-align:right;color:var(--ll-mute);font-variant-numeric:tabular-nums}
.ll-root .ll-lenses th.ll-lens{border-left:1px solid var(--ll-line)}
.ll-root .ll-lenses td.ll-lens{border-left:1px solid var(--ll-line)}
@media (max-width:900px){.ll-root .ll-card-body{grid-template-columns:1fr}}
"""

# Mounts one circuitsvis TopkSamples per card: all at once for small pages, else when a card
# comes near the viewport. ``__ROOT__`` is replaced by the root element's id.
INIT_JS = """
(function () {
  "use strict";
  var root = document.getElementById("__ROOT__");
  if (!root) { return; }
  var data = JSON.parse(root.querySelector("script.ll-data").textContent);
  var slots = Array.prototype.slice.call(root.querySelectorAll(".ll-cv[data-key]"));
  var mounted = 0;
  if (typeof CircuitsVis === "undefined" || !CircuitsVis[data.component]) {
    console.error("tl_latentlens: circuitsvis did not load; showing plain sentences");
    return;
  }
  function mount(el) {
    if (el.hasAttribute("data-mounted")) { return; }
    el.setAttribute("data-mounted", "1");
    var props = data.cards[el.getAttribute("data-key")];
    if (!props) { return; }
    try {
      CircuitsVis.render(el.id, CircuitsVis[data.component], props);
      mounted += 1;
      root.setAttribute("data-ll-mounted", String(mounted));
    } catch (err) {
      console.error("tl_latentlens: circuitsvis failed on " + el.id, err);
    }
  }
  root.setAttribute("data-ll-slots", String(slots.length));
  if (slots.length <= data.eager || !("IntersectionObserver" in window)) {
    slots.forEach(mount);
    return;
  }
  var seen = new IntersectionObserver(function (entries) {
    entries.forEach(function (e) {
      if (e.isIntersecting) { seen.unobserve(e.target); mount(e.target); }
    });
  }, { rootMargin: "1200px 0px" });
  slots.forEach(function (el) { seen.observe(el); });
})();
"""
