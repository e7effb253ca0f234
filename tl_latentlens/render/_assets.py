"""Static CSS and JS of the explanation page (all rules scoped under ``.ll-root``)."""

from __future__ import annotations

__all__ = ["PAGE_CSS", "INIT_JS", "EXPLORE_CSS", "EXPLORE_JS"]

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

EXPLORE_CSS = """
.ll-root h3{font-size:15px;margin:4px 0 8px}
.ll-root h3 small{color:var(--ll-mute);font-weight:400}
.ll-root .ll-x-main{display:flex;gap:20px;align-items:flex-start;flex-wrap:wrap}
.ll-root .ll-x-left{flex:0 1 440px;min-width:0;max-width:100%}
.ll-root .ll-x-figs{display:flex;flex-wrap:wrap;gap:10px}
.ll-root .ll-x-fig{margin:0;flex:1 1 200px;max-width:440px;min-width:0}
.ll-root .ll-x-fig figcaption{color:var(--ll-mute);font-size:12px}
.ll-root .ll-x .ll-thumb{width:100%;background:#334e68}
.ll-root .ll-x-cell{display:flex;align-items:center;justify-content:center;min-width:0;overflow:hidden;
 border:1px solid rgba(255,255,255,.4);cursor:pointer;user-select:none}
.ll-root .ll-x-cell span{font-size:11px;line-height:1.15;color:#fff;background:rgba(15,23,42,var(--ll-a,.6));
 border-radius:2px;padding:0 2px;white-space:pre;max-width:100%;overflow:hidden;text-overflow:ellipsis}
.ll-root .ll-x-dense .ll-x-cell span{font-size:8px;padding:0}
.ll-root .ll-x-vdense .ll-x-cell span{display:none}
.ll-root .ll-x-cell:hover{outline:2px solid #fff;outline-offset:-2px}
.ll-root .ll-x-cell.ll-x-sel{outline:3px solid #f59e0b;outline-offset:-3px}
.ll-root .ll-x-cell.ll-x-lock{outline-color:#dc2626}
.ll-root .ll-x-cell.ll-x-in{box-shadow:inset 0 0 0 3px #22d3ee}
.ll-root .ll-x-slide{display:flex;align-items:center;gap:10px;margin:10px 0 0;font-weight:600;flex-wrap:wrap}
.ll-root .ll-x-slider{flex:1 1 160px;min-width:0}
.ll-root .ll-x-out{font-weight:400}
.ll-root .ll-x-ticks{display:flex;justify-content:space-between;font-size:11px;color:var(--ll-mute);
 padding:0 2px 0 56px}
.ll-root .ll-x-panel{flex:1 1 460px;min-width:0;border:1px solid var(--ll-line);border-radius:6px;
 padding:8px 12px;min-height:180px}
.ll-root .ll-x-phead{display:flex;gap:12px;align-items:baseline;flex-wrap:wrap;margin-bottom:6px}
.ll-root .ll-x-phead b{font-size:15px}
.ll-root .ll-x-state{color:var(--ll-mute);font-size:12px}
.ll-root .ll-x-cols{display:grid;grid-template-columns:minmax(0,2.2fr) minmax(0,1fr) minmax(0,1fr);gap:14px}
.ll-root .ll-x-cols h4{margin:0 0 4px;font-size:13px;color:var(--ll-mute)}
.ll-root .ll-x-list{margin:0;padding-left:1.6em}
.ll-root .ll-x-list li{margin:2px 0 6px}
.ll-root .ll-x-list .ll-num{color:var(--ll-mute);font-size:12px;font-variant-numeric:tabular-nums}
.ll-root .ll-x-sent{color:var(--ll-mute);font-size:12px;white-space:pre-wrap;overflow-wrap:anywhere}
.ll-root .ll-x-below{display:flex;flex-wrap:wrap;gap:18px 28px;margin-top:18px;align-items:flex-start}
.ll-root .ll-x-layers{flex:1 1 640px;min-width:0}
.ll-root .ll-x-leap{flex:0 1 420px;min-width:0;max-width:100%}
.ll-root .ll-x-scroll{overflow-x:auto;max-width:100%}
.ll-root .ll-x-table{font-size:12.5px}
.ll-root .ll-x-table th,.ll-root .ll-x-table td{padding:3px 8px;border-bottom:1px solid #eef2f7;text-align:left;
 vertical-align:baseline}
.ll-root .ll-x-table thead th{color:var(--ll-mute);border-bottom:1px solid var(--ll-line)}
.ll-root .ll-x-table tbody tr{cursor:pointer}
.ll-root .ll-x-table tbody tr:hover{background:var(--ll-soft)}
.ll-root .ll-x-table tr.ll-x-cur{background:#fff4dc}
.ll-root .ll-x-table .ll-tok{margin-right:4px}
.ll-root .ll-x-table .ll-num{color:var(--ll-mute);font-size:11.5px}
.ll-root .ll-x-leap table{font-size:12px}
.ll-root .ll-x-leap th{font-weight:400;color:var(--ll-mute);padding:2px 5px;font-size:11px}
.ll-root .ll-x-leap tr.ll-x-cur th{color:var(--ll-ink);font-weight:700}
.ll-root .ll-x-leap td{padding:0;border:1px solid #fff;min-width:2.4em;background:rgba(30,99,196,var(--ll-s,0))}
.ll-root .ll-x-leap button{all:unset;display:block;box-sizing:border-box;width:100%;padding:4px;
 text-align:center;cursor:pointer;font-variant-numeric:tabular-nums}
.ll-root .ll-x-leap button.ll-x-light{color:#fff}
.ll-root .ll-x-leap button:hover,.ll-root .ll-x-leap button:focus-visible{outline:2px solid #f59e0b}
"""

