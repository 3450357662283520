// The search page: no framework, no build step, no network beyond this server.
// State lives in the URL (?q=, or ?item=&modality=), so every search can be linked and bookmarked;
// an upload cannot be put in a URL, so it leaves the URL alone.
"use strict";

const $ = (id) => document.getElementById(id);
const form = $("search-form"), qInput = $("q"), kInput = $("k"), rerankSelect = $("rerank"),
      targetSelect = $("target"), fileInput = $("file"), drop = $("drop"), results = $("results"),
      statusLine = $("status"), errorBox = $("error"), about = $("about");
let token = sessionStorage.getItem("crossmodal-token");
let generation = 0;  // answers to superseded requests are dropped

function readTokenFromHash() {
  const m = location.hash.match(/token=([^&]+)/);
  if (m) {
    token = decodeURIComponent(m[1]);
    sessionStorage.setItem("crossmodal-token", token);
    history.replaceState(null, "", location.pathname + location.search);  // keep it out of bookmarks
  }
}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (token) headers["Authorization"] = "Bearer " + token;
  let response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.status === 401) {
    const given = window.prompt("This server needs its access token:");
    if (given) {
      token = given;
      sessionStorage.setItem("crossmodal-token", token);
      return api(path, options);
    }
  }
  return response;
}

async function json(response) {
  let body = null;
  try { body = await response.json(); } catch (e) { /* not JSON */ }
  if (!response.ok) throw new Error((body && body.error) || `HTTP ${response.status}`);
  return body;
}

function showError(message) {
  errorBox.textContent = message;
  errorBox.hidden = !message;
}

function fmt(ms) { return ms == null ? "–" : ms < 10 ? ms.toFixed(1) : Math.round(ms).toString(); }

function baseName(path) { return path ? path.split(/[\\/]/).pop() : ""; }

function setImage(img, url) {
  if (!token) { img.src = url; return; }
  // <img> cannot send a header: fetch the thumbnail with the token and show it as a blob.
  api(url).then((r) => r.ok ? r.blob() : Promise.reject(new Error(`HTTP ${r.status}`)))
    .then((blob) => { img.src = URL.createObjectURL(blob); })
    .catch(() => { img.alt = "thumbnail unavailable"; img.dataset.failed = "1"; });
}

