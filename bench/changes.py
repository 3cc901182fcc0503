"""``geosearch changes``: planted changes found, radiometric-only copies left alone, speed.

Scenes (written in ``--work``, ingested at 64 px tiles with the default settings):

- ``naip``: the NAIP quarter-quad of 2014-07-20 (before) and a copy of 2015-09-26 with 20
  planted patches (after), plus an unchanged copy of 2015 dated 2015-06-01 (a place with
  several tiles in the period: the one nearest its end must be taken);
- ``sentinel2``: the 12 bands of the Sentinel-2 granule (2020-02-19, before, plus an unchanged
  copy dated 2020-01-01) and a synthetic second date (2021-02-19: darkened 10 %, 1 % noise,
  shifted 1 px) with 20 planted patches.

A planted patch covers a quarter to a whole tile (side 32..64 px, placed at random inside a
full tile) with other land cover: of 12 places drawn at least 3 tiles away, the one whose
band means differ most from the ground it covers. Relevant = a planted place.

Reported per scene and method: precision of the planted places in the top K (K = 20 planted),
AP over all places, planted and other places flagged significant. Methods: ``mean-diff`` (the
baseline: per-band difference of the two tiles' mean values, each band over its scene's
spread), ``vectors`` (stored vectors only: ``changes.second_look: 0``), ``vectors+pixels``
(the default: the top pairs by vectors looked at on their pixels), ``pixels`` (every pair
looked at).

``radiometric-only``: the later date against a copy x 1.15, with noise (sigma 1 % of each
band's median), shifted by 1 px: the share of places flagged significant (must be ~0).

``--timing``: 1M and 10M pairs of synthetic 128-d float16 unit vectors (drawn from a pool,
like stored ones) scored, thresholded and ranked in chunks, each in a fresh process with its
peak RSS (VmHWM).

    .venv/bin/python bench/changes.py            # scenes + timing
    .venv/bin/python bench/changes.py --no-timing
    .venv/bin/python bench/changes.py --pixel-map 4096   # a two-year AlphaEarth-like pixel map
    .venv/bin/python bench/changes.py --pixel-map 8192 --baseline ../old-checkout  # and before
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.protocols.common import DATA, write_raster  # noqa: E402
from bench.protocols.satellite import S2_BANDS, SENTINEL2, band_noise, read_bands  # noqa: E402

TILE = 64
PLANTED = 20
NAIP = DATA / "naip"


def plant(image: np.ndarray, count: int, seed: int) -> tuple[np.ndarray, set[tuple[int, int]]]:
    """``image`` with ``count`` patches of other land cover pasted into distinct full tiles;
    the (row, col) pixel origins of the tiles planted."""
    rng = np.random.default_rng(seed)
    out = image.copy()
    rows, cols = image.shape[1] // TILE, image.shape[2] // TILE
    spread = image.reshape(image.shape[0], -1).std(axis=1) + 1e-9
    chosen = rng.choice(rows * cols, count, replace=False)
    planted = set()
    for cell in chosen.tolist():
        r, c = divmod(cell, cols)
        side = int(rng.integers(TILE // 2, TILE + 1))
        top = r * TILE + int(rng.integers(0, TILE - side + 1))
        left = c * TILE + int(rng.integers(0, TILE - side + 1))
        here = image[:, top : top + side, left : left + side].reshape(image.shape[0], -1)
        best, best_gap = None, -1.0
        for _ in range(12):
            dr = int(rng.integers(0, image.shape[1] - side))
            dc = int(rng.integers(0, image.shape[2] - side))
            if abs(dr - top) < 3 * TILE and abs(dc - left) < 3 * TILE:
                continue
            there = image[:, dr : dr + side, dc : dc + side].reshape(image.shape[0], -1)
            gap = float(np.abs((there.mean(1) - here.mean(1)) / spread).sum())
            if gap > best_gap:
                best, best_gap = (dr, dc), gap
        dr, dc = best
        out[:, top : top + side, left : left + side] = image[:, dr : dr + side, dc : dc + side]
        planted.add((r * TILE, c * TILE))
    return out, planted


def radiometric(image: np.ndarray, valid: np.ndarray, top: float) -> np.ndarray:
    """``image`` x 1.15 with noise (sigma 1 % of each band's median), moved 1 px right and down
    (a misregistration: same geotransform)."""
    copy = image.astype(np.float64) * 1.15 + band_noise(image, valid)
    moved = np.empty_like(copy)
    moved[:, 1:, 1:] = copy[:, :-1, :-1]
    moved[:, 0, :], moved[:, :, 0] = moved[:, 1, :], moved[:, :, 1]
    return np.clip(np.rint(moved), 1, top)


def naip_scene(folder: Path, seed: int) -> tuple[str, str, set]:
    """The NAIP scene's files; (from, to, planted tile origins)."""
    import rasterio

    with rasterio.open(NAIP / "m_4709963_se_14_1_20150926.tif") as src:
        later, profile, transform = src.read(), src.profile, src.transform
    planted_image, planted = plant(later, PLANTED, seed)
    (folder / "2014").mkdir(parents=True)
    (folder / "2014" / "m_4709963_se_14_1_20140720.tif").write_bytes(
        (NAIP / "m_4709963_se_14_1_20140720.tif").read_bytes()
    )
    write_raster(folder / "m_4709963_se_14_1_20150926.tif", profile, planted_image, transform)
    write_raster(folder / "m_4709963_se_14_1_20150601.tif", profile, later, transform)
    return "2014", "2015", planted


def sentinel2_scene(folder: Path, seed: int) -> tuple[str, str, set]:
    """The Sentinel-2 scene's files; (from, to, planted tile origins)."""
    stack, profile, transform = read_bands(SENTINEL2, S2_BANDS, ".tif", "B02")
    valid = np.ones(stack.shape[1:], dtype=bool)
    second = stack * 0.9 + band_noise(stack, valid)
    moved = np.empty_like(second)
    moved[:, 1:, 1:] = second[:, :-1, :-1]
    moved[:, 0, :], moved[:, :, 0] = moved[:, 1, :], moved[:, :, 1]
    planted_image, planted = plant(moved, PLANTED, seed)
    pixels = np.clip(np.rint(planted_image), 1, 65535).astype(np.uint16)
    write_raster(folder / "S2A_29RKH_20200219.tif", profile, stack, transform, S2_BANDS)
    write_raster(folder / "S2A_29RKH_20200101.tif", profile, stack, transform, S2_BANDS)
    write_raster(folder / "S2A_29RKH_20210219.tif", profile, pixels, transform, S2_BANDS)
    return "2020", "2021", planted


def radiometric_scene(folder: Path, name: str) -> tuple[str, str, set]:
    """A later date and its radiometric-only copy a year on; (from, to, nothing planted)."""
    if name == "naip":
        import rasterio

        with rasterio.open(NAIP / "m_4709963_se_14_1_20150926.tif") as src:
            image, profile, transform = src.read(), src.profile, src.transform
        copy = radiometric(image, image.any(axis=0), 255).astype(np.uint8)
        write_raster(folder / "m_4709963_se_14_1_20150926.tif", profile, image, transform)
        write_raster(folder / "m_4709963_se_14_1_20160926.tif", profile, copy, transform)
        return "2015", "2016", set()
    stack, profile, transform = read_bands(SENTINEL2, S2_BANDS, ".tif", "B02")
    copy = radiometric(stack, np.ones(stack.shape[1:], bool), 65535).astype(np.uint16)
    write_raster(folder / "S2A_29RKH_20200219.tif", profile, stack, transform, S2_BANDS)
    write_raster(folder / "S2A_29RKH_20210219.tif", profile, copy, transform, S2_BANDS)
    return "2020", "2021", set()


def mean_difference(pairs: list) -> np.ndarray:
    """The baseline: per-band difference of the two tiles' means, each band over the spread
    of the before tiles' means, summed (L1)."""
    import rasterio

    means = {}
    for side in ("before", "after"):
        rows = []
        for pair in pairs:
            tile = getattr(pair, side)
            with rasterio.open(tile.path) as src:
                data = src.read(window=tile.window.as_rasterio()).astype(np.float64)
            rows.append(data.reshape(data.shape[0], -1).mean(axis=1))
        means[side] = np.array(rows)
    spread = means["before"].std(axis=0) + 1e-9
    return np.abs((means["after"] - means["before"]) / spread).sum(axis=1)


def average_precision(relevant: np.ndarray) -> float:
    """AP of a ranking (True = relevant, in rank order)."""
    hits = np.cumsum(relevant)
    total = int(relevant.sum())
    if not total:
        return 0.0
    return float(np.sum((hits / np.arange(1, len(relevant) + 1))[relevant]) / total)


def measure(name: str, folder: Path, scene: tuple[str, str, set]) -> None:
    """Ingest ``folder`` and print a JSON line per method."""
    import geosearch
    from geosearch.config import Settings

    date_from, date_to, planted = scene
    db = folder / "db.gpkg"
    start = time.perf_counter()
    geosearch.ingest([folder], db, Settings(tile_size=TILE))
    ingest_seconds = time.perf_counter() - start
    methods = {"vectors": 0, "vectors+pixels": None, "pixels": 100_000}
    baseline_done = False
    for method, looks in methods.items():
        overrides = {} if looks is None else {"changes.second_look": looks}
        settings = Settings(tile_size=TILE).with_overrides(overrides)
        start = time.perf_counter()
        result = geosearch.changes(db, date_from, date_to, top=100_000, settings=settings)
        seconds = time.perf_counter() - start

        def is_planted(pair: object) -> bool:
            window = pair.after.window
            return (window.row, window.col) in planted

        rows = [(method, [is_planted(p.pair) for p in result.places],
                 [p.significant for p in result.places], seconds)]  # fmt: skip
        if not baseline_done:
            start = time.perf_counter()
            scores = mean_difference(result.all_pairs)
            order = np.argsort(-scores, kind="stable")
            flags = [is_planted(result.all_pairs[i]) for i in order.tolist()]
            rows.append(("mean-diff", flags, [False] * len(flags), time.perf_counter() - start))
            baseline_done = True
        for label, relevant, significant, took in rows:
            relevant = np.array(relevant, dtype=bool)
            significant = np.array(significant, dtype=bool)
            k = max(len(planted), PLANTED)
            line = {
                "bench": "changes", "scene": name, "method": label, "places": len(relevant),
                "planted": len(planted), f"precision_top{k}": float(relevant[:k].mean()),
                "ap": round(average_precision(relevant), 4) if planted else None,
                "flagged_planted": int((significant & relevant).sum()),
                "flagged_other": int((significant & ~relevant).sum()),
                "flagged_share": round(float(significant.mean()), 4),
                "thresholds": result.to_dict()["thresholds"] if label != "mean-diff" else None,
                "seconds": round(took, 2), "ingest_seconds": round(ingest_seconds, 1),
            }  # fmt: skip
            print(json.dumps(line), flush=True)


def timing(pairs: int, dim: int = 128, chunk: int = 262_144) -> dict:
    """Score, threshold and rank ``pairs`` synthetic pairs in chunks; seconds and peak RSS."""
    from geosearch.changes import score_chunks, spread_threshold, top_order

    rng = np.random.default_rng(0)
    pool = rng.standard_normal((65_536, dim)).astype(np.float32)
    pool = (pool / np.linalg.norm(pool, axis=1, keepdims=True)).astype(np.float16)

    def chunks():
        for start in range(0, pairs, chunk):
            size = min(chunk, pairs - start)
            yield pool[rng.integers(0, len(pool), size)], pool[rng.integers(0, len(pool), size)]

    start = time.perf_counter()
    scores = score_chunks(chunks())
    threshold = spread_threshold(scores, 3.0)
    top = top_order(scores, 20)
    seconds = time.perf_counter() - start
    status = Path("/proc/self/status").read_text()
    peak = next(line for line in status.splitlines() if line.startswith("VmHWM"))
    return {
        "bench": "changes", "timing": "pairs", "pairs": pairs, "dim": dim,
        "seconds": round(seconds, 2), "peak_rss_mb": round(int(peak.split()[1]) / 1024),
        "significant": int((scores > threshold).sum()), "top1": int(top[0]),
    }  # fmt: skip


# Times one pixel change map in a fresh process, with the checkout under test on PYTHONPATH
# (-P: not this folder), over the rasters and database that ``pixel_map_rasters`` made.
_TIME_PIXEL_MAP = """
import json, os, sys, time
from pathlib import Path
import rasterio, rasterio.warp
from shapely.geometry import box
import geosearch
from geosearch.catalog import open_database
from geosearch.config import Settings
from geosearch.maps import write_pixel_change_map

folder = Path(sys.argv[1])
paths = [folder / "aef_2019.tif", folder / "aef_2020.tif"]
with open_database(folder / "aef.gpkg", Settings(tile_size=256)) as catalog:
    with rasterio.open(paths[0]) as src:
        area = box(*rasterio.warp.transform_bounds(src.crs, "EPSG:4326", *src.bounds))
    load = os.getloadavg()[0]
    start = time.perf_counter()
    written = write_pixel_change_map(
        catalog, [str(paths[0])], [str(paths[1])], area, folder / "change.tif", 512, 2
    )
    seconds = time.perf_counter() - start
status = Path("/proc/self/status").read_text()
peak = next(line for line in status.splitlines() if line.startswith("VmHWM"))
print(json.dumps({
    "code": str(Path(geosearch.__file__).parent.parent), "seconds": round(seconds, 2),
    "cells": written.cells, "peak_rss_mb": round(int(peak.split()[1]) / 1024),
    "load_before": round(load, 1), "load_after": round(os.getloadavg()[0], 1),
}))
"""


def pixel_map_timing(side: int, work: Path, baseline: Path | None) -> list[dict]:
    """An AlphaEarth-like pair of ``side`` x ``side`` rasters (64 int8 bands, two years, a
    block changed) ingested at 256 px tiles, then ``write_pixel_change_map`` over the whole,
    in a fresh process for this checkout and for ``baseline`` (an earlier checkout) on the
    same files: seconds and the map process's peak RSS each."""
    folder = pixel_map_rasters(side, work)
    figures = []
    for code in [ROOT, *([baseline] if baseline else [])]:
        done = subprocess.run(
            [sys.executable, "-P", "-c", _TIME_PIXEL_MAP, str(folder)],
            env={**os.environ, "PYTHONPATH": str(code)}, capture_output=True, text=True,
            check=True,
        )  # fmt: skip
        figures.append({"bench": "changes", "timing": "pixel map", "side": side, "bands": 64,
                        **json.loads(done.stdout.splitlines()[-1])})  # fmt: skip
    return figures


def pixel_map_rasters(side: int, work: Path) -> Path:
    """The AlphaEarth-like pair and its database (256 px tiles) in ``work/aef``: random
    values, the later year the earlier plus a jitter of up to 4 steps (every pixel changes a
    little: a map that compresses as a real one, not a field of zeros), its top-left quarter
    negated."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    import geosearch
    from geosearch.config import Settings

    rng = np.random.default_rng(0)
    folder = work / "aef"
    folder.mkdir()
    options = {
        "driver": "GTiff", "width": side, "height": side, "count": 64, "dtype": "int8",
        "crs": "EPSG:32633", "transform": from_origin(500000, 5200000, 10, 10), "nodata": -128,
        "tiled": True, "blockxsize": 512, "blockysize": 512, "interleave": "pixel",
    }  # fmt: skip
    paths = [folder / "aef_2019.tif", folder / "aef_2020.tif"]
    quarter = side // 4
    with (
        rasterio.open(paths[0], "w", **options) as first,
        rasterio.open(paths[1], "w", **options) as second,
    ):  # block by block: a band at a time rewrites every pixel-interleaved block
        for dst in (first, second):
            dst.descriptions = tuple(f"A{band:02d}" for band in range(64))
        for top in range(0, side, 512):
            for left in range(0, side, 512):
                height, width = min(512, side - top), min(512, side - left)
                values = rng.integers(-127, 128, (64, height, width), dtype=np.int8)
                first.write(values, window=Window(left, top, width, height))
                noise = rng.integers(-4, 5, values.shape, dtype=np.int8)  # a year's jitter
                values = np.clip(values.astype(np.int16) + noise, -127, 127).astype(np.int8)
                rows = slice(0, max(0, min(height, quarter - top)))
                cols = slice(0, max(0, min(width, quarter - left)))
                values[:, rows, cols] = -values[:, rows, cols]  # the changed quarter
                second.write(values, window=Window(left, top, width, height))
    geosearch.ingest(paths, folder / "aef.gpkg", Settings(tile_size=256))
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None, help="Folder for scenes (temporary).")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-timing", action="store_true")
    parser.add_argument("--timing-only", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--only", choices=["naip", "sentinel2", "radiometric"], default=None)
    parser.add_argument(
        "--pixel-map",
        type=int,
        default=None,
        metavar="SIDE",
        help="Only time a SIDE x SIDE two-year AlphaEarth-like pixel map.",
    )
    parser.add_argument(
        "--baseline", type=Path, default=None, help="--pixel-map: also time this checkout."
    )
    args = parser.parse_args()
    if args.pixel_map:
        with tempfile.TemporaryDirectory(dir=args.work) as work:
            for figures in pixel_map_timing(args.pixel_map, Path(work), args.baseline):
                print(json.dumps(figures), flush=True)
        return
    if args.timing_only:
        print(json.dumps(timing(args.timing_only)), flush=True)
        return
    with tempfile.TemporaryDirectory(dir=args.work) as work:
        root = Path(work)
        scenes = {
            "naip": lambda f: naip_scene(f, args.seed),
            "sentinel2": lambda f: sentinel2_scene(f, args.seed),
            "naip radiometric-only": lambda f: radiometric_scene(f, "naip"),
            "sentinel2 radiometric-only": lambda f: radiometric_scene(f, "sentinel2"),
        }
        for name, make in scenes.items():
            if args.only and not name.startswith(args.only) and args.only not in name:
                continue
            folder = root / name.replace(" ", "_")
            folder.mkdir()
            measure(name, folder, make(folder))
    if not args.no_timing and not args.only:
        for pairs in (1_000_000, 10_000_000):
            subprocess.run([sys.executable, __file__, "--timing-only", str(pairs)], check=True)


if __name__ == "__main__":
    main()
