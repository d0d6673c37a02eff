/* wbtrace viewer: charts (vega-embed), a virtual list of responses, and per-token entropy heatmaps.
 *
 * Token text is untrusted: every node is built with createElement + textContent; this file never
 * assigns innerHTML. Per-token data arrives as base64 buffers (int32 ids/offsets, float16 entropy and
 * log-prob) and is decoded into typed arrays once per step. Only visible list rows exist in the DOM,
 * and a response's tokens are rendered in chunks across animation frames so 8k-token responses do
 * not block the page.
 */
(function () {
  "use strict";

  const meta = readJSON("wbtrace-meta");
  const ROW_H = 48;
  const CHUNK = 2000; // token spans per animation frame
  const vocab = new Map(); // token id -> display text
  const stepCache = new Map(); // step -> decoded step
  const state = { step: null, data: null, order: new Int32Array(0), sel: -1, sortKey: "entropy_mean",
                  desc: true, renderGen: 0 };
  const $ = (id) => document.getElementById(id);

  // ---------- decoding ----------
  function readJSON(id) {
    const el = document.getElementById(id);
    return el ? JSON.parse(el.textContent) : null;
  }

  function b64bytes(s) {
    if (Uint8Array.fromBase64) return Uint8Array.fromBase64(s);
    const bin = atob(s);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }

  const F16 = (function () { // float16 bits -> float32, for all 65536 values
    const t = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) {
      const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 0x1f, f = h & 0x3ff;
      t[h] = e === 0 ? s * f * 2 ** -24 : e === 31 ? (f ? NaN : s * Infinity) : s * (1 + f / 1024) * 2 ** (e - 15);
    }
    return t;
  })();

  function f16(s) {
    const bits = new Uint16Array(b64bytes(s).buffer);
    const out = new Float32Array(bits.length);
    for (let i = 0; i < bits.length; i++) out[i] = F16[bits[i]];
    return out;
  }

  function addVocab(v) {
    if (!v) return;
    const ids = new Int32Array(b64bytes(v.ids).buffer);
    for (let i = 0; i < ids.length; i++) vocab.set(ids[i], v.texts[i]);
  }

  function decodeStep(p) {
    addVocab(p.vocab);
    return { step: p.step, n: p.n, cols: p.columns, charts: p.charts, threshold: p.threshold,
             offsets: new Int32Array(b64bytes(p.offsets).buffer), ids: new Int32Array(b64bytes(p.token_ids).buffer),
             ent: f16(p.entropy), lp: p.logprob ? f16(p.logprob) : null, groups: groupIndex(p.columns),
             ratio: p.ratio ? new Float32Array(b64bytes(p.ratio).buffer) : null,
             clipped: p.clipped ? b64bytes(p.clipped) : null, high: p.high_entropy ? b64bytes(p.high_entropy) : null,
             groupRows: p.groups || null };
  }

  function groupIndex(cols) { // group id -> row indices ordered by sample id
    const g = new Map();
    const gid = cols.group_id;
    if (!gid) return g;
    gid.forEach((k, i) => { if (!g.has(k)) g.set(k, []); g.get(k).push(i); });
    for (const rows of g.values()) rows.sort((a, b) => cols.sample_id[a] - cols.sample_id[b]);
    return g;
  }

  async function loadStep(step) {
    if (stepCache.has(step)) return stepCache.get(step);
    let payload;
    if (meta.mode === "serve") {
      const r = await fetch("api/step/" + step);
      if (!r.ok) throw new Error("step " + step + ": HTTP " + r.status);
      payload = await r.json();
    } else {
      payload = readJSON("wbtrace-step-" + step);
    }
    const d = decodeStep(payload);
    stepCache.clear(); // one decoded step in memory at a time: 512 x 8k tokens is ~45 MB decoded
    stepCache.set(step, d);
    return d;
  }

  const tokText = (id) => (vocab.has(id) ? vocab.get(id) : "<id:" + id + ">");

  // ---------- colour scale: wbtrace/palette.py's stops, interpolated and rounded like entropy_rgb ----------
  const STOPS = meta.color_scale.stops; // [[entropy nats, [r, g, b]], ...]
  const H_TOP = STOPS[STOPS.length - 1][0];
  function roundHalfEven(x) { // Python's round(), so Python and JS agree on every channel
    const r = Math.round(x);
    return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
  }
  function entropyInto(h, out, o) { // entropyRGB written into out[o..o+2], no allocation (strip painting)
    let c = STOPS[STOPS.length - 1][1];
    if (!(h > STOPS[0][0])) c = STOPS[0][1];
    else {
      for (let k = 0; k < STOPS.length - 1; k++) {
        const x0 = STOPS[k][0], c0 = STOPS[k][1], x1 = STOPS[k + 1][0], c1 = STOPS[k + 1][1];
        if (h <= x1) {
          const f = (h - x0) / (x1 - x0);
          for (let j = 0; j < 3; j++) out[o + j] = roundHalfEven(c0[j] + f * (c1[j] - c0[j]));
          return out;
        }
      }
    }
    out[o] = c[0]; out[o + 1] = c[1]; out[o + 2] = c[2];
    return out;
  }
  const entropyRGB = (h) => entropyInto(h, [0, 0, 0], 0);
  const isDark = (c) => 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2] <= 140; // palette.text_color_for
  const rgb = (c) => "rgb(" + c[0] + "," + c[1] + "," + c[2] + ")";

  // ---------- small DOM helpers ----------
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  const fmt = (v, d) => (v === null || v === undefined || Number.isNaN(v) ? "–" : typeof v === "number" ? v.toFixed(d) : String(v));
  function stat(label, value) {
    const s = el("span", "stat", label + " ");
    s.appendChild(el("b", null, value));
    return s;
  }

  // ---------- charts ----------
  function embed(name, spec) {
    const host = $("chart-" + name);
    if (!host) return;
    host.replaceChildren();
    if (!spec) { host.appendChild(el("div", "empty", "no data for this chart")); return; }
    const values = spec.data && spec.data.values;
    if (values && values.length === 0) { host.appendChild(el("div", "empty", "no data for this chart")); return; }
    vegaEmbed(host, spec, { actions: { export: true, source: false, compiled: false, editor: false },
                            renderer: "svg" }).catch((e) => host.appendChild(el("div", "empty", "chart error: " + e)));
  }

  // ---------- header ----------
  function renderHeader() {
    const run = meta.run || {};
    const parts = [meta.run_dir];
    if (run.model) parts.push(run.model);
    // one isolated span per part (viewer.css): a bidi control in the model name cannot flip the dir
    $("run-info").replaceChildren(...parts.flatMap((p, i) => (i ? [" · "] : []).concat([el("span", "iso", p)])));
    const sel = $("step-select");
    for (const s of meta.steps) sel.appendChild(new Option(String(s), String(s)));
    sel.addEventListener("change", () => showStep(Number(sel.value)));
  }

  function renderChips(d) {
    const m = meta.manifest.find((r) => r.step === d.step) || {};
    const chips = $("step-chips");
    chips.replaceChildren();
    const add = (k, v) => { const c = el("span", "chip", k + " "); c.appendChild(el("b", null, v)); chips.appendChild(c); };
    add("responses", d.n);
    add("tokens", d.ent.length.toLocaleString());
    add("mean H", fmt(m.entropy_mean, 3));
    add("p80", fmt(m.entropy_p80, 3));
    add("H > " + d.threshold, m.share_above === null || m.share_above === undefined ? "–" : (100 * m.share_above).toFixed(1) + "%");
    if (m.reward_mean !== null && m.reward_mean !== undefined) add("reward", fmt(m.reward_mean, 3));
  }

  // ---------- filtering and sorting ----------
  function tokenFilterRows(d, needle) { // rows with a token whose text contains needle
    const matched = [];
    for (const [id, text] of vocab) if (id >= 0 && text.includes(needle)) matched.push(id);
    let maxId = -1;
    for (const id of matched) if (id > maxId) maxId = id;
    const hit = new Uint8Array(maxId + 1);
    for (const id of matched) hit[id] = 1;
    const any = matched.length > 0;
    const rows = new Uint8Array(d.n);
    if (!any) return rows;
    const { ids, offsets } = d;
    for (let r = 0; r < d.n; r++) {
      for (let i = offsets[r]; i < offsets[r + 1]; i++) {
        const t = ids[i];
        if (t >= 0 && t <= maxId && hit[t]) { rows[r] = 1; break; }
      }
    }
    return rows;
  }

  function applyFilters() {
    const d = state.data;
    if (!d) return;
    const c = d.cols;
    const num = (id) => { const v = $(id).value.trim(); return v === "" ? null : Number(v); };
    const hmin = num("f-hmin"), hmax = num("f-hmax");
    const needle = $("f-token").value;
    const fc = $("f-correct").value, fk = $("f-kept").value, fg = $("f-group").value.trim();
    const tokRows = needle ? tokenFilterRows(d, needle) : null;
    const keep = [];
    for (let r = 0; r < d.n; r++) {
      const h = c.entropy_mean[r];
      if (hmin !== null && !(h >= hmin)) continue;
      if (hmax !== null && !(h <= hmax)) continue;
      if (tokRows && !tokRows[r]) continue;
      if (fc && (!c.correct || c.correct[r] !== (fc === "1"))) continue;
      if (fk && (!c.kept || c.kept[r] !== (fk === "1"))) continue;
      if (fg && (!c.group_id || String(c.group_id[r]) !== fg)) continue;
      keep.push(r);
    }
    const key = c[state.sortKey] || c.sample_id, sign = state.desc ? -1 : 1;
    keep.sort((a, b) => {
      const x = key[a], y = key[b];
      if (x === y) return c.sample_id[a] - c.sample_id[b];
      if (x === null || x === undefined) return 1;
      if (y === null || y === undefined) return -1;
      return x < y ? -sign : sign;
    });
    state.order = Int32Array.from(keep);
    $("count").textContent = keep.length + " of " + d.n + " responses";
    $("list-spacer").style.height = keep.length * ROW_H + "px";
    renderList(true);
  }

  // ---------- virtual list ----------
  // Scrolling must not stall: row elements (and their canvases) are recycled rather than rebuilt, and
  // each response's strip pixels are computed once per step and cached (STRIP_W x 4 bytes a row).
  const STRIP_W = 240;
  const rowPool = new Map(); // position in order -> row element
  const spareRows = []; // detached row elements (canvas kept), reused for positions that scroll into view
  function renderList(force) {
    const list = $("list"), d = state.data;
    if (force) { for (const e of rowPool.values()) spareRows.push(e); rowPool.clear(); } // refilled below as needed
    const top = list.scrollTop, height = list.clientHeight; // read layout before any DOM write
    const first = Math.max(0, Math.floor(top / ROW_H) - 4);
    const last = Math.min(state.order.length, Math.ceil((top + height) / ROW_H) + 4);
    for (const [pos, e] of rowPool) if (pos < first || pos >= last) { rowPool.delete(pos); spareRows.push(e); }
    const frag = document.createDocumentFragment();
    for (let pos = first; pos < last; pos++) {
      const r = state.order[pos];
      let e = rowPool.get(pos);
      if (!e || e.wb.d !== d || e.wb.r !== r) {
        if (!e) { e = spareRows.pop() || newRow(); rowPool.set(pos, e); }
        fillRow(e, d, r);
        e.style.top = pos * ROW_H + "px";
        if (!e.parentNode) frag.appendChild(e);
      }
      e.classList.toggle("sel", r === state.sel);
    }
    if (frag.firstChild) list.appendChild(frag);
    for (const e of spareRows) { if (e.parentNode) e.remove(); e.wb.d = null; } // hold no old step alive
  }

  function newRow() { // the fixed skeleton of a row; fillRow puts a response in it
    const row = el("div", "item"), l1 = el("div", "l1"), l2 = el("div", "l2");
    const cv = document.createElement("canvas");
    cv.width = STRIP_W; cv.height = 1;
    const h = el("span", "num");
    l2.appendChild(cv); l2.appendChild(h);
    row.appendChild(l1); row.appendChild(l2);
    row.wb = { l1, cv, ctx: cv.getContext("2d"), h, d: null, r: -1 };
    return row;
  }

  function fillRow(row, d, r) {
    const c = d.cols, w = row.wb;
    w.d = d; w.r = r;
    row.dataset.row = String(r);
    const l1 = [el("span", "sid", "#" + c.sample_id[r])];
    if (c.group_id) { const g = el("span", "grp", "g " + c.group_id[r]); g.title = String(c.group_id[r]); l1.push(g); }
    if (c.correct && c.correct[r] !== null) l1.push(el("span", "badge " + (c.correct[r] ? "ok" : "bad"), c.correct[r] ? "correct" : "wrong"));
    if (c.kept && c.kept[r] === false) l1.push(el("span", "badge off", "filtered"));
    if (c.reward) l1.push(el("span", "num", "R " + fmt(c.reward[r], 2)));
    l1.push(el("span", "num muted", (d.offsets[r + 1] - d.offsets[r]) + " tok"));
    w.l1.replaceChildren(...l1);
    w.h.textContent = "H̄ " + fmt(c.entropy_mean[r], 3);
    w.ctx.putImageData(stripImage(d, r), 0, 0);
  }

  function stripImage(d, r) { // the response's entropy along its length, max per pixel column; cached
    if (!d.strips) d.strips = new Array(d.n);
    let img = d.strips[r];
    if (img) return img;
    img = d.strips[r] = new ImageData(STRIP_W, 1);
    const a = d.offsets[r], n = d.offsets[r + 1] - a, W = STRIP_W, px = img.data, ent = d.ent;
    for (let x = 0; x < W; x++) {
      let h = -1;
      const lo = a + Math.floor((x * n) / W), hi = Math.max(lo + 1, a + Math.floor(((x + 1) * n) / W));
      if (lo >= a + n) continue; // past the end: stays transparent
      for (let i = lo; i < hi; i++) if (ent[i] > h) h = ent[i];
      entropyInto(h, px, 4 * x);
      px[4 * x + 3] = 255;
    }
    return img;
  }

  function precomputeStrips(d) { // fill the strip cache in idle time, list order first, so scrolling finds it ready
    const idle = window.requestIdleCallback || ((fn) => setTimeout(() => { const t = performance.now(); fn({ timeRemaining: () => 8 - (performance.now() - t) }); }, 50));
    const order = state.order;
    let k = 0;
    const work = (deadline) => {
      if (state.data !== d) return;
      const total = order.length + d.n; // the listed rows, then every row (cached ones return at once)
      for (; k < total && deadline.timeRemaining() > 1; k++) stripImage(d, k < order.length ? order[k] : k - order.length);
      if (k < total) idle(work);
    };
    idle(work);
  }

  // ---------- response detail ----------
  function selectResponse(r) {
    const d = state.data;
    if (!d || r < 0 || r >= d.n) return;
    state.sel = r;
    renderList(false);
    renderDetailHead(d, r);
    renderTokens(d, r);
    renderPromptHistory(d, r);
  }

  function groupNav(d, r) {
    const c = d.cols;
    if (!c.group_id) return { rows: [r], k: 0 };
    const rows = d.groups.get(c.group_id[r]);
    return { rows, k: rows.indexOf(r) };
  }

  function renderDetailHead(d, r) {
    const c = d.cols, head = $("detail-head");
    head.replaceChildren();
    head.appendChild(el("span", "title", "Response #" + c.sample_id[r]));
    const { rows, k } = groupNav(d, r);
    if (c.group_id) head.appendChild(stat("group", c.group_id[r] + " (" + (k + 1) + "/" + rows.length + ")"));
    if (c.reward) head.appendChild(stat("reward", fmt(c.reward[r], 3)));
    if (c.advantage) head.appendChild(stat("adv", fmt(c.advantage[r], 3)));
    if (c.correct && c.correct[r] !== null) head.appendChild(stat("outcome", c.correct[r] ? "correct" : "incorrect"));
    if (c.kept) head.appendChild(stat("status", c.kept[r] ? "kept" : "filtered"));
    head.appendChild(stat("tokens", d.offsets[r + 1] - d.offsets[r]));
    head.appendChild(stat("mean H", fmt(c.entropy_mean[r], 3)));
    head.appendChild(stat("max H", fmt(c.entropy_max[r], 3)));
    head.appendChild(stat("H > " + d.threshold, c.n_high[r]));
    const nav = el("span", "nav");
    const button = (label, title, fn, disabled) => {
      const b = el("button", null, label); b.title = title; b.disabled = !!disabled; b.addEventListener("click", fn); nav.appendChild(b); return b;
    };
    button("◀ prev in group", "previous response of this group", () => selectResponse(rows[k - 1]), k <= 0).id = "prev-in-group";
    button("next in group ▶", "next response of this group", () => selectResponse(rows[k + 1]), k >= rows.length - 1).id = "next-in-group";
    if (c.group_id) button("only this group", "filter the list to this group", () => { $("f-group").value = String(c.group_id[r]); applyFilters(); });
    button("tokens CSV", "this response's tokens with entropy and log-prob", () => exportTokens(d, r));
    head.appendChild(nav);
    const prompt = c.prompt_text ? c.prompt_text[r] : null;
    $("prompt-box").hidden = !prompt;
    $("prompt-text").textContent = prompt || "";
  }

  function renderTokens(d, r) {
    const box = $("tokens"), gen = ++state.renderGen;
    box.replaceChildren();
    box.scrollTop = 0;
    box.dataset.row = String(r);
    const a = d.offsets[r], b = d.offsets[r + 1];
    let i = a;
    const chunk = () => {
      if (gen !== state.renderGen) return; // another response was selected meanwhile
      const frag = document.createDocumentFragment(), end = Math.min(b, i + CHUNK);
      for (; i < end; i++) frag.appendChild(tokenSpan(d, i, i - a));
      box.appendChild(frag);
      if (i < b) requestAnimationFrame(chunk);
      else box.dataset.complete = "1";
    };
    box.dataset.complete = "0";
    chunk();
    if (!window.__wbtraceFirstRender) window.__wbtraceFirstRender = performance.now();
  }

  function tokenSpan(d, i, pos) {
    const s = document.createElement("span"), h = d.ent[i], col = entropyRGB(h);
    const text = tokText(d.ids[i]);
    // newlines stay line breaks but get a visible mark, so their colour can be seen
    s.textContent = text === "" ? "∅" : text.includes("\n") ? text.replace(/\n/g, "↵\n") : text;
    s.style.backgroundColor = rgb(col);
    const cls = [];
    if (isDark(col)) cls.push("dark");
    if (d.high && d.high[i]) cls.push("hi");
    if (d.clipped && d.clipped[i]) cls.push("clip");
    if (cls.length) s.className = cls.join(" ");
    s.dataset.i = String(pos);
    s.dataset.h = h.toFixed(4);
    return s;
  }

  // ---------- tooltip ----------
  function setupTooltip() {
    const tip = $("tooltip"), box = $("tokens");
    box.addEventListener("mouseover", (ev) => {
      const s = ev.target;
      if (!s.dataset || s.dataset.i === undefined || !state.data) return;
      const d = state.data, r = Number(box.dataset.row), pos = Number(s.dataset.i), i = d.offsets[r] + pos;
      tip.replaceChildren();
      tip.appendChild(el("div", "tt-tok", JSON.stringify(tokText(d.ids[i]))));
      const row = (k, v) => { const e = el("div", "tt-row"); e.appendChild(el("span", null, k)); e.appendChild(el("span", null, v)); tip.appendChild(e); };
      row("entropy", d.ent[i].toFixed(4) + " nats");
      if (d.lp) { row("log-prob", d.lp[i].toFixed(4)); row("prob", Math.exp(d.lp[i]).toFixed(4)); }
      if (d.ratio) row("ratio", Number.isNaN(d.ratio[i]) ? "–" : d.ratio[i].toFixed(4));
      if (d.clipped) row("clipped", d.clipped[i] ? "yes" : "no");
      if (d.high) row("high-entropy", d.high[i] ? "yes" : "no");
      row("token id", d.ids[i]);
      row("position", pos + " / " + (d.offsets[r + 1] - d.offsets[r]));
      tip.hidden = false;
    });
    box.addEventListener("mousemove", (ev) => {
      const x = Math.min(ev.clientX + 14, window.innerWidth - tip.offsetWidth - 8);
      const y = ev.clientY + 18 + tip.offsetHeight > window.innerHeight ? ev.clientY - tip.offsetHeight - 10 : ev.clientY + 18;
      tip.style.left = x + "px"; tip.style.top = y + "px";
    });
    box.addEventListener("mouseleave", () => { tip.hidden = true; });
  }

  function renderLegend() {
    const lg = $("legend");
    lg.appendChild(el("span", null, "entropy (nats)"));
    const ramp = el("span", "ramp");
    for (let k = 0; k < 48; k++) {
      const h = (k / 47) * H_TOP;
      const c = el("span"); c.style.backgroundColor = rgb(entropyRGB(h)); c.title = h.toFixed(2); ramp.appendChild(c);
    }
    lg.appendChild(el("span", null, "0"));
    lg.appendChild(ramp);
    lg.appendChild(el("span", null, H_TOP + "+"));
    lg.appendChild(el("span", "muted", "· hover a token for entropy, log-prob, ratio, id · underlined: high-entropy (trainer) · dashed box: clipped"));
  }

  // ---------- CSV export (client side) ----------
  const CSV_START = new RegExp(meta.csv_guard.start), CSV_SAFE = new RegExp(meta.csv_guard.safe);
  function csvField(v) {
    if (v === null || v === undefined) return "";
    if (typeof v !== "string") return String(v);
    // spreadsheet formula injection: the CLI's rule (wbtrace.textsafe.csv_cell), shipped in meta
    const safe = CSV_START.test(v) && !CSV_SAFE.test(v) ? "'" + v : v;
    return '"' + safe.replace(/"/g, '""') + '"';
  }

  function download(name, lines) {
    const blob = new Blob([lines.join("\r\n") + "\r\n"], { type: "text/csv;charset=utf-8" });
    const a = el("a");
    a.href = URL.createObjectURL(blob);
    a.download = name;
    document.body.appendChild(a);
    a.click();
    setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
  }

  function selectionCSV() {
    const d = state.data, c = d.cols;
    const names = ["sample_id", "group_id", "prompt_index", "reward", "advantage", "score", "response_length", "kept",
                   "correct", "truncated", "entropy_mean", "entropy_max", "n_high"].filter((k) => c[k]);
    const lines = [["step"].concat(names, ["response_text"]).join(",")];
    for (const r of state.order) {
      let text = "";
      for (let i = d.offsets[r]; i < d.offsets[r + 1]; i++) text += tokText(d.ids[i]);
      lines.push([d.step].concat(names.map((k) => c[k][r]), [text]).map(csvField).join(","));
    }
    return lines;
  }

  function exportTokens(d, r) {
    const lines = ["step,sample_id,position,token_id,token,entropy,logprob"];
    for (let i = d.offsets[r]; i < d.offsets[r + 1]; i++) {
      lines.push([d.step, d.cols.sample_id[r], i - d.offsets[r], d.ids[i], tokText(d.ids[i]), d.ent[i],
                  d.lp ? d.lp[i] : null].map(csvField).join(","));
    }
    download("wbtrace_step" + d.step + "_sample" + d.cols.sample_id[r] + "_tokens.csv", lines);
  }

  // ---------- analysis views (rows computed by wbtrace.analysis; every cell via textContent) ----------
  function table(host, cols, rows, onClick) { // cols: [[key, title, digits or "txt"]]
    host.replaceChildren();
    if (!rows || !rows.length) { host.appendChild(el("div", "empty", "no rows")); return; }
    const t = el("table"), head = el("tr");
    for (const [, title, d] of cols) head.appendChild(el("th", d === "txt" ? "txt" : null, title));
    t.appendChild(head);
    for (const r of rows) {
      const tr = el("tr", onClick ? "click" : null);
      for (const [k, , d] of cols) {
        const v = typeof k === "function" ? k(r) : r[k];
        tr.appendChild(el("td", d === "txt" ? "txt" : null, d === "txt" ? (v === null || v === undefined ? "–" : String(v)) : d === "%" ? (v === null || v === undefined ? "–" : (100 * v).toFixed(1) + "%") : fmt(v, d)));
      }
      if (onClick) tr.addEventListener("click", () => onClick(r));
      t.appendChild(tr);
    }
    host.appendChild(t);
  }

  function renderAnalyses() {
    const a = meta.analyses || {};
    if (a.forks) {
      embed("forks_trend", a.forks.chart);
      table($("forks-table"), [["label", "token", "txt"], ["count", "count", 0], ["forks", "forks", 0],
        ["fork_share", "fork share", "%"], ["entropy_mean", "mean H", 3], ["fork_entropy_mean", "mean H of forks", 3]], a.forks.top);
    }
    if (a.cov) {
      embed("cov_entropy_change", a.cov.chart);
      table($("cov-table"), [["step", "step", 0], ["n_tokens", "tokens", 0], ["cov_mean", "cov", 4], ["entropy_mean", "H", 3],
        ["entropy_change", "dH next", 4], ["clip_cov_candidates", "Clip-Cov cand.", 0], ["reward_mean", "reward", 3]], a.cov.rows,
        (r) => showStep(r.step));
      const f = a.cov.fit;
      $("cov-fit").textContent = f && f.a !== null
        ? "R = -a·exp(H) + b over " + f.n + " steps: a = " + f.a.toPrecision(4) + ", b = " + f.b.toPrecision(4) + ", rmse = " + f.rmse.toPrecision(3) + (f.r2 === null ? "" : ", r² = " + f.r2.toFixed(3))
        : "R = -a·exp(H) + b: not enough steps with reward.";
    } else {
      embed("cov_entropy_change", null);
      $("cov-fit").textContent = "The trace has no log-probs or advantages: no covariance.";
    }
    if (a.positions) {
      embed("position_heatmap", a.positions.chart);
      table($("end-table"), [["step", "step", 0], ["n_high", "tokens > thr", 0], ["n_high_tail", "in last 10%", 0],
        ["end_share", "end share", "%"]], a.positions.end_share);
    }
    if (a.groups) embed("group_shares", a.groups.chart); else embed("group_shares", null);
    const c = meta.compare;
    if (c) {
      $("compare-note").textContent = "a = " + meta.run_dir + " · b = " + c.run_dir_b;
      embed("compare_entropy", c.chart);
      table($("compare-table"), [["step", "step", 0], ["entropy_mean_a", "H a", 3], ["entropy_mean_b", "H b", 3],
        ["reward_mean_a", "reward a", 3], ["reward_mean_b", "reward b", 3],
        [(r) => { const o = c.overlap.find((x) => x.step === r.step); return o ? o.jaccard : null; }, "fork overlap", "%"]], c.curves);
    }
  }

  function renderStepGroups(d) {
    table($("groups-table"), [["group_id", "group", "txt"], ["n", "n", 0], [(r) => (r.rewards || []).map((x) => fmt(x, 2)).join(" "), "rewards", "txt"],
      ["n_correct", "correct", 0], [(r) => (r.zero_spread ? "yes" : r.zero_spread === false ? "no" : "–"), "zero spread", "txt"],
      [(r) => (r.kept ? "kept" : "filtered"), "status", "txt"], ["reward_mean", "mean R", 3],
      [(r) => (r.entropy_mean || []).map((x) => fmt(x, 2)).join(" "), "mean H per response", "txt"], ["pass_at_k", "pass@k", "%"]],
      d.groupRows, (r) => { $("f-group").value = String(r.group_id); applyFilters(); });
  }

  function renderPromptHistory(d, r) {
    const p = (meta.analyses || {}).prompts, note = $("prompt-note");
    if (!p || !d.cols.prompt_key) { note.textContent = "The trace has no prompt text, prompt ids or prompt index."; return; }
    const key = d.cols.prompt_key[r];
    const rows = p.rows.filter((x) => x.key === key);
    note.textContent = "Prompt (matched by " + p.matched_by + "): " + String(key).slice(0, 200) + (p.truncated ? " · list truncated" : "");
    table($("prompt-table"), [["step", "step", 0], ["n", "responses", 0], ["entropy_mean", "mean H", 3],
      ["reward_mean", "mean reward", 3], ["accuracy", "accuracy", "%"]], rows, (x) => showStep(x.step));
  }

  function setupTabs() {
    for (const b of document.querySelectorAll("#tabs button")) {
      b.addEventListener("click", () => {
        for (const o of document.querySelectorAll("#tabs button")) o.classList.toggle("on", o === b);
        for (const t of document.querySelectorAll("#analyses .tab")) t.hidden = t.id !== "tab-" + b.dataset.tab;
        window.dispatchEvent(new Event("resize")); // charts in a tab that was hidden size themselves now
      });
    }
  }

  // ---------- wiring ----------
  function debounce(fn, ms) { let t; return () => { clearTimeout(t); t = setTimeout(fn, ms); }; }

  function setupControls() {
    const refilter = debounce(applyFilters, 150);
    for (const id of ["f-hmin", "f-hmax", "f-token", "f-group"]) $(id).addEventListener("input", refilter);
    for (const id of ["f-correct", "f-kept"]) $(id).addEventListener("change", applyFilters);
    $("sort-key").addEventListener("change", () => { state.sortKey = $("sort-key").value; applyFilters(); });
    $("sort-dir").addEventListener("click", () => {
      state.desc = !state.desc;
      $("sort-dir").textContent = state.desc ? "↓ desc" : "↑ asc";
      applyFilters();
    });
    $("reset").addEventListener("click", () => {
      for (const id of ["f-hmin", "f-hmax", "f-token", "f-group", "f-correct", "f-kept"]) $(id).value = "";
      applyFilters();
    });
    $("export-csv").addEventListener("click", () => download("wbtrace_step" + state.data.step + "_selection.csv", selectionCSV()));
    const list = $("list");
    let listFrame = 0; // one list update per frame, however many scroll events arrive
    list.addEventListener("scroll", () => {
      if (!listFrame) listFrame = requestAnimationFrame(() => { listFrame = 0; renderList(false); });
    }, { passive: true });
    list.addEventListener("click", (ev) => {
      const row = ev.target.closest(".item");
      if (row) selectResponse(Number(row.dataset.row));
    });
    list.addEventListener("keydown", (ev) => {
      if (ev.key !== "ArrowDown" && ev.key !== "ArrowUp" && ev.key !== "j" && ev.key !== "k") return;
      ev.preventDefault();
      const pos = state.order.indexOf(state.sel) + (ev.key === "ArrowDown" || ev.key === "j" ? 1 : -1);
      if (pos < 0 || pos >= state.order.length) return;
      selectResponse(state.order[pos]);
      const top = pos * ROW_H;
      if (top < list.scrollTop || top + ROW_H > list.scrollTop + list.clientHeight) list.scrollTop = top - list.clientHeight / 2;
    });
  }

  async function showStep(step) {
    const d = await loadStep(step);
    state.step = step; state.data = d; state.sel = -1;
    $("step-select").value = String(step);
    $("step-title").textContent = "Step " + step;
    renderChips(d);
    const dl = $("group-list");
    dl.replaceChildren();
    for (const g of d.groups.keys()) dl.appendChild(new Option(String(g)));
    for (const name of ["entropy_histogram", "entropy_by_position", "entropy_correct_box", "forking_tokens"]) embed(name, d.charts[name]);
    renderStepGroups(d);
    applyFilters();
    if (state.order.length) selectResponse(state.order[0]);
    precomputeStrips(d);
    document.body.dataset.step = String(step);
  }

  function renderRunCharts() {
    for (const name of ["entropy_percentiles", "share_above", "entropy_correct_incorrect"]) embed(name, meta.charts[name]);
  }

  // ---------- live: --serve --follow polls the run summary and adds the steps that were committed ----------
  function follow() {
    let busy = false;
    setInterval(async () => {
      if (busy) return;
      busy = true;
      try {
        const r = await fetch("api/meta");
        if (!r.ok) return;
        const m = await r.json();
        if (m.steps.length === meta.steps.length && m.steps.every((s, i) => s === meta.steps[i])) return;
        const fresh = m.steps.filter((s) => !meta.steps.includes(s));
        Object.assign(meta, m);
        const sel = $("step-select");
        for (const s of fresh) sel.appendChild(new Option(String(s), String(s)));
        renderRunCharts();
        renderAnalyses();
        if (state.step === null && meta.steps.length) await showStep(meta.steps[meta.steps.length - 1]);
        document.body.dataset.nsteps = String(meta.steps.length);
      } catch (e) {
        document.body.dataset.followError = String(e);
      } finally {
        busy = false;
      }
    }, Math.max(250, 1000 * (meta.poll_s || 2)));
  }

  async function main() {
    addVocab(readJSON("wbtrace-vocab"));
    renderHeader();
    renderLegend();
    setupControls();
    setupTooltip();
    setupTabs();
    if (meta.steps.length) {
      renderAnalyses();
      renderRunCharts();
      await showStep(meta.steps[meta.steps.length - 1]);
    }
    if (meta.follow) follow();
    document.body.dataset.ready = "1";
  }

  window.wbtrace = { state, selectResponse, showStep, applyFilters, entropyRGB, tokText, selectionCSV, csvField };
  main().catch((e) => {
    document.body.dataset.error = String(e);
    $("detail-head").replaceChildren(el("span", "badge bad", "error: " + e));
  });
})();
