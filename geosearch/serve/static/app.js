// geosearch map page: tiles on a Leaflet map (or a gallery for plain images); click one to
// list the most similar with scores and previews; thumbs up/down refine; results download
// as GeoJSON. Plain browser JavaScript, no build step; talks only to this server's /api.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  config: null,
  query: null, // {kind: "tile", id} or {kind: "upload", file}
  result: null, // the last FeatureCollection from the API
  session: null, // feedback session name, once one is saved
  good: [],
  bad: [],
  tiles: new Map(), // id -> {feature, layers}: the footprints drawn now (those in view)
  here: [], // tiles under the last map click
  galleryOffset: 0,
};
const map = {
  leaflet: null,
  footprints: null,
  previews: null,
  outlines: null,
  byId: new Map(),
  loading: null, // the AbortController of the tiles-in-view request under way
  detections: null, // the server-rendered layer of the last detect
  marks: null, // the session's marked tiles, outlined green (good) or red (bad)
  changes: null, // the server-rendered layer of the significant places of the last changes
  changePlace: null, // the URL finding the place at a point (add &lon=&lat=)
  changeOutline: null, // the outline of the place shown
};
// Marking by a box: the "Box good"/"Box bad" toggle arms it; the next drag on the map draws
// the box (the map does not pan meanwhile) and marks every tile whose footprint meets it.
const box = { label: null, start: null, rectangle: null, endedAt: -Infinity };
// Footprints are drawn when at most this many tiles are in view; above, only the coverage layer
// (server-rendered map tiles) shows where tiles are. The page holds no more footprints.
const FOOTPRINTS_IN_VIEW = 1000;
// Previews (rendered by the server, one request each) are laid over the footprints when at most
// this many tiles are in view: large enough on screen to be seen (~60 px at 900 px wide).
const PREVIEWS_IN_VIEW = 200;

async function api(path, options = {}) {
  const response = await fetch(path, options);
  let body = null;
  try {
    body = await response.json();
  } catch (error) {
    body = null;
  }
  if (!response.ok) {
    throw new Error((body && body.error) || `${response.status} ${response.statusText}`);
  }
  return body;
}

