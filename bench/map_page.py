"""The map page (``geosearch serve``) over a large database, in real headless Chromium: one JSON
line per measurement.

Builds (once; kept in ``--work``) a real geosearch GeoPackage of synthetic tiles: files of
64 x 64 tiles of 256 px at 10 m in UTM 33N, 16 files to a row (1M tiles: 2,600 km square,
Europe), each tile with its native footprint and lon/lat footprint (the 17-point ring ingest
writes, projected as ingest projects it), a date per file and a random 128-d unit vector. The
catalog metadata (band manifest, fusion with its 128-d projection, settings, vector dtype) is
copied from a small real database: four 2048 px RGB GeoTIFFs ingested by ``geosearch ingest``.
The index is built (as ingest leaves it) before the clock starts. The tiles' files do not
exist, so the server runs with ``search.locate: false`` and every preview answers 404 (counted
in ``responses`` as ``preview_404``; the page shows them as broken images).

Then ``geosearch serve`` runs on a free port and Chromium (Debian's, driven by Playwright) opens
the page at 1280 x 800, for the database and a small baseline one in the same run:

- ``first_view``: navigation start -> ``body[data-ready]`` (config read, view fitted to the
  whole extent, footprints drawn or not) and every coverage map tile in view loaded
  (``performance.now()`` in the page), with when the config and the last coverage tile came;
  ``cold`` is the server's first page (it reads the tiles' centres), ``warm`` a second page in
  a fresh browser context (empty browser cache);
- ``click``: a click (real mouse) on a place at the whole-coverage view -> the first result
  item in the list (in the page's clock); the first search of the server loads the index
  (``cold``), then again elsewhere (``warm``), and at the end on a drawn footprint;
- ``moves``: 20 pans (mouse drags) and zooms (mouse wheel) - zoom in until footprints show,
  pan around, zoom in once more (previews), zoom out to the coverage and back, pan; each is
  timed until its requests and map tiles are done (less the 0.25 s of quiet that shows it).
  Reports the slowest move, the footprints drawn (most at once and at the end) and the JS heap
  after a forced garbage collection (CDP ``HeapProfiler.collectGarbage``,
  ``Runtime.getHeapUsage``) after load and after the moves, with DOM nodes
  (``Memory.getDOMCounters``); the server's RSS (VmRSS, VmHWM) at the end.

The machine may be shared: timings are one run's wall clock, not a best of several.

    .venv/bin/python bench/map_page.py          # 1M tiles + 10k baseline: 1 min (+4 to build)
    .venv/bin/python bench/map_page.py --quick  # 20k tiles, no baseline: 30 s
    .venv/bin/python bench/map_page.py --layers  # changes + detections layers, 1M tiles of 2 years
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TILE = 256
PIXEL = 10.0
TILES_PER_SIDE = 64  # per file: 16384 x 16384 px
FILES_PER_ROW = 16
FILE_SIDE = TILES_PER_SIDE * TILE * PIXEL
ORIGIN = (500_000 - FILES_PER_ROW / 2 * FILE_SIDE, 7_000_000)  # UTM 33N: about 63 N, 8 W
EPSG = 32633
BATCH = 20_000
META_KEYS = ("manifest", "fusion", "settings", "vector_dtype", "geosearch_version", "created")
CHROMIUM = Path(os.environ.get("GEOSEARCH_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update"]  # fmt: skip
VIEWPORT = {"width": 1280, "height": 800}
MOVES = 20
# After zooming in until footprints show: pans, one zoom further (previews), out to the coverage
# and back, pans; cut to MOVES moves in all.
PLAN = (
    "east south west west in north out out out in in east south in west north east south west north"
)
GEOSEARCH = str(Path(sys.executable).with_name("geosearch"))


# -- the database ----------------------------------------------------------------------------


def reference_db(work: Path) -> Path:
    """A small real database (four 2048 px RGB GeoTIFFs ingested: 256 sample tiles, enough for
    the 128-d projection) whose catalog metadata the synthetic database borrows."""
    import rasterio
    from rasterio.transform import from_origin

    from geosearch.store import Store

    folder = work / "reference"
    db = folder / "reference.gpkg"
    if db.exists():
        with Store(db) as store:
            if store.meta("fusion") is not None:
                return db
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*"):
        stale.unlink()
    rng = np.random.default_rng(0)
    side = 2048
    for number in range(4):
        coarse = rng.integers(0, 256, (3, side // 64, side // 64), dtype=np.uint8)
        pixels = np.kron(coarse, np.ones((64, 64), dtype=np.uint8))  # 64 px blocks: varied tiles
        pixels = np.clip(pixels + rng.integers(0, 24, pixels.shape), 0, 255).astype(np.uint8)
        origin = from_origin(500_000 + number * side * PIXEL, 5_000_000, PIXEL, PIXEL)
        profile = {"driver": "GTiff", "width": side, "height": side, "count": 3,
                   "dtype": "uint8", "crs": f"EPSG:{EPSG}", "transform": origin,
                   "photometric": "RGB", "tiled": True, "compress": "deflate"}  # fmt: skip
        with rasterio.open(folder / f"reference_{number}_20240601.tif", "w", **profile) as dst:
            dst.write(pixels)
    subprocess.run([GEOSEARCH, "ingest", str(folder), "--db", str(db)], check=True,
                   capture_output=True)  # fmt: skip
    return db


def layout(
    numbers: np.ndarray, years: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(file, row, col, top-left x, y in UTM) of tile numbers; with ``years`` > 1, each run of
    ``years`` files covers the same ground (one file a year)."""
    per_file = TILES_PER_SIDE * TILES_PER_SIDE
    files, within = numbers // per_file, numbers % per_file
    places = files // years
    row, col = (within // TILES_PER_SIDE) * TILE, (within % TILES_PER_SIDE) * TILE
    x0 = ORIGIN[0] + (places % FILES_PER_ROW) * FILE_SIDE + col * PIXEL
    y0 = ORIGIN[1] - (places // FILES_PER_ROW) * FILE_SIDE - row * PIXEL
    return files, row, col, np.column_stack([x0, y0])


def file_date(file: int, years: int) -> str:
    """The acquisition date of synthetic file ``file``: a month of 2024, or with ``years`` > 1
    June of 2024, 2025, ... by the file's place in its run."""
    if years == 1:
        return f"2024-{file % 12 + 1:02d}-01"
    return f"{2024 + file % years}-06-01"


def year_vectors(
    numbers: np.ndarray, files: np.ndarray, years: int, dim: int, planted: float = 0.01
) -> np.ndarray:
    """Unit vectors of tiles of a ``years`` database: each place's first year at random, the
    next years the same plus noise (unchanged ground seen again), ``planted`` of the places a
    new random vector (changed)."""
    per_file = TILES_PER_SIDE * TILES_PER_SIDE
    out = np.empty((len(numbers), dim), np.float32)
    for file in np.unique(files):
        mine = files == file
        within = numbers[mine] % per_file
        ground = np.random.default_rng(int(file // years))
        base = ground.standard_normal((per_file, dim), dtype=np.float32)
        changed = ground.random(per_file) < planted
        vectors = base[within]
        if file % years:
            seen = np.random.default_rng(10_000 + int(file))
            vectors = vectors + 0.3 * seen.standard_normal(vectors.shape, dtype=np.float32)
            fresh = seen.standard_normal((per_file, dim), dtype=np.float32)[within]
            vectors[changed[within]] = fresh[changed[within]]
        out[mine] = vectors
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def tile_centre(number: int) -> tuple[float, float]:
    """(lon, lat) of the centre of tile ``number``."""
    from pyproj import Transformer

    *_, corner = layout(np.array([number]))
    x, y = corner[0] + (TILE * PIXEL / 2, -TILE * PIXEL / 2)
    lon, lat = Transformer.from_crs(EPSG, 4326, always_xy=True).transform(x, y)
    return float(lon), float(lat)


def build_store(db: Path, tiles: int, reference: Path, years: int = 1) -> None:
    """A geosearch database of ``tiles`` synthetic tiles (see the module's docstring); with
    ``years`` > 1, of ``tiles / years`` places each seen in ``years`` years."""
    import shapely
    from pyproj import Transformer

    from geosearch.features import Fusion
    from geosearch.pixels import Window
    from geosearch.sources import window_ring
    from geosearch.store import FileRecord, Store, TileRecord

    with Store(reference) as ref:
        meta = {key: ref.meta(key) for key in META_KEYS}
    dim = Fusion.from_dict(meta["fusion"]).dim
    assert dim == 128, f"{reference}: {dim}-d vectors, not the projected 128"
    to_lonlat = Transformer.from_crs(EPSG, 4326, always_xy=True)
    ring = window_ring(TILE, TILE) * (PIXEL, -PIXEL)  # pixel -> metres from the top-left
    rng = np.random.default_rng(0)
    per_file = TILES_PER_SIDE * TILES_PER_SIDE
    with Store(db, create=True) as store:
        store.set_meta(meta | {"bench": {"tiles": tiles, "dim": dim}})
        for start in range(0, tiles, BATCH):
            numbers = np.arange(start, min(tiles, start + BATCH))
            files, row, col, corner = layout(numbers, years)
            native = corner[:, None, :] + ring[None, :, :]
            lon, lat = to_lonlat.transform(native[..., 0], native[..., 1])
            lonlat = shapely.polygons(np.stack([lon, lat], axis=-1))
            native_wkt = shapely.to_wkt(shapely.polygons(native), trim=True)
            if years == 1:
                vectors = rng.standard_normal((len(numbers), dim), dtype=np.float32)
                vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            else:
                vectors = year_vectors(numbers, files, years, dim)
            dates = [file_date(f, years) for f in range(files[-1] + 1)]
            paths = [f"/bench/T33_{f // years:05d}_{d.replace('-', '')}.tif"
                     for f, d in enumerate(dates)]  # fmt: skip
            rows = []
            for i in range(len(numbers)):
                file = int(files[i])
                record = TileRecord(
                    None, paths[file], Window(int(row[i]), int(col[i]), TILE, TILE),
                    f"EPSG:{EPSG}", native_wkt[i], lonlat[i], dates[file],
                    0.0, "name",
                )  # fmt: skip
                rows.append((record, vectors[i], None))
            first, last = int(files[0]), int(files[-1])
            started = [FileRecord(paths[f], 1 << 30, 0, "partial") for f in range(first, last + 1)]
            last_tile = int(numbers[-1])
            ending = [f for f in range(first, last + 1)
                      if (f + 1) * per_file - 1 <= last_tile or last_tile == tiles - 1]  # fmt: skip
            finished = [FileRecord(paths[f], 1 << 30, 0, "done") for f in ending]
            store.write_batch(rows, started, finished)
        store.update_extent()


def build_index(db: Path) -> dict[str, Any]:
    """Build and save the database's index, as ingest leaves it."""
    from geosearch.index import open_index
    from geosearch.store import Store

    started = time.perf_counter()
    with Store(db) as store:
        kind = open_index(store).kind
    return {"index": kind, "db": str(db), "seconds": round(time.perf_counter() - started, 1)}


def database(work: Path, tiles: int, years: int = 1) -> Path:
    """The cached database of ``tiles`` tiles and its index (built if missing)."""
    db = work / (f"page_tiles{tiles}.gpkg" if years == 1 else f"page_years{years}_{tiles}.gpkg")
    if not db.exists():
        started = time.perf_counter()
        building = db.with_name("building-" + db.name)
        for stale in building.parent.glob(building.name + "*"):
            stale.unlink()
        build_store(building, tiles, reference_db(work), years)
        building.rename(db)
        seconds = round(time.perf_counter() - started, 1)
        print(json.dumps({"built": str(db), "tiles": tiles, "seconds": seconds}), flush=True)
    if not (db.parent / (db.name + ".faiss")).exists():
        print(json.dumps(build_index(db)), flush=True)
    return db


# -- the server ------------------------------------------------------------------------------


@contextmanager
def serving(db: Path, work: Path) -> Iterator[tuple[str, int]]:
    """``geosearch serve`` on a free port, the second search stage off; (URL, its pid)."""
    config = work / "config.yaml"
    config.write_text("search:\n  locate: false\n")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [GEOSEARCH, "serve", "--db", str(db), "--config", str(config), "--port", str(port)]
    server = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                with urllib.request.urlopen(url + "/", timeout=5):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    why = server.stderr.read()
                    raise RuntimeError(f"geosearch serve did not start: {why}") from None
                time.sleep(0.2)
        yield url, server.pid
    finally:
        server.terminate()
        server.wait(30)


def rss_mb(pid: int) -> dict[str, int]:
    """The process's resident memory now and at its peak, in MB."""
    status = Path(f"/proc/{pid}/status").read_text()
    found = {key: int(re.search(rf"{key}:\s+(\d+)", status).group(1)) for key in ("VmRSS", "VmHWM")}
    return {
        "server_rss_mb": round(found["VmRSS"] / 1024),
        "server_peak_mb": round(found["VmHWM"] / 1024),
    }


# -- the page --------------------------------------------------------------------------------

FIRST_VIEW = """() => {
  if (document.body.dataset.ready !== "true") return false;
  const tiles = [...document.querySelectorAll("img.leaflet-tile")]
    .filter((image) => image.src.includes("/api/coverage/"));
  const loaded = (image) => image.complete && image.classList.contains("leaflet-tile-loaded");
  if (!tiles.length || !tiles.every(loaded)) return false;
  return performance.now();
}"""
# What the first view waited for: the config's answer, the coverage map tiles, the tiles in view.
FIRST_VIEW_PARTS = """() => {
  const done = (part) => performance.getEntriesByType("resource")
    .filter((entry) => entry.name.includes(part)).map((entry) => entry.responseEnd / 1000);
  const coverage = done("/api/coverage/");
  return { config_s: done("/api/config")[0], coverage_tiles: coverage.length,
           coverage_s: Math.max(...coverage), tiles_requests: done("/api/tiles?").length };
}"""
# (resolved with true: a Leaflet event would be serialised to Python with the whole map)
ARM_MOVEEND = (
    "() => { window.__moved = new Promise((r) => map.leaflet.once('moveend', () => r(true))); }"
)
TILES_LOADED = """() => [...document.querySelectorAll("img.leaflet-tile")]
  .every((image) => image.complete)"""
WATCH_RESULTS = """() => {
  window.__clicked = null;
  window.__answered = null;
  document.getElementById("results").replaceChildren();
  if (!window.__watching) {
    window.__watching = true;
    document.addEventListener("click", () => { window.__clicked = performance.now(); }, true);
    new MutationObserver(() => {
      const results = document.getElementById("results");
      if (results.childElementCount && window.__answered === null) {
        window.__answered = performance.now();
      }
    }).observe(document.getElementById("results"), { childList: true });
  }
}"""

NEAREST_FOOTPRINT = """() => {
  const box = document.getElementById("map").getBoundingClientRect();
  const [cx, cy] = [box.left + box.width / 2, box.top + box.height / 2];
  let best = null;
  for (const path of document.querySelectorAll("path.tile-footprint")) {
    const r = path.getBoundingClientRect();
    const [x, y] = [r.left + r.width / 2, r.top + r.height / 2];
    const d = Math.hypot(x - cx, y - cy);
    if (!best || d < best[2]) best = [x, y, d];
  }
  return best && best.slice(0, 2);
}"""


class Page:
    """One browser tab on the map page, with its requests in flight counted."""

    def __init__(self, browser: Any, url: str) -> None:
        self.context = browser.new_context(viewport=VIEWPORT)
        self.tab = self.context.new_page()
        self.cdp = self.context.new_cdp_session(self.tab)
        self.url = url
        self.pending: set[Any] = set()
        self.changed = time.monotonic()
        self.statuses: dict[str, int] = {}
        self.tab.on("request", self._started)
        self.tab.on("requestfinished", self._ended)
        self.tab.on("requestfailed", self._ended)
        self.tab.on("response", self._answered)

    def _started(self, request: Any) -> None:
        self.pending.add(request)
        self.changed = time.monotonic()

    def _ended(self, request: Any) -> None:
        self.pending.discard(request)
        self.changed = time.monotonic()

    def _answered(self, response: Any) -> None:
        path = urllib.parse.urlsplit(response.url).path
        if path.endswith("/preview.png"):
            kind = "preview"
        else:
            kind = path.split("/")[2] if path.startswith("/api/") else "static"
        key = f"{kind}_{response.status}"
        self.statuses[key] = self.statuses.get(key, 0) + 1

    def open(self) -> dict[str, Any]:
        """Load the page; seconds from navigation start to the first view (see the module) and
        to the answers it waited for."""
        self.tab.goto(self.url + "/", wait_until="commit")
        shown = self.tab.wait_for_function(FIRST_VIEW, polling="raf", timeout=120_000)
        parts = self.tab.evaluate(FIRST_VIEW_PARTS)
        rounded = {key: round(value, 3) for key, value in parts.items()}
        return {"seconds": round(shown.json_value() / 1000, 3), **rounded}

    def quiet(self, seconds: float = 0.25, timeout: float = 60) -> None:
        """Wait until no request has been in flight for ``seconds`` and map tiles are drawn."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.tab.wait_for_timeout(50)
            if self.pending or time.monotonic() - self.changed < seconds:
                continue
            if self.tab.evaluate(TILES_LOADED):
                return
        raise TimeoutError(f"requests still in flight: {[r.url for r in self.pending]}")

    def heap(self) -> dict[str, float]:
        """JS heap in use after a forced garbage collection (MB) and DOM nodes."""
        self.cdp.send("HeapProfiler.collectGarbage")
        used = self.cdp.send("Runtime.getHeapUsage")["usedSize"]
        counters = self.cdp.send("Memory.getDOMCounters")
        return {"js_heap_mb": round(used / 2**20, 1), "dom_nodes": counters["nodes"]}

    def footprints(self) -> int:
        return self.tab.locator("path.tile-footprint").count()

    def point_of(self, lon: float, lat: float) -> tuple[float, float]:
        """The page coordinates of a place on the map."""
        x, y = self.tab.evaluate(
            "([lat, lon]) => { const p = map.leaflet.latLngToContainerPoint([lat, lon]);"
            " const box = document.getElementById('map').getBoundingClientRect();"
            " return [box.left + p.x, box.top + p.y]; }",
            [lat, lon],
        )
        return x, y

    def click(self, x: float, y: float) -> float:
        """Seconds from a mouse click at (x, y) to the first result item in the list."""
        self.tab.evaluate(WATCH_RESULTS)
        self.tab.mouse.click(x, y)
        self.tab.wait_for_function("() => window.__answered !== null", timeout=120_000)
        clicked, answered = self.tab.evaluate("() => [window.__clicked, window.__answered]")
        self.quiet()
        return (answered - clicked) / 1000

    def move(self, kind: str) -> float:
        """One pan or zoom by mouse; seconds until its requests and tiles are done."""
        box = self.tab.locator("#map").bounding_box()
        cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        self.tab.evaluate(ARM_MOVEEND)
        started = time.monotonic()
        self.tab.mouse.move(cx, cy)
        if kind in ("in", "out"):
            self.tab.mouse.wheel(0, -100 if kind == "in" else 100)  # 1.25 zoom levels
        else:
            dx, dy = {"east": (-1, 0), "west": (1, 0), "north": (0, 1), "south": (0, -1)}[kind]
            self.tab.mouse.down()
            for step in range(1, 11):
                self.tab.mouse.move(cx + dx * step * 30, cy + dy * step * 20)
            self.tab.wait_for_timeout(120)  # a pause before letting go: no inertia
            self.tab.mouse.up()
        self.tab.evaluate("() => window.__moved")
        self.quiet()
        return time.monotonic() - started - 0.25

    def close(self) -> None:
        self.context.close()


def measure(db: Path, tiles: int, work: Path, browser: Any) -> Iterator[dict[str, Any]]:
    """The measurements of the page on one database (see the module's docstring)."""
    with serving(db, work) as (url, pid):
        page = Page(browser, url)
        cold = page.open()
        page.quiet()
        loaded = page.heap()
        yield {"measure": "first_view", "server": "cold", **cold,
               "footprints": page.footprints(), **loaded}  # fmt: skip

        middle = page.point_of(*tile_centre(tiles // 2))
        elsewhere = page.point_of(*tile_centre(tiles // 3))
        first = page.click(*middle)
        again = page.click(*elsewhere)
        yield {"measure": "click_coverage", "cold_s": round(first, 3), "warm_s": round(again, 3),
               "footprints": page.footprints()}  # fmt: skip

        seconds, drawn = [], []
        zoom_in = 0
        while page.footprints() == 0 and zoom_in < 12:
            seconds.append(page.move("in"))
            drawn.append(page.footprints())
            zoom_in += 1
        for kind in PLAN.split()[: MOVES - zoom_in]:
            seconds.append(page.move(kind))
            drawn.append(page.footprints())
        moved = page.heap()
        yield {"measure": "moves", "moves": len(seconds), "zoom_ins_to_footprints": zoom_in,
               "slowest_s": round(max(seconds), 3), "median_s": round(float(np.median(seconds)), 3),
               "footprints_max": max(drawn), "footprints_end": drawn[-1],
               "js_heap_mb_after_load": loaded["js_heap_mb"], **moved}  # fmt: skip

        nearest = page.tab.evaluate(NEAREST_FOOTPRINT)
        if nearest:
            on_tile = page.click(*nearest)
            yield {"measure": "click_footprint", "seconds": round(on_tile, 3)}
        statuses = page.statuses
        page.close()

        again_page = Page(browser, url)
        warm = again_page.open()
        again_page.quiet()
        again_page.close()
        yield {"measure": "first_view", "server": "warm", **warm}
        yield {"measure": "server", **rss_mb(pid), "responses": statuses}


# -- the server-rendered layers (no browser: what the server does before a map tile answers) --


def timed(call: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    value = call()
    return value, round(time.perf_counter() - started, 3)


def extent_tiles(extent: tuple[float, float, float, float]) -> list[tuple[int, int, int]]:
    """The map tiles of the zoom at which the extent spans about 5 x 3 tiles (the first view)."""
    from geosearch.coverage import map_tile_bounds

    west, south, east, north = extent
    z = max(0, int(np.floor(np.log2(360 / (east - west) * 4))))
    scale = 2**z

    def xy(lon: float, lat: float) -> tuple[int, int]:
        down = (1 - np.log(np.tan(np.radians(lat)) + 1 / np.cos(np.radians(lat))) / np.pi) / 2
        return int((lon + 180) / 360 * scale), int(down * scale)

    (x0, y0), (x1, y1) = xy(west, north), xy(east, south)
    assert map_tile_bounds(z, x0, y0)[0] <= west
    return [(z, x, y) for x in range(x0, x1 + 1) for y in range(y0, y1 + 1)]


def measure_layers(db: Path, tiles: int, work: Path) -> Iterator[dict[str, Any]]:
    """The changes layer (every significant place between the two years) and the detections
    layer (a session of 20 marks) on a two-year database, in this process: seconds until each
    layer can be drawn, then to render the first view's map tiles."""
    from geosearch.config import Settings
    from geosearch.request import SearchRequest
    from geosearch.serve.service import ChangeLayer, SearchService

    settings = Settings.model_validate({"search": {"locate": False}})
    service = SearchService(db, settings)
    _, coverage_s = timed(service.coverage)
    view = extent_tiles(service.summary()["extent"])
    yield {"measure": "coverage", "read_centres_s": coverage_s, "view_tiles": len(view)}

    listed, first_s = timed(lambda: service.changes("2024", "2025", None, 20))
    layer = service._change_layer("2024", "2025", None)
    _, layer_s = timed(lambda: ChangeLayer.of("again", layer.result))
    _, again_s = timed(lambda: service.changes("2024", "2025", None, 20))
    _, tiles_s = timed(lambda: [service.changes_tile("2024", "2025", None, *t) for t in view])
    place = np.flatnonzero(layer.significant)[0]
    pair = layer.result.all_pairs[place]
    west, south, east, north = (pair.before.footprint or pair.after.footprint).bounds
    lon, lat = (west + east) / 2, (south + north) / 2
    clicked, click_s = timed(lambda: service.change_at("2024", "2025", None, lon, lat))
    assert clicked.places and clicked.places[0].significant
    yield {"measure": "changes_layer", "pairs": listed.pairs, "significant": listed.significant,
           "changes_first_s": first_s, "of_which_layer_s": layer_s, "again_s": again_s,
           "view_tiles_s": tiles_s, "click_place_s": click_s, **peak_rss()}  # fmt: skip

    rng = np.random.default_rng(1)
    marked = rng.choice(tiles, 21, replace=False) + 1
    query, good, bad = int(marked[0]), marked[1:11].tolist(), marked[11:].tolist()
    request = SearchRequest(tile_id=query, top=10, session="bench-layers")
    if "bench-layers" not in service.sessions():
        service.create_session(request)
        service.mark("bench-layers", good, bad)
    runs = []
    for _ in range(2):  # the first warms the page cache
        (run, result, _geo), detect_s = timed(lambda: service.detect("bench-layers", 10, None))
        _, tiles_s = timed(lambda: [service.detections_tile("bench-layers", *t) for t in view])
        seconds = {key: round(value, 3) for key, value in result.seconds.items()}
        runs.append({"detect_s": detect_s, **seconds, "view_tiles_s": tiles_s,
                     "detected_tiles": result.detected})  # fmt: skip
    yield {"measure": "detections_layer", "first": runs[0], "second": runs[1], **peak_rss()}


def peak_rss() -> dict[str, int]:
    """This process's peak resident memory so far, in MB."""
    import resource

    return {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, default=1_000_000)
    parser.add_argument("--baseline", type=int, default=10_000, help="tiles; 0 = none")
    parser.add_argument("--quick", action="store_true", help="20k tiles, no baseline")
    parser.add_argument("--work", type=Path, default=Path("/tmp/geosearch-bench-page"))
    parser.add_argument("--layers", action="store_true",
                        help="the changes and detections layers on a two-year database of "
                             "--tiles tiles (no browser)")  # fmt: skip
    args = parser.parse_args()
    if args.quick:
        args.tiles, args.baseline = 20_000, 0
    args.work.mkdir(parents=True, exist_ok=True)
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(),
               "load": round(os.getloadavg()[0], 1)}  # fmt: skip
    if args.layers:
        db = database(args.work, args.tiles, years=2)
        for result in measure_layers(db, args.tiles, args.work):
            print(json.dumps({"tiles": args.tiles, **result, **machine}), flush=True)
        return
    from playwright.sync_api import sync_playwright

    sizes = [args.tiles] + ([args.baseline] if args.baseline else [])
    databases = {tiles: database(args.work, tiles) for tiles in sizes}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            for tiles, db in databases.items():
                for result in measure(db, tiles, args.work, browser):
                    print(json.dumps({"tiles": tiles, **result, **machine}), flush=True)
        finally:
            browser.close()


if __name__ == "__main__":
    main()
