// fusionlens report: draws the runs embedded in #report-data (built by figures/report/build.py).
// No library, no request: inline SVG for the curves, a canvas for the maps over the images.
"use strict";
const fusionReport = (() => {
  const SVG = "http://www.w3.org/2000/svg";
  const COLORS = ["#2b59c3", "#d1495b", "#2a9d8f", "#e9a03b", "#7b4fa0", "#5c677d", "#8ab17d", "#c05299"];
  const DASHES = ["", "6 4", "2 3", "10 3 2 3"];
  let DATA = null;
  const state = { tab: "overview", filter: { kind: "", method: "", verdict: "", text: "", run: 0 },
                  selected: null, view: {} };
  const cache = new Map();

  // ---------- small helpers ----------
  function el(tag, attrs, ...kids) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else if (v !== undefined && v !== null && v !== false) node.setAttribute(k, v);
    }
    for (const kid of kids.flat()) {
      if (kid !== null && kid !== undefined) node.append(kid instanceof Node ? kid : String(kid));
    }
    return node;
  }
  function sv(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    return node;
  }
  function fmt(v) {
    if (v === null || v === undefined) return "–";
    if (typeof v === "boolean") return v ? "yes" : "no";
    if (typeof v === "number") {
      if (Number.isInteger(v)) return String(v);
      const a = Math.abs(v);
      return (a !== 0 && (a < 1e-3 || a >= 1e5)) ? v.toExponential(3) : String(Number(v.toPrecision(4)));
    }
    if (typeof v === "object") return JSON.stringify(v);
    return String(v);
  }
  const tip = () => document.getElementById("tip");
  function showTip(event, text) {
    const t = tip(); t.textContent = text; t.hidden = false;
    t.style.left = (event.clientX + 12) + "px"; t.style.top = (event.clientY + 12) + "px";
  }
  function hideTip() { tip().hidden = true; }

  // ---------- charts ----------
  // grid lines and labels of a y axis from y0 to y1 (Y: value -> pixel) at round steps
  function yAxis(svg, y0, y1, Y, left, right) {
    const raw = (y1 - y0) / 4, mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const tick = [1, 2, 5, 10].map(k => k * mag).find(k => k >= raw);
    for (let v = Math.ceil(y0 / tick) * tick; v <= y1; v += tick) {
      svg.append(sv("line", { x1: left, x2: right, y1: Y(v), y2: Y(v), stroke: "#eef0f3" }));
      const t = sv("text", { x: left - 4, y: Y(v) + 4, "text-anchor": "end" });
      t.textContent = String(Number((Math.abs(v) < tick / 2 ? 0 : v).toPrecision(3))); svg.append(t);
    }
  }
  // lines: [{name, color, dash, points: [{layer, mean, ci_low, ci_high, n}]}]
  function chart(title, lines, opts) {
    const W = (opts && opts.width) || 400, H = (opts && opts.height) || 220;
    const m = { l: 48, r: 10, t: 8, b: 28 };
    const pts = lines.flatMap(l => l.points);
    const xs = pts.map(p => p.layer);
    const ys = pts.flatMap(p => [p.mean, p.ci_low, p.ci_high]).filter(v => v !== null && v !== undefined);
    const box = el("div", { class: "chart", "data-title": title });
    box.append(el("div", { class: "title" }, title));
    if (!xs.length || !ys.length) { box.append(el("div", { class: "muted" }, "no values")); return box; }
    let x0 = Math.min(...xs), x1 = Math.max(...xs); if (x0 === x1) { x0 -= 1; x1 += 1; }
    let y0 = Math.min(...ys), y1 = Math.max(...ys);
    if (y0 === y1) { y0 -= 1; y1 += 1; }
    const pad = (y1 - y0) * 0.06; y0 -= pad; y1 += pad;
    const X = v => m.l + (v - x0) / (x1 - x0) * (W - m.l - m.r);
    const Y = v => H - m.b - (v - y0) / (y1 - y0) * (H - m.t - m.b);
    const svg = sv("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}` });
    for (const layer of (opts && opts.marks) || []) {
      const w = Math.max(4, (X(1) - X(0)) * 0.8);
      svg.append(sv("rect", { x: X(layer) - w / 2, y: m.t, width: w, height: H - m.t - m.b, fill: "#fde2e0" }));
    }
    yAxis(svg, y0, y1, Y, m.l, W - m.r);
    if (y0 < 0 && y1 > 0) svg.append(sv("line", { x1: m.l, x2: W - m.r, y1: Y(0), y2: Y(0), stroke: "#aab" }));
    const step = Math.max(1, Math.ceil((x1 - x0) / 8));
    for (let v = Math.ceil(x0); v <= x1; v += step) {
      const t = sv("text", { x: X(v), y: H - m.b + 14, "text-anchor": "middle" }); t.textContent = v; svg.append(t);
    }
    const lx = sv("text", { x: W - m.r, y: H - 2, "text-anchor": "end" }); lx.textContent = "layer"; svg.append(lx);
    for (const line of lines) {
      const ok = line.points.filter(p => p.mean !== null && p.mean !== undefined);
      const band = ok.filter(p => p.ci_low !== null && p.ci_low !== undefined && p.ci_high !== null && p.ci_high !== undefined);
      if (band.length > 1) {
        const d = band.map(p => `${X(p.layer)},${Y(p.ci_high)}`).concat(
          band.slice().reverse().map(p => `${X(p.layer)},${Y(p.ci_low)}`)).join(" ");
        svg.append(sv("polygon", { points: d, fill: line.color, "fill-opacity": 0.15, stroke: "none" }));
      }
      if (ok.length > 1) {
        svg.append(sv("polyline", { points: ok.map(p => `${X(p.layer)},${Y(p.mean)}`).join(" "), fill: "none",
                                    stroke: line.color, "stroke-width": 2, "stroke-dasharray": line.dash || "" }));
      }
    }
    for (const line of lines) {
      const ok = line.points.filter(p => p.mean !== null && p.mean !== undefined);
      for (const p of ok) {
        const c = sv("circle", { class: "pt", cx: X(p.layer), cy: Y(p.mean), r: 3.5, fill: line.color,
                                 "data-line": line.name, "data-layer": p.layer, "data-mean": p.mean });
        const ci = (p.ci_low !== null && p.ci_low !== undefined) ? `  95% CI [${fmt(p.ci_low)}, ${fmt(p.ci_high)}]` : "";
        const text = `${line.name}\nlayer ${p.layer}: ${fmt(p.mean)}${ci}${p.n !== undefined && p.n !== null ? "  n = " + p.n : ""}`;
        c.addEventListener("mousemove", e => showTip(e, text));
        c.addEventListener("mouseleave", hideTip);
        svg.append(c);
      }
    }
    box.append(svg);
    box.append(el("div", { class: "legend" }, lines.map(l =>
      el("span", {}, el("i", { style: `background:${l.color}` }), l.name))));
    return box;
  }

  // ---------- grids (a value over two axes, e.g. layer x head) and bar charts ----------
  // g: {title, row_label, col_label, signed, marks: [[row, col]], extra: {label: [[...]]},
  // row_names (null: the rows' indices)}; value(r, c) gives a cell's value (null: none); row 0
  // at the bottom, as figures.heads draws; cells as square as the 320-pixel box allows
  function heatmap(g, rows, cols, value, opts) {
    const label = (opts && opts.label) || g.title;
    const box = el("div", { class: "chart grid", "data-title": g.title, "data-run": opts && opts.run });
    box.append(el("div", { class: "title" }, label));
    const vals = [];
    for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) { const v = value(r, c); if (v !== null && Number.isFinite(v)) vals.push(v); }
    if (!vals.length) { box.append(el("div", { class: "muted" }, "no values")); return box; }
    const side = n => Math.max(5, Math.min(28, Math.floor(320 / n)));
    const cw = side(cols), ch = side(rows);
    const rowName = r => (g.row_names ? g.row_names[r] : r);
    const m = { l: g.row_names ? 22 + 6.5 * Math.max(...g.row_names.map(n => String(n).length)) : 34, b: 30, t: 4, r: 6 };
    const W = m.l + cols * cw + m.r, H = m.t + rows * ch + m.b;
    const bound = Math.max(...vals.map(Math.abs)) || 1;
    const low = g.signed ? -bound : Math.min(0, ...vals), high = g.signed ? bound : (Math.max(...vals) || 1);
    const tOf = v => (high > low ? (v - low) / (high - low) : 0);
    const svg = sv("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}` });
    const X = c => m.l + c * cw, Y = r => m.t + (rows - 1 - r) * ch;
    for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) {
      const v = value(r, c), ok = v !== null && Number.isFinite(v);
      const rgb = ok ? colormap(tOf(v), g.signed) : [230, 230, 230];
      svg.append(sv("rect", { class: "cell", x: X(c), y: Y(r), width: cw, height: ch, fill: `rgb(${rgb})`,
                              "data-row": r, "data-col": c, "data-value": ok ? v : "" }));
    }
    for (const [r, c] of g.marks || []) {
      svg.append(sv("rect", { class: "mark", x: X(c) + 0.75, y: Y(r) + 0.75, width: cw - 1.5, height: ch - 1.5,
                              fill: "none", stroke: "#000", "stroke-width": 1.5, "data-row": r, "data-col": c }));
    }
    for (let c = 0; c < cols; c += Math.max(1, Math.ceil(12 / cw))) { const t = sv("text", { x: X(c) + cw / 2, y: H - m.b + 12, "text-anchor": "middle" }); t.textContent = c; svg.append(t); }
    for (let r = 0; r < rows; r += Math.max(1, Math.ceil(12 / ch))) { const t = sv("text", { x: m.l - 4, y: Y(r) + ch / 2 + 4, "text-anchor": "end" }); t.textContent = rowName(r); svg.append(t); }
    const xl = sv("text", { x: m.l + cols * cw / 2, y: H - 2, "text-anchor": "middle" }); xl.textContent = g.col_label; svg.append(xl);
    const yl = sv("text", { x: 10, y: m.t + rows * ch / 2, "text-anchor": "middle", transform: `rotate(-90 10 ${m.t + rows * ch / 2})` });
    yl.textContent = g.row_label; svg.append(yl);
    svg.addEventListener("mousemove", e => {
      const d = e.target.dataset;
      if (!e.target.classList.contains("cell")) { hideTip(); return; }
      const r = +d.row, c = +d.col, v = value(r, c);
      const extra = Object.entries(g.extra || {}).map(([k, x]) => `\n${k}: ${fmt(x[r][c])}`).join("");
      showTip(e, `${g.row_label} ${rowName(r)} · ${g.col_label} ${c}\n${g.title}: ${fmt(v)}${extra}`);
    });
    svg.addEventListener("mouseleave", hideTip);
    box.append(svg);
    const bar = el("canvas", { width: 140, height: 10 }); const bctx = bar.getContext("2d");
    for (let x = 0; x < 140; x++) { bctx.fillStyle = `rgb(${colormap(x / 139, g.signed)})`; bctx.fillRect(x, 0, 1, 10); }
    box.append(el("div", { class: "colorbar" }, fmt(low), bar, fmt(high), el("span", { class: "muted" }, " · hover a cell for its value")));
    return box;
  }
  // b: {title, names, values, ci_low, ci_high, highlight, highlight_label, line, line_label}
  function barChart(b, opts) {
    const box = el("div", { class: "chart bars", "data-title": b.title, "data-run": opts && opts.run });
    box.append(el("div", { class: "title" }, (opts && opts.label) || b.title));
    const n = b.names.length;
    const ys = [0, ...b.values, ...b.ci_low, ...b.ci_high, ...(b.line === null ? [] : [b.line])].filter(v => v !== null && Number.isFinite(v));
    const W = Math.max(260, 48 + n * 26 + 10), H = 220, m = { l: 48, r: 10, t: 8, b: 40 };
    let y0 = Math.min(...ys), y1 = Math.max(...ys); if (y0 === y1) y1 = y0 + 1;
    const pad = (y1 - y0) * 0.06; y0 -= pad; y1 += pad;
    const Y = v => H - m.b - (v - y0) / (y1 - y0) * (H - m.t - m.b);
    const step = (W - m.l - m.r) / Math.max(n, 1);
    const svg = sv("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}` });
    yAxis(svg, y0, y1, Y, m.l, W - m.r);
    svg.append(sv("line", { x1: m.l, x2: W - m.r, y1: Y(0), y2: Y(0), stroke: "#aab" }));
    b.names.forEach((name, k) => {
      const v = b.values[k], x = m.l + k * step + step * 0.15, w = step * 0.7;
      if (v === null) return;
      const rect = sv("rect", { class: "bar", x, width: w, y: Math.min(Y(v), Y(0)), height: Math.abs(Y(v) - Y(0)),
        fill: b.highlight && b.highlight[k] ? COLORS[0] : "#9aa3b2", "data-name": name, "data-value": v });
      const text = `${name}: ${fmt(v)}  95% CI [${fmt(b.ci_low[k])}, ${fmt(b.ci_high[k])}]${b.highlight && b.highlight[k] ? "  " + b.highlight_label : ""}`;
      rect.addEventListener("mousemove", e => showTip(e, text)); rect.addEventListener("mouseleave", hideTip);
      svg.append(rect);
      if (b.ci_low[k] !== null && b.ci_high[k] !== null) {
        svg.append(sv("line", { x1: x + w / 2, x2: x + w / 2, y1: Y(b.ci_low[k]), y2: Y(b.ci_high[k]), stroke: "#1d2330" }));
      }
      const t = sv("text", { x: x + w / 2, y: H - m.b + 12, "text-anchor": "end", transform: `rotate(-60 ${x + w / 2} ${H - m.b + 12})` });
      t.textContent = name; svg.append(t);
    });
    if (b.line !== null && b.line !== undefined) {
      svg.append(sv("line", { class: "ref", x1: m.l, x2: W - m.r, y1: Y(b.line), y2: Y(b.line), stroke: "#444", "stroke-dasharray": "5 3", "data-value": b.line }));
    }
    box.append(svg);
    box.append(el("div", { class: "legend" },
      el("span", {}, el("i", { style: `background:${COLORS[0]}` }), b.highlight_label || "highlighted"),
      b.line !== null && b.line !== undefined ? el("span", {}, el("i", { style: "background:#444" }), `${b.line_label}: ${fmt(b.line)}`) : null));
    return box;
  }
  function b64floats(text) {
    const bin = atob(text); const bytes = new Uint8Array(bin.length);
    for (let k = 0; k < bin.length; k++) bytes[k] = bin.charCodeAt(k);
    return new Float32Array(bytes.buffer);
  }
  // run-level panels of one kind (grids or bars) in one row: by title, the runs' side by side
  function panelRow(runs, kind, draw) {
    const titles = [...new Set(runs.flatMap(r => (r[kind] || []).map(p => p.title)))];
    if (!titles.length) return null;
    return el("div", { class: "charts" }, titles.flatMap(title => runs.map(run => {
      const p = (run[kind] || []).find(x => x.title === title);
      return p ? draw(p, { run: run.label, label: runs.length > 1 ? `${run.label}: ${title}` : title }) : null;
    })));
  }

  // ---------- tables and key-values ----------
  function table(columns, rows) {
    return el("table", {}, el("tr", {}, columns.map(c => el("th", {}, c))),
      rows.map(r => el("tr", {}, r.map(v => el("td", {}, fmt(v))))));
  }
  function keyValues(obj) {
    return el("dl", { class: "kv" }, Object.entries(obj).flatMap(([k, v]) => [el("dt", {}, k), el("dd", { "data-key": k }, fmt(v))]));
  }
  function missingBox(run) {
    const lines = [...run.missing, ...run.skipped];
    if (!lines.length) return null;
    return el("div", { class: "missing", "data-run": run.label }, el("b", {}, `${run.label}: what this report cannot show`),
      el("ul", {}, lines.map(t => el("li", {}, t))));
  }

  // ---------- views ----------
  function overview() {
    const runs = DATA.runs;
    const root = el("div", { id: "view-overview" });
    runs.forEach(r => { const b = missingBox(r); if (b) root.append(b); });
    const titles = [...new Set(runs.flatMap(r => r.charts.map(c => c.title)))];
    if (titles.length) {
      root.append(el("h2", {}, "Per-layer results (mean and 95% CI; hover a point for its values)"));
      const box = el("div", { class: "charts" });
      for (const title of titles) {
        const lines = [];
        runs.forEach((run, ri) => {
          const c = run.charts.find(ch => ch.title === title);
          if (!c) return;
          c.lines.forEach((line, li) => lines.push({
            name: runs.length > 1 ? `${run.label}: ${line.name}` : line.name,
            color: COLORS[(runs.length > 1 ? li : li) % COLORS.length], dash: DASHES[ri % DASHES.length],
            points: line.points }));
        });
        box.append(chart(title || "per layer", lines, { marks: [...new Set(runs.flatMap(r => r.marks))] }));
      }
      root.append(box);
      if (runs.some(r => r.marks.length)) root.append(el("div", { class: "muted" }, "shaded: fusion layers found by the run"));
    }
    const grids = panelRow(runs, "grids", (g, o) => heatmap(g, g.values.length, g.values[0].length, (r, c) => g.values[r][c], o));
    const axes = [...new Set(runs.flatMap(r => (r.grids || []).map(g => `${g.row_label} and ${g.col_label}`)))];
    if (grids) root.append(el("h2", {}, `Per ${axes.join("; per ")} (hover a cell for its values)`), grids);
    const bars = panelRow(runs, "bars", barChart);
    if (bars) root.append(el("div", { class: "muted" }, "bars: hover one for its value and CI"), bars);
    root.append(el("h2", {}, "Findings"));
    const cols = el("div", { class: "cols", style: `--n:${runs.length}` });
    for (const run of runs) {
      const card = el("div", { class: "card", "data-run": run.label }, el("h3", {}, run.label));
      if (Object.keys(run.findings).length) card.append(keyValues(run.findings));
      for (const t of run.tables) {
        card.append(el("h3", {}, t.title));
        card.append(table(t.columns, t.rows));
      }
      if (!Object.keys(run.findings).length && !run.tables.length) card.append(el("div", { class: "muted" }, "no findings"));
      cols.append(card);
    }
    root.append(cols);
    return root;
  }

  function provenance() {
    const runs = DATA.runs;
    const cols = el("div", { class: "cols", style: `--n:${runs.length}`, id: "view-provenance" });
    for (const run of runs) {
      const card = el("div", { class: "card", "data-run": run.label }, el("h3", {}, run.label),
        el("div", { class: "muted" }, run.path));
      for (const [key, value] of Object.entries(run.provenance)) {
        card.append(el("h3", {}, key));
        card.append(value && typeof value === "object" ? keyValues(value) : el("div", {}, fmt(value)));
      }
      if (Object.keys(run.rules).length) { card.append(el("h3", {}, "rules")); card.append(keyValues(run.rules)); }
      cols.append(card);
    }
    return cols;
  }

  // ---------- sample browser ----------
  function samplesOf(run) { return run.samples && run.samples.n ? run.samples : null; }
  function verdictOf(s, i, method) {
    const v = s.verdicts;
    if (!v || !v.correct) return null;
    const j = Math.max(0, v.methods.indexOf(method));
    return v.correct[i][j];
  }
  function filtered(run) {
    const s = samplesOf(run); const f = state.filter;
    const out = [];
    if (!s) return out;
    const method = f.method || (s.verdicts ? s.verdicts.methods[0] : "");
    for (let i = 0; i < s.n; i++) {
      if (f.kind && s.kind[i] !== f.kind) continue;
      if (f.verdict) {
        const c = verdictOf(s, i, method);
        if (c === null || (f.verdict === "correct") !== c) continue;
      }
      if (f.text) {
        const hay = `${s.id[i]} ${s.question[i]} ${s.answer[i]}`.toLowerCase();
        if (!hay.includes(f.text.toLowerCase())) continue;
      }
      out.push(i);
    }
    return out;
  }
  function decode(run, entry, i) {
    const key = `${run.label}|${entry.name}|${i}`;
    if (cache.has(key)) return cache.get(key);
    const text = entry.data[i];
    if (!text) return null;
    const bin = atob(text); const bytes = new Uint8Array(bin.length);
    for (let k = 0; k < bin.length; k++) bytes[k] = bin.charCodeAt(k);
    const count = (bytes.length) / (8 + entry.tokens);
    const lh = new Float32Array(bytes.buffer.slice(0, count * 8));
    const q = bytes.subarray(count * 8);
    const value = { lh, q, count };
    cache.set(key, value);
    return value;
  }
  function colormap(t, signed) {
    const stops = signed ? [[33, 102, 172], [247, 247, 247], [178, 24, 43]]
      : [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
    t = Math.min(1, Math.max(0, t)) * (stops.length - 1);
    const k = Math.min(stops.length - 2, Math.floor(t)), f = t - k;
    return stops[k].map((c, j) => Math.round(c + (stops[k + 1][j] - c) * f));
  }
  // sample i's token boxes (uint16 [tokens, 4] in 1/UNIT pixels of the embedded image), or null
  const UNIT = 8, NONE = 65535;
  function boxesOf(run, i) {
    const s = samplesOf(run);
    const text = s.boxes && s.boxes[i];
    if (!text) return null;
    const key = `${run.label}|boxes|${i}`;
    if (!cache.has(key)) {
      const bin = atob(text); const bytes = new Uint8Array(bin.length);
      for (let k = 0; k < bin.length; k++) bytes[k] = bin.charCodeAt(k);
      cache.set(key, new Uint16Array(bytes.buffer));
    }
    return cache.get(key);
  }
  // each token's value on its box, the mean where several boxes cover a pixel (LLaVA-NeXT's base
  // grid under its tiles), pixels no box covers left uncoloured: as figures.overlay.raster
  function paintBoxes(ctx, boxes, value, color, W, H, sx, sy, alpha) {
    const total = new Float64Array(W * H), count = new Uint16Array(W * H);
    const n = boxes.length / 4;
    for (let k = 0; k < n; k++) {
      if (boxes[4 * k] === NONE) continue;
      const v = value(k);
      if (v === null) continue;
      const edge = (b, s, lim) => Math.min(lim, Math.max(0, Math.ceil(Math.round((b / UNIT * s - 0.5) * 1e6) / 1e6)));
      const x0 = edge(boxes[4 * k], sx, W), x1 = edge(boxes[4 * k + 2], sx, W);
      const y0 = edge(boxes[4 * k + 1], sy, H), y1 = edge(boxes[4 * k + 3], sy, H);
      for (let y = y0; y < y1; y++) for (let x = x0; x < x1; x++) { total[y * W + x] += v; count[y * W + x]++; }
    }
    const out = ctx.createImageData(W, H);
    for (let p = 0; p < W * H; p++) {
      if (!count[p]) continue;
      const rgb = color(total[p] / count[p]);
      out.data.set([rgb[0], rgb[1], rgb[2], Math.round(alpha * 255)], 4 * p);
    }
    const layer = document.createElement("canvas"); layer.width = W; layer.height = H;
    layer.getContext("2d").putImageData(out, 0, 0);
    ctx.drawImage(layer, 0, 0);
  }
  function drawMap(canvas, run, i, view) {
    const s = samplesOf(run);
    const ctx = canvas.getContext("2d");
    const img = view.image;
    const W = canvas.width, H = canvas.height;
    ctx.clearRect(0, 0, W, H);
    if (img) ctx.drawImage(img, 0, 0, W, H); else { ctx.fillStyle = "#ccc"; ctx.fillRect(0, 0, W, H); }
    const entry = view.entry;
    if (!entry) return null;
    const useHeads = view.head >= 0 && entry.headEntry && entry.headEntry.data[i];
    const e = useHeads ? entry.headEntry : entry;
    const packed = decode(run, e, i);
    if (!packed) return null;
    const L = e.layers || 1, Hh = e.heads || 1;
    let m = view.series;
    if (e.layers) m = m * L + Math.min(view.layer, L - 1);
    if (e.heads) m = m * Hh + view.head;
    const low = packed.lh[2 * m], high = packed.lh[2 * m + 1];
    const cells = e.cells || e.sample_cells[i];
    let rows = 0, cols = 0;
    for (const [g, r, c] of cells) if (g === 0) { rows = Math.max(rows, r + 1); cols = Math.max(cols, c + 1); }
    const bound = Math.max(Math.abs(low), Math.abs(high)) || 1;
    const alpha = view.opacity;
    const color = e.binary ? () => colormap(1, false) : v => colormap(e.signed ? 0.5 + v / (2 * bound) : (high > low ? (v - low) / (high - low) : 0), e.signed);
    const boxes = img ? boxesOf(run, i) : null;
    if (boxes) {
      const valueOf = k => {
        if (k >= e.tokens) return null;
        const v = low + packed.q[m * e.tokens + k] / 255 * (high - low);
        return e.binary && v < 0.5 ? null : v;
      };
      paintBoxes(ctx, boxes, valueOf, color, W, H, W / img.naturalWidth, H / img.naturalHeight, alpha);
      return { low, high, signed: e.signed, binary: e.binary, placed: true };
    }
    for (let k = 0; k < cells.length && k < e.tokens; k++) {
      const [g, r, c] = cells[k];
      if (g !== 0 || r < 0 || c < 0) continue;
      const qv = packed.q[m * e.tokens + k] / 255;
      const v = low + qv * (high - low);
      if (e.binary && v < 0.5) continue;
      const rgb = e.binary ? colormap(1, false) : colormap(e.signed ? 0.5 + v / (2 * bound) : qv, e.signed);
      ctx.fillStyle = `rgba(${rgb[0]},${rgb[1]},${rgb[2]},${alpha})`;
      const x0 = Math.floor(c / cols * W), x1 = Math.floor((c + 1) / cols * W);
      const y0 = Math.floor(r / rows * H), y1 = Math.floor((r + 1) / rows * H);
      ctx.fillRect(x0, y0, x1 - x0, y1 - y0);
    }
    return { low, high, signed: e.signed, binary: e.binary, placed: false, grids: new Set(cells.map(c => c[0])).size };
  }

  // the prompt's tokens coloured by their value (s.prompt), the value on hover; the colour
  // scale runs from 0 to the largest value over the tokens of group scale_group (the question)
  function promptStrip(s, i) {
    const p = s.prompt;
    if (!p || !p.tokens[i]) return null;
    const values = p.values[i], groups = p.group[i];
    const scaled = values.filter((v, k) => groups[k] === p.scale_group && v !== null);
    const top = Math.max(...(scaled.length ? scaled : values.filter(v => v !== null)), 1e-12);
    const box = el("div", { class: "prompt", "data-prompt": "" });
    p.tokens[i].forEach((text, k) => {
      const v = values[k], t = v === null ? 0 : Math.min(1, v / top);
      const rgb = colormap(t, false);
      const token = el("span", { class: "tok" + (groups[k] === p.scale_group ? "" : " aside"),
        "data-value": v, "data-group": p.groups[groups[k]],
        style: `background:rgb(${rgb});color:${t > 0.55 ? "#1d2330" : "#fff"}` }, text.trim() ? text : "\u2423");
      const tipText = `${JSON.stringify(text)} (${p.groups[groups[k]]}): ${fmt(v)}${v !== null && v > top ? "  (above the scale)" : ""}`;
      token.addEventListener("mousemove", e => showTip(e, tipText));
      token.addEventListener("mouseleave", hideTip);
      box.append(token);
    });
    return el("div", { class: "pane wide" }, el("div", { class: "muted" }, p.title), box,
      el("div", { class: "muted" }, `colour: 0 … ${fmt(top)} (the largest over the question's tokens; the others faded, hover a token for its value)`));
  }

  function sampleViewer(run, i, ri) {
    const s = samplesOf(run);
    const card = el("div", { class: "card viewer", "data-run": run.label });
    card.append(el("h3", {}, `${run.label} · sample ${s.id[i]}`, s.kind[i] ? ` · ${s.kind[i]}` : ""));
    if (s.question[i]) card.append(el("div", { class: "question" }, s.question[i],
      s.answer[i] ? el("span", { class: "muted" }, `  (reference: ${s.answer[i]})`) : ""));
    const strip = promptStrip(s, i);
    if (strip) card.append(strip);
    const entries = s.maps.filter(e => !e.heads);
    for (const e of s.maps.filter(e => e.heads)) {
      const base = entries.find(b => b.layers === e.layers && b.series.join() === e.series.join());
      if (base) base.headEntry = e;
    }
    const key = run.label;
    const view = state.view[key] || (state.view[key] = { entry: 0, series: 0, layer: 0, head: -1, opacity: 0.6 });
    if (entries.length) {
      view.entry = Math.min(view.entry, entries.length - 1);
      const canvas = el("canvas", { class: "overlay", "data-run": run.label });
      const legend = el("div", { class: "colorbar" });
      const side = 300;
      const image = new Image();
      const v = () => ({ ...view, entry: entries[view.entry], image: s.image[i] ? image : null });
      const redraw = () => {
        const info = drawMap(canvas, run, i, v());
        legend.replaceChildren();
        if (info) {
          const bar = el("canvas", { width: 140, height: 10 }); const bctx = bar.getContext("2d");
          for (let x = 0; x < 140; x++) { const c = colormap(x / 139, info.signed); bctx.fillStyle = `rgb(${c})`; bctx.fillRect(x, 0, 1, 10); }
          if (info.binary) legend.append(el("i", { class: "swatch", style: `background:rgb(${colormap(1, false)})` }), "tokens where it holds (elsewhere the image)");
          else legend.append(fmt(info.low), bar, fmt(info.high));
          legend.append(
            info.placed ? el("span", { class: "muted", "data-placement": "exact" }, " · on each token's pixel box")
              : el("span", { class: "muted", "data-placement": "stretched" }, info.grids > 1
                ? ` · grid 0 of ${info.grids} stretched over the image (tiles not placed)` : " · grid stretched over the image"));
        } else legend.append("no map recorded for this sample");
      };
      const size = (w, h) => { const k = side / Math.max(w, h); canvas.width = Math.round(w * k); canvas.height = Math.round(h * k); };
      size(1, 1);
      if (s.image[i]) { image.onload = () => { size(image.naturalWidth, image.naturalHeight); redraw(); }; image.src = s.image[i]; }
      const controls = el("div", { class: "controls" });
      const rebuild = () => {
        controls.replaceChildren();
        const e = entries[view.entry];
        const mapSel = el("select", { "data-control": "map", onchange: ev => { view.entry = +ev.target.value; view.series = 0; view.head = -1; rebuild(); redraw(); } },
          entries.map((x, k) => el("option", { value: k, selected: k === view.entry ? "" : null }, x.name)));
        controls.append(el("label", {}, "map", mapSel, el("span")));
        if (e.series.length > 1) {
          view.series = Math.min(view.series, e.series.length - 1);
          controls.append(el("label", {}, "series", el("select", { "data-control": "series", onchange: ev => { view.series = +ev.target.value; redraw(); } },
            e.series.map((x, k) => el("option", { value: k, selected: k === view.series ? "" : null }, x))), el("span")));
        }
        if (e.layers) {
          view.layer = Math.min(view.layer, e.layers - 1);
          const out = el("span", {}, String(view.layer));
          const slider = el("input", { type: "range", min: 0, max: e.layers - 1, value: view.layer, "data-control": "layer",
            oninput: ev => { view.layer = +ev.target.value; out.textContent = view.layer; redraw(); } });
          controls.append(el("label", {}, "layer", slider, out));
        }
        if (e.headEntry) {
          const has = !!e.headEntry.data[i];
          if (!has) view.head = -1;
          const opts = [el("option", { value: -1 }, "mean of heads")];
          if (has) for (let h = 0; h < e.headEntry.heads; h++) opts.push(el("option", { value: h, selected: h === view.head ? "" : null }, `head ${h}`));
          controls.append(el("label", {}, "head", el("select", { "data-control": "head", onchange: ev => { view.head = +ev.target.value; redraw(); } }, opts),
            el("span", { class: "muted" }, has ? "" : "n/a")));
        }
        controls.append(el("label", {}, "opacity", el("input", { type: "range", min: 0, max: 100, "data-control": "opacity", value: Math.round(view.opacity * 100),
          oninput: ev => { view.opacity = ev.target.value / 100; redraw(); } }), el("span")));
      };
      rebuild();
      card.append(el("div", { class: "pane" }, canvas, legend, controls,
        s.image[i] ? null : el("div", { class: "muted" }, "image not available: map drawn on grey")));
      redraw();
    } else if (s.image[i]) {
      card.append(el("img", { src: s.image[i], width: 240, alt: `sample ${s.id[i]}` }));
    } else {
      card.append(el("div", { class: "muted" }, "no image for this sample"));
    }
    const vd = s.verdicts;
    if (vd) {
      const rows = vd.methods.map((m, j) => [m, vd.replies ? vd.replies[i][j] : "–",
        vd.scores ? vd.scores[i][j] : null, vd.correct ? vd.correct[i][j] : null]);
      const t = el("table", { class: "verdicts" }, el("tr", {}, ["method", "reply", ...(vd.scores ? ["score"] : []), "verdict"].map(c => el("th", {}, c))),
        rows.map(r => el("tr", {}, el("td", {}, r[0]), el("td", {}, r[1]), vd.scores ? el("td", {}, fmt(r[2])) : null,
          el("td", { class: r[3] ? "ok" : "no" }, r[3] === null ? "–" : (r[3] ? "correct" : "wrong")))));
      card.append(t);
    }
    const values = Object.entries(s.values || {}).map(([k, v]) => [k, v[i]]);
    if (values.length) card.append(keyValues(Object.fromEntries(values)));
    for (const g of s.grids || []) {
      if (!g.data[i]) continue;
      const v = b64floats(g.data[i]);
      card.append(heatmap(g, g.rows, g.cols, (r, c) => (Number.isNaN(v[r * g.cols + c]) ? null : v[r * g.cols + c]), { run: run.label }));
    }
    for (const curve of s.curves || []) {
      if (curve.values[i].every(row => row.every(v => v === null))) continue;  // none: not drawn
      const lines = curve.series.map((name, k) => ({ name, color: COLORS[k % COLORS.length],
        points: curve.values[i][k].map((mean, layer) => ({ layer, mean })) }));
      card.append(chart(curve.title, lines, { width: 340, height: 170 }));
    }
    return card;
  }

  function samplesView() {
    const runs = DATA.runs;
    const root = el("div", { id: "view-samples" });
    const withSamples = runs.filter(samplesOf);
    runs.forEach(r => { if (!samplesOf(r)) root.append(el("div", { class: "missing" }, `${r.label}: no per-sample records to browse.`)); });
    runs.forEach(r => { const s = samplesOf(r); if (s && s.notes.length) root.append(el("div", { class: "missing" }, el("b", {}, r.label + ": "), s.notes.join(" "))); });
    if (!withSamples.length) return root;
    const f = state.filter;
    f.run = Math.min(f.run, withSamples.length - 1);
    const primary = withSamples[f.run];
    const ps = samplesOf(primary);
    const kinds = [...new Set(withSamples.flatMap(r => samplesOf(r).kind))].filter(Boolean).sort();
    const methods = ps.verdicts ? ps.verdicts.methods : [];
    const list = el("div", { id: "sample-list" });
    const count = el("div", { class: "count", id: "sample-count" });
    const detail = el("div", { id: "sample-detail", class: "cols", style: `--n:${withSamples.length}` });
    const showDetail = () => {
      detail.replaceChildren();
      if (state.selected === null) return;
      withSamples.forEach((run, ri) => {
        const s = samplesOf(run);
        const j = run === primary ? state.selected : s.id.indexOf(ps.id[state.selected]);
        detail.append(j >= 0 ? sampleViewer(run, j, ri) : el("div", { class: "card" }, `${run.label}: sample not in this run`));
      });
    };
    const refill = () => {
      const shown = filtered(primary);
      list.replaceChildren();
      count.textContent = `${shown.length} of ${ps.n} samples`;
      if (state.selected === null || !shown.includes(state.selected)) state.selected = shown.length ? shown[0] : null;
      const method = f.method || methods[0];
      for (const i of shown) {
        const c = verdictOf(ps, i, method);
        const row = el("div", { class: i === state.selected ? "on" : "", "data-sample": ps.id[i],
          onclick: () => { state.selected = i; list.querySelectorAll(".on").forEach(n => n.classList.remove("on")); row.classList.add("on"); showDetail(); } },
          el("span", {}, `${ps.id[i]}`, el("span", { class: "muted" }, ps.kind[i] ? ` · ${ps.kind[i]}` : "")),
          c === null ? "" : el("span", { class: c ? "ok" : "no" }, c ? "✓" : "✗"));
        list.append(row);
      }
      showDetail();
    };
    const select = (name, options, value, set) => el("select", { "data-filter": name, onchange: ev => { set(ev.target.value); refill(); } },
      options.map(([v, t]) => el("option", { value: v, selected: v === value ? "" : null }, t)));
    const filters = el("div", { class: "filters" });
    if (withSamples.length > 1) filters.append(el("label", {}, "list of", select("run", withSamples.map((r, k) => [String(k), r.label]), String(f.run),
      v => { f.run = +v; state.selected = null; render(); })));
    filters.append(el("label", {}, "kind", select("kind", [["", "all kinds"], ...kinds.map(k => [k, k])], f.kind, v => { f.kind = v; })));
    if (methods.length) {
      filters.append(el("label", {}, "method", select("method", methods.map(m => [m, m]), f.method || methods[0], v => { f.method = v; })));
      filters.append(el("label", {}, "verdict", select("verdict", [["", "any"], ["correct", "correct"], ["wrong", "wrong"]], f.verdict, v => { f.verdict = v; })));
    }
    filters.append(el("label", {}, "search", el("input", { type: "search", "data-filter": "text", value: f.text, placeholder: "id or question",
      oninput: ev => { f.text = ev.target.value; refill(); } })));
    root.append(el("div", { class: "browser" }, el("div", {}, filters, count, list), detail));
    refill();
    return root;
  }

  // ---------- page ----------
  const TABS = [["overview", "Overview", overview], ["samples", "Samples", samplesView], ["provenance", "Provenance", provenance]];
  function render() {
    const main = document.getElementById("main");
    const nav = document.getElementById("tabs");
    nav.replaceChildren(...TABS.map(([id, name]) => el("button", { class: id === state.tab ? "on" : "", "data-tab": id,
      onclick: () => { state.tab = id; render(); } }, name)));
    const view = TABS.find(t => t[0] === state.tab)[2];
    main.replaceChildren(view());
  }
  function start() {
    DATA = JSON.parse(document.getElementById("report-data").textContent);
    const labels = DATA.runs.map(r => r.label).join(" · ");
    document.getElementById("title").textContent = `fusionlens · ${DATA.analysis || "runs"} · ${labels}`;
    render();
    window.reportFirstView = performance.now();
    document.body.dataset.ready = "1";
  }
  // the dequantised values of map m of sample i (for tests: compared with the run's floats)
  function values(runIndex, entryName, i, m) {
    const run = DATA.runs[runIndex];
    const e = samplesOf(run).maps.find(x => x.name === entryName);
    const p = decode(run, e, i);
    if (!p) return null;
    const low = p.lh[2 * m], high = p.lh[2 * m + 1];
    return Array.from(p.q.subarray(m * e.tokens, (m + 1) * e.tokens), q => low + q / 255 * (high - low));
  }
  // sample i's token boxes in pixels of the embedded image (for tests), null when not placed
  function boxes(runIndex, i) {
    const b = boxesOf(DATA.runs[runIndex], i);
    return b ? Array.from(b, v => v === NONE ? null : v / UNIT) : null;
  }
  return { start, state, render, values, boxes, colormap };
})();
