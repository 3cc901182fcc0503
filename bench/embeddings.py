"""Embedding rasters: ingest and per-pixel maps of one AlphaEarth-sized COG, and the tile summary's
retrieval quality. One JSON line per measurement.

- ``ingest``: ``geosearch ingest`` of one 8192 x 8192, 64-band int8 AlphaEarth-shaped COG (DEFLATE,
  256-px blocks, internal overviews, NoData -128, bands A00..A63) at tile 256 (1,024 tiles),
  1 and 2 workers, in a fresh process each; baselines in the same run: the bare loop (read each
  256 px window, de-quantise, average: no database, no pipeline) at full resolution and reading
  the 1/16 overview instead (what reading overviews would save).
- ``map_pixels``: ``maps.write_pixel_map`` over the whole COG (67M pixels), by window size and
  threads, with peak RSS (bounded by the window, not the raster); baseline: the same windows
  de-quantised by arithmetic instead of the 256-entry look-up table.
- ``summary``: top-5 precision of planted classes (``tests/conftest.planted_embeddings``: the
  test data, and larger draws) for the tile summary shipped (the unit mean of the pixels'
  vectors) against a 2 x 2 grid of means (mean + 4 quadrant means, each unit length), also on
  a set whose classes differ only in layout (same covers, other arrangement).

The COG is written once into ``--work`` (about 8 minutes, 4 GB: the values carry noise, so it
barely compresses: a pessimistic read).

    .venv/bin/python bench/embeddings.py                  # everything, ~15 min the first time
    .venv/bin/python bench/embeddings.py --only summary   # quality only, ~1 min
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SIDE = 8192
TILE = 256


def write_cog(path: Path, side: int) -> None:
    """An AlphaEarth-shaped COG: 8 planted classes in 256-px blocks, int8 values with noise."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    from tests.conftest import alphaearth_quantize

    rng = np.random.default_rng(0)
    classes = rng.standard_normal((8, 64)).astype(np.float32)
    classes /= np.linalg.norm(classes, axis=1, keepdims=True)
    quantised = alphaearth_quantize(classes).astype(np.int16)
    profile = {
        "driver": "COG", "width": side, "height": side, "count": 64, "dtype": "int8",
        "crs": "EPSG:32633", "transform": from_origin(500000, 5200000, 10, 10), "nodata": -128,
        "compress": "deflate", "blocksize": 256, "overview_resampling": "average",
    }  # fmt: skip
    step = 1024
    with rasterio.open(path, "w", **profile) as dst:
        for row in range(0, side, step):
            for col in range(0, side, step):
                rows = (np.arange(step)[:, None] + row) // TILE
                cols = (np.arange(step)[None, :] + col) // TILE
                block = quantised[(rows * 7 + cols * 3) % 8].transpose(2, 0, 1)
                block = block + rng.integers(-4, 5, block.shape, dtype=np.int16)
                if row == 0 and col == 0:
                    block[:, :300, :300] = -128  # a NoData corner
                dst.write(
                    np.clip(block, -128, 127).astype(np.int8), window=Window(col, row, step, step)
                )
        dst.descriptions = tuple(f"A{band:02d}" for band in range(64))


