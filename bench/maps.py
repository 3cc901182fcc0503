"""Tile similarity maps (``similar --map``) over a large database: one JSON line per measurement.

Builds (once; kept in ``--work``) a real geosearch GeoPackage of synthetic tiles: AlphaEarth-like
files of 64 x 64 tiles of 256 px at 10 m in one UTM zone, each tile with its native footprint
(the 17-point ring ingest writes), a lon/lat footprint and a random unit vector. Then, in the
same run, for each database:

- ``geosearch``: ``maps.tile_similarity`` + ``maps.write_tile_map`` (score every vector of the
  FAISS index's float32 copy, read ids, paths and window centres from SQLite, place tiles by
  window arithmetic, write the GeoTIFF and its .qml); the index is built (as ingest leaves it)
  before the clock starts;
- ``naive``: the obvious recipe: read every tile's native footprint and vector, parse the
  footprints, score, and burn the polygons into the raster with ``rasterio.features.rasterize``.

Each is timed in a fresh process (cold Python, warm page cache: the database was just read by the
other), with its peak RSS (VmHWM, reset by exec: getrusage's would include the parent's).

    .venv/bin/python bench/maps.py                        # 1M tiles, 64-d (embedding) and 1084-d
    .venv/bin/python bench/maps.py --tiles 100000 --dims 64
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TILE = 256
PIXEL = 10.0
TILES_PER_SIDE = 64  # per file: 16384 x 16384 px, like one Earth Engine AlphaEarth image
FILES_PER_ROW = 16
BATCH = 50_000


def build_store(db: Path, tiles: int, dim: int) -> None:
    """A geosearch database of ``tiles`` synthetic tiles with ``dim``-d vectors."""
    from pyproj import Transformer
    from shapely.geometry import box

    from geosearch.pixels import Window
    from geosearch.sources import window_ring
    from geosearch.store import Store, TileRecord

    to_lonlat = Transformer.from_crs(32633, 4326, always_xy=True)
    ring = window_ring(TILE, TILE)
    rng = np.random.default_rng(0)
    per_file = TILES_PER_SIDE * TILES_PER_SIDE
    with Store(db, create=True) as store:
        store.set_meta({"bench": {"tiles": tiles, "dim": dim}})
        for start in range(0, tiles, BATCH):
            numbers = np.arange(start, min(tiles, start + BATCH))
            files, within = numbers // per_file, numbers % per_file
            row, col = (within // TILES_PER_SIDE) * TILE, (within % TILES_PER_SIDE) * TILE
            origin_x = 200_000 + (files % FILES_PER_ROW) * TILES_PER_SIDE * TILE * PIXEL
            origin_y = 9_000_000 - (files // FILES_PER_ROW) * TILES_PER_SIDE * TILE * PIXEL
            x0, y0 = origin_x + col * PIXEL, origin_y - row * PIXEL
            lon, lat = to_lonlat.transform(x0 + TILE * PIXEL / 2, y0 - TILE * PIXEL / 2)
            vectors = rng.standard_normal((len(numbers), dim), dtype=np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            rows = []
            for i in range(len(numbers)):
                points = ", ".join(f"{x0[i] + px * PIXEL} {y0[i] - py * PIXEL}" for px, py in ring)
                window = Window(int(row[i]), int(col[i]), TILE, TILE)
                record = TileRecord(
                    None, f"/bench/file_{files[i]:05d}.tif", window, "EPSG:32633",
                    f"POLYGON (({points}))",
                    box(lon[i] - 0.01, lat[i] - 0.01, lon[i] + 0.01, lat[i] + 0.01), None, 0.0,
                )  # fmt: skip
                rows.append((record, vectors[i], vectors[i, :1]))
            store.write_batch(rows)


def run_geosearch(db: Path, out: Path) -> dict:
    from geosearch.maps import tile_similarity, write_tile_map
    from geosearch.store import Store

    with Store(db) as store:
        dim = store.meta("bench")["dim"]
        query = np.random.default_rng(1).standard_normal(dim).astype(np.float32)
        query /= np.linalg.norm(query)
        started = time.perf_counter()
        grid, values, placed = tile_similarity(store, query, TILE)
        written = write_tile_map(out, grid, values, placed)
        seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 2), "tiles": placed, "cells": written.cells,
            "grid": [grid.width, grid.height]}  # fmt: skip


def run_index(db: Path, _: Path) -> dict:
    """Build and save the database's index, as ingest leaves it (in its own process: a child
    process's peak RSS starts from its parent's)."""
    from geosearch.index import open_index
    from geosearch.store import Store

    started = time.perf_counter()
    with Store(db) as store:
        kind = open_index(store).kind
    return {"index": kind, "db": str(db), "seconds": round(time.perf_counter() - started, 1)}


def run_naive(db: Path, out: Path) -> dict:
    """Parse every footprint, score every vector, rasterize the polygons."""
    import sqlite3

    import rasterio
    import rasterio.features
    import shapely
    from rasterio.transform import from_origin

    connection = sqlite3.connect(db)
    dim = json.loads(connection.execute(
        "SELECT value FROM geosearch_meta WHERE key = 'bench'").fetchone()[0])["dim"]  # fmt: skip
    query = np.random.default_rng(1).standard_normal(dim).astype(np.float32)
    query /= np.linalg.norm(query)
    started = time.perf_counter()
    rows = connection.execute("SELECT footprint_native, vector FROM tiles").fetchall()
    shapes = shapely.from_wkt([row[0] for row in rows])
    scores = [float(np.frombuffer(row[1], dtype="<f4") @ query) for row in rows]
    minx, miny, maxx, maxy = shapely.total_bounds(shapes)
    size = TILE * PIXEL
    width, height = int(round((maxx - minx) / size)), int(round((maxy - miny) / size))
    transform = from_origin(minx, maxy, size, size)
    values = rasterio.features.rasterize(
        zip(shapes, scores, strict=True), (height, width), transform=transform, fill=-9999.0,
        dtype="float32",
    )  # fmt: skip
    with rasterio.open(out, "w", driver="GTiff", width=width, height=height, count=1,
                       dtype="float32", crs="EPSG:32633", transform=transform,
                       nodata=-9999.0) as dst:  # fmt: skip
        dst.write(values, 1)
    seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 2), "tiles": len(rows), "grid": [width, height]}


def measure(kind: str, db: Path, out: Path) -> dict:
    """Run one method in a fresh process; its result and peak RSS."""
    root = str(Path(__file__).resolve().parent.parent)
    code = (
        f"import json, re, sys; sys.path.insert(0, {root!r}); import bench.maps as m; "
        f"r = m.run_{kind}(m.Path({str(db)!r}), m.Path({str(out)!r})); "
        "hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1); "
        "r['peak_rss_mb'] = round(int(hwm) / 1024); print(json.dumps(r))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, default=1_000_000)
    parser.add_argument("--dims", default="64,1084", help="vector sizes: 64 = AlphaEarth")
    parser.add_argument("--work", type=Path, default=Path("/tmp/geosearch-bench-maps"))
    parser.add_argument("--skip-naive", action="store_true")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    machine = {"cpus": os.cpu_count(), "python": platform.python_version()}
    for dim in (int(d) for d in args.dims.split(",")):
        db = args.work / f"tiles{args.tiles}_dim{dim}.gpkg"
        if not db.exists():
            started = time.perf_counter()
            building = db.with_name("building-" + db.name)
            building.unlink(missing_ok=True)
            build_store(building, args.tiles, dim)
            building.rename(db)
            seconds = round(time.perf_counter() - started, 1)
            print(json.dumps({"built": str(db), "seconds": seconds}), flush=True)
        if not (db.parent / (db.name + ".faiss")).exists():  # as ingest leaves it
            print(json.dumps(measure("index", db, db)), flush=True)
        for kind in ("geosearch",) if args.skip_naive else ("geosearch", "naive"):
            result = measure(kind, db, args.work / f"map_{kind}_{dim}.tif")
            print(json.dumps({"method": kind, "tiles": args.tiles, "dim": dim, **result,
                              **machine}), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
