/* zf unit gallery: the layer grid and the unit view (zf/gallery.py writes the pages and data_<layer>.js).
 *
 * Plain JS, no framework and no network: pages open from file://, where fetch() of JSON is refused, so the layer's
 * table arrives as the global window.ZF_LAYER from a <script> tag.  Images are the run's PNGs, by relative path;
 * the data says which exist (checked at build time), so a missing one becomes a placeholder, not a broken image.
 */
(function () {
  "use strict";
  var D = window.ZF_LAYER;
  if (!D) {
    document.body.insertAdjacentHTML("afterbegin",
      '<p class="error">data_&lt;layer&gt;.js did not load: rebuild with python scripts/gallery.py &lt;run dir&gt;</p>');
    return;
  }

  // ---- helpers --------------------------------------------------------------------------------------------------
  function pad(n, w) { return String(n).padStart(w, "0"); }
  function fmt(a) {
    if (a === null || a === undefined) return "\u2013";
    return Math.abs(a) >= 1000 || (a !== 0 && Math.abs(a) < 0.01) ? a.toExponential(2) : a.toFixed(2);
  }
  // File names differ at the end (ILSVRC2012_val_00000042.JPEG): shorten in the middle, not the end.
  function middle(s, n) { return s.length <= n ? s : s.slice(0, 4) + "\u2026" + s.slice(s.length - (n - 5)); }
  function patchSrc(u, r) { return D.dir + "patches/u" + pad(u, 4) + "_r" + r + ".png"; }
  function projSrc(m, u, r) { return D.dir + encodeURIComponent(m) + "/u" + pad(u, 4) + "_r" + r + ".png"; }
  function figureSrc(u, m) { return D.dir + "units/u" + pad(u, 4) + "_" + encodeURIComponent(m) + ".png"; }
  function sourceSrc(id) { return "../sources/" + pad(id, 6) + ".jpg"; }
  function has(flags, r) { return !!flags && flags.charAt(r) === "1"; }
  function maxAct(unit) {
    var best = null;
    unit.a.forEach(function (a) { if (a !== null && (best === null || a > best)) best = a; });
    return best;
  }
  function readHash() {
    var h = {};
    location.hash.replace(/^#/, "").split("&").forEach(function (kv) {
      if (!kv) return;
      var i = kv.indexOf("=");
      if (i < 0) return;
      h[decodeURIComponent(kv.slice(0, i))] = decodeURIComponent(kv.slice(i + 1));
    });
    return h;
  }
  function makeHash(h) {
    return "#" + Object.keys(h).filter(function (k) { return h[k] !== "" && h[k] !== null && h[k] !== undefined; })
      .map(function (k) { return encodeURIComponent(k) + "=" + encodeURIComponent(h[k]); }).join("&");
  }
  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    if (attrs) Object.keys(attrs).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    if (text !== undefined) e.textContent = text;
    return e;
  }
  // An <img> with a fixed size (no layout shift), or a placeholder where the PNG does not exist.
  function picture(src, ok, cls, alt, lazy) {
    if (!ok) return el("div", { "class": cls + " placeholder", title: "no image" }, "no image");
    var img = el("img", { "class": cls, alt: alt, src: src, decoding: "async" });
    if (lazy) img.setAttribute("loading", "lazy");
    if (D.rf && D.rf < 96) img.classList.add("pixelated");
    return img;
  }
  function methodButtons(current, onPick) {
    var box = document.getElementById("methods");
    box.textContent = "";
    if (D.methods.length < 2) {
      if (D.methods.length === 1) box.appendChild(el("span", { "class": "sub" }, "method: " + D.methods[0]));
      return;
    }
    box.appendChild(el("span", { "class": "sub" }, "method "));
    D.methods.forEach(function (m) {
      var b = el("button", { type: "button", "data-method": m, "class": "method" + (m === current ? " active" : "") }, m);
      b.setAttribute("aria-pressed", m === current ? "true" : "false");
      b.addEventListener("click", function () { onPick(m); });
      box.appendChild(b);
    });
  }
  // A dead unit never fired on the data: its "top k" are ties at zero, so its pictures are marked as not meaningful.
  var DEAD_TITLE = "dead: never fires on this data (its patches are ties at zero, not what it responds to)";
  function deadBadge() { return el("span", { "class": "badge dead", title: DEAD_TITLE }, "dead"); }
  function pickMethod(m) { return D.methods.indexOf(m) >= 0 ? m : (D.methods[0] || ""); }
  function unitHref(u, m) { return encodeURI(D.unit_page) + makeHash({ u: u, m: m }); }

  // Unit numbers: "12", "3-40", "1, 5, 9-11"; empty matches all; anything unparsable matches none.
  function parseFilter(text) {
    text = text.trim();
    if (!text) return function () { return true; };
    var parts = text.split(/[,\s]+/).filter(Boolean), ranges = [];
    for (var i = 0; i < parts.length; i++) {
      var m = /^(\d+)(?:-(\d+))?$/.exec(parts[i]);
      if (!m) return function () { return false; };
      ranges.push([+m[1], m[2] === undefined ? +m[1] : +m[2]]);
    }
    return function (u) { return ranges.some(function (r) { return u >= r[0] && u <= r[1]; }); };
  }

  // ---- layer page: a grid of every unit ------------------------------------------------------------------------
  function layerPage() {
    var grid = document.getElementById("grid"), sortSel = document.getElementById("sort");
    var showSel = document.getElementById("show");
    var filter = document.getElementById("filter"), count = document.getElementById("count");
    var h = readHash(), method = pickMethod(h.m);
    document.getElementById("layer-meta").textContent = D.units.length + " units" +
      (D.channels ? " of " + D.channels + " channels" : "") +
      (D.rf ? " \u00b7 receptive field " + (D.rf_label || D.rf) + " px" : "") +
      (D.stride ? " \u00b7 stride " + D.stride : "") + " \u00b7 top " + D.k + (D.model ? " \u00b7 " + D.model : "") +
      " \u00b7 " + (D.n_dead || 0) + " dead";

    var cells = D.units.map(function (unit) {
      var act = maxAct(unit);
      var cell = el("a", { "class": "cell" + (unit.d ? " dead" : ""), href: unitHref(unit.u, method),
                           "data-unit": unit.u, "data-act": act === null ? "" : act, "data-dead": unit.d ? "1" : "0",
                           title: "unit " + unit.u + (unit.d ? ": " + DEAD_TITLE : "") });
      var thumbs = el("div", { "class": "thumbs" + (unit.d ? " not-meaningful" : "") });
      var proj = method ? picture(projSrc(method, unit.u, 0), has(unit.m[method], 0), "thumb proj",
                                  "unit " + unit.u + " " + method, true) : null;
      if (proj) thumbs.appendChild(proj);
      thumbs.appendChild(picture(patchSrc(unit.u, 0), has(unit.p, 0), "thumb patch", "unit " + unit.u + " patch", true));
      cell.appendChild(thumbs);
      var cap = el("div", { "class": "cap" });
      cap.appendChild(el("span", { "class": "unit" }, String(unit.u)));
      if (unit.d) cap.appendChild(deadBadge());
      cap.appendChild(el("span", { "class": "act" }, fmt(act)));
      cell.appendChild(cap);
      cell._unit = unit;
      cell._act = act;
      cell._proj = proj;
      return cell;
    });
    var frag = document.createDocumentFragment();
    cells.forEach(function (c) { frag.appendChild(c); });
    grid.appendChild(frag);

    function save() {
      history.replaceState(null, "", makeHash({ sort: sortSel.value === "unit" ? "" : sortSel.value,
                                                f: filter.value.trim(), show: showSel.value === "all" ? "" :
                                                showSel.value, m: method }));
    }
    function sort() {
      var key = sortSel.value, order = cells.slice();
      if (key === "act") {
        order.sort(function (a, b) {
          if (a._act === b._act) return a._unit.u - b._unit.u;
          if (a._act === null) return 1;
          if (b._act === null) return -1;
          return b._act - a._act;
        });
      } else if (key === "dead") {
        order.sort(function (a, b) { return (b._unit.d || 0) - (a._unit.d || 0) || a._unit.u - b._unit.u; });
      } else {
        order.sort(function (a, b) { return a._unit.u - b._unit.u; });
      }
      var f = document.createDocumentFragment();
      order.forEach(function (c) { f.appendChild(c); });
      grid.appendChild(f);
    }
    function applyFilter() {
      var keep = parseFilter(filter.value), show = showSel.value, shown = 0;
      cells.forEach(function (c) {
        var ok = keep(c._unit.u) && (show === "all" || (show === "dead") === !!c._unit.d);
        c.hidden = !ok;
        if (ok) shown++;
      });
      count.textContent = shown + " of " + cells.length + " units";
    }
    function setMethod(m) {
      method = m;
      cells.forEach(function (c) {
        c.setAttribute("href", unitHref(c._unit.u, m));
        var ok = has(c._unit.m[m], 0), fresh = picture(projSrc(m, c._unit.u, 0), ok, "thumb proj",
                                                        "unit " + c._unit.u + " " + m, true);
        c._proj.replaceWith(fresh);
        c._proj = fresh;
      });
      methodButtons(method, setMethod);
      save();
    }

    if (h.sort === "act" || h.sort === "dead") sortSel.value = h.sort;
    if (h.show === "live" || h.show === "dead") showSel.value = h.show;
    if (h.f) filter.value = h.f;
    sortSel.addEventListener("change", function () { sort(); save(); });
    showSel.addEventListener("change", function () { applyFilter(); save(); });
    filter.addEventListener("input", function () { applyFilter(); save(); });
    methodButtons(method, setMethod);
    sort();
    applyFilter();
  }

  // ---- unit page: 3x3 projections beside 3x3 patches, source view, keyboard navigation -------------------------
  function unitPage() {
    var index = 0, method = "", openRank = -1;
    // The source <img> is made on first use, so the page never holds an image without a src (a "broken" one).
    var viewer = document.getElementById("viewer"), img = el("img", { id: "source-img", alt: "source image" });
    var box = document.getElementById("rf-box"), caption = document.getElementById("viewer-caption");
    var byUnit = {};
    D.units.forEach(function (unit, i) { byUnit[unit.u] = i; });

    function go(i, m) {
      if (i < 0 || i >= D.units.length) return;
      location.hash = makeHash({ u: D.units[i].u, m: m === undefined ? method : m });
    }
    function figure(unit, r, src, ok, kind) {
      var id = unit.i[r], name = id >= 0 && D.images[id] ? D.images[id][0] : "";
      var fig = el("figure", { "class": "tile " + kind, "data-rank": r });
      if (id >= 0) {
        fig.setAttribute("tabindex", "0");
        fig.setAttribute("role", "button");
        fig.title = "show the source image with the receptive field";
        fig.addEventListener("click", function () { openViewer(r); });
        fig.addEventListener("keydown", function (e) { if (e.key === "Enter") openViewer(r); });
      }
      fig.appendChild(picture(src, ok, "big", kind + " rank " + (r + 1), false));
      var cap = el("figcaption");
      cap.appendChild(el("span", { "class": "act" }, fmt(unit.a[r])));
      cap.appendChild(el("span", { "class": "src", title: id >= 0 && D.images[id] ? D.images[id][2] : "" },
                         id >= 0 ? middle(name, 19) : "(no image)"));
      fig.appendChild(cap);
      return fig;
    }
    function render() {
      var h = readHash(), want = parseInt(h.u, 10);
      index = byUnit.hasOwnProperty(want) ? byUnit[want] : 0;
      method = pickMethod(h.m);
      var unit = D.units[index];
      closeViewer();
      document.title = "layer " + D.layer + " unit " + unit.u;
      document.getElementById("unit-number").textContent = String(unit.u);
      document.getElementById("unit-pos").textContent = "(" + (index + 1) + " of " + D.units.length +
        " \u00b7 max activation " + fmt(maxAct(unit)) + (unit.d ? " \u00b7 dead" : "") + ")";
      document.getElementById("dead-note").hidden = !unit.d;
      document.querySelector("main.unit").classList.toggle("not-meaningful", !!unit.d);
      document.getElementById("back").setAttribute("href", encodeURI(D.layer_page) + makeHash({ m: method }));
      var prev = document.getElementById("prev"), next = document.getElementById("next");
      [[prev, index - 1], [next, index + 1]].forEach(function (p) {
        var ok = p[1] >= 0 && p[1] < D.units.length;
        if (ok) p[0].setAttribute("href", unitHref(D.units[p[1]].u, method));
        else p[0].removeAttribute("href");  // the first / last unit: no link rather than "#" (= the first unit)
        p[0].classList.toggle("disabled", !ok);
      });
      methodButtons(method, function (m) { go(index, m); });
      var figs = document.getElementById("figures");
      figs.textContent = "";
      if (method && unit.f.indexOf(method) >= 0) {
        figs.appendChild(el("a", { href: figureSrc(unit.u, method), target: "_blank" }, "figure (" + method + ")"));
      }
      document.getElementById("proj-title").textContent = method ? "projections (" + method + ")" : "projections";
      var proj = document.getElementById("projections"), patches = document.getElementById("patches");
      proj.textContent = "";
      patches.textContent = "";
      for (var r = 0; r < D.k; r++) {
        if (method) proj.appendChild(figure(unit, r, projSrc(method, unit.u, r), has(unit.m[method], r), "proj"));
        patches.appendChild(figure(unit, r, patchSrc(unit.u, r), has(unit.p, r), "patch"));
      }
      proj.parentNode.hidden = !method;
    }

    // The box is drawn in percent of the source's own size (read from the file once it loads), so it stays on
    // the receptive field at any displayed size.  Boxes run past the image where padding was used: clip them.
    function placeBox() {
      if (openRank < 0 || !img.naturalWidth) return;
      var unit = D.units[index], b = unit.b[openRank], W = img.naturalWidth, H = img.naturalHeight;
      var y0 = Math.max(0, Math.min(H, b[0])), y1 = Math.max(0, Math.min(H, b[1]));
      var x0 = Math.max(0, Math.min(W, b[2])), x1 = Math.max(0, Math.min(W, b[3]));
      box.style.top = (100 * y0 / H) + "%";
      box.style.height = (100 * (y1 - y0) / H) + "%";
      box.style.left = (100 * x0 / W) + "%";
      box.style.width = (100 * (x1 - x0) / W) + "%";
      box.dataset.box = [y0, y1, x0, x1].join(",");
      box.style.visibility = "visible";
      var clipped = y0 !== b[0] || y1 !== b[1] || x0 !== b[2] || x1 !== b[3];
      caption.querySelector(".size").textContent = W + "\u00d7" + H + " px" +
        (clipped ? " \u00b7 box clipped to y [" + y0 + ", " + y1 + ") x [" + x0 + ", " + x1 + ")" : "");
    }
    function openViewer(r) {
      var unit = D.units[index], id = unit.i[r];
      if (id < 0) return;
      openRank = r;
      var info = D.images[id] || ["image " + id, false, ""], b = unit.b[r];
      caption.textContent = "";
      caption.appendChild(el("b", null, "unit " + unit.u + " \u00b7 rank " + (r + 1) + " \u00b7 activation " +
                                        fmt(unit.a[r])));
      caption.appendChild(el("span", null, " \u00b7 " + info[0] + " (id " + id + ")"));
      caption.appendChild(el("span", { "class": "path" }, info[2] ? " \u00b7 " + info[2] : ""));
      caption.appendChild(el("br"));
      caption.appendChild(el("span", null, "map position (y, x) = (" + unit.yx[r].join(", ") + ") \u00b7 receptive field y [" +
                                           b[0] + ", " + b[1] + ") x [" + b[2] + ", " + b[3] + ") \u00b7 "));
      caption.appendChild(el("span", { "class": "size" }));
      box.style.visibility = "hidden";
      viewer.hidden = false;
      var wrap = document.getElementById("source-wrap");
      if (!info[1]) {
        wrap.hidden = true;
        caption.querySelector(".size").textContent = "source image not saved in this run";
        return;
      }
      wrap.hidden = false;
      if (!img.parentNode) wrap.insertBefore(img, box);
      img.onload = placeBox;
      img.src = sourceSrc(id);
      if (img.complete) placeBox();
    }
    function closeViewer() { viewer.hidden = true; openRank = -1; }

    document.getElementById("viewer-close").addEventListener("click", closeViewer);
    viewer.addEventListener("click", function (e) { if (e.target === viewer) closeViewer(); });
    document.addEventListener("keydown", function (e) {
      if (e.altKey || e.ctrlKey || e.metaKey) return;
      var t = e.target.tagName;
      if (t === "INPUT" || t === "SELECT" || t === "TEXTAREA") return;
      if (e.key === "Escape") closeViewer();
      else if (e.key === "ArrowRight" || e.key === "j") { e.preventDefault(); go(index + 1); }
      else if (e.key === "ArrowLeft" || e.key === "k") { e.preventDefault(); go(index - 1); }
    });
    window.addEventListener("hashchange", render);
    render();
  }

  if (document.getElementById("grid")) layerPage();
  else if (document.getElementById("projections")) unitPage();
})();
