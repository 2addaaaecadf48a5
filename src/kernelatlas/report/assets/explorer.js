/* kernelatlas report: kernel explorer, sortable tables, autoencoder spectrum, downloads.
 * Plain JavaScript shipped with kernelatlas (no build step, no dependency, no network).
 * Reads the JSON document in <script id="ka-data">; see kernelatlas/report/explorer.py.
 */
(function () {
  "use strict";

  var node = document.getElementById("ka-data");
  if (!node) return;
  var DATA = JSON.parse(node.textContent);
  var FAM = {};
  (DATA.families || []).forEach(function (f) { FAM[f.name] = f; });
  var CMAP = DATA.cmap || ["#053061", "#f7f7f7", "#67001f"];
  window.kernelatlas = { data: DATA };

  // ------------------------------------------------------------------ helpers
  function $(sel, root) { return (root || document).querySelector(sel); }
  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    if (attrs) Object.keys(attrs).forEach(function (k) {
      if (k === "class") e.className = attrs[k];
      else e.setAttribute(k, attrs[k]);
    });
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }
  function decode(col) {
    var bin = atob(col.data), n = bin.length, u8 = new Uint8Array(n);
    for (var i = 0; i < n; i++) u8[i] = bin.charCodeAt(i);
    var b = u8.buffer;
    switch (col.type) {
      case "f32": return new Float32Array(b);
      case "i32": return new Int32Array(b);
      case "u32": return new Uint32Array(b);
      case "u16": return new Uint16Array(b);
      case "i8": return new Int8Array(b);
      default: return u8;
    }
  }
  function fmt(v, digits) {
    if (v === null || v === undefined || (typeof v === "number" && !isFinite(v))) return "–";
    return Number(v).toFixed(digits);
  }
  function int(v) { return Number(v).toLocaleString("en-US"); }
  // a rate as a percentage in plain digits (1e-9: "0.0000001%", as report.labels.percent)
  function pct(r) { return (100 * r).toLocaleString("en-US", { maximumSignificantDigits: 3, maximumFractionDigits: 20 }) + "%"; }
  function famName(f) { return String(f).replace(/_/g, " "); }
  function color(v) { // v in [-1, 1]
    var i = Math.round((v + 1) / 2 * (CMAP.length - 1));
    return CMAP[Math.max(0, Math.min(CMAP.length - 1, i))];
  }
  function swatch(f) {
    var s = el("span", { class: "sw" });
    s.style.background = (FAM[f] && FAM[f].color) || "#999";
    return s;
  }
  function download(name, text, type) {
    var blob = new Blob([text], { type: type || "text/plain" });
    var a = el("a", { href: URL.createObjectURL(blob), download: name });
    document.body.appendChild(a);
    a.click();
    setTimeout(function () { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
  }

  // ------------------------------------------------------------------ the kernels
  var X = DATA.explorer;
  var K = null;
  if (X) {
    K = { n: X.n, cols: {}, dicts: {}, L: X.layers, src: X.sources };
    Object.keys(X.columns).forEach(function (name) {
      K.cols[name] = decode(X.columns[name]);
      if (X.columns[name].dict) K.dicts[name] = X.columns[name].dict;
    });
    K.w = decode({ type: "i8", data: X.weights });
    K.off = new Uint32Array(K.n + 1);
    for (var i = 0; i < K.n; i++) {
      var l = K.cols.layer[i];
      K.off[i + 1] = K.off[i] + K.L.kh[l] * K.L.kw[l];
    }
  }
  function val(name, i) {
    var c = K.cols[name];
    if (!c) return null;
    var d = K.dicts[name];
    return d ? d[c[i]] : c[i];
  }
  function kernelInfo(i) {
    var l = K.cols.layer[i], s = K.L.source[l];
    return {
      row: K.cols.row[i], source: K.src[s].source, model: K.src[s].model, label: K.src[s].label,
      layer: K.L.layer[l], layer_index: K.L.layer_index[l], depth: K.L.depth[l],
      kh: K.L.kh[l], kw: K.L.kw[l]
    };
  }
  function kernelValues(i, centred) {
    var a = K.off[i], b = K.off[i + 1], n = b - a, out = new Float32Array(n), peak = K.cols.peak[i];
    var mean = 0;
    for (var j = 0; j < n; j++) { out[j] = K.w[a + j] / 127 * peak; mean += out[j]; }
    if (centred) { mean /= n; for (j = 0; j < n; j++) out[j] -= mean; }
    return out;
  }
  function drawKernel(ctx, i, x, y, px, centred) {
    var info = kernelInfo(i), v = kernelValues(i, centred), m = 0, j;
    for (j = 0; j < v.length; j++) m = Math.max(m, Math.abs(v[j]));
    for (var r = 0; r < info.kh; r++) for (var c = 0; c < info.kw; c++) {
      ctx.fillStyle = color(m > 0 ? v[r * info.kw + c] / m : 0);
      ctx.fillRect(x + c * px, y + r * px, px, px);
    }
    return m;
  }

  // ------------------------------------------------------------------ CSV
  var CSV_COLS = ["row", "source", "model", "layer", "layer_index", "depth", "kh", "kw"];
  function csvCell(v) {
    if (v === null || v === undefined) return "";
    if (typeof v === "number") return isFinite(v) ? String(Number(v.toPrecision(7))) : "";
    if (typeof v === "boolean") return v ? "true" : "false";
    var s = String(v);
    return /[",\n\r]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
  }
  function csvText(indices) {
    var extra = Object.keys(X.columns).filter(function (c) { return c !== "row" && c !== "layer" && c !== "peak"; });
    var head = CSV_COLS.concat(extra), lines = [head.join(",")];
    for (var t = 0; t < indices.length; t++) {
      var i = indices[t], info = kernelInfo(i), cells = [];
      for (var h = 0; h < CSV_COLS.length; h++) cells.push(csvCell(info[CSV_COLS[h]]));
      for (var e = 0; e < extra.length; e++) {
        var name = extra[e], v = val(name, i);
        if (X.columns[name].type === "bool") v = !!v;
        cells.push(csvCell(v));
      }
      lines.push(cells.join(","));
    }
    return lines.join("\n") + "\n";
  }

  // ------------------------------------------------------------------ explorer
  var E = null;
  function thresholdFor(kh, kw, fam) {
    var t = (DATA.thresholds || {})[kh + "x" + kw];
    return t && t[fam] !== undefined ? t[fam] : null;
  }
  function buildExplorer(root) {
    var state = { source: "", layer: "", size: "", family: "", polarity: "", classified: "",
                  sort: "row", page: 0, pageSize: 400, cell: 48, centred: true, pinned: -1, hover: -1, cursor: -1 };
    var controls = el("div", { class: "ka-controls" });
    function select(name, label, options) {
      var lab = el("label", null, label), s = el("select", { "data-filter": name, id: "ka-f-" + name });
      options.forEach(function (o) { s.appendChild(el("option", { value: o[0] }, o[1])); });
      lab.appendChild(s);
      controls.appendChild(lab);
      return s;
    }
    var srcOpts = [["", "all (" + K.src.length + ")"]].concat(K.src.map(function (s, i) { return [String(i), s.label]; }));
    var sizes = {};
    for (var l = 0; l < K.L.kh.length; l++) sizes[K.L.kh[l] + "x" + K.L.kw[l]] = 1;
    var famOpts = [["", "all"]].concat(Object.keys(FAM).map(function (f) { return [f, famName(f)]; }));
    var fSource = select("source", "model", srcOpts);
    var fLayer = select("layer", "layer", [["", "all"]]);
    var fSize = select("size", "kernel size", [["", "all"]].concat(Object.keys(sizes).sort().map(function (s) { return [s, s]; })));
    var fFamily = select("family", "family", famOpts);
    var fPol = select("polarity", "polarity", [["", "any"], ["1", "on / + (1)"], ["-1", "off / − (−1)"], ["0", "none (0)"]]);
    var fCls = select("classified", "classified", [["", "any"], ["1", "classified"], ["0", "not classified"]]);
    var sortOpts = [["row", "network order"], ["score-desc", "score, high first"], ["score-asc", "score, low first"]];
    if (K.cols.fit_r2) sortOpts.push(["fit_r2-desc", "fit R², high first"]);
    if (K.cols.ae_latent) sortOpts.push(["ae_latent-asc", "autoencoder latent"]);
    var fSort = select("sort", "order", sortOpts);
    var fCell = select("cell", "kernel size on screen", [["48", "48 px"], ["32", "32 px"], ["72", "72 px"], ["96", "96 px"]]);
    var fView = select("view", "draw", [["centred", "centred (as named)"], ["raw", "raw weights"]]);
    var dlBtn = el("button", { type: "button", "data-download": "csv-filtered", class: "dl" }, "CSV of these kernels");
    controls.appendChild(dlBtn);
    root.appendChild(controls);

    var status = el("div", { class: "ka-status", id: "ka-status" });
    root.appendChild(status);
    var cbar = el("div", { class: "ka-cbar" });
    var cbCanvas = el("canvas", { width: "180", height: "12" });
    var cbLo = el("span", { id: "ka-cb-lo" }, "−max|w|"), cbHi = el("span", { id: "ka-cb-hi" }, "+max|w|");
    cbar.appendChild(el("span", null, "colour:"));
    cbar.appendChild(cbLo); cbar.appendChild(cbCanvas); cbar.appendChild(cbHi);
    var cbNote = el("span", { class: "meta", id: "ka-cb-note" }, "each kernel is scaled to its own largest |weight| (white = 0); a frame in its family's colour");
    cbar.appendChild(cbNote);
    root.appendChild(cbar);
    var g = cbCanvas.getContext("2d");
    for (var x = 0; x < 180; x++) { g.fillStyle = color(x / 179 * 2 - 1); g.fillRect(x, 0, 1, 12); }

    var main = el("div", { class: "ka-main" });
    var gridwrap = el("div", { class: "ka-gridwrap" });
    function makePager(suffix) { // one above the grid, one below it (a page of kernels is long on a phone)
      var p = el("div", { class: "ka-pager" });
      var b0 = el("button", { type: "button", id: "ka-prev" + suffix }, "◀ previous"), b1 = el("button", { type: "button", id: "ka-next" + suffix }, "next ▶");
      var t = el("span", { id: "ka-page" + suffix });
      p.appendChild(b0); p.appendChild(t); p.appendChild(b1);
      return { node: p, prev: b0, next: b1, text: t };
    }
    var pagers = [makePager(""), makePager("-bottom")];
    var canvas = el("canvas", { class: "ka-grid", id: "ka-grid", tabindex: "0", role: "application",
      "aria-label": "kernels of this page: hover or click one; with the keyboard, arrow keys move between kernels, Enter pins one, Page Up and Page Down turn the page" });
    gridwrap.appendChild(pagers[0].node);
    gridwrap.appendChild(canvas);
    gridwrap.appendChild(pagers[1].node);
    var side = el("div", { class: "ka-side", id: "ka-details", "aria-live": "polite" });
    side.appendChild(el("div", { class: "meta", id: "ka-hint" }, "Hover over a kernel for its details; click (or tap) to pin it. Keyboard: Tab to the kernels, then the arrow keys and Enter."));
    var big = el("canvas", { class: "ka-big", id: "ka-big", width: "180", height: "180" });
    side.appendChild(big);
    var dl = el("dl", { id: "ka-dl" });
    side.appendChild(dl);
    var explain = el("div", { class: "ka-explain", id: "ka-explain" });
    side.appendChild(explain);
    main.appendChild(gridwrap);
    main.appendChild(side);
    root.appendChild(main);

    var matches = new Uint32Array(0);

    function layerOptions() {
      var s = state.source, opts = [["", "all"]];
      for (var l = 0; l < K.L.layer.length; l++) {
        if (s !== "" && String(K.L.source[l]) !== s) continue;
        if (state.size && (K.L.kh[l] + "x" + K.L.kw[l]) !== state.size) continue;
        var name = (s === "" ? K.src[K.L.source[l]].label + ": " : "") + "#" + K.L.layer_index[l] + " " + K.L.layer[l] +
          " (" + K.L.kh[l] + "x" + K.L.kw[l] + ", " + int(K.L.kept[l]) + (K.L.kept[l] < K.L.kernels[l] ? " of " + int(K.L.kernels[l]) : "") + ")";
        opts.push([String(l), name]);
      }
      fLayer.innerHTML = "";
      opts.forEach(function (o) { fLayer.appendChild(el("option", { value: o[0] }, o[1])); });
      if (opts.some(function (o) { return o[0] === state.layer; })) fLayer.value = state.layer;
      else state.layer = "";
    }

    function filter() {
      var out = [], fam = K.cols.family, famDict = K.dicts.family, pol = K.cols.polarity, cls = K.cols.classified;
      var lay = K.cols.layer, famCode = state.family === "" ? -1 : famDict.indexOf(state.family);
      var srcN = state.source === "" ? -1 : Number(state.source), layN = state.layer === "" ? -1 : Number(state.layer);
      var polN = state.polarity === "" ? null : Number(state.polarity), clsN = state.classified === "" ? null : Number(state.classified);
      var sizeOk = new Uint8Array(K.L.kh.length);
      for (var l = 0; l < sizeOk.length; l++) {
        sizeOk[l] = (!state.size || (K.L.kh[l] + "x" + K.L.kw[l]) === state.size) && (srcN < 0 || K.L.source[l] === srcN) && (layN < 0 || l === layN) ? 1 : 0;
      }
      if (state.family !== "" && famCode < 0) { matches = new Uint32Array(0); return; }
      for (var i = 0; i < K.n; i++) {
        if (!sizeOk[lay[i]]) continue;
        if (famCode >= 0 && fam[i] !== famCode) continue;
        if (polN !== null && pol && pol[i] !== polN) continue;
        if (clsN !== null && cls && cls[i] !== clsN) continue;
        out.push(i);
      }
      var parts = state.sort.split("-"), key = parts[0], dir = parts[1] === "desc" ? -1 : 1;
      if (key !== "row" && K.cols[key]) {
        var c = K.cols[key];
        out.sort(function (a, b) {
          var va = c[a], vb = c[b], na = !isFinite(va), nb = !isFinite(vb);
          if (na || nb) return na === nb ? a - b : (na ? 1 : -1);
          return va === vb ? a - b : (va < vb ? -dir : dir);
        });
      }
      matches = Uint32Array.from(out);
    }

    function layout() {
      var width = Math.max(200, Math.floor(gridwrap.clientWidth || 800));
      var cols = Math.max(1, Math.floor(width / state.cell));
      return { cols: cols, rows: Math.ceil(Math.min(state.pageSize, Math.max(matches.length - state.page * state.pageSize, 0)) / cols) };
    }

    function render() {
      var pages = Math.max(1, Math.ceil(matches.length / state.pageSize));
      state.page = Math.min(state.page, pages - 1);
      var lo = state.page * state.pageSize, hi = Math.min(matches.length, lo + state.pageSize);
      var lay = layout(), cell = state.cell, dpr = window.devicePixelRatio || 1;
      canvas.width = lay.cols * cell * dpr;
      canvas.height = Math.max(1, lay.rows) * cell * dpr;
      canvas.style.width = lay.cols * cell + "px";
      canvas.style.height = Math.max(1, lay.rows) * cell + "px";
      canvas.setAttribute("data-cell", String(cell));
      canvas.setAttribute("data-cols", String(lay.cols));
      canvas.setAttribute("data-first", String(lo));
      canvas.setAttribute("data-count", String(hi - lo));
      var ctx = canvas.getContext("2d");
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      ctx.clearRect(0, 0, canvas.width, canvas.height);
      var minPx = Infinity;
      for (var t = lo; t < hi; t++) {
        var i = matches[t], k = t - lo, cx = (k % lay.cols) * cell, cy = Math.floor(k / lay.cols) * cell;
        var info = kernelInfo(i), n = Math.max(info.kh, info.kw), px = Math.max(1, Math.floor((cell - 6) / n));
        minPx = Math.min(minPx, px);
        var ox = cx + Math.floor((cell - px * info.kw) / 2), oy = cy + Math.floor((cell - px * info.kh) / 2);
        drawKernel(ctx, i, ox, oy, px, state.centred);
        var f = val("family", i);
        ctx.strokeStyle = (FAM[f] && FAM[f].color) || "#999";
        ctx.lineWidth = 2;
        ctx.strokeRect(ox - 1.5, oy - 1.5, px * info.kw + 3, px * info.kh + 3);
        if (i === state.pinned) { ctx.strokeStyle = "#000"; ctx.lineWidth = 1; ctx.strokeRect(cx + 0.5, cy + 0.5, cell - 1, cell - 1); }
        if (t === state.cursor && document.activeElement === canvas) { // the keyboard's kernel
          ctx.save(); ctx.strokeStyle = "#000"; ctx.lineWidth = 2; ctx.setLineDash([4, 3]);
          ctx.strokeRect(cx + 1, cy + 1, cell - 2, cell - 2); ctx.restore();
        }
      }
      canvas.setAttribute("data-min-px", String(isFinite(minPx) ? minPx : 0));
      var total = X.total;
      status.textContent = int(matches.length) + " kernels match the filter (of " + int(K.n) + " in this page" +
        (X.sampled ? ", a stratified sample of " + int(total) : "") + ")" + (matches.length ? "; showing " + int(lo + 1) + "–" + int(hi) : "") + ".";
      pagers.forEach(function (p) {
        p.text.textContent = "page " + (state.page + 1) + " of " + pages;
        p.prev.disabled = state.page <= 0;
        p.next.disabled = state.page >= pages - 1;
      });
    }

    function details(i) {
      dl.innerHTML = "";
      explain.textContent = "";
      var bctx = big.getContext("2d");
      bctx.clearRect(0, 0, big.width, big.height);
      if (i < 0) {
        dl.removeAttribute("data-row");
        cbLo.textContent = "−max|w|"; cbHi.textContent = "+max|w|";
        return;
      }
      var info = kernelInfo(i), n = Math.max(info.kh, info.kw), px = Math.floor(180 / n);
      var m = drawKernel(bctx, i, Math.floor((180 - px * info.kw) / 2), Math.floor((180 - px * info.kh) / 2), px, state.centred);
      if (n <= 7) { // the weights, written in their pixels
        var v = kernelValues(i, state.centred);
        bctx.font = Math.max(9, Math.min(15, Math.floor(px / 4))) + "px system-ui, sans-serif";
        bctx.textAlign = "center"; bctx.textBaseline = "middle";
        for (var r = 0; r < info.kh; r++) for (var c = 0; c < info.kw; c++) {
          var w = v[r * info.kw + c];
          bctx.fillStyle = m > 0 && Math.abs(w / m) > 0.55 ? "#fff" : "#222";
          bctx.fillText(w.toPrecision(2), Math.floor((180 - px * info.kw) / 2) + (c + 0.5) * px, Math.floor((180 - px * info.kh) / 2) + (r + 0.5) * px);
        }
      }
      cbLo.textContent = (-m).toPrecision(3); cbHi.textContent = "+" + m.toPrecision(3);
      dl.setAttribute("data-row", String(info.row));
      dl.setAttribute("data-index", String(i));
      var fam = val("family", i), pol = val("polarity", i);
      function add(key, label, text, node) {
        dl.appendChild(el("dt", null, label));
        var dd = el("dd", { "data-k": key });
        if (node) dd.appendChild(node);
        dd.appendChild(document.createTextNode(text));
        dl.appendChild(dd);
      }
      add("source", "source", info.label + (info.label !== info.source ? " — " + info.source : ""));
      add("layer", "layer", info.layer);
      add("layer_index", "layer index", String(info.layer_index));
      add("channel", "channel", String(val("channel", i)));
      add("size", "kernel size", info.kh + "x" + info.kw);
      add("family", "family", famName(fam), swatch(fam));
      if (K.cols.shape) add("shape", "shape", val("shape", i) || "–");
      add("orientation", "orientation", isFinite(val("orientation", i)) ? fmt(val("orientation", i), 1) + "°" : "–");
      add("polarity", "polarity", pol === 1 ? "+1 (on)" : pol === -1 ? "−1 (off)" : "0 (none)");
      add("scale", "scale σ", isFinite(val("scale", i)) ? fmt(val("scale", i), 2) + " px" : "–");
      add("score", "score", fmt(val("score", i), 3));
      add("classified", "classified", val("classified", i) ? "yes" : "no");
      if (K.cols.fit_r2) {
        add("fit_family", "fit model", famName(val("fit_family", i) || "–"));
        add("fit_r2", "fit R²", fmt(val("fit_r2", i), 3));
        if (K.cols.fit_sigma) add("fit_sigma", "fit σ", isFinite(val("fit_sigma", i)) ? fmt(val("fit_sigma", i), 2) + " px" : "–");
      }
      if (K.cols.ae_latent) {
        add("ae_latent", "AE latent", fmt(val("ae_latent", i), 3));
        add("ae_distance", "AE distance", fmt(val("ae_distance", i), 3));
        add("ae_family", "AE family", famName(val("ae_family", i) || "–") + (val("ae_classified", i) ? " (classified)" : " (not classified)"));
      }
      add("peak", "max |weight|", Number(K.cols.peak[i]).toPrecision(4));
      add("row", "row", String(info.row) + " of kernels.parquet");
      // What the score means for this kernel.
      var lines = [], best = fam, sc = val("score", i);
      if (fam === "degenerate") {
        lines.push("Degenerate: zero, constant or non-finite after centring; no score.");
      } else {
        var pats = Object.keys(FAM).filter(function (f) { return FAM[f].pattern; });
        if (fam === "unclassified") {
          var bestv = -Infinity;
          pats.forEach(function (f) { var s = val("score_" + f, i); if (s !== null && s > bestv) { bestv = s; best = f; } });
        }
        var thr = thresholdFor(info.kh, info.kw, best);
        lines.push("score = the best cosine similarity between the centred, unit-norm kernel and a " +
          famName(best) + " pattern of the atlas (over scales, offsets, orientations and polarities): " + fmt(sc, 3) +
          (thr !== null ? "; threshold for " + info.kh + "x" + info.kw + " " + famName(best) + ": " + fmt(thr, 3) : "") +
          (fam === "unclassified" ? " — not reached, so unclassified." : " — classified as " + famName(fam) + "."));
        var per = pats.filter(function (f) { return K.cols["score_" + f]; }).map(function (f) {
          var t = thresholdFor(info.kh, info.kw, f), s = val("score_" + f, i);
          return famName(f) + " " + fmt(s, 3) + (t !== null ? " / " + fmt(t, 3) + (s > t ? " ✓" : "") : "");
        });
        if (per.length) lines.push("Per family (cosine / threshold): " + per.join("; ") + ".");
        lines.push("Thresholds are calibrated per kernel size so that at most " + pct(DATA.summary.config.null_fpr) +
          " of " + DATA.summary.config.null + " null kernels pass any family.");
      }
      explain.textContent = lines.join(" ");
    }

    function at(ev) {
      var rect = canvas.getBoundingClientRect(), lay = layout();
      var c = Math.floor((ev.clientX - rect.left) / state.cell), r = Math.floor((ev.clientY - rect.top) / state.cell);
      if (c < 0 || c >= lay.cols || r < 0) return -1;
      var t = state.page * state.pageSize + r * lay.cols + c;
      var hi = Math.min(matches.length, (state.page + 1) * state.pageSize);
      return t < hi ? matches[t] : -1;
    }
    canvas.addEventListener("mousemove", function (ev) {
      var i = at(ev);
      if (i !== state.hover) { state.hover = i; details(i >= 0 ? i : state.pinned); }
    });
    canvas.addEventListener("mouseleave", function () { state.hover = -1; details(state.pinned); });
    canvas.addEventListener("click", function (ev) {
      var i = at(ev);
      state.pinned = i === state.pinned ? -1 : i;
      render();
      details(state.pinned >= 0 ? state.pinned : i);
    });
    function turn(by) {
      var pages = Math.max(1, Math.ceil(matches.length / state.pageSize));
      state.page = Math.max(0, Math.min(pages - 1, state.page + by));
      if (state.cursor >= 0) state.cursor = Math.min(matches.length - 1, state.page * state.pageSize);
      render();
    }
    pagers.forEach(function (p) {
      p.prev.addEventListener("click", function () { turn(-1); });
      p.next.addEventListener("click", function () { turn(1); });
    });
    // The keyboard: the grid takes the focus; arrows move a cursor over the kernels.
    canvas.addEventListener("focus", function () {
      var lo = state.page * state.pageSize, hi = Math.min(matches.length, lo + state.pageSize);
      if (!(state.cursor >= lo && state.cursor < hi)) state.cursor = hi > lo ? lo : -1;
      render(); if (state.cursor >= 0) details(matches[state.cursor]);
    });
    canvas.addEventListener("blur", function () { render(); details(state.pinned); });
    canvas.addEventListener("keydown", function (ev) {
      if (!matches.length) return;
      var cols = layout().cols, t = state.cursor < 0 ? state.page * state.pageSize : state.cursor, k = ev.key;
      if (k === "ArrowRight") t += 1; else if (k === "ArrowLeft") t -= 1;
      else if (k === "ArrowDown") t += cols; else if (k === "ArrowUp") t -= cols;
      else if (k === "Home") t = state.page * state.pageSize;
      else if (k === "End") t = Math.min(matches.length, (state.page + 1) * state.pageSize) - 1;
      else if (k === "PageDown") t += state.pageSize; else if (k === "PageUp") t -= state.pageSize;
      else if (k === "Enter" || k === " ") {
        ev.preventDefault();
        var i = matches[t];
        state.pinned = i === state.pinned ? -1 : i;
        render(); details(i);
        return;
      } else if (k === "Escape") { state.pinned = -1; render(); details(matches[t]); return; }
      else return;
      ev.preventDefault();
      t = Math.max(0, Math.min(matches.length - 1, t));
      state.cursor = t; state.page = Math.floor(t / state.pageSize);
      render(); details(matches[t]);
    });
    function onChange() {
      // the layer chosen, read before the layer list is rebuilt for the model and size (the
      // rebuild keeps it when it is still listed; it used to put back the previous choice)
      state.source = fSource.value; state.size = fSize.value; state.layer = fLayer.value;
      layerOptions();
      state.layer = fLayer.value; state.family = fFamily.value; state.polarity = fPol.value;
      state.classified = fCls.value; state.sort = fSort.value; state.cell = Number(fCell.value);
      state.centred = fView.value === "centred"; state.page = 0; state.cursor = -1;
      filter(); render(); details(state.pinned);
    }
    [fSource, fLayer, fSize, fFamily, fPol, fCls, fSort, fCell, fView].forEach(function (s) { s.addEventListener("change", onChange); });
    window.addEventListener("resize", function () { render(); });
    layerOptions(); filter(); render(); details(-1);
    return {
      state: state,
      matches: function () { return matches; },
      set: function (values) {
        Object.keys(values).forEach(function (k) {
          var s = document.getElementById("ka-f-" + k);
          if (k === "source" || k === "size") { s.value = values[k]; state[k] = values[k]; layerOptions(); }
          else if (s) s.value = values[k];
          if (k === "layer") state.layer = values[k];
        });
        onChange();
      },
      csv: function () { return csvText(matches); },
      kernelInfo: kernelInfo, val: val
    };
  }

  // ------------------------------------------------------------------ sortable tables
  function sortable(table) {
    var ths = table.querySelectorAll("thead th");
    ths.forEach(function (th, col) {
      th.classList.add("sortable");
      th.setAttribute("tabindex", "0");
      th.setAttribute("aria-sort", "none");
      if (!th.title) th.title = "sort by this column (click again to reverse)";
      th.addEventListener("keydown", function (ev) {
        if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); th.click(); }
      });
      th.addEventListener("click", function () {
        var asc = !th.classList.contains("sorted-asc");
        ths.forEach(function (h) { h.classList.remove("sorted-asc", "sorted-desc"); h.setAttribute("aria-sort", "none"); });
        th.classList.add(asc ? "sorted-asc" : "sorted-desc");
        th.setAttribute("aria-sort", asc ? "ascending" : "descending");
        var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var ca = a.cells[col], cb = b.cells[col];
          var va = ca.getAttribute("data-v"), vb = cb.getAttribute("data-v");
          var x, y;
          if (va !== null && vb !== null && va !== "" && vb !== "" && !isNaN(va) && !isNaN(vb)) { x = Number(va); y = Number(vb); }
          else { x = ca.textContent; y = cb.textContent; }
          return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1);
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  }
  document.querySelectorAll("table.sortable-table").forEach(sortable);

  // ------------------------------------------------------------------ layer table
  var layerSel = document.getElementById("ka-layer-source");
  var layerTable = document.getElementById("ka-layer-table");
  if (layerSel && layerTable) {
    layerSel.addEventListener("change", function () {
      Array.prototype.forEach.call(layerTable.tBodies[0].rows, function (r) {
        r.style.display = !layerSel.value || r.getAttribute("data-source") === layerSel.value ? "" : "none";
      });
    });
  }

  // ------------------------------------------------------------------ autoencoder spectra
  function drawSpectra() {
    var S = DATA.spectra || {};
    document.querySelectorAll("canvas.ka-spectrum").forEach(function (cv) {
      var key = cv.getAttribute("data-size"), sp = S[key];
      if (!sp) return;
      var ctx = cv.getContext("2d"), W = cv.width, H = cv.height, pad = 40, strip = 48;
      ctx.clearRect(0, 0, W, H);
      var dec = sp.decoded, nd = dec.length, kh = sp.kh, kw = sp.kw, cellw = (W - 2 * pad) / nd;
      var px = Math.max(1, Math.floor(Math.min(cellw - 4, strip - 4) / Math.max(kh, kw)));
      for (var j = 0; j < nd; j++) {
        var v = dec[j], m = 0, q;
        for (q = 0; q < v.length; q++) m = Math.max(m, Math.abs(v[q]));
        var ox = pad + j * cellw + (cellw - px * kw) / 2;
        for (var r = 0; r < kh; r++) for (var c = 0; c < kw; c++) {
          ctx.fillStyle = color(m > 0 ? v[r * kw + c] / m : 0);
          ctx.fillRect(Math.round(ox + c * px), 4 + r * px, px, px);
        }
      }
      var top = strip + 10, bandH = 10, histTop = top + bandH + 6, histH = H - histTop - 28;
      (sp.segments || []).forEach(function (seg) {
        ctx.fillStyle = (FAM[seg.family] && FAM[seg.family].color) || "#999";
        ctx.fillRect(pad + seg.start * (W - 2 * pad), top, Math.max(1, (seg.end - seg.start) * (W - 2 * pad)), bandH);
      });
      cv.setAttribute("data-segments", String((sp.segments || []).length));
      var bins = new Float64Array(60), lat = K && K.cols.ae_latent, maxb = 0;
      if (lat) for (var i = 0; i < K.n; i++) {
        var l = K.cols.layer[i];
        if (K.L.kh[l] + "x" + K.L.kw[l] !== key || !isFinite(lat[i])) continue;
        bins[Math.min(59, Math.max(0, Math.floor(lat[i] * 60)))] += 1;
      }
      for (j = 0; j < 60; j++) maxb = Math.max(maxb, bins[j]);
      ctx.fillStyle = "#555";
      for (j = 0; j < 60; j++) {
        var h = maxb ? bins[j] / maxb * histH : 0;
        ctx.fillRect(pad + j / 60 * (W - 2 * pad), histTop + histH - h, (W - 2 * pad) / 60 - 1, h);
      }
      ctx.fillStyle = "#333"; ctx.font = "11px system-ui, sans-serif"; ctx.textAlign = "center";
      for (j = 0; j <= 4; j++) ctx.fillText((j / 4).toFixed(2), pad + j / 4 * (W - 2 * pad), H - 12);
      ctx.fillText("autoencoder latent (histogram: kernels of this page; band: the atlas name of the decoded pattern)", W / 2, H - 1);
      cv.setAttribute("data-drawn", "1");
    });
  }
  drawSpectra();

  // ------------------------------------------------------------------ start
  var root = document.getElementById("ka-explorer");
  if (root && K) {
    E = buildExplorer(root);
    window.kernelatlas.explorer = E;
  }
  // A layer row opens its kernels in the explorer as a step in the history: Back returns to
  // the row (the browser restores the scroll) with the explorer's filter as it was.
  var FILTERS = ["source", "size", "layer", "family", "polarity", "classified", "sort", "cell", "view"];
  function filterState() {
    var out = {};
    FILTERS.forEach(function (k) { var s = document.getElementById("ka-f-" + k); if (s) out[k] = s.value; });
    return out;
  }
  document.querySelectorAll("tr.pick").forEach(function (tr) {
    tr.setAttribute("tabindex", "0");
    tr.addEventListener("keydown", function (ev) { if (ev.key === "Enter") { ev.preventDefault(); tr.click(); } });
    tr.addEventListener("click", function () {
      if (!E) return;
      var l = Number(tr.getAttribute("data-layer"));
      if (!(l >= 0)) return;
      if (window.history && history.replaceState) {
        try { history.replaceState({ kaExplorer: filterState(), kaY: window.scrollY }, ""); } catch (e) { /* a sandboxed frame */ }
      }
      E.set({ source: String(K.L.source[l]), size: "", layer: String(l) });
      // pushed before scrolling: the browser keeps the row's scroll with the entry left
      if (window.history && history.pushState) {
        try { history.pushState({ kaExplorer: filterState() }, "", "#sec-explorer"); } catch (e) { /* as above */ }
      }
      root.scrollIntoView();
    });
  });
  window.addEventListener("popstate", function (ev) {
    if (!E || !ev.state || !ev.state.kaExplorer) return;
    E.set(ev.state.kaExplorer); // the page's height changes with the grid: then its scroll
    if (typeof ev.state.kaY === "number") window.scrollTo(0, ev.state.kaY);
  });
  document.querySelectorAll("[data-download]").forEach(function (b) {
    b.addEventListener("click", function () {
      var what = b.getAttribute("data-download");
      if (what === "summary") download("summary.json", JSON.stringify(DATA.summary, null, 1) + "\n", "application/json");
      else if (what === "csv-all" && K) { var all = new Uint32Array(K.n); for (var i = 0; i < K.n; i++) all[i] = i; download("kernels.csv", csvText(all), "text/csv"); }
      else if (what === "csv-filtered" && E) download("kernels-filtered.csv", E.csv(), "text/csv");
    });
  });
  if (window.performance && performance.mark) performance.mark("ka-ready");
  document.documentElement.setAttribute("data-ka-ready", "1");
})();