# The explorer (:mod:`tl_latentlens.render._explore`): hover shows a patch, click locks it
# (again or Escape unlocks), arrows move the lock, the slider / a table row picks the layer,
# a leap cell picks layer and patch. Strings from the data are set with textContent only.
EXPLORE_JS = """
(function () {
  "use strict";
  var root = document.getElementById("__ROOT__");
  var sec = root && root.querySelector(".ll-x");
  if (!sec) { return; }
  try { explore(); } catch (err) { console.error("tl_latentlens: explorer failed", err); }
  function explore() {
    var X = JSON.parse(root.querySelector("script.ll-data").textContent).x;
    var cur = 0, locked = -1, shown = 0, mark = null;
    var cells = [].slice.call(sec.querySelectorAll(".ll-x-cell"));
    var where = {};
    X.patches.forEach(function (p, k) { where[p[1] + ":" + p[2] + ":" + p[3]] = k; });
    var slider = sec.querySelector(".ll-x-slider"), out = sec.querySelector(".ll-x-out");
    var panel = sec.querySelector(".ll-x-panel"), table = sec.querySelector(".ll-x-table");
    var leapRows = [].slice.call(sec.querySelectorAll(".ll-x-leap tr[data-l]"));
    function el(tag, cls, text) {
      var e = document.createElement(tag);
      if (cls) { e.className = cls; }
      if (text !== undefined && text !== null) { e.textContent = text; }
      return e;
    }
    function chip(t) { return el("code", "ll-tok", t.replace(/\\r?\\n/g, "\\u21b5")); }
    function wordChip(w, t) {  // a sub-word token shown inside its whole word
      var c = el("code", "ll-tok ll-word");
      c.title = JSON.stringify(t);
      c.appendChild(document.createTextNode(w[0]));
      c.appendChild(el("mark", null, w[1]));
      c.appendChild(document.createTextNode(w[2]));
      return c;
    }
    function num(x, d) { return x === null || x === undefined ? "-" : x.toFixed(d); }
    function has(rows, k) { return rows.some(function (r) { return r[k] && r[k].length; }); }
    function paintGrid() {
      var row = X.lat[cur], sims = [];
      row.forEach(function (it) { if (it && it.length && it[0][1] !== null) { sims.push(it[0][1]); } });
      var lo = sims.length ? Math.min.apply(null, sims) : 0;
      var hi = sims.length ? Math.max.apply(null, sims) : 0;
      cells.forEach(function (c) {
        var it = row[+c.dataset.p], w = it && it.length ? it[0] : null;
        c.firstChild.textContent = w ? w[0].trim() : "";
        var a = w && w[1] !== null ? 0.35 + 0.5 * (hi > lo ? (w[1] - lo) / (hi - lo) : 1) : 0.35;
        c.style.setProperty("--ll-a", a.toFixed(2));
        c.classList.toggle("ll-x-in", !!(mark !== null && w && w[2] === mark));
      });
    }
    function lensBox(title, items, line) {
      var box = el("div", "ll-x-lens"), ol = el("ol", "ll-x-list");
      box.setAttribute("data-lens", title);
      box.appendChild(el("h4", null, title));
      items.forEach(function (it) { ol.appendChild(line(it)); });
      if (!items.length) { box.appendChild(el("p", "ll-note", "no words")); } else { box.appendChild(ol); }
      return box;
    }
    function renderPanel() {
      var k = shown, p = X.patches[k], L = X.layers[cur];
      panel.textContent = "";
      var head = el("div", "ll-x-phead");
      head.appendChild(el("b", null, "visual token #" + p[0]));
      head.appendChild(el("span", "ll-where", (X.several ? "image " + p[1] + " · " : "") +
        "row " + p[2] + " · col " + p[3] + " · layer " + L.layer));
      head.appendChild(el("span", "ll-x-state", locked >= 0 ?
        "locked: click it again or press Esc to unlock, arrow keys move" : "hover; click to lock"));
      if (L.cards[k]) {
        var a = el("a", null, "all sentences ↓");
        a.href = "#" + root.id + "-h" + L.h + "-p" + p[0];
        head.appendChild(a);
      }
      panel.appendChild(head);
      var cols = el("div", "ll-x-cols");
      cols.appendChild(lensBox("LatentLens", X.lat[cur][k] || [], function (n) {
        var li = el("li"), top = el("div"), s = X.sents[n[3]], q = el("div", "ll-x-sent");
        top.appendChild(n[5] ? wordChip(n[5], n[0]) : chip(n[0]));
        top.appendChild(el("span", "ll-num", " " + num(n[1], 3) + " · text layer " + n[2]));
        li.appendChild(top);
        if (n[4] >= 0 && n[4] < s.length) {
          q.appendChild(document.createTextNode(s.slice(0, n[4]).join("")));
          q.appendChild(el("mark", null, s[n[4]]));
          q.appendChild(document.createTextNode(s.slice(n[4] + 1).join("")));
        } else { q.textContent = s.join(""); }
        li.appendChild(q);
        return li;
      }));
      [["LogitLens", X.logit, 2], ["EmbeddingLens", X.emb, 3]].forEach(function (d) {
        if (!has(d[1], k)) { return; }
        cols.appendChild(lensBox(d[0], d[1][cur][k] || [], function (c) {
          var li = el("li");
          li.appendChild(chip(c[0]));
          li.appendChild(el("span", "ll-num", " " + num(c[1], d[2])));
          return li;
        }));
      });
      panel.appendChild(cols);
    }
    function renderTable() {
      var k = shown, lenses = [["LatentLens", X.lat]];
      if (has(X.logit, k)) { lenses.push(["LogitLens", X.logit]); }
      if (has(X.emb, k)) { lenses.push(["EmbeddingLens", X.emb]); }
      table.textContent = "";
      var thead = el("thead"), hr = el("tr"), tbody = el("tbody");
      hr.appendChild(el("th", null, "layer"));
      lenses.forEach(function (d) { hr.appendChild(el("th", null, d[0] + " top 3")); });
      thead.appendChild(hr);
      X.layers.forEach(function (L, li) {
        var tr = el("tr", li === cur ? "ll-x-cur" : null);
        tr.setAttribute("data-l", String(li));
        tr.appendChild(el("th", null, L.layer));
        lenses.forEach(function (d, j) {
          var td = el("td"), items = (d[1][li] && d[1][li][k]) || [];
          items.slice(0, 3).forEach(function (it) { td.appendChild(chip(it[0])); });
          if (j === 0 && items.length) {
            td.appendChild(el("span", "ll-num", num(items[0][1], 3) + " · L" + items[0][2]));
          }
          tr.appendChild(td);
        });
        tbody.appendChild(tr);
      });
      table.appendChild(thead);
      table.appendChild(tbody);
    }
    function state() {
      root.setAttribute("data-ll-layer", X.layers[cur].layer);
      root.setAttribute("data-ll-patch", String(X.patches[shown][0]));
      root.setAttribute("data-ll-locked", locked >= 0 ? "1" : "0");
    }
    function show(k) {
      shown = k;
      cells.forEach(function (c) {
        var on = +c.dataset.p === k;
        c.classList.toggle("ll-x-sel", on);
        c.classList.toggle("ll-x-lock", on && locked >= 0);
      });
      renderPanel();
      renderTable();
      state();
    }
    function setLayer(li) {
      cur = li;
      slider.value = String(li);
      out.textContent = "";
      out.appendChild(document.createTextNode(X.layers[li].layer + " · "));
      out.appendChild(el("code", null, X.layers[li].hook));
      leapRows.forEach(function (r) { r.classList.toggle("ll-x-cur", +r.dataset.l === li); });
      paintGrid();
      show(shown);
    }
    function lock(k) { locked = k; window.__llActive = root.id; show(k); }
    function unlock() { locked = -1; mark = null; paintGrid(); show(shown); }
    sec.addEventListener("mouseover", function (e) {
      var c = e.target.closest(".ll-x-cell");
      if (c && locked < 0 && +c.dataset.p !== shown) { show(+c.dataset.p); }
    });
    sec.addEventListener("click", function (e) {
      var c = e.target.closest(".ll-x-cell, .ll-x-leap button, .ll-x-table tr[data-l]");
      if (!c) { return; }
      if (c.classList.contains("ll-x-cell")) {
        var k = +c.dataset.p;
        if (locked === k) { unlock(); } else { mark = null; paintGrid(); lock(k); }
      } else if (c.tagName === "BUTTON") {
        mark = c.dataset.t;
        locked = +c.dataset.p;
        window.__llActive = root.id;
        shown = locked;
        setLayer(+c.dataset.l);
      } else {
        setLayer(+c.dataset.l);
      }
    });
    // keyboard: Tab reaches the patches (shown on focus), Enter or Space locks and unlocks
    sec.addEventListener("focusin", function (e) {
      var c = e.target.closest && e.target.closest(".ll-x-cell");
      if (c && locked < 0 && +c.dataset.p !== shown) { show(+c.dataset.p); }
    });
    sec.addEventListener("keydown", function (e) {
      var c = e.target.closest && e.target.closest(".ll-x-cell");
      if (!c || (e.key !== "Enter" && e.key !== " ")) { return; }
      e.preventDefault();
      var k = +c.dataset.p;
      if (locked === k) { unlock(); } else { mark = null; paintGrid(); lock(k); }
    });
    slider.addEventListener("input", function () { setLayer(+slider.value); });
    document.addEventListener("keydown", function (e) {
      if (window.__llActive !== root.id || locked < 0) { return; }
      var t = e.target && e.target.tagName;
      if (t === "INPUT" || t === "TEXTAREA" || t === "SELECT") { return; }
      if (e.key === "Escape") { unlock(); return; }
      var step = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] }[e.key];
      if (!step) { return; }
      e.preventDefault();
      var p = X.patches[locked], k = where[p[1] + ":" + (p[2] + step[0]) + ":" + (p[3] + step[1])];
      if (k !== undefined) {
        lock(k);
        var next = sec.querySelector('.ll-x-cell[data-p="' + k + '"]');
        if (next && document.activeElement && document.activeElement.closest &&
            document.activeElement.closest(".ll-x-cell")) { next.focus(); }
      }
    });
    setLayer(0);
    root.setAttribute("data-ll-explore", "ready");
  }
})();
"""
