// The zf explorer's page (zf/explore/app.py serves it and its JSON API).  No framework, no network beyond the
// server it came from.  The image lives on the server under an id that only this page knows: every request names
// it, so two users never see each other's image.
"use strict";

const METHODS = ["deconvnet", "guided", "gradient"];
const $ = (id) => document.getElementById(id);
const state = { runs: [], info: null, layer: null, image: null, unit: null, method: null, grid: null,
                sprite: null, seq: { grid: 0, unit: 0 } };

async function api(url, opts) {
  const r = await fetch(url, opts);
  let body = null;
  try { body = await r.json(); } catch (e) { body = { error: "HTTP " + r.status }; }
  if (!r.ok) throw new Error(body.error || "HTTP " + r.status);
  return body;
}

function showError(msg) {
  $("error").textContent = msg || "";
  $("error").hidden = !msg;
}

function status(msg) { $("status").textContent = msg || ""; }

function q(params) {
  return Object.entries(params).filter(([, v]) => v !== null && v !== undefined)
    .map(([k, v]) => encodeURIComponent(k) + "=" + encodeURIComponent(v)).join("&");
}

function fileUrl(path) {
  return "/files/" + encodeURIComponent(state.info.name) + "/" + path.split("/").map(encodeURIComponent).join("/");
}

// ---- runs, layers, methods ----

async function init() {
  try {
    const d = await api("/api/runs");
    state.runs = d.runs;
    $("run").innerHTML = "";
    for (const r of d.runs) $("run").add(new Option(r.name, r.name));
    $("run").parentElement.hidden = d.runs.length < 2;
    selectRun(d.runs[0].name);
  } catch (e) { showError(e.message); }
}

function selectRun(name) {
  state.info = state.runs.find((r) => r.name === name);
  const info = state.info;
  $("layer").innerHTML = "";
  for (const l of info.layers) $("layer").add(new Option(`${l.name} (${l.channels} units)`, l.name));
  state.layer = info.layers[info.layers.length - 1].name;
  $("layer").value = state.layer;
  state.method = info.methods[0];
  $("methods").innerHTML = "";
  for (const m of METHODS) {
    const lab = document.createElement("label");
    const inp = document.createElement("input");
    inp.type = "radio"; inp.name = "method"; inp.value = m; inp.checked = m === state.method;
    inp.addEventListener("change", () => { state.method = m; if (state.unit !== null) loadUnit(state.unit); });
    lab.append(inp, " " + m + (info.methods.includes(m) ? "" : "*"));
    lab.title = info.methods.includes(m) ? "computed by the run too" : "the run did not compute it: its top 9 show "
      + info.methods[0];
    $("methods").append(lab);
  }
  $("thumbs").innerHTML = "";
  for (const s of info.sources) {
    const img = document.createElement("img");
    img.loading = "lazy"; img.src = fileUrl("sources/" + s); img.alt = s; img.title = "use " + s;
    img.addEventListener("click", () => useUrl(img.src, s));
    $("thumbs").append(img);
  }
  $("run-images").hidden = !info.sources.length;
  state.unit = null;
  $("unit-panel").hidden = true;
  if (state.image) loadGrid();
}

// ---- choosing an image ----

async function upload(blob, label) {
  showError("");
  status("uploading " + (label || "image") + " ...");
  try {
    const d = await api("/api/image", { method: "POST", body: blob,
                                        headers: { "Content-Type": blob.type || "application/octet-stream" } });
    state.image = d.id;
    $("input-caption").textContent = (label ? label + ": " : "") + "the model input (centre crop)";
    await loadGrid();
  } catch (e) { status(""); showError(e.message); }
}

async function useUrl(url, label) {
  const r = await fetch(url);
  upload(await r.blob(), label);
}

function setupInputs() {
  $("file").addEventListener("change", (e) => { const f = e.target.files[0]; if (f) upload(f, f.name); });
  const drop = $("drop");
  for (const ev of ["dragenter", "dragover"]) {
    document.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  document.addEventListener("dragleave", (e) => { if (!e.relatedTarget) drop.classList.remove("over"); });
  document.addEventListener("drop", (e) => {
    e.preventDefault(); drop.classList.remove("over");
    const f = e.dataTransfer.files[0];
    if (f) upload(f, f.name);
  });
  const cam = navigator.mediaDevices && navigator.mediaDevices.getUserMedia;
  $("camera-btn").hidden = !cam;
  let stream = null;
  const stop = () => { if (stream) stream.getTracks().forEach((t) => t.stop()); stream = null; $("camera").hidden = true; };
  $("camera-btn").addEventListener("click", async () => {
    try {
      stream = await navigator.mediaDevices.getUserMedia({ video: true });
      $("video").srcObject = stream;
      $("camera").hidden = false;
    } catch (e) { showError("camera: " + e.message + " (the browser or the user did not allow it)"); }
  });
  $("camera-stop").addEventListener("click", stop);
  $("snap").addEventListener("click", () => {
    const v = $("video"), c = document.createElement("canvas");
    c.width = v.videoWidth; c.height = v.videoHeight;
    c.getContext("2d").drawImage(v, 0, 0);
    c.toBlob((b) => upload(b, "camera frame"), "image/jpeg", 0.92);
  });
  $("run").addEventListener("change", (e) => selectRun(e.target.value));
  $("layer").addEventListener("change", (e) => { state.layer = e.target.value; loadGrid(); });
  $("sort").addEventListener("change", renderGrid);
  $("unit-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const v = $("unit-input").value.trim();
    if (!/^\d+$/.test(v)) { showError(`unit ${JSON.stringify(v)}: give a unit number`); return; }
    if (!state.image) { showError("choose an image first"); return; }
    loadUnit(parseInt(v, 10));
  });
}