function say(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function element(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

function thumbSize() {
  return state.config.kind === "plain" ? 256 : 128;
}

function previewSrc(url) {
  return url ? `${url}?size=${thumbSize()}` : null;
}

function baseName(path) {
  return path ? path.split(/[\\/]/).pop() : "";
}

// -- start ------------------------------------------------------------------------------

async function start() {
  try {
    state.config = await api("api/config");
  } catch (error) {
    say(`Cannot reach the database: ${error.message}`, true);
    return;
  }
  const config = state.config;
  const kind = config.kind === "plain" ? "plain images" : "georeferenced tiles";
  $("db-info").textContent = `${config.tiles} ${kind}`;
  $("mode").textContent = config.allow_feedback
    ? "feedback sessions are saved"
    : "read-only: marks refine the search but are not saved";
  $("top").value = config.top;
  $("top").max = config.max_top;
  $("top").addEventListener("change", newRound);
  $("other-files").addEventListener("change", newRound);
  $("upload").addEventListener("change", onUpload);
  $("download").addEventListener("click", download);
  $("detect").addEventListener("click", detect);
  $("box-good").addEventListener("click", () => armBox("good"));
  $("box-bad").addEventListener("click", () => armBox("bad"));
  $("controls").addEventListener("submit", (event) => event.preventDefault());
  $("changes-form").addEventListener("submit", showChanges);
  if (config.kind === "plain") await startGallery();
  else await startMap();
  document.body.dataset.ready = "true";
}

// -- searching --------------------------------------------------------------------------

function searchParams() {
  const params = new URLSearchParams();
  params.set("top", $("top").value || state.config.top);
  if ($("other-files").checked) params.set("other_files", "true");
  for (const id of state.good) params.append("good", id);
  for (const id of state.bad) params.append("bad", id);
  return params;
}

async function searchTile(id) {
  state.query = { kind: "tile", id };
  await newRound();
}

async function searchPlace(latlng) {
  state.here = [];
  renderHere();
  state.session = null;
  state.good = [];
  state.bad = [];
  const params = searchParams();
  params.set("lon", latlng.lng.toFixed(6));
  params.set("lat", latlng.lat.toFixed(6));
  say("Searching…");
  try {
    const result = await api(`api/similar?${params}`);
    const queryFeature = result.features.find((f) => f.properties.role === "query");
    state.query = { kind: "tile", id: queryFeature.properties.id }; // marks refine this tile
    show(result);
  } catch (error) {
    say(error.message, true);
  }
}

async function onUpload(event) {
  const file = event.target.files[0];
  event.target.value = "";
  if (!file) return;
  if (file.size > state.config.max_upload_bytes) {
    say(`${file.name} is larger than ${state.config.max_upload_bytes / 2 ** 20} MB`, true);
    return;
  }
  state.query = { kind: "upload", file };
  state.here = [];
  renderHere();
  await newRound();
}

async function newRound() {
  if (!state.query) return;
  state.session = null;
  state.good = [];
  state.bad = [];
  await search();
}

async function search() {
  const query = state.query;
  say("Searching…");
  try {
    const params = searchParams();
    let result;
    if (query.kind === "tile") {
      params.set("tile", query.id);
      result = await api(`api/similar?${params}`);
    } else {
      const form = new FormData();
      form.append("file", query.file, query.file.name);
      result = await api(`api/similar/upload?${params}`, { method: "POST", body: form });
    }
    if (query === state.query) show(result);
  } catch (error) {
    say(error.message, true);
  }
}

async function mark(id, label) {
  state.good = state.good.filter((t) => t !== id);
  state.bad = state.bad.filter((t) => t !== id);
  (label > 0 ? state.good : state.bad).push(id);
  const query = state.query;
  if (!(state.config.allow_feedback && query.kind === "tile")) {
    await search(); // read-only, or an upload: the marks travel with the search
    return;
  }
  say("Saving the mark and searching again…");
  const json = { "Content-Type": "application/json" };
  try {
    let result;
    if (!state.session) {
      const body = {
        tile: query.id,
        top: Number($("top").value) || state.config.top,
        other_files: $("other-files").checked,
        good: state.good,
        bad: state.bad,
      };
      result = await api("api/sessions", { method: "POST", headers: json, body: JSON.stringify(body) });
    } else {
      const body = label > 0 ? { good: [id] } : { bad: [id] };
      const url = `api/sessions/${encodeURIComponent(state.session)}/marks`;
      result = await api(url, { method: "POST", headers: json, body: JSON.stringify(body) });
    }
    state.session = result.session;
    if (query === state.query) show(result);
  } catch (error) {
    say(error.message, true);
  }
}

// -- results ----------------------------------------------------------------------------

function show(result) {
  state.result = result;
  closeChanges();
  const queryFeature = result.features.find((f) => f.properties.role === "query");
  const location = result.location;
  const matches = result.features.filter((f) => f.properties.role === "result");
  renderQuery(queryFeature, location);
  const list = $("results");
  list.replaceChildren(...matches.map(resultItem));
  const marks = [];
  if (state.good.length) marks.push(`${state.good.length} good`);
  if (state.bad.length) marks.push(`${state.bad.length} bad`);
  $("marks").replaceChildren();
  if (marks.length) $("marks").append(`marked ${marks.join(", ")}`);
  if (state.session) {
    $("marks").append(" · session ");
    const link = element("a", {
      href: `api/sessions/${encodeURIComponent(state.session)}/marks.geojson`,
      text: state.session,
      title: "Download the marked tiles as GeoJSON",
    });
    $("marks").append(link);
  }
  $("actions").hidden = false;
  $("detect-box").hidden = !(state.session && state.config.allow_feedback);
  $("box-tools").hidden = !(map.leaflet && state.config.allow_feedback && state.query.kind === "tile");
  $("hint").hidden = true;
  const noun = state.config.kind === "plain" ? "images" : "tiles";
  const refined = state.good.length + state.bad.length ? ", re-ranked with your marks" : "";
  say(`${matches.length} most similar ${noun}${refined}`);
  if (map.leaflet) {
    drawOutlines(queryFeature, matches, location);
    drawMarks();
  } else highlightGallery(queryFeature, matches);
}

// The session's marked tiles on the map (from its marks GeoJSON; a box marks at most 1,000).
async function drawMarks() {
  const session = state.session;
  let marks = { features: [] };
  if (session && state.config.allow_feedback) {
    try {
      marks = await api(`api/sessions/${encodeURIComponent(session)}/marks.geojson`);
    } catch (error) {
      say(error.message, true);
      return;
    }
  }
  if (session !== state.session) return; // a newer search has begun
  map.marks.clearLayers();
  for (const feature of marks.features) {
    if (!feature.geometry) continue;
    const label = feature.properties.label;
    L.geoJSON(feature, {
      interactive: false,
      style: {
        color: label === "good" ? "#2e7d32" : "#c62828",
        weight: 2,
        dashArray: "3 3",
        fill: false,
        className: `mark-outline ${label}`,
      },
    }).addTo(map.marks);
  }
}

// -- marking by a box ---------------------------------------------------------------------

function armBox(label) {
  box.label = box.label === label ? null : label;
  $("box-good").classList.toggle("armed", box.label === "good");
  $("box-bad").classList.toggle("armed", box.label === "bad");
  $("map").classList.toggle("boxing", box.label !== null);
  if (box.label) {
    map.leaflet.dragging.disable();
    say(`Drag a box on the map: every tile in it is marked ${box.label}.`);
  } else map.leaflet.dragging.enable();
}

function boxStart(event) {
  if (!box.label) return;
  box.start = event.latlng;
  const colour = box.label === "good" ? "#2e7d32" : "#c62828";
  box.rectangle = L.rectangle(L.latLngBounds(box.start, box.start), {
    color: colour,
    weight: 2,
    dashArray: "5 4",
    fillOpacity: 0.08,
    interactive: false,
    className: "mark-box",
  }).addTo(map.leaflet);
}

function boxMove(event) {
  if (box.start) box.rectangle.setBounds(L.latLngBounds(box.start, event.latlng));
}

function boxEnd(event) {
  if (!box.start) return;
  const bounds = L.latLngBounds(box.start, event.latlng);
  const label = box.label;
  box.rectangle.remove();
  box.start = box.rectangle = null;
  box.endedAt = performance.now(); // the click that follows the drag is not a search
  armBox(label); // disarmed: one box a time
  const corners = [bounds.getSouthWest(), bounds.getNorthEast()].map((c) =>
    map.leaflet.latLngToContainerPoint(c),
  );
  if (corners[0].distanceTo(corners[1]) < 4) {
    say("Drag to draw a box: press, move, release.", true);
    return;
  }
  markBox(bounds, label);
}

async function markBox(bounds, label) {
  const query = state.query;
  if (!query || query.kind !== "tile") {
    say("Click a tile first: the marks refine its search.", true);
    return;
  }
  const json = { "Content-Type": "application/json" };
  const top = Number($("top").value) || state.config.top;
  say(`Marking the tiles in the box ${label}…`);
  try {
    if (!state.session) {
      const body = { tile: query.id, top, other_files: $("other-files").checked, good: state.good, bad: state.bad };
      const made = await api("api/sessions", { method: "POST", headers: json, body: JSON.stringify(body) });
      state.session = made.session;
    }
    const bbox = lonLatBox(bounds);
    const url = `api/sessions/${encodeURIComponent(state.session)}/marks/box`;
    const result = await api(url, { method: "POST", headers: json, body: JSON.stringify({ bbox, label, top }) });
    if (query !== state.query) return;
    state.good = result.feedback.good;
    state.bad = result.feedback.bad;
    show(result);
    say(`${result.marked.length} tiles in the box marked ${label}; the list is re-ranked with every mark`);
  } catch (error) {
    say(error.message, true);
  }
}

function renderQuery(feature, location) {
  const props = feature.properties;
  let src = previewSrc(props.preview);
  if (!src && state.query.kind === "upload" && /^image\/(png|jpeg)$/.test(state.query.file.type)) {
    src = URL.createObjectURL(state.query.file);
  }
  const noun = state.config.kind === "plain" ? "image" : "tile";
  const title = state.query.kind === "upload" ? `your image ${props.name}` : `${noun} ${props.id}`;
  const card = element(
    "div",
    { class: "card" },
    src ? element("img", { src, alt: `query ${title}` }) : element("span", { text: "(no preview)" }),
    element(
      "div",
      {},
      element("strong", { text: `Query: ${title}` }),
      element("div", { class: "name", text: props.name || "" }),
      element("div", { class: "muted", text: props.acquired || "" }),
      location ? element("div", { class: "found", text: placeText(location.properties) }) : "",
    ),
  );
  $("query").replaceChildren(card);
}

// Where the second search stage found the query: the scene, and how well it fits.
function placeText(props) {
  const name = props.path.split("/").pop();
  const turned = props.rotation ? `, turned ${props.rotation}°` : "";
  const mirrored = props.mirrored ? ", mirrored" : "";
  return `found in ${name} (correlation ${props.correlation.toFixed(2)}${turned}${mirrored})`;
}

// A thumb (up, or down when turned), drawn here: no icon font is needed.
function thumb(down) {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("aria-hidden", "true");
  if (down) svg.style.transform = "rotate(180deg)";
  const path = document.createElementNS("http://www.w3.org/2000/svg", "path");
  path.setAttribute(
    "d",
    "M2 10h4v11H2zM8 10l4-7c1.6 0 2.6 1.1 2.2 3L13.4 10H20c1.2 0 2.1 1.1 1.8 2.2l-2 7.1" +
      "c-.3 1-1.1 1.7-2.1 1.7H8z",
  );
  svg.append(path);
  return svg;
}

function votesFor(id) {
  return element(
    "div",
    { class: "votes" },
    element("button", {
      type: "button",
      class: "good",
      title: "Relevant: more like this",
      "aria-label": `mark tile ${id} good`,
      onclick: (event) => {
        event.stopPropagation();
        mark(id, 1);
      },
    }, thumb(false)),
    element("button", {
      type: "button",
      class: "bad",
      title: "Not relevant: less like this",
      "aria-label": `mark tile ${id} bad`,
      onclick: (event) => {
        event.stopPropagation();
        mark(id, -1);
      },
    }, thumb(true)),
  );
}

// -- detect: a classifier of the session's marks over every tile ---------------------------

async function detect() {
  say("Scoring every tile with a classifier of your marks…");
  const url = `api/sessions/${encodeURIComponent(state.session)}/detect`;
  const json = { "Content-Type": "application/json" };
  try {
    const found = await api(url, { method: "POST", headers: json, body: JSON.stringify({ review: 10 }) });
    $("detect-summary").textContent = found.summary;
    $("detect-downloads").replaceChildren(
      ...Object.entries(found.downloads).map(([kind, href]) =>
        element("a", {
          href,
          download: "",
          class: `download-${kind}`,
          text: kind === "gpkg" ? "GeoPackage" : "GeoJSON",
          title: `Download the detections as ${kind === "gpkg" ? "a GeoPackage" : "GeoJSON"}`,
        }),
      ),
    );
    if (map.leaflet) {
      if (map.detections) map.detections.remove();
      const options = { maxZoom: 22, opacity: 0.9, className: "detections", pane: "found" };
      map.detections = L.tileLayer(found.layer, options);
      map.detections.addTo(map.leaflet);
    }
    $("review").replaceChildren(...found.review.features.map(reviewItem));
    say(`${found.detected_tiles} tiles detected in ${found.detections} places; mark the ones below next`);
  } catch (error) {
    say(error.message, true);
  }
}

function reviewItem(feature) {
  const props = feature.properties;
  return element(
    "li",
    { "data-id": props.id, onclick: () => focusTile(feature) },
    element("img", { src: previewSrc(props.preview), alt: `review tile ${props.id}`, loading: "lazy" }),
    element(
      "div",
      {},
      element("span", { class: "score", text: `probability ${props.probability.toFixed(2)}` }),
      element("div", { class: "name", text: `tile ${props.id}` }),
    ),
    votesFor(props.id),
  );
}

function resultItem(feature) {
  const props = feature.properties;
  const votes = votesFor(props.id);
  const window = `${props.width}×${props.height} px at row ${props.row}, col ${props.col}`;
  const item = element(
    "li",
    {
      "data-id": props.id,
      "data-rank": props.rank,
      onmouseenter: () => emphasise(props.id, true),
      onmouseleave: () => emphasise(props.id, false),
      onclick: () => focusTile(feature),
    },
    element("img", { src: previewSrc(props.preview), alt: `result ${props.rank}`, loading: "lazy" }),
    element(
      "div",
      {},
      element("span", { class: "rank", text: `#${props.rank}` }),
      element("span", { class: "score", text: `similarity ${props.similarity.toFixed(2)}` }),
      props.coverage != null
        ? element("div", { class: "found", text: `${Math.round(props.coverage * 100)}% of the query, placed` })
        : props.near_copy != null
          ? element("div", { class: "found", text: "near copy" })
          : "",
      element("div", { class: "name", text: props.name }),
      element("div", { class: "muted", text: [props.acquired, window].filter(Boolean).join(" · ") }),
    ),
    votes,
  );
  return item;
}

function download() {
  if (!state.result) return;
  const text = JSON.stringify(state.result, null, 1);
  const url = URL.createObjectURL(new Blob([text], { type: "application/geo+json" }));
  const label = state.query.kind === "tile" ? `tile${state.query.id}` : "upload";
  const link = element("a", { href: url, download: `similar-${label}.geojson` });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

// -- map mode ---------------------------------------------------------------------------

async function startMap() {
  $("map").hidden = false;
  $("changes-form").hidden = false;
  const leaflet = L.map("map", { zoomSnap: 0.25, worldCopyJump: true });
  map.leaflet = leaflet;
  if (state.config.basemap) {
    L.tileLayer(state.config.basemap, { maxZoom: 20, attribution: "basemap" }).addTo(leaflet);
  }
  const coverage = `api/coverage/{z}/{x}/{y}.png?generation=${state.config.generation}`;
  L.tileLayer(coverage, { maxZoom: 22, opacity: 0.85, attribution: "tiles: geosearch" }).addTo(
    leaflet,
  );
  leaflet.createPane("previews").style.zIndex = 350; // under the outlines
  const found = leaflet.createPane("found"); // the detections and changes layers: over previews
  found.style.zIndex = 360;
  found.style.pointerEvents = "none";
  map.previews = L.layerGroup().addTo(leaflet);
  map.footprints = L.layerGroup().addTo(leaflet);
  map.outlines = L.layerGroup().addTo(leaflet);
  map.marks = L.layerGroup().addTo(leaflet);
  L.control.scale().addTo(leaflet);
  const extent = state.config.extent;
  if (extent) {
    const [west, south, east, north] = extent;
    leaflet.fitBounds([[south, west], [north, east]], { padding: [20, 20], maxZoom: 17 });
  } else {
    leaflet.setView([0, 0], 2);
    say("No tile has a footprint to show on the map (rasters without a CRS).");
  }
  leaflet.on("moveend", loadVisible);
  leaflet.on("click", (event) => {
    if (box.label || performance.now() - box.endedAt < 400) return; // a box, not a search
    if (map.changePlace) changeAt(event.latlng);
    else pickAt(event.latlng);
  });
  leaflet.on("mousedown", boxStart);
  leaflet.on("mousemove", boxMove);
  leaflet.on("mouseup", boxEnd);
  await loadVisible();
}

// Draw the footprints of the tiles in view (if few enough), dropping those out of view.
async function loadVisible() {
  if (map.loading) map.loading.abort(); // the view moved on: its answer is not wanted
  const b = map.leaflet.getBounds();
  if (wholeExtentIn(b) && state.config.tiles > FOOTPRINTS_IN_VIEW) {
    showTiles([], false); // every tile is in view: too many to draw, nothing to ask
    hintTilesInView(state.config.tiles);
    return;
  }
  const box = lonLatBox(b).map((v) => v.toFixed(6));
  const loading = new AbortController();
  map.loading = loading;
  let page;
  try {
    const url = `api/tiles?bbox=${box.join(",")}&limit=${FOOTPRINTS_IN_VIEW}`;
    page = await api(url, { signal: loading.signal });
  } catch (error) {
    if (!loading.signal.aborted) say(error.message, true);
    return;
  } finally {
    if (map.loading === loading) map.loading = null;
  }
  if (loading.signal.aborted) return; // (aborted while its body was read)
  const shown = page.total <= FOOTPRINTS_IN_VIEW ? page.features : [];
  showTiles(shown.filter((f) => f.geometry), page.total <= PREVIEWS_IN_VIEW);
  if (shown.length) $("hint").textContent = "Click a tile to find the places most like it.";
  else hintTilesInView(page.total);
}

// [west, south, east, north] of Leaflet bounds, within the lon/lat ranges.
function lonLatBox(bounds) {
  const clamp = (v, limit) => Math.max(-limit, Math.min(limit, v));
  return [
    clamp(bounds.getWest(), 180),
    clamp(bounds.getSouth(), 90),
    clamp(bounds.getEast(), 180),
    clamp(bounds.getNorth(), 90),
  ];
}

// Whether the view holds every tile's centre (config.extent): then it holds all the tiles.
function wholeExtentIn(bounds) {
  const extent = state.config.extent;
  if (!extent) return false;
  const [west, south, east, north] = extent;
  return bounds.contains([[south, west], [north, east]]);
}

function hintTilesInView(total) {
  const advice = "zoom in to see their footprints, or click a place.";
  $("hint").textContent = `${total} tiles in view: ${advice}`;
}

// Keep exactly ``features`` drawn (with previews if ``previews``), reusing what is drawn.
function showTiles(features, previews) {
  const wanted = new Set(features.map((f) => f.id));
  for (const [id, drawn] of state.tiles) {
    if (wanted.has(id)) {
      if (!previews) dropPreview(drawn);
      continue;
    }
    map.footprints.removeLayer(drawn.footprint); // (layer.remove() would leave it in the group)
    dropPreview(drawn);
    state.tiles.delete(id);
  }
  const fresh = features.filter((f) => !state.tiles.has(f.id));
  fresh.sort((a, b) => (a.properties.acquired || "").localeCompare(b.properties.acquired || ""));
  for (const feature of fresh) {
    const footprint = L.geoJSON(feature, {
      style: () => ({ color: "#37474f", weight: 1, fillOpacity: 0.03, className: "tile-footprint" }),
    }).addTo(map.footprints);
    state.tiles.set(feature.id, { feature, footprint, preview: null });
  }
  if (!previews) return;
  const order = [...state.tiles.values()]; // in drawing order: the latest date on top
  const date = (drawn) => drawn.feature.properties.acquired || "";
  order.sort((a, b) => date(a).localeCompare(date(b)));
  for (const drawn of order) {
    if (drawn.preview || !drawn.feature.properties.preview) continue;
    const box = drawn.footprint.getBounds();
    drawn.preview = L.imageOverlay(previewSrc(drawn.feature.properties.preview), box, {
      pane: "previews",
      className: "tile-preview",
    }).addTo(map.previews);
  }
}

function dropPreview(drawn) {
  if (!drawn.preview) return;
  const image = drawn.preview.getElement();
  map.previews.removeLayer(drawn.preview);
  if (image && !image.complete) image.src = L.Util.emptyImageUrl; // stops its download
  drawn.preview = null;
}

function inRing(ring, x, y) {
  let inside = false;
  for (let i = 0, j = ring.length - 1; i < ring.length; j = i++) {
    const [xi, yi] = ring[i];
    const [xj, yj] = ring[j];
    if (yi > y !== yj > y && x < ((xj - xi) * (y - yi)) / (yj - yi) + xi) inside = !inside;
  }
  return inside;
}

function contains(geometry, latlng) {
  const polygons = geometry.type === "Polygon" ? [geometry.coordinates] : geometry.coordinates;
  return polygons.some(
    ([outer, ...holes]) =>
      inRing(outer, latlng.lng, latlng.lat) && !holes.some((h) => inRing(h, latlng.lng, latlng.lat)),
  );
}

function pickAt(latlng) {
  const drawn = [...state.tiles.values()].map((t) => t.feature);
  if (!drawn.length) {
    searchPlace(latlng); // footprints are not drawn at this zoom: the server finds the tile
    return;
  }
  const here = drawn.filter((f) => contains(f.geometry, latlng));
  here.sort(
    (a, b) =>
      (b.properties.acquired || "").localeCompare(a.properties.acquired || "") || b.id - a.id,
  );
  if (!here.length) return;
  state.here = here;
  searchTile(here[0].id);
  renderHere();
}

function renderHere() {
  const box = $("here");
  box.replaceChildren();
  if (state.here.length < 2) return;
  box.append(element("span", { class: "muted", text: `${state.here.length} tiles here:` }));
  for (const feature of state.here) {
    const props = feature.properties;
    const current = state.query && state.query.kind === "tile" && state.query.id === feature.id;
    box.append(
      element("button", {
        type: "button",
        class: current ? "current" : "",
        title: `${props.name}, row ${props.row}, col ${props.col}`,
        text: props.acquired || `tile ${feature.id}`,
        onclick: () => {
          searchTile(feature.id).then(renderHere);
          renderHere();
        },
      }),
    );
  }
}

function drawOutlines(queryFeature, matches, location) {
  map.outlines.clearLayers();
  map.byId.clear();
  const labels = []; // one label per place: results of other dates share it
  for (const feature of matches) {
    if (!feature.geometry) continue;
    const layer = L.geoJSON(feature, {
      interactive: false,
      style: { color: "#ef6c00", weight: 2.5, fill: false, className: "result-outline" },
    });
    layer.addTo(map.outlines);
    map.byId.set(feature.properties.id, layer);
    const centre = layer.getBounds().getCenter();
    const point = map.leaflet.latLngToLayerPoint(centre);
    let label = labels.find((l) => l.point.distanceTo(point) < 24);
    if (!label) {
      label = { centre, point, ranks: [] };
      labels.push(label);
    }
    label.ranks.push(feature.properties.rank);
  }
  for (const { centre, ranks } of labels) {
    L.tooltip({ permanent: true, direction: "center", className: "rank-label" })
      .setLatLng(centre)
      .setContent(ranks.join(" · "))
      .addTo(map.outlines);
  }
  if (queryFeature.geometry) {
    L.geoJSON(queryFeature, {
      interactive: false,
      style: { color: "#1565c0", weight: 4, fill: false, className: "query-outline" },
    }).addTo(map.outlines);
  }
  if (location && location.geometry) {
    const placed = L.geoJSON(location, {
      interactive: false,
      style: { color: "#2e7d32", weight: 3, dashArray: "6 4", fill: false, className: "location-outline" },
    }).addTo(map.outlines);
    L.tooltip({ direction: "top", className: "location-label" })
      .setLatLng(placed.getBounds().getNorthEast())
      .setContent("your picture")
      .addTo(map.outlines);
  }
}

function emphasise(id, on) {
  const layer = map.byId.get(id);
  if (layer) layer.setStyle({ weight: on ? 5 : 2.5 });
  const item = document.querySelector(`#results li[data-id="${id}"]`);
  if (item) item.classList.toggle("hover", on);
}

function focusTile(feature) {
  if (map.leaflet && feature.geometry) {
    map.leaflet.flyToBounds(L.geoJSON(feature).getBounds(), { maxZoom: map.leaflet.getZoom() });
  } else {
    const figure = document.querySelector(`#grid figure[data-id="${feature.properties.id}"]`);
    if (figure) figure.scrollIntoView({ behavior: "smooth", block: "center" });
  }
}

// -- gallery mode (plain images) --------------------------------------------------------

async function startGallery() {
  $("gallery").hidden = false;
  $("hint").textContent = "Click an image to find the images most like it.";
  $("more").addEventListener("click", loadGalleryPage);
  await loadGalleryPage();
}

async function loadGalleryPage() {
  try {
    const page = await api(`api/tiles?limit=120&offset=${state.galleryOffset}`);
    for (const feature of page.features) {
      const props = feature.properties;
      $("grid").append(
        element(
          "figure",
          { "data-id": feature.id, title: props.path, onclick: () => searchTile(feature.id) },
          element("img", { src: previewSrc(props.preview), alt: props.name, loading: "lazy" }),
          element("figcaption", { text: props.name }),
        ),
      );
    }
    state.galleryOffset += page.features.length;
    $("more").hidden = state.galleryOffset >= page.total;
  } catch (error) {
    say(error.message, true);
  }
}

function highlightGallery(queryFeature, matches) {
  const results = new Set(matches.map((f) => String(f.properties.id)));
  for (const figure of document.querySelectorAll("#grid figure")) {
    figure.classList.toggle("query", figure.dataset.id === String(queryFeature.properties.id));
    figure.classList.toggle("result", results.has(figure.dataset.id));
  }
}

start();

// -- what changed -----------------------------------------------------------------------

// The places that changed most between the two periods: every significant one drawn by the
// server as a map layer (red), the top ones outlined and listed; clicking one, in the list or
// on the map, shows its before and after previews side by side.
async function showChanges(event) {
  event.preventDefault();
  const from = $("change-from").value.trim();
  const to = $("change-to").value.trim();
  if (!from || !to) {
    say("Give both periods: a year, YYYY-MM or YYYY-MM-DD.", true);
    return;
  }
  say("Comparing the two periods…");
  let body;
  try {
    const query = new URLSearchParams({ from, to, top: $("top").value || "20" });
    body = await api(`api/changes?${query}`);
  } catch (error) {
    say(error.message, true);
    return;
  }
  map.outlines.clearLayers();
  map.byId.clear();
  if (map.changes) map.changes.remove();
  map.changes = L.tileLayer(body.layer, { maxZoom: 22, opacity: 0.9, className: "changes-layer", pane: "found" });
  map.changes.addTo(map.leaflet);
  map.changePlace = body.place;
  for (const id of ["query", "here", "results"]) $(id).replaceChildren();
  $("actions").hidden = true;
  $("hint").hidden = true;
  for (const feature of body.features) {
    const props = feature.properties;
    if (feature.geometry) {
      const layer = L.geoJSON(feature, {
        style: {
          color: props.significant ? "#c62828" : "#f9a825",
          weight: 3,
          fillOpacity: 0.12,
          className: props.significant ? "change-outline significant" : "change-outline",
        },
      });
      layer.on("click", (event) => {
        L.DomEvent.stopPropagation(event);
        showChange(feature);
      });
      layer.addTo(map.outlines);
    }
    $("results").append(changeItem(feature));
  }
  say(
    `${body.features.length} places that changed most from ${body.from} to ${body.to}; ` +
      `${body.significant} of ${body.pairs} places significant`,
  );
}

function changeItem(feature) {
  const props = feature.properties;
  const star = props.significant ? " · significant" : "";
  return element(
    "li",
    { class: "change-item", "data-rank": props.rank, onclick: () => showChange(feature) },
    element("span", { class: "rank", text: `#${props.rank}` }),
    element("span", { class: "score", text: ` change ${props.change.toFixed(2)}${star}` }),
    element("div", { class: "muted", text: `${props.before_date} → ${props.after_date}` }),
  );
}

function changeFigure(url, date, path) {
  return element(
    "figure",
    {},
    element("img", { src: `${url}?size=256`, alt: `${date} ${baseName(path)}` }),
    element("figcaption", { text: `${date} · ${baseName(path)}` }),
  );
}

// A search shown ends the changes view: its layer and outline go, clicks search again.
function closeChanges() {
  for (const layer of [map.changes, map.changeOutline]) if (layer) layer.remove();
  map.changes = map.changeOutline = map.changePlace = null;
}

// The place paired at a map click (a significant one first); where none is, a search as usual.
async function changeAt(latlng) {
  const point = `&lon=${latlng.lng.toFixed(6)}&lat=${latlng.lat.toFixed(6)}`;
  let found;
  try {
    found = await api(map.changePlace + point);
  } catch (error) {
    say(error.message, true);
    return;
  }
  if (!found.features.length) {
    pickAt(latlng);
    return;
  }
  showChange(found.features[0]);
}

function showChange(feature) {
  const props = feature.properties;
  if (map.changeOutline) map.changeOutline.remove();
  map.changeOutline = null;
  if (feature.geometry) {
    map.changeOutline = L.geoJSON(feature, {
      interactive: false,
      style: { color: "#1f2d3a", weight: 4, fill: false, className: "change-selected" },
    }).addTo(map.leaflet);
  }
  $("query").replaceChildren(
    element("div", { class: "muted", text: `#${props.rank}: change ${props.change.toFixed(2)}` }),
    element(
      "div",
      { class: "change-pair" },
      changeFigure(props.before_preview, props.before_date, props.before_file),
      changeFigure(props.after_preview, props.after_date, props.after_file),
    ),
  );
  for (const item of document.querySelectorAll("#results li.change-item")) {
    item.classList.toggle("hover", item.dataset.rank === String(props.rank));
  }
}