def in_fresh_process(code: str) -> dict:
    """Run ``code`` (which sets ``result``, a dict) in a new interpreter; add its peak RSS (MB:
    VmHWM, which exec resets, unlike getrusage's, inherited from the parent). Worker processes
    (forkserver) are not counted."""
    wrapped = (
        f"import json, re, sys; sys.path.insert(0, {str(ROOT)!r})\n{code}\n"
        "status = open('/proc/self/status').read()\n"
        "hwm = int(re.search(r'VmHWM:\\s+(\\d+)', status).group(1))\n"
        "result['peak_rss_mb'] = round(hwm / 1024)\n"
        "print(json.dumps(result))"
    )
    done = subprocess.run([sys.executable, "-c", wrapped], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(done.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_ingest(cog: Path, work: Path) -> None:
    for workers in (1, 2):
        db = work / f"ingest_w{workers}.gpkg"
        for stale in work.glob(db.name + "*"):
            stale.unlink()
        code = (
            "import time, geosearch\nfrom geosearch.config import Settings\n"
            "started = time.perf_counter()\n"
            f"report = geosearch.ingest([{str(cog)!r}], {str(db)!r}, "
            f"Settings(tile_size={TILE}, workers={workers}))\n"
            "seconds = time.perf_counter() - started\n"
            "result = {'seconds': round(seconds, 1), 'tiles': report.tiles_added, "
            "'tiles_per_s': round(report.tiles_added / seconds, 1)}"
        )
        emit({"bench": "ingest", "method": f"geosearch, {workers} worker(s)", "workers": workers,
              **in_fresh_process(code)})  # fmt: skip
    for method, shrink in (("bare loop, full resolution", 1), ("bare loop, 1/16 overview", 16)):
        code = (
            "import time, numpy as np, rasterio\nfrom rasterio.windows import Window\n"
            "from geosearch.embeddings import Dequantization\n"
            "d = Dequantization('alphaearth'); started = time.perf_counter(); tiles = 0\n"
            f"with rasterio.open({str(cog)!r}) as ds:\n"
            f"    for row in range(0, ds.height, {TILE}):\n"
            f"        for col in range(0, ds.width, {TILE}):\n"
            f"            shape = (64, {TILE // shrink}, {TILE // shrink})\n"
            f"            raw = ds.read(window=Window(col, row, {TILE}, {TILE}), out_shape=shape)\n"
            "            ok = (raw != -128).all(axis=0)\n"
            "            if ok.any():\n"
            "                d.apply(raw[:, ok]).mean(axis=1); tiles += 1\n"
            "seconds = time.perf_counter() - started\n"
            "result = {'seconds': round(seconds, 1), 'tiles': tiles, "
            "'tiles_per_s': round(tiles / seconds, 1)}"
        )
        emit({"bench": "ingest", "method": method, "workers": 1, **in_fresh_process(code)})


def bench_map_pixels(cog: Path, work: Path) -> None:
    db = work / "ingest_w2.gpkg"
    if not db.exists():
        from geosearch import ingest
        from geosearch.config import Settings

        ingest([cog], db, Settings(tile_size=TILE, workers=2))
    runs = [("geosearch", 512, 1), ("geosearch", 512, 2), ("geosearch", 256, 2),
            ("geosearch", 1024, 2), ("arithmetic de-quantisation", 512, 2)]  # fmt: skip
    for method, window, threads in runs:
        code = (
            "import time, numpy as np\nfrom pathlib import Path\nfrom shapely.geometry import box\n"
            "from geosearch import maps\nfrom geosearch.catalog import open_database\n"
            "from geosearch.embeddings import Dequantization\n"
            + ("Dequantization.table = lambda self, dtype: None\n" if method != "geosearch" else "")
            + f"catalog = open_database(Path({str(db)!r}))\n"
            "ids, vectors = catalog.store.vectors()\n"
            "query = vectors[len(vectors) // 2]\n"
            "area = box(10, 40, 20, 50)\n"
            "started = time.perf_counter()\n"
            f"done = maps.write_pixel_map(catalog, query, area, set(ids.tolist()), "
            f"Path({str(work / 'pixels.tif')!r}), {window}, {threads})\n"
            "seconds = time.perf_counter() - started\n"
            "result = {'seconds': round(seconds, 1), 'pixels': done.grid.width * done.grid.height, "
            "'with_value': done.cells}"
        )
        emit({"bench": "map_pixels", "method": method, "window": window, "threads": threads,
              **in_fresh_process(code)})  # fmt: skip


def grid_summary(pixels: np.ndarray, tile: int) -> np.ndarray:
    """The 2 x 2 alternative: unit mean + 4 unit quadrant means, concatenated, unit length."""
    half = tile // 2
    parts = [pixels.reshape(pixels.shape[0], -1).mean(axis=1)]
    for rows in (slice(0, half), slice(half, tile)):
        for cols in (slice(0, half), slice(half, tile)):
            parts.append(pixels[:, rows, cols].reshape(pixels.shape[0], -1).mean(axis=1))
    parts = [part / np.linalg.norm(part) for part in parts]
    vector = np.concatenate(parts)
    return vector / np.linalg.norm(vector)


def precision_at_5(vectors: np.ndarray, classes: np.ndarray) -> float:
    scores = vectors @ vectors.T
    np.fill_diagonal(scores, -np.inf)
    top = np.argsort(-scores, axis=1)[:, :5]
    return float((classes[top] == classes[:, None]).mean())


def bench_summary() -> None:
    from geosearch.embeddings import Dequantization
    from tests.conftest import (
        ALPHAEARTH_LABELS,
        ALPHAEARTH_TILE,
        alphaearth_quantize,
        alphaearth_values,
        planted_embeddings,
    )

    dequantise = Dequantization("alphaearth").apply
    datasets = [("test data (tests/conftest.alphaearth_values)", alphaearth_values(),
                 ALPHAEARTH_LABELS, ALPHAEARTH_TILE)]  # fmt: skip
    for seed in range(3):
        labels = np.random.default_rng(100 + seed).integers(0, 6, (16, 16))
        for noise in (0.35, 1.0):
            values = alphaearth_quantize(planted_embeddings(labels, 64, 64, seed, noise))
            datasets.append(
                (f"16x16 tiles, 6 classes, seed {seed}, noise {noise}", values, labels, 64)
            )
    # Layout classes: cover A on the left half of the tile and B on the right, or the mirror.
    rng = np.random.default_rng(7)
    covers = rng.standard_normal((2, 64)).astype(np.float32)
    labels = rng.integers(0, 2, (16, 16))
    rows, cols = np.arange(16 * 64)[:, None] // 64, np.arange(16 * 64)[None, :]
    cover = (labels[rows, cols // 64] == (cols % 64 < 32)).astype(int)  # (1024, 1024)
    pixels = covers[cover] + rng.standard_normal((*cover.shape, 64), dtype=np.float32) * 0.5
    pixels /= np.linalg.norm(pixels, axis=2, keepdims=True)
    layout = alphaearth_quantize(pixels.transpose(2, 0, 1))
    datasets.append(("layout classes (same covers, mirrored)", layout, labels, 64))
    for name, values, labels, tile in datasets:
        rows, cols = labels.shape
        mean, grid, classes = [], [], []
        for row in range(rows):
            for col in range(cols):
                raw = values[:, row * tile : (row + 1) * tile, col * tile : (col + 1) * tile]
                if (raw == -128).any():
                    continue
                pixels = dequantise(raw)
                average = pixels.reshape(64, -1).mean(axis=1)
                mean.append(average / np.linalg.norm(average))
                grid.append(grid_summary(pixels, tile))
                classes.append(labels[row, col])
        classes = np.asarray(classes)
        emit({"bench": "summary", "data": name, "tiles": len(classes),
              "p_at_5_mean": round(precision_at_5(np.vstack(mean), classes), 3),
              "p_at_5_grid2x2": round(precision_at_5(np.vstack(grid), classes), 3)})  # fmt: skip


def emit(record: dict) -> None:
    print(json.dumps(record | {"cpus": os.cpu_count()}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/geosearch-bench-embeddings"))
    parser.add_argument("--side", type=int, default=SIDE)
    parser.add_argument("--only", choices=("ingest", "map_pixels", "summary"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.only in (None, "summary"):
        bench_summary()
    if args.only == "summary":
        return
    cog = args.work / f"alphaearth_{args.side}.tiff"
    if not cog.exists():
        started = time.perf_counter()
        write_cog(cog.with_name("building.tiff"), args.side)
        cog.with_name("building.tiff").rename(cog)
        emit({"built": str(cog), "seconds": round(time.perf_counter() - started),
              "bytes": cog.stat().st_size})  # fmt: skip
    if args.only in (None, "ingest"):
        bench_ingest(cog, args.work)
    if args.only in (None, "map_pixels"):
        bench_map_pixels(cog, args.work)


if __name__ == "__main__":
    main()