// ---- the grid of channels ----

async function loadGrid() {
  if (!state.image || !state.layer) return;
  const seq = ++state.seq.grid;
  status("computing " + state.layer + " ...");
  try {
    const t0 = performance.now();
    const g = await api("/api/grid?" + q({ run: state.info.name, image: state.image, layer: state.layer }));
    if (seq !== state.seq.grid) return;
    const sprite = new Image();
    await new Promise((res, rej) => { sprite.onload = res; sprite.onerror = rej; sprite.src = g.sprite; });
    state.grid = g; state.sprite = sprite;
    $("input").src = g.input;
    $("input-fig").hidden = false;
    showError("");
    status(`${g.layer}: ${g.channels} units, ${g.h}x${g.w} maps (${Math.round(performance.now() - t0)} ms)`);
    renderGrid();
    if (state.unit !== null && state.unit < g.channels) loadUnit(state.unit);
    else { state.unit = null; $("unit-panel").hidden = true; }
  } catch (e) { status(""); showError(e.message); }
}

function renderGrid() {
  const g = state.grid;
  if (!g) return;
  const order = [...Array(g.channels).keys()];
  if ($("sort").value === "activation") order.sort((a, b) => g.peak[b] - g.peak[a] || a - b);
  const layerInfo = state.info.layers.find((l) => l.name === g.layer) || { dead_units: [] };
  const grid = $("grid");
  grid.innerHTML = "";
  for (const c of order) {
    const b = document.createElement("button");
    b.type = "button"; b.className = "tile"; b.dataset.unit = c;
    b.title = `unit ${c}: largest activation ${g.peak[c].toPrecision(3)}`;
    if (c === g.strongest) { b.classList.add("strongest"); b.title += " (the strongest on this image)"; }
    if (c === state.unit) b.classList.add("selected");
    if (layerInfo.dead_units.includes(c)) { b.classList.add("dead"); b.title += "; never fired on the run's data"; }
    const cv = document.createElement("canvas");
    cv.width = g.w; cv.height = g.h;
    const r = Math.floor(c / g.cols), k = c % g.cols;
    cv.getContext("2d").drawImage(state.sprite, k * g.w, r * g.h, g.w, g.h, 0, 0, g.w, g.h);
    const s = document.createElement("span");
    s.textContent = c;
    b.append(cv, s);
    b.addEventListener("click", () => loadUnit(c));
    grid.append(b);
  }
  $("grid-info").textContent = `strongest: unit ${g.strongest} (${g.max.toPrecision(3)}); orange border`;
}

// ---- one unit ----

async function loadUnit(u) {
  const seq = ++state.seq.unit;
  state.unit = u;
  for (const t of document.querySelectorAll(".tile")) t.classList.toggle("selected", +t.dataset.unit === u);
  status(`projecting unit ${u} (${state.method}) ...`);
  try {
    const t0 = performance.now();
    const d = await api("/api/unit?" + q({ run: state.info.name, image: state.image, layer: state.layer, unit: u,
                                            method: state.method }));
    if (seq !== state.seq.unit) return;
    showError("");
    status(`unit ${u}: ${Math.round(performance.now() - t0)} ms`);
    renderUnit(d);
  } catch (e) { status(""); showError(e.message); }
}

function renderUnit(d) {
  $("unit-panel").hidden = false;
  $("unit-title").textContent = `${d.layer} unit ${d.unit}`;
  $("unit-input").value = d.unit;
  $("map-img").src = d.map;
  $("map-caption").textContent = d.fires
    ? `activation map over the image; strongest ${d.value.toPrecision(3)} at (${d.y}, ${d.x}), its receptive field boxed`
    : "the unit does not fire anywhere on this image";
  const box = $("box");
  if (d.box && d.fires) {  // input pixels of the size x size model input, clipped to it
    const n = state.info.size;
    const [y0, y1, x0, x1] = d.box.map((v) => Math.max(0, Math.min(n, v)) / n * 100);
    Object.assign(box.style, { top: y0 + "%", height: (y1 - y0) + "%", left: x0 + "%", width: (x1 - x0) + "%" });
    box.hidden = false;
  } else box.hidden = true;
  if (d.projection) {
    $("proj-img").src = d.projection; $("proj-img").hidden = false;
    $("proj-caption").textContent = `${d.method} projection of that activation, in its receptive field`;
  } else {
    $("proj-img").removeAttribute("src"); $("proj-img").hidden = true;
    $("proj-caption").textContent = "nothing to project: the unit does not fire on this image";
  }
  $("top-note").textContent = d.top_note || "";
  $("top-note").hidden = !d.top_note;
  $("top-proj-caption").textContent = `projections (${d.top_method})`;
  const fill = (el, key) => {
    el.innerHTML = "";
    for (const t of d.top) {
      if (t[key]) {
        const img = document.createElement("img");
        img.src = fileUrl(t[key]);
        img.alt = `rank ${t.rank} ${key}`;
        img.title = `rank ${t.rank}: activation ${t.activation.toPrecision(3)}, image ${t.image}`;
        el.append(img);
      } else {
        const e = document.createElement("div"); e.className = "empty"; el.append(e);
      }
    }
  };
  fill($("top-proj"), "projection");
  fill($("top-patches"), "patch");
  $("top-k").textContent = state.info.k || 9;
  if (d.gallery) { $("gallery-link").href = fileUrl(d.gallery.split("#")[0]) + "#" + d.gallery.split("#")[1]; }
  $("gallery-link").hidden = !d.gallery;
}

setupInputs();
init();