function hitCard(hit) {
  const card = document.createElement("article");
  card.className = "hit " + hit.modality;
  card.tabIndex = 0;
  card.dataset.id = hit.id;
  card.dataset.modality = hit.modality;
  const label = hit.modality === "image" ? baseName(hit.path) || `image ${hit.id}` : hit.caption;
  if (hit.thumbnail_url) {
    const img = document.createElement("img");
    img.loading = "lazy";
    img.alt = label;
    setImage(img, hit.thumbnail_url.replace(/^\//, ""));
    card.appendChild(img);
  }
  const caption = document.createElement("div");
  caption.className = "caption";
  caption.textContent = label;
  if (hit.path) caption.title = hit.path;
  card.appendChild(caption);
  const meta = document.createElement("div");
  meta.className = "meta";
  meta.textContent = `#${hit.rank} · score ${hit.score.toFixed(3)} · hamming ${hit.hamming} · id ${hit.id}`;
  card.appendChild(meta);
  const more = () => hit.modality === "text"
    ? searchUrl({ q: hit.caption }, true)
    : searchUrl({ item: hit.id, modality: "image", target: "image" }, true);
  card.addEventListener("click", more);
  card.addEventListener("keydown", (e) => { if (e.key === "Enter") more(); });
  card.title = "more like this";
  return card;
}

function render(body, preview) {
  results.replaceChildren(...body.hits.map(hitCard));
  const t = body.timings || {};
  const what = body.query.type === "text" ? `“${body.query.text}”`
    : body.query.type === "item" ? `${body.query.modality} ${body.query.id}` : (body.query.filename || "upload");
  statusLine.replaceChildren();
  if (preview) statusLine.appendChild(preview);
  statusLine.append(`${body.hits.length} ${body.target === "text" ? "captions" : "images"} for ${what} · ` +
    `rerank ${body.rerank} · encode ${fmt(t.encode_ms)} ms · stage 1 ${fmt(t.stage1_ms)} ms · ` +
    `stage 2 ${fmt(t.stage2_ms)} ms · total ${fmt(t.total_ms)} ms`);
  document.body.dataset.state = "done";
}

function params(extra) {
  const p = new URLSearchParams(extra);
  p.set("k", kInput.value || "12");
  if (rerankSelect.value) p.set("rerank", rerankSelect.value);
  if (targetSelect.value && !p.has("target")) p.set("target", targetSelect.value);
  return p;
}

async function run(request, preview) {
  const mine = ++generation;
  document.body.dataset.state = "loading";
  showError("");
  statusLine.textContent = "searching…";
  try {
    const body = await json(await request());
    if (mine === generation) render(body, preview);
  } catch (e) {
    if (mine !== generation) return;
    showError(e.message);
    statusLine.textContent = "";
    results.replaceChildren();
    document.body.dataset.state = "error";
  }
}

// A text or "more like this" search, mirrored into the page's URL.
function searchUrl(query, push) {
  if (query.q !== undefined) qInput.value = query.q;
  if (query.target) targetSelect.value = query.target;
  const p = params(query);
  if (push) history.pushState(null, "", "?" + p.toString());
  window.scrollTo(0, 0);
  if (query.item === undefined) return run(() => api("search?" + p.toString()));
  const similar = new URLSearchParams(p);  // "more like this": its own operation, the item in the path
  similar.delete("item");
  return run(() => api("items/" + encodeURIComponent(query.item) + "/similar?" + similar.toString()));
}

function searchFile(file) {
  if (!file) return;
  const data = new FormData();
  data.append("file", file, file.name);
  const preview = document.createElement("img");
  preview.className = "query-preview";
  preview.alt = file.name;
  preview.src = URL.createObjectURL(file);
  return run(() => api("search?" + params({}).toString(), { method: "POST", body: data }), preview);
}

function fromUrl(initial = false) {
  const p = new URLSearchParams(location.search);
  if (p.get("k")) kInput.value = p.get("k");
  if (p.get("target") !== null) targetSelect.value = p.get("target");
  if (p.get("rerank")) rerankSelect.dataset.wanted = p.get("rerank");
  if (p.get("rerank") && [...rerankSelect.options].some((o) => o.value === p.get("rerank"))) {
    rerankSelect.value = p.get("rerank");
  }
  if (p.get("q")) return searchUrl({ q: p.get("q") }, false);
  if (p.get("item")) return searchUrl({ item: p.get("item"), modality: p.get("modality") || "image" }, false);
  if (initial) return;  // nothing asked for: leave alone whatever the user started meanwhile (a drop)
  ++generation;
  results.replaceChildren();
  statusLine.textContent = "";
  showError("");
}

async function loadAbout() {
  try {
    const s = await json(await api("stats"));
    const counts = Object.entries(s.counts).map(([m, n]) => `${n.toLocaleString()} ${m}s`).join(", ");
    about.textContent = `${counts} · ${s.model} · ${s.index.hasher} ${s.index.bits}-bit ${s.index.kind}`;
    // "" lets the server choose: its default, or for image -> image the best reranker that can rank it
    const options = [["", `default (${s.rerank.default})`], ...s.rerank.allowed.map((name) => [name, name])];
    rerankSelect.replaceChildren(...options.map(([value, label]) => {
      const o = document.createElement("option");
      o.value = value;
      o.textContent = label;
      return o;
    }));
    rerankSelect.value = rerankSelect.dataset.wanted || "";
  } catch (e) {
    about.textContent = "";
    showError(e.message);
  }
}

form.addEventListener("submit", (e) => {
  e.preventDefault();
  const q = qInput.value.trim();
  if (!q) { showError("type something to search for"); return; }
  searchUrl({ q }, true);
});
fileInput.addEventListener("change", () => { searchFile(fileInput.files[0]); fileInput.value = ""; });
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  searchFile(e.dataTransfer.files[0]);
});
drop.addEventListener("keydown", (e) => { if (e.key === "Enter") fileInput.click(); });
window.addEventListener("popstate", () => fromUrl(false));

readTokenFromHash();
loadAbout().then(() => fromUrl(true));
