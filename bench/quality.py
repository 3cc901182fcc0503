"""Retrieval quality on real imagery with honest ground truth: one JSON line per measurement.

NAIP (``../shared/data/naip``): the same quarter-quad in five years, cut into one grid. A full
tile of one year should find the tile at the same grid position in the four other years
(4 relevant items per query). Candidates are the tiles of the other years (edge tiles
included); queries and relevant items are full tiles only (width == height == tile_size).
Measured per feature set (block weights) and tile size: top-1 and precision@4 from the stored
unit vectors (cosine = dot product), ms/query through the real search path (``resolve_query``
+ ``search_vectors``) for a sample of queries, and whether that path returns the same top 4.
Full runs repeat it with queries off the grid: each year shifted by a quarter tile (and at
128 px by 1/32 and 1/8) is ingested too; its tiles query the other years' unshifted tiles,
relevant = the 16 they overlap, top-1 target = the tile overlapping most in any other year.

Relevance feedback (simulated, residual ranking): the top 4 results are marked good/bad from
the ground truth, then the query is searched again through ``search_vectors`` with that
feedback and the marked tiles excluded; P@4 is scored on the new results and compared with the
query searched without feedback on the same residual collection.

Orientation (NAIP 128 px, same protocol): the query chip as it lies ("plain") or turned 90
degrees and mirrored ("turned"; the database as it lies), scored by four rules from the chip's
8 orientation vectors, every stored tile scored exactly: as it lies; any orientation (the
search's merge: max(as it lies + orientation bonus, best turn)); best turn (bonus 0); the
D4-mean query vector. For the default fusion, the thumbnail (layout) alone and (full runs, if
Keras imports) a random-weights EfficientNetB0 alone. ms/query through resolve_query +
search_vectors for chips written as new GeoTIFFs, and its ratio to the as-it-lies query.

Sentinel-2 (one date, so no other-year truth): the 12 spectral bands stacked on the 10 m grid;
copies shifted by a quarter tile (as is, with 1 % noise, darkened 10 %, both) are the queries;
the tiles of the original scene that overlap a query tile are relevant, the one overlapping
most is the top-1 target. Compares all 12 bands with RGB only for band statistics.

Off the grid (issue 13, full runs and ``--only offgrid``): query chips cut anywhere, each
written to a file and searched with ``geosearch.similar(db, [chip], top=4)`` exactly as a user
would (any second stage included). NAIP 128 px: each year held out in turn (2015 alone when
quick), the database is the other four; seeded chips of the held-out year on the grid, at a
random offset, covering 0.8/1.25/1.5 tiles resampled to 128 px (GeoTIFF with its true
footprint), turned (searched with any orientation), as an RGB PNG screenshot (also at a random
zoom), and "absent": cut east of a database of the west halves. Relevant = a tile covering
>= 25 % of the chip's ground. Sentinel-2 and Landsat 8 against a synthetic second acquisition
(a darkened, noisy copy). One line per dataset, protocol and feature configuration: top-1,
P@4, chance, ms of the call, refusals, and the location's IoU when the result has one.

    .venv/bin/python bench/quality.py --quick    # 128 px, each block alone + default (< 60 s)
    .venv/bin/python bench/quality.py            # 128 and 256 px, every config, off the grid
    .venv/bin/python bench/quality.py --only orientation  # that part alone (~2 min)
    .venv/bin/python bench/quality.py --only offgrid --quick  # off the grid, 2015 only (~1 min)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import tempfile
import time
import typing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from geosearch import GeosearchError, ingest  # noqa: E402
from geosearch.catalog import Catalog, open_database  # noqa: E402
from geosearch.config import CnnSettings, FeedbackSettings, SearchSettings, Settings  # noqa: E402
from geosearch.orientation import ALL_ORIENTATIONS, Orientation, turned  # noqa: E402
from geosearch.search import Feedback, resolve_query, search_vectors  # noqa: E402
from geosearch.sources import RawTile  # noqa: E402
from geosearch.store import Store, normalise_path  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
NAIP = DATA / "naip"
SENTINEL2 = DATA / "sentinel2" / "S2A_29RKH_20200219_L2A"
S2_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
S2_RGB = [4, 3, 2]  # B04, B03, B02 in S2_BANDS (1-based)
LANDSAT = DATA / "landsat8" / "LC08_L1TP_016037_20170813"
L8_BANDS = ("B1", "B2", "B3", "B4", "B5", "B6", "B7")
K = 4
TIMED_QUERIES = 30


@dataclass
class GroundTruth:
    """Every stored tile (ids, unit vectors, records) and, per query tile, what may be returned
    (candidates), what counts as a hit (relevant) and what counts as the right first result."""

    ids: np.ndarray
    vectors: np.ndarray
    tiles: list
    queries: list[int]  # row numbers in ids
    candidates: list[np.ndarray]  # per query: bool mask over rows
    relevant: list[set[int]]  # per query: rows
    best: list[set[int]]  # per query: rows that make a correct top-1

    def excluded_ids(self, query: int) -> frozenset[int]:
        """Tile ids a search for query ``query`` must leave out to see only its candidates."""
        return frozenset(self.ids[~self.candidates[query]].tolist())


# -- ground truth ---------------------------------------------------------------------------


def _stored(store: Store) -> tuple[np.ndarray, np.ndarray, list, int]:
    ids, vectors = store.vectors()
    tiles = store.tiles(ids.tolist())
    return ids, vectors, tiles, int(store.meta("settings")["tile_size"])


def naip_truth(store: Store) -> GroundTruth:
    """Same grid position in another year = relevant; candidates = every other-year tile."""
    ids, vectors, tiles, tile_size = _stored(store)
    years = np.array([t.acquired[:4] if t.acquired else t.path for t in tiles])
    places = np.array([f"{t.window.row},{t.window.col}" for t in tiles])
    full = np.array([t.window.width == t.window.height == tile_size for t in tiles])
    truth = GroundTruth(ids, vectors, tiles, [], [], [], [])
    for row in np.flatnonzero(full):
        candidates = years != years[row]
        relevant = set(np.flatnonzero(candidates & full & (places == places[row])).tolist())
        if relevant:
            truth.queries.append(int(row))
            truth.candidates.append(candidates)
            truth.relevant.append(relevant)
            truth.best.append(relevant)
    return truth


def _overlap(start: int, other: int, size: int) -> int:
    """Pixels shared by [start, start + size) and [other, other + size)."""
    return max(0, size - abs(start - other))


def shifted_truth(store: Store, copies: dict[Path, list[Path]], offset: int) -> GroundTruth:
    """Queries: full tiles of each copy (a file shifted by ``offset`` px right and down), whose
    candidates are the tiles of the unshifted files ``copies[copy]``. Relevant: the full
    candidate tiles the query overlaps; top-1 targets: in each candidate file, the tile it
    overlaps most. A query is kept only if it overlaps four full tiles in every candidate file.
    """
    ids, vectors, tiles, tile_size = _stored(store)
    paths = np.array([t.path for t in tiles])
    full = np.array([t.window.width == t.window.height == tile_size for t in tiles])
    grid = {(t.path, t.window.row, t.window.col): row for row, t in enumerate(tiles) if full[row]}
    truth = GroundTruth(ids, vectors, tiles, [], [], [], [])
    for copy, sources in copies.items():
        sources = [normalise_path(source) for source in sources]
        candidates = np.isin(paths, sources)
        for row in np.flatnonzero(full & (paths == normalise_path(copy))):
            top, left = tiles[row].window.row + offset, tiles[row].window.col + offset
            relevant, best = set(), set()
            for source in sources:
                overlaps = {}
                for grid_top in (top - top % tile_size, top - top % tile_size + tile_size):
                    for grid_left in (left - left % tile_size, left - left % tile_size + tile_size):
                        match = grid.get((source, grid_top, grid_left))
                        area = _overlap(top, grid_top, tile_size) * _overlap(
                            left, grid_left, tile_size
                        )
                        if match is not None and area > 0:
                            overlaps[match] = area
                if len(overlaps) < 4:
                    break
                relevant |= set(overlaps)
                best.add(max(overlaps, key=overlaps.get))
            else:
                truth.queries.append(int(row))
                truth.candidates.append(candidates)
                truth.relevant.append(relevant)
                truth.best.append(best)
    return truth


def naip_shifted(folder: Path, offset: int) -> dict[Path, list[Path]]:
    """Each NAIP year shifted by ``offset`` px right and down, written in ``folder`` once (same
    name + ``_shift``): copy -> the other years' files, its candidates."""
    folder.mkdir(exist_ok=True)
    originals = sorted(NAIP.glob("*.tif"))
    copies = {}
    for source in originals:
        copy = folder / f"{source.stem}_shift.tif"
        copies[copy] = [other for other in originals if other != source]
        if not copy.exists():
            write_window(source, copy, offset, offset)
    return copies


def write_window(source: Path, path: Path, row: int, col: int, width: int = 0) -> None:
    """The part of ``source`` from (row, col) to its bottom (and right edge, or ``width``
    columns) as a GeoTIFF of its own, georeferenced where it lies."""
    import rasterio
    from rasterio.windows import Window as RioWindow

    with rasterio.open(source) as src:
        window = RioWindow(col, row, width or src.width - col, src.height - row)
        pixels = src.read(window=window)
        write_raster(path, src.profile, pixels, src.window_transform(window), src.descriptions)


# -- measuring ------------------------------------------------------------------------------


def ranking_metrics(
    truth: GroundTruth, k: int = K, similarity: np.ndarray | None = None
) -> tuple[dict[str, Any], list[list[int]]]:
    """Top-1, P@k, their values for a random ranking (chance) over the truth's queries, and
    each query's top-k tile ids. ``similarity``: (queries, tiles) scores to rank by instead of
    the stored query vectors' cosines."""
    if similarity is None:
        similarity = truth.vectors[truth.queries] @ truth.vectors.T
    hits1, precision, chance, chance_p, top_ids = [], [], [], [], []
    for n, scores in enumerate(similarity):
        masked = np.where(truth.candidates[n], scores, -np.inf)
        order = np.argsort(-masked, kind="stable")[:k]
        hits1.append(int(order[0]) in truth.best[n])
        precision.append(len(set(order.tolist()) & truth.relevant[n]) / k)
        chance.append(len(truth.best[n]) / int(truth.candidates[n].sum()))
        chance_p.append(len(truth.relevant[n]) / int(truth.candidates[n].sum()))
        top_ids.append(truth.ids[order].tolist())
    metrics = {
        "top1": round(float(np.mean(hits1)), 4),
        f"p_at_{k}": round(float(np.mean(precision)), 4),
        "queries": len(truth.queries),
        "candidates_per_query": int(np.median([c.sum() for c in truth.candidates])),
        "chance_top1": round(float(np.mean(chance)), 4),
        f"chance_p_at_{k}": round(float(np.mean(chance_p)), 4),
    }
    return metrics, top_ids


def evaluate(db: Path | str, k: int = K) -> dict[str, Any]:
    """NAIP same place, other year: top-1 and P@k of the database's stored vectors."""
    with Store(Path(db)) as store:
        metrics, _ = ranking_metrics(naip_truth(store), k)
    return metrics


def _tile_positions(store: Store) -> dict[int, tuple[str, int]]:
    """Tile id -> (file, index among the file's indexed tiles): what ``--tile N`` names."""
    positions = {}
    for record in store.files():
        for n, tile in enumerate(store.tiles_of_file(record.path)):
            positions[tile.id] = (record.path, n)
    return positions


def timed_search(
    db: Path, truth: GroundTruth, expected: list[list[int]], k: int = K, sample: int = 30
) -> dict[str, Any]:
    """ms/query of resolve_query + search_vectors (stored vectors, index loaded by the search)
    for an even sample of queries, and the share whose top k equals the benchmark's."""
    catalog = open_database(db)
    try:
        positions = _tile_positions(catalog.store)
        picks = np.linspace(0, len(truth.queries) - 1, min(sample, len(truth.queries))).astype(int)
        picks = sorted(set(picks.tolist()))

        def search(n: int) -> list[int]:
            path, position = positions[int(truth.ids[truth.queries[n]])]
            query = resolve_query(catalog, Path(path), tile=position)
            query.also_exclude = truth.excluded_ids(n)
            return [m.tile.id for m in search_vectors(catalog, [query], k)[0].matches]

        search(picks[0])  # warm-up: imports, page cache
        times, agree = [], []
        for n in picks:
            started = time.perf_counter()
            found = search(n)
            times.append((time.perf_counter() - started) * 1000)
            agree.append(found == expected[n])
    finally:
        catalog.store.close()
    return {
        "ms_per_query": round(float(np.mean(times)), 2),
        "ms_p50": round(float(np.median(times)), 2),
        "timed_queries": len(picks),
        "search_agrees": round(float(np.mean(agree)), 3),
    }


def feedback_rounds(
    db: Path | str,
    feedback: FeedbackSettings,
    rounds: int = 2,
    k: int = K,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Simulated relevance feedback on NAIP (residual ranking), through ``search_vectors``.

    Round 0 is the plain search. In each round the user marks every shown result good
    (same place, other year) or bad; the next search uses all marks so far and excludes the
    marked tiles. Its P@k is compared with the plain query on the same residual collection
    (the marked tiles excluded too), over the queries with a relevant tile left to find.
    """
    catalog = open_database(Path(db))
    try:
        truth = naip_truth(catalog.store)
        positions = _tile_positions(catalog.store)
        picks = range(len(truth.queries))[:limit]
        initial = []
        per_round: list[list[tuple[float, float]]] = [[] for _ in range(rounds)]
        seconds: list[list[float]] = [[] for _ in range(rounds)]
        for n in picks:
            relevant = {int(truth.ids[row]) for row in truth.relevant[n]}
            path, position = positions[int(truth.ids[truth.queries[n]])]
            query = resolve_query(catalog, Path(path), tile=position)
            outside = truth.excluded_ids(n)
            query.also_exclude = outside
            shown = [m.tile.id for m in search_vectors(catalog, [query], k)[0].matches]
            initial.append(len(relevant & set(shown)) / k)
            good, bad = [], []
            for r in range(rounds):
                good += [i for i in shown if i in relevant]
                bad += [i for i in shown if i not in relevant]
                if not relevant - set(good):
                    break  # nothing left to find: this query leaves the residual collection
                query.also_exclude = outside | frozenset(good + bad)
                marks = Feedback(good=tuple(good), bad=tuple(bad))
                started = time.perf_counter()
                found = search_vectors(catalog, [query], k, None, marks, feedback)[0]
                seconds[r].append(time.perf_counter() - started)
                shown = [m.tile.id for m in found.matches]
                plain = [m.tile.id for m in search_vectors(catalog, [query], k)[0].matches]
                per_round[r].append(
                    (len(relevant & set(shown)) / k, len(relevant & set(plain)) / k)
                )
    finally:
        catalog.store.close()
    lines = [{"rounds": 0, f"p_at_{k}": round(float(np.mean(initial)), 4), "queries": len(initial)}]
    for r, pairs in enumerate(per_round, start=1):
        if not pairs:  # every query found all its relevant tiles before this round
            lines.append({"rounds": r, "queries": 0})
            continue
        with_feedback, plain = (np.array(values) for values in zip(*pairs, strict=True))
        lines.append(
            {
                "rounds": r,
                f"p_at_{k}": round(float(with_feedback.mean()), 4),
                f"baseline_p_at_{k}": round(float(plain.mean()), 4),
                "gain": round(float((with_feedback - plain).mean()), 4),
                "queries": len(pairs),
                "worse": int((with_feedback < plain).sum()),
                "better": int((with_feedback > plain).sum()),
                "ms_per_search": round(float(np.mean(seconds[r - 1])) * 1000, 2),
            }
        )
    return lines


# -- datasets -------------------------------------------------------------------------------


def ingest_into(db: Path, sources: list[Path], overrides: dict[str, Any]) -> dict[str, Any]:
    """Ingest through the public API; returns tiles and seconds."""
    settings = Settings().with_overrides(overrides)
    started = time.perf_counter()
    report = ingest(sources, db, settings)
    if report.skipped:
        raise RuntimeError(f"ingest skipped files: {report.skipped}")
    return {"tiles": report.tiles_added, "ingest_s": round(time.perf_counter() - started, 2)}


def read_bands(
    folder: Path, names: Sequence[str], suffix: str, grid: str
) -> tuple[np.ndarray, dict[str, Any], Any]:
    """One file per band (``folder/NAME{suffix}``) stacked on the grid of band ``grid``
    (bilinear): (bands, rows, cols) array, a GeoTIFF profile for the stack, its transform."""
    import rasterio
    from rasterio.enums import Resampling

    with rasterio.open(folder / f"{grid}{suffix}") as reference:
        profile = reference.profile | {"count": len(names), "driver": "GTiff", "tiled": False}
        shape = (reference.height, reference.width)
        transform = reference.transform
    stack = np.empty((len(names), *shape), dtype=profile["dtype"])
    for n, band in enumerate(names):
        with rasterio.open(folder / f"{band}{suffix}") as src:
            stack[n] = src.read(1, out_shape=shape, resampling=Resampling.bilinear)
    return stack, profile, transform


def band_noise(data: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Seeded Gaussian noise with sigma 1 % of each band's median over the valid pixels."""
    medians = np.array([np.median(band[valid]) for band in data])[:, None, None]
    return np.random.default_rng(0).normal(0, 1, data.shape) * medians * 0.01


def sentinel2_scenes(folder: Path, tile_size: int) -> tuple[Path, dict[str, Path], int]:
    """The 12 spectral bands stacked on the 10 m grid (bilinear), band descriptions B01..,
    and copies shifted by a quarter tile right and down: as they are, with noise (sigma 1 % of
    each band's median), darkened 10 %, and both (a crude second acquisition).
    Returns the original, the copies by protocol name, and the offset in pixels."""
    import rasterio

    stack, profile, transform = read_bands(SENTINEL2, S2_BANDS, ".tif", "B02")
    offset = tile_size // 4
    shifted = stack[:, offset:, offset:].astype(np.float64)
    noise = band_noise(shifted, np.ones(shifted.shape[1:], dtype=bool))
    moved = transform * rasterio.Affine.translation(offset, offset)
    scenes = {
        "original": (stack, transform),
        "shift": (shifted, moved),
        "shift+noise": (shifted + noise, moved),
        "shift+gain": (shifted * 0.9, moved),
        "shift+gain+noise": (shifted * 0.9 + noise, moved),
    }
    paths = {}
    for name, (data, where) in scenes.items():
        path = folder / f"S2A_29RKH_20200219_{name.replace('+', '_')}.tif"
        pixels = np.clip(np.rint(data), 1, 65535).astype(np.uint16)
        write_raster(path, profile, pixels, where, S2_BANDS)
        paths[name] = path
    original = paths.pop("original")
    return original, paths, offset


def landsat_scenes(folder: Path) -> tuple[Path, Path]:
    """Landsat 8 B1..B7 stacked into one GeoTIFF (band descriptions B1.., so B4,B3,B2 is the
    RGB; nodata 0, the scene's collar) and a copy darkened 10 % with noise (sigma 1 % of each
    band's median): a synthetic second acquisition on the same grid. (original, copy)"""
    stack, profile, transform = read_bands(LANDSAT, L8_BANDS, ".TIF", "B1")
    profile["nodata"] = 0
    valid = stack.any(axis=0)
    darkened = stack * 0.9 + band_noise(stack, valid)
    darkened = np.where(valid, np.clip(np.rint(darkened), 1, 65535), 0).astype(np.uint16)
    paths = (folder / "LC08_016037_20170813.tif", folder / "LC08_016037_20170813_dark_noise.tif")
    for path, pixels in zip(paths, (stack, darkened), strict=True):
        write_raster(path, profile, pixels, transform, L8_BANDS)
    return paths


# -- orientation ----------------------------------------------------------------------------

QUERY_TURN = Orientation(1, True)  # the "turned" protocol: 90 degrees and mirrored
ORIENTATION_RULES = ("as_is", "any_orientation", "best_turn", "d4_mean_query")
ORIENTATION_TIMED = 20


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def query_chips(catalog: Catalog, truth: GroundTruth) -> list[RawTile]:
    """The pixels of every query tile of ``truth``, read again from its file (one read per
    file), in query order."""
    rows_of: dict[str, list[int]] = {}
    for n, row in enumerate(truth.queries):
        rows_of.setdefault(truth.tiles[row].path, []).append(n)
    chips: list[RawTile | None] = [None] * len(truth.queries)
    for path, numbers in rows_of.items():
        windows = [truth.tiles[truth.queries[n]].window for n in numbers]
        _, tiles, skipped = catalog.read(path, windows)
        if skipped:
            raise RuntimeError(f"{path}: {skipped} query tiles too empty on a second read")
        for n, tile in zip(numbers, tiles, strict=True):
            chips[n] = tile
    return typing.cast(list[RawTile], chips)


def rule_scores(turns: np.ndarray, stored: np.ndarray, bonus: float) -> dict[str, np.ndarray]:
    """(queries, tiles) scores per rule from the queries' 8 orientation vectors (8, q, dim),
    every stored tile scored exactly (no FAISS shortlist): as it lies; the search's merge
    (max(as it lies + bonus, best turn)); the best turn (bonus 0); the D4-mean query."""
    turns = _unit_rows(turns)
    per_turn = np.einsum("oqd,td->oqt", turns, stored)
    best = per_turn.max(axis=0)
    return {
        "as_is": per_turn[0],
        "any_orientation": np.maximum(per_turn[0] + bonus, best),
        "best_turn": best,
        "d4_mean_query": _unit_rows(turns.mean(axis=0)) @ stored.T,
    }


def write_raster(
    path: Path,
    profile: dict[str, Any],
    pixels: np.ndarray,
    transform: Any,
    names: Sequence[str | None] = (),
) -> None:
    """(bands, rows, cols) pixels as an untiled GeoTIFF with ``profile``'s dtype, CRS and
    nodata, at ``transform``, band descriptions ``names`` (as a crop by GDAL keeps them)."""
    import rasterio

    profile = profile | {
        "driver": "GTiff",
        "count": pixels.shape[0],
        "height": pixels.shape[1],
        "width": pixels.shape[2],
        "transform": transform,
        "photometric": "MINISBLACK",  # plain bands, no alpha, as the sources
        "tiled": False,
    }
    profile.pop("blockxsize", None)
    profile.pop("blockysize", None)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(pixels.astype(profile["dtype"]))
        for n, name in enumerate(names, start=1):
            if name:
                dst.set_band_description(n, name)


def timed_orientation_queries(
    catalog: Catalog,
    truth: GroundTruth,
    folder: Path,
    turn: Orientation | None,
    expected: dict[str, list[list[int]]],
    bonus: float,
    sample: int,
) -> dict[str, dict[str, Any]]:
    """Per rule: ms/query through the real path for new files (a query chip, turned by ``turn``
    if given, written as a GeoTIFF): ``resolve_query`` + ``search_vectors`` for top K over the
    whole database (as a user would), the same restricted to the benchmark's candidates, and
    the share of restricted searches whose top K equals the exact scoring's (``expected``).
    d4_mean_query has no search option: it is timed as resolve_query(any_orientation) + a
    search with the mean vector."""
    import rasterio

    folder.mkdir(exist_ok=True)
    picks = np.linspace(0, len(truth.queries) - 1, min(sample, len(truth.queries))).astype(int)
    picks = sorted(set(picks.tolist()))
    files = {}
    for n in picks:
        record = truth.tiles[truth.queries[n]]
        window = record.window.as_rasterio()
        files[n] = folder / f"query_{n:03d}.tif"
        with rasterio.open(record.path) as src:
            data = src.read(window=window)
            if turn is not None:
                data = turn.apply(data)
            where = src.window_transform(window)  # the same footprint turned: square tiles
            write_raster(files[n], src.profile, data, where, src.descriptions)

    def search(n: int, rule: str, restricted: bool) -> list[int]:
        query = resolve_query(catalog, files[n], None, rule != "as_is")
        if rule == "d4_mean_query":
            query.vector = _unit_rows(query.turned.mean(axis=0))
            query.turned = None
        if restricted:  # the benchmark's candidates only (other years)
            query.also_exclude = truth.excluded_ids(n)
        rule_bonus = 0.0 if rule == "best_turn" else bonus
        found = search_vectors(catalog, [query], K, orientation_bonus=rule_bonus)[0]
        return [m.tile.id for m in found.matches]

    def timed(n: int, rule: str, restricted: bool) -> tuple[float, list[int]]:
        started = time.perf_counter()
        found = search(n, rule, restricted)
        return (time.perf_counter() - started) * 1000, found

    out = {}
    for rule in ORIENTATION_RULES:
        search(picks[0], rule, False)  # warm-up: models, page cache
        # As a user's query (nothing excluded), then restricted to the candidates, whose top K
        # must equal the exact scoring's. Restricting excludes ~1/5 of the tiles, so FAISS is
        # asked for more rows and the orientation merge rescores many more candidates.
        plain = [timed(n, rule, False)[0] for n in picks]
        restricted = [timed(n, rule, True) for n in picks]
        out[rule] = {
            "ms_per_query": round(float(np.mean(plain)), 2),
            "ms_p50": round(float(np.median(plain)), 2),
            "ms_per_query_restricted": round(float(np.mean([t for t, _ in restricted])), 2),
            "timed_queries": len(picks),
            "search_agrees": round(
                float(
                    np.mean(
                        [
                            found == expected[rule][n]
                            for n, (_, found) in zip(picks, restricted, strict=True)
                        ]
                    )
                ),
                3,
            ),
        }
    return out


def random_cnn_weights(folder: Path) -> Path:
    """EfficientNetB0 without ImageNet weights (seeded random init), saved for
    ``features.cnn.weights``: what the CNN block gives with no training at all."""
    import keras

    from geosearch.features.cnn import INPUT_SIZE

    path = folder / "efficientnetb0_random.weights.h5"
    if not path.exists():
        keras.utils.set_random_seed(0)
        network = keras.applications.EfficientNetB0(
            include_top=False, weights=None, pooling="avg", input_shape=(INPUT_SIZE, INPUT_SIZE, 3)
        )
        network.save_weights(str(path))
    return path


def orientation_feature_sets(work: Path, quick: bool) -> list[tuple[str, dict[str, Any] | str]]:
    """(label, overrides or why skipped): the default fusion; the thumbnail (pixel layout)
    alone; in full runs a CNN with random weights alone (if Keras imports)."""
    sets: list[tuple[str, dict[str, Any] | str]] = [
        (label_of(DEFAULT_WEIGHTS), weight_overrides(DEFAULT_WEIGHTS)),
        (
            f"thumbnail only: {label_of(weights_of(layout=1.0))}",
            weight_overrides(weights_of(layout=1.0)),
        ),
    ]
    if quick:
        return sets
    label = "cnn random weights: efficientnetb0 (weights=None), layout=0 band_stats=0"
    try:
        import keras  # noqa: F401
    except ImportError as exc:
        sets.append((label, f"keras does not import: {exc}"))
        return sets
    overrides = weight_overrides(weights_of(cnn=1.0)) | {
        "features.cnn.model": "efficientnetb0",
        "features.cnn.weights": str(random_cnn_weights(work)),
        "features.cnn.download": False,
    }
    sets.append((label, overrides))
    return sets


def run_orientation(work: Path, quick: bool) -> None:
    """NAIP 128 px, same place other year: the query chip as it lies ("plain") or turned by
    QUERY_TURN ("turned"; the database as it lies), scored by each orientation rule."""
    tile_size = 128
    bonus = Settings().search.orientation_bonus
    base = {"dataset": "naip", "tile_size": tile_size, "part": "orientation"}
    base |= {"query_turn": QUERY_TURN.name, "orientation_bonus": bonus}
    sample = 8 if quick else ORIENTATION_TIMED
    for label, overrides in orientation_feature_sets(work, quick):
        if isinstance(overrides, str):
            emit(base | {"features": label, "skipped": overrides})
            continue
        # run_naip names its databases by the weights' label: reuse one if it made it.
        weights_label = label.split(": ", 1)[-1]
        db = work / f"naip{tile_size}_{_slug(weights_label)}.gpkg"
        ingested: dict[str, Any] = {}
        try:
            if not db.exists():
                ingested = ingest_into(db, [NAIP], {"tile_size": tile_size} | overrides)
            catalog = open_database(db, Settings().with_overrides(overrides))
        except GeosearchError as exc:
            emit(base | {"features": label, "skipped": str(exc)})
            continue
        try:
            truth = naip_truth(catalog.store)
            chips = query_chips(catalog, truth)
            ratios = {}
            for protocol, turn in (("plain", None), ("turned", QUERY_TURN)):
                oriented = chips if turn is None else [turned(chip, turn) for chip in chips]
                turns = catalog.compute_orientations(oriented)[0]
                scores = rule_scores(turns, truth.vectors, bonus)
                measured, expected = {}, {}
                for rule, similarity in scores.items():
                    measured[rule], expected[rule] = ranking_metrics(truth, K, similarity)
                folder = work / f"orientation_{_slug(weights_label)}_{protocol}"
                timing = timed_orientation_queries(
                    catalog, truth, folder, turn, expected, bonus, sample
                )
                as_is_ms = timing["as_is"]["ms_per_query"]
                for rule in ORIENTATION_RULES:
                    ratio = round(timing[rule]["ms_per_query"] / as_is_ms, 2)
                    emit(
                        base
                        | {"features": label, "protocol": protocol, "rule": rule}
                        | measured[rule]
                        | timing[rule]
                        | {"time_vs_as_is": ratio}
                        | ingested
                    )
                ratios[protocol] = round(timing["any_orientation"]["ms_per_query"] / as_is_ms, 2)
            emit(
                base
                | {"features": label, "summary": "any_orientation ms / as_is ms (new files)"}
                | {"ratio": ratios, "target_max": 3.0, "meets_target": max(ratios.values()) <= 3}
            )
        finally:
            catalog.store.close()


# -- off the grid: queries cut anywhere ------------------------------------------------------

RELEVANT_COVER = 0.25  # a result is relevant when it covers this share of the chip's ground
MAX_CHIP_NODATA = 0.1  # a chip is cut only where less of it than this is nodata
NAIP_WEST = 467  # the "absent" database: columns 0..466 of each year (the west half)
OFFGRID_QUERIES = 40  # NAIP query chips per protocol and held-out year
OFFGRID_SMALL_QUERIES = 20  # Sentinel-2 and Landsat, per protocol
OFFGRID_QUICK_QUERIES = 12  # every dataset with --quick


@dataclass(frozen=True)
class ChipProtocol:
    """How a query chip is cut from a scene and handed to ``similar``."""

    name: str
    sides: tuple[float, float] = (1.0, 1.0)  # ground side in tiles, drawn uniformly in range
    on_grid: bool = False  # only whole cells of the database's grid
    turned: bool = False  # a random non-identity rotation/mirror
    screenshot: bool = False  # RGB as a PNG, no georeference
    absent: bool = False  # cut east of the west-half database: nothing is relevant
    search: tuple[tuple[str, Any], ...] = ()  # settings of the similar call


GRID = ChipProtocol("grid", on_grid=True)
OFFSET = ChipProtocol("offset")
SCALED = tuple(ChipProtocol(f"scale {s:g}", (s, s)) for s in (0.8, 1.25, 1.5))
TURNED = ChipProtocol("turned", turned=True, search=(("search.orientations", "any"),))
SCREENSHOT = ChipProtocol("screenshot", screenshot=True)
ZOOMED = ChipProtocol("screenshot zoomed", (0.75, 1.5), screenshot=True)
ABSENT = ChipProtocol("absent", absent=True)


@dataclass(frozen=True)
class SearchConfig:
    """A feature configuration: what its database is ingested with, what searches run with."""

    label: str
    ingest: dict[str, Any]
    search: dict[str, Any]


def offgrid_configs() -> list[SearchConfig]:
    """Default features and the CNN alone, the second stage (``search.locate``) off where the
    setting exists, and the default with it on. A new configuration is one entry here."""
    has_locate = "locate" in SearchSettings.model_fields
    off = {"search.locate": False} if has_locate else {}
    configs = [
        SearchConfig("default", {}, off),
        SearchConfig("cnn alone", weight_overrides(weights_of(cnn=1.0)), off),
    ]
    if has_locate:
        configs.append(SearchConfig("default + locate", {}, {"search.locate": True}))
        # these databases (<= 192 tiles) are too small to project by default: forced here
        projected = {"vectors.min_sample": 2}
        configs.append(
            SearchConfig("default + locate, vectors projected", projected, {"search.locate": True})
        )
    return configs


@dataclass(frozen=True)
class OffgridRound:
    """One database (``database`` files) and the scene its query chips are cut from."""

    held_out: str  # what the line aggregates over, e.g. the NAIP year
    name: str  # names its databases and chip folders
    scene: Path
    database: list[Path]
    protocols: tuple[ChipProtocol, ...]
    min_col: int = 0  # chips start at this column or right of it


@dataclass(frozen=True)
class OffgridSet:
    """A dataset of the off-grid part: tile size, query chips per protocol and round, the RGB
    bands a screenshot shows (1-based) and its rounds."""

    name: str
    tile_size: int
    queries: int
    rgb: tuple[int, int, int]
    rounds: list[OffgridRound]
    note: str = ""


@dataclass(frozen=True)
class Chip:
    """A query file as a user would have it and the ground it truly covers (scene CRS and
    lon/lat)."""

    path: Path
    footprint: Any  # shapely Polygon
    lonlat: Any


@dataclass(frozen=True)
class Outcome:
    """What one query chip's ``similar`` call gave."""

    held_out: str
    hit1: bool
    precision: float
    relevant: int
    candidates: int
    ms: float | None = None  # None: refused
    score1: float | None = None
    refused: str | None = None
    located: bool = False
    iou: float | None = None  # of the location with the chip's ground (lon/lat)
    changed_by_locate: bool | None = None  # top K differs from the search without locate


def chip_positions(
    invalid: np.ndarray, side: int, step: int, min_col: int, count: int, rng: np.random.Generator
) -> list[tuple[int, int]]:
    """Up to ``count`` distinct (row, col), uniformly drawn, of side x side windows lying wholly
    inside the raster with < MAX_CHIP_NODATA nodata, at multiples of ``step``, from column
    ``min_col`` on. ``invalid``: summed-area table of the nodata mask, zero-padded."""
    inside = (invalid[side:, side:] - invalid[:-side, side:] - invalid[side:, :-side]) + invalid[
        :-side, :-side
    ]
    allowed = np.zeros(inside.shape, dtype=bool)
    allowed[::step, ::step] = True
    allowed[:, :min_col] = False
    rows, cols = np.nonzero(allowed & (inside < MAX_CHIP_NODATA * side * side))
    picks = rng.choice(len(rows), size=min(count, len(rows)), replace=False)
    return [(int(rows[p]), int(cols[p])) for p in picks]


def display_range(src: Any, rgb: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Per RGB band, the 2nd and 98th percentiles of the scene's valid pixels: the stretch a
    viewer would show (and screenshot) a non-8-bit scene with."""
    valid = src.dataset_mask() > 0
    values = [band[valid] for band in src.read(list(rgb))]
    low, high = np.array([np.percentile(v, (2, 98)) for v in values]).T
    return low[:, None, None], high[:, None, None]


def cut_chips(
    scene: Path,
    protocol: ChipProtocol,
    count: int,
    tile_size: int,
    rgb: tuple[int, int, int],
    folder: Path,
    rng: np.random.Generator,
    min_col: int = 0,
) -> list[Chip]:
    """Query chips of ``scene`` written in ``folder`` as ``protocol`` says: a GeoTIFF of
    tile_size px whose transform gives its true footprint (resampled: average when shrinking,
    bilinear when enlarging; turned), or an RGB PNG without georeference (Pillow, bilinear)."""
    import rasterio
    import shapely
    from PIL import Image
    from rasterio.enums import Resampling
    from rasterio.warp import transform_geom
    from rasterio.windows import Window as RioWindow
    from rasterio.windows import bounds

    folder.mkdir(parents=True, exist_ok=True)
    step = tile_size if protocol.on_grid else 1
    chips = []
    with rasterio.open(scene) as src:
        invalid = np.pad((src.dataset_mask() == 0).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
        low_side, high_side = protocol.sides
        if low_side == high_side:
            side = round(tile_size * low_side)
            picks = [(side, *at) for at in chip_positions(invalid, side, step, min_col, count, rng)]
        else:  # a side per chip, then a place for it
            picks = []
            for _ in range(count):
                side = round(tile_size * rng.uniform(low_side, high_side))
                picks += [(side, *chip_positions(invalid, side, step, min_col, 1, rng)[0])]
        stretch = None
        if protocol.screenshot and src.dtypes[0] != "uint8":
            stretch = display_range(src, rgb)
        for n, (side, row, col) in enumerate(picks):
            window = RioWindow(col, row, side, side)
            footprint = shapely.box(*bounds(window, src.transform))
            lonlat = shapely.geometry.shape(
                transform_geom(src.crs, "EPSG:4326", shapely.geometry.mapping(footprint))
            )
            if protocol.screenshot:
                pixels = src.read(list(rgb), window=window).astype(np.float64)
                if stretch is not None:
                    low, high = stretch
                    pixels = np.clip((pixels - low) / (high - low), 0, 1) * 255
                picture = Image.fromarray(np.moveaxis(np.rint(pixels), 0, -1).astype(np.uint8))
                if side != tile_size:
                    picture = picture.resize((tile_size, tile_size), Image.Resampling.BILINEAR)
                path = folder / f"chip_{n:03d}.png"
                picture.save(path)
            else:
                shrink = Resampling.average if side > tile_size else Resampling.bilinear
                pixels = src.read(
                    window=window, out_shape=(src.count, tile_size, tile_size), resampling=shrink
                )
                if protocol.turned:
                    turns = ALL_ORIENTATIONS[1:]
                    pixels = turns[int(rng.integers(len(turns)))].apply(pixels)
                where = src.window_transform(window) * rasterio.Affine.scale(side / tile_size)
                path = folder / f"chip_{n:03d}.tif"
                write_raster(path, src.profile, pixels, where, src.descriptions)
            chips.append(Chip(path, footprint, lonlat))
    return chips


def tile_footprints(db: Path) -> tuple[np.ndarray, np.ndarray]:
    """Every stored tile's id and footprint (shapely, from ``footprint_native``)."""
    import shapely

    with Store(db) as store:
        ids, _, tiles, _ = _stored(store)
    return ids, shapely.from_wkt([tile.footprint_native for tile in tiles])


def search_chips(
    db: Path,
    chips: list[Chip],
    settings: Settings,
    footprints: tuple[np.ndarray, np.ndarray],
    held_out: str,
    compare: Settings | None = None,
) -> list[Outcome]:
    """Each chip through ``geosearch.similar`` (top K, after one warm-up call), scored against
    the tiles covering >= RELEVANT_COVER of its ground; ``compare``: settings of a second,
    untimed search whose top K is compared (the second stage switched off)."""
    import shapely

    from geosearch import similar

    ids, shapes = footprints
    with contextlib.suppress(GeosearchError):  # a refusal is counted below, chip by chip
        similar(db, [chips[0].path], top=K, settings=settings)  # warm-up: model, page cache
    outcomes = []
    for chip in chips:
        cover = shapely.area(shapely.intersection(shapes, chip.footprint)) / chip.footprint.area
        relevant = set(ids[cover >= RELEVANT_COVER].tolist())
        given = {"held_out": held_out, "relevant": len(relevant), "candidates": len(ids)}
        started = time.perf_counter()
        try:
            result = similar(db, [chip.path], top=K, settings=settings)[0]
        except GeosearchError as exc:
            outcomes.append(Outcome(hit1=False, precision=0.0, refused=str(exc), **given))
            continue
        ms = (time.perf_counter() - started) * 1000
        found = [match.tile.id for match in result.matches]
        location = getattr(result, "location", None)
        where = getattr(location, "footprint", None)
        iou = None
        if where is not None:
            union = where.union(chip.lonlat).area
            iou = where.intersection(chip.lonlat).area / union if union else 0.0
        changed = None
        if compare is not None:
            plain = similar(db, [chip.path], top=K, settings=compare)[0]
            changed = [match.tile.id for match in plain.matches] != found
        outcomes.append(
            Outcome(
                hit1=bool(found) and found[0] in relevant,
                precision=len(relevant & set(found)) / K,
                ms=ms,
                score1=result.matches[0].score if result.matches else None,
                located=location is not None,
                iou=iou,
                changed_by_locate=changed,
                **given,
            )
        )
    return outcomes


def summarise(outcomes: list[Outcome], absent: bool) -> dict[str, Any]:
    """One line's figures over its queries (every held-out scene): top-1, P@K, chance (relevant
    / candidate tiles: a random ranking's expected top-1 and P@K alike), the best P@K possible
    (fewer than K relevant tiles caps it), ms of the similar call, refusals, and the location's
    share and IoU (for places in the database)."""
    times = [o.ms for o in outcomes if o.ms is not None]
    refused = [o.refused for o in outcomes if o.refused]
    chance = round(float(np.mean([o.relevant / o.candidates for o in outcomes])), 4)
    line: dict[str, Any] = {
        "top1": round(float(np.mean([o.hit1 for o in outcomes])), 4),
        f"p_at_{K}": round(float(np.mean([o.precision for o in outcomes])), 4),
        "queries": len(outcomes),
        "chance_top1": chance,
        f"chance_p_at_{K}": chance,
        f"p_at_{K}_ceiling": round(float(np.mean([min(o.relevant, K) / K for o in outcomes])), 4),
        "relevant_per_query": float(np.median([o.relevant for o in outcomes])),
        "candidates_per_query": int(np.median([o.candidates for o in outcomes])),
        "ms_p50": round(float(np.median(times)), 2) if times else None,
        "ms_mean": round(float(np.mean(times)), 2) if times else None,
        "score1_median": _median([o.score1 for o in outcomes if o.score1 is not None]),
        "refused": len(refused),
    }
    if refused:
        line["refused_message"] = refused[0]
    line["located_share"] = round(float(np.mean([o.located for o in outcomes])), 4)
    if absent:
        compared = [o.changed_by_locate for o in outcomes if o.changed_by_locate is not None]
        line["changed_by_locate"] = round(float(np.mean(compared)), 4) if compared else None
    else:
        ious = [o.iou for o in outcomes if o.iou is not None]
        line["iou_median"] = _median(ious)
        line["iou_ge_0.7"] = round(sum(iou >= 0.7 for iou in ious) / len(outcomes), 4)
    held_out = sorted({o.held_out for o in outcomes})
    if len(held_out) > 1:
        line["top1_by_held_out"] = {
            label: round(float(np.mean([o.hit1 for o in outcomes if o.held_out == label])), 4)
            for label in held_out
        }
    return line


def _median(values: list[float]) -> float | None:
    return round(float(np.median(values)), 4) if values else None


def _year(naip: Path) -> str:
    """The acquisition year in a NAIP file name (m_..._20150926.tif)."""
    return naip.stem.rsplit("_", 1)[1][:4]


def offgrid_sets(folder: Path, quick: bool) -> list[OffgridSet]:
    """NAIP with each year held out in turn (2015 alone when quick): the database is the other
    four years, and for "absent" their west halves, queried east of them; Sentinel-2 and
    Landsat 8 against a synthetic second acquisition."""
    years = sorted(NAIP.glob("*.tif"))
    west = {}
    for year in years:
        west[year] = folder / f"{year.stem}_west.tif"
        if not west[year].exists():
            write_window(year, west[year], 0, 0, NAIP_WEST)
    naip_rounds = []
    present = (GRID, OFFSET, *SCALED, TURNED, SCREENSHOT, ZOOMED)
    for scene in [y for y in years if _year(y) == "2015"] if quick else years:
        others = [year for year in years if year != scene]
        held_out = _year(scene)
        naip_rounds += [
            OffgridRound(held_out, held_out, scene, others, present),
            OffgridRound(
                held_out,
                f"{held_out}_west",
                scene,
                [west[year] for year in others],
                (ABSENT,),
                min_col=NAIP_WEST + 128 // 4,
            ),
        ]
    small = OFFGRID_QUICK_QUERIES if quick else OFFGRID_SMALL_QUERIES
    s2_folder = folder / "sentinel2"
    s2_folder.mkdir(exist_ok=True)
    s2_original, s2_copies, _ = sentinel2_scenes(s2_folder, 128)
    l8_original, l8_copy = landsat_scenes(folder)
    synthetic = "synthetic second acquisition (one date exists): queries are cut from a copy"
    return [
        OffgridSet(
            "naip",
            128,
            OFFGRID_QUICK_QUERIES if quick else OFFGRID_QUERIES,
            (1, 2, 3),
            naip_rounds,
        ),
        OffgridSet(
            "sentinel2",
            128,
            small,
            tuple(S2_RGB),
            [
                OffgridRound(
                    "shift+gain+noise",
                    "s2",
                    s2_copies["shift+gain+noise"],
                    [s2_original],
                    (OFFSET, SCALED[1]),
                )
            ],
            f"{synthetic} shifted 1/4 tile, darkened 10 %, 1 % noise; database: the original",
        ),
        OffgridSet(
            "landsat8",
            64,
            small,
            (4, 3, 2),
            [OffgridRound("dark+noise", "l8", l8_copy, [l8_original], (GRID, OFFSET, SCREENSHOT))],
            f"{synthetic} darkened 10 %, 1 % noise; database: the original",
        ),
    ]


def run_offgrid(work: Path, quick: bool) -> None:
    """Query chips cut anywhere (on the grid, off it, scaled, turned, as screenshots, or where
    the database has nothing) searched through ``geosearch.similar`` as a user would."""
    import zlib

    started = time.perf_counter()
    folder = work / "offgrid"
    folder.mkdir(exist_ok=True)
    configs = offgrid_configs()
    table: dict[str, dict[str, dict[str, list[float]]]] = {}
    ingest_s = 0.0
    for dataset in offgrid_sets(folder, quick):
        protocols = {p.name: p for r in dataset.rounds for p in r.protocols}
        outcomes: dict[tuple[str, str], list[Outcome]] = {}
        for round_ in dataset.rounds:
            chips = {}
            for protocol in round_.protocols:
                seed = zlib.crc32(f"{dataset.name} {protocol.name} {round_.held_out}".encode())
                chips[protocol.name] = cut_chips(
                    round_.scene,
                    protocol,
                    dataset.queries,
                    dataset.tile_size,
                    dataset.rgb,
                    folder / f"{dataset.name}_{round_.name}_{_slug(protocol.name)}",
                    np.random.default_rng(seed),
                    round_.min_col,
                )
            databases: dict[str, tuple[Path, tuple[np.ndarray, np.ndarray]]] = {}
            for config in configs:
                key = json.dumps(config.ingest, sort_keys=True)
                if key not in databases:
                    db = folder / f"{dataset.name}_{round_.name}_{_slug(config.label)}.gpkg"
                    overrides = {"tile_size": dataset.tile_size} | config.ingest
                    ingest_s += ingest_into(db, round_.database, overrides)["ingest_s"]
                    databases[key] = (db, tile_footprints(db))
                db, footprints = databases[key]
                for protocol in round_.protocols:
                    search = config.search | dict(protocol.search)
                    settings = Settings().with_overrides(search)
                    compare = None
                    if protocol.absent and search.get("search.locate"):
                        compare = settings.with_overrides({"search.locate": False})
                    outcomes.setdefault((protocol.name, config.label), []).extend(
                        search_chips(
                            db, chips[protocol.name], settings, footprints, round_.held_out, compare
                        )
                    )
        for name, protocol in protocols.items():
            for config in configs:
                line = summarise(outcomes[name, config.label], protocol.absent)
                emit(
                    {"part": "offgrid", "dataset": dataset.name, "protocol": name}
                    | {"features": config.label, "settings": config.ingest | config.search}
                    | {"search": dict(protocol.search), "tile_size": dataset.tile_size}
                    | {"held_out": sorted({r.held_out for r in dataset.rounds})}
                    | line
                    | ({"note": dataset.note} if dataset.note else {})
                )
                table.setdefault(dataset.name, {}).setdefault(name, {})[config.label] = [
                    line["top1"],
                    line[f"p_at_{K}"],
                ]
    emit(
        {"part": "offgrid", "summary": f"top1, p_at_{K} per dataset, protocol, features"}
        | {"table": table, "ingest_s": round(ingest_s, 1)}
        | {"seconds": round(time.perf_counter() - started, 1)}
    )


# -- the run --------------------------------------------------------------------------------


def _blocks() -> dict[str, float]:
    """Every feature block the settings know (those with a weight) and its default weight."""
    defaults = Settings().features
    return {
        name: getattr(defaults, name).weight
        for name in type(defaults).model_fields
        if hasattr(getattr(defaults, name), "weight")
    }


DEFAULT_WEIGHTS = _blocks()


def weights_of(**given: float) -> dict[str, float]:
    """Every block's weight: the given ones (blocks this version lacks dropped), others 0."""
    return {name: float(given.get(name, 0.0)) for name in DEFAULT_WEIGHTS}


def label_of(weights: dict[str, float]) -> str:
    """e.g. "band_stats=0.25 layout=1.5 cnn=1", with " (default)" for the default fusion."""
    text = " ".join(f"{name}={w:g}" for name, w in weights.items() if w > 0)
    return text + (" (default)" if weights == DEFAULT_WEIGHTS else "")


def weight_overrides(weights: dict[str, float]) -> dict[str, float]:
    return {f"features.{name}.weight": w for name, w in weights.items()}


# Weights tried around the default, per block (full runs); the CNN stays at 1.
VARIED = {"band_stats": (0.0, 0.1, 0.5, 1.0), "layout": (0.0, 0.5, 0.75, 1.0, 3.0)}


def feature_sets(quick: bool) -> list[dict[str, float]]:
    """Block weights to measure: each block alone, the default fusion and (full runs) each
    weight varied around the default, plus CNN + band statistics alone (the fusion before
    the layout block)."""
    sets = [weights_of(**{name: 1.0}) for name in DEFAULT_WEIGHTS] + [DEFAULT_WEIGHTS]
    if not quick:
        sets += [weights_of(cnn=1.0, band_stats=w) for w in (0.1, 0.25, 0.5, 1.0, 2.0)]
        for name, values in VARIED.items():
            if name in DEFAULT_WEIGHTS:
                sets += [DEFAULT_WEIGHTS | {name: value} for value in values]
    unique = []
    for weights in sets:
        if weights not in unique and any(weights.values()):
            unique.append(weights)
    return unique


def keras_backbones() -> list[tuple[str, str | None]]:
    """(model, None if its weights are available offline, else why not) for Keras models."""
    from geosearch.features.cnn import cnn_extractor

    models = typing.get_args(CnnSettings.model_fields["model"].annotation)
    found = []
    for model in models:
        if model == "mobilenet_v1":
            continue
        try:
            cnn_extractor(model, None, False, 0, 32)
            found.append((model, None))
        except GeosearchError as exc:
            found.append((model, str(exc)))
    return found


def feedback_settings(quick: bool) -> list[FeedbackSettings]:
    """Every feedback method with the default weights; in full runs, other Rocchio weights
    (alone and under the classifier + cosine blend)."""
    methods = typing.get_args(FeedbackSettings.model_fields["method"].annotation)
    default = FeedbackSettings()
    chosen = [default.model_copy(update={"method": m}) for m in methods]
    if not quick:
        for method, alpha, beta, gamma in (
            ("rocchio", 1.0, 0.5, 0.1),
            ("rocchio", 1.0, 1.0, 0.5),
            ("rocchio", 1.0, 0.75, 0.0),
            ("both", 1.0, 1.0, 0.5),
        ):
            update = {"method": method, "alpha": alpha, "beta": beta, "gamma": gamma}
            if default.model_copy(update=update) not in chosen:
                chosen.append(default.model_copy(update=update))
    return chosen


def _slug(label: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "_", label.lower())


def emit(line: dict[str, Any]) -> None:
    print(json.dumps({"bench": "quality"} | line), flush=True)


def shifts(tile_size: int, weights: dict[str, float]) -> list[int]:
    """Offsets (px) of the off-grid NAIP protocol: a quarter tile for every feature set; at
    128 px also 1/32 and 1/8 of a tile for each block alone and the default fusion."""
    offsets = [tile_size // 4]
    alone = sum(w > 0 for w in weights.values()) == 1
    if tile_size == 128 and (alone or weights == DEFAULT_WEIGHTS):
        offsets = [tile_size // 32, tile_size // 8, *offsets]
    return offsets


def run_naip(work: Path, tile_size: int, quick: bool) -> None:
    """Every NAIP feature set, the Keras backbones (or why not), then feedback on the default."""
    naip = {"dataset": "naip", "protocol": "same place, other year", "tile_size": tile_size}
    runs = [(label_of(w), w, weight_overrides(w)) for w in feature_sets(quick)]
    if not quick:
        for model, reason in keras_backbones():
            label = f"{label_of(DEFAULT_WEIGHTS)} cnn model {model}"
            if reason:
                emit(naip | {"features": label, "skipped": reason})
            else:
                cnn = {"features.cnn.model": model, "features.cnn.download": False}
                runs.append((label, DEFAULT_WEIGHTS, cnn))
    # Feedback runs on the default fusion; full runs also on CNN + band statistics alone.
    feedback_on = [DEFAULT_WEIGHTS]
    plain = weights_of(band_stats=DEFAULT_WEIGHTS["band_stats"], cnn=DEFAULT_WEIGHTS["cnn"])
    if not quick and plain != DEFAULT_WEIGHTS:
        feedback_on.append(plain)
    feedback_dbs = {}
    for label, weights, overrides in runs:
        db = work / f"naip{tile_size}_{_slug(label)}.gpkg"
        try:
            ingested = ingest_into(db, [NAIP], {"tile_size": tile_size} | overrides)
        except GeosearchError as exc:  # e.g. a Keras model without TensorFlow
            emit(naip | {"features": label, "skipped": str(exc)})
            continue
        with Store(db) as store:
            truth = naip_truth(store)
        emit(naip | {"features": label, "weights": weights} | measure(db, truth) | ingested)
        if label in map(label_of, feedback_on):
            feedback_dbs[label] = db
        for offset in [] if quick else shifts(tile_size, weights):
            folder = work / f"naip_shifted_{offset}px"
            copies = naip_shifted(folder, offset)
            shifted_db = work / f"naip{tile_size}_{_slug(label)}_shift{offset}.gpkg"
            ingested = ingest_into(shifted_db, [NAIP, folder], {"tile_size": tile_size} | overrides)
            with Store(shifted_db) as store:
                truth = shifted_truth(store, copies, offset)
            emit(
                naip
                | {"protocol": f"same place, other year, query shifted {offset} px"}
                | {"features": label, "weights": weights}
                | measure(shifted_db, truth)
                | ingested
            )
    for label, db in feedback_dbs.items():
        for settings in feedback_settings(quick):
            method = {
                "feedback_method": settings.method,
                "alpha": settings.alpha,
                "beta": settings.beta,
                "gamma": settings.gamma,
            }
            for line in feedback_rounds(db, settings, rounds=2):
                feedback = {"features": label, "protocol": "feedback, residual ranking"}
                emit(naip | feedback | method | line)


def run_sentinel2(work: Path, tile_size: int, quick: bool) -> None:
    """Band statistics on 12 bands and on RGB (in full runs also the other blocks and
    fusions on 12 bands), each scored against every shifted copy."""
    folder = work / f"s2_{tile_size}"
    folder.mkdir()
    original, copies, offset = sentinel2_scenes(folder, tile_size)
    band_stats = weights_of(band_stats=1.0)
    runs = [
        (band_stats, "12 bands", {}),
        (band_stats, "rgb", {"bands.select": S2_RGB}),
    ]
    if not quick:
        runs += [(weights, "12 bands", {}) for weights in feature_sets(quick)[1:]]
    for weights, bands, overrides in runs:
        label = label_of(weights)
        db = work / f"s2_{tile_size}_{_slug(label)}_{_slug(bands)}.gpkg"
        settings = {"tile_size": tile_size} | weight_overrides(weights) | overrides
        ingested = ingest_into(db, [folder], settings)
        for protocol, truth in copy_truths(db, original, copies, offset):
            emit(
                {"dataset": "sentinel2", "protocol": protocol, "tile_size": tile_size}
                | {"features": label, "weights": weights, "bands": bands}
                | measure(db, truth)
                | ingested
            )


def copy_truths(
    db: Path, original: Path, copies: dict[str, Path], offset: int
) -> Iterator[tuple[str, GroundTruth]]:
    """(protocol, ground truth) of each shifted copy searched against the original in ``db``."""
    for protocol, copy in copies.items():
        with Store(db) as store:
            truth = shifted_truth(store, {copy: [original]}, offset)
        yield protocol, truth


def measure(db: Path, truth: GroundTruth) -> dict[str, Any]:
    """Ranking metrics from the stored vectors, and timing through the real search path."""
    metrics, top_ids = ranking_metrics(truth)
    return metrics | timed_search(db, truth, top_ids, sample=TIMED_QUERIES)


# -- whole scenes ---------------------------------------------------------------------------


def naip_quadrants(folder: Path) -> dict[Path, tuple[str, int]]:
    """Each NAIP year cut into its four quadrants, written once in ``folder``: 20 scenes of
    about 467 x 362 px; scene -> (year, quadrant)."""
    import rasterio
    from rasterio.windows import Window as RioWindow

    folder.mkdir(parents=True, exist_ok=True)
    scenes = {}
    for source in sorted(NAIP.glob("*.tif")):
        with rasterio.open(source) as src:
            half_w, half_h = src.width // 2, src.height // 2
            for quadrant, (row, col) in enumerate(
                ((0, 0), (0, half_w), (half_h, 0), (half_h, half_w))
            ):
                path = folder / f"{source.stem}_q{quadrant}.tif"
                window = RioWindow(col, row, half_w, half_h)
                if not path.exists():
                    write_raster(
                        path, src.profile, src.read(window=window), src.window_transform(window)
                    )
                scenes[path] = (_year(source), quadrant)
    return scenes


def run_scenes(work: Path, quick: bool) -> None:
    """Whole scenes as queries (NAIP 128 px): 20 scenes (five years x four quadrants), every
    scene queries the others; relevant = the same quadrant in the four other years (chance
    P@4 4/19). ``tiles matched`` is the search (``geosearch.similar`` with a whole file: each
    scene scored by how well its tiles match the query's); ``mean vector`` ranks scenes by
    their best tile's cosine to the mean of the query's tile vectors (the rule before)."""
    from geosearch import similar

    scenes = naip_quadrants(work / "naip_quadrants")
    db = work / "naip128_quadrants.gpkg"
    if not db.exists():
        ingest_into(db, list(scenes), {"tile_size": 128})
    with Store(db) as store:
        ids, vectors = store.vectors()
        paths = np.array([t.path for t in store.tiles(ids.tolist())])
    queries = list(scenes)[:: 2 if quick else 1]
    outcomes: dict[str, list[tuple[bool, float]]] = {"tiles matched": [], "mean vector": []}
    times = []
    for query in queries:
        year, quadrant = scenes[query]
        relevant = {str(p) for p, (y, q) in scenes.items() if q == quadrant and y != year}
        started = time.perf_counter()
        [result] = similar(db, [query], top=K)
        times.append((time.perf_counter() - started) * 1000)
        found = [match.tile.path for match in result.matches]
        own = paths == normalise_path(query)
        order = np.argsort(-(vectors @ _unit_rows(vectors[own].mean(axis=0))), kind="stable")
        mean_ranked = list(dict.fromkeys(p for p in paths[order] if p != normalise_path(query)))
        for rule, ranked in (("tiles matched", found), ("mean vector", mean_ranked[:K])):
            outcomes[rule].append((ranked[0] in relevant, len(relevant & set(ranked)) / K))
    for rule, values in outcomes.items():
        hits, precision = zip(*values, strict=True)
        emit(
            {"dataset": "naip", "part": "scenes", "tile_size": 128, "rule": rule}
            | {
                "top1": round(float(np.mean(hits)), 4),
                f"p_at_{K}": round(float(np.mean(precision)), 4),
            }
            | {"queries": len(values), "scenes": len(scenes), f"chance_p_at_{K}": round(4 / 19, 4)}
            | ({"ms_p50": round(float(np.median(times)), 2)} if rule == "tiles matched" else {})
        )


# -- compact vectors ------------------------------------------------------------------------

# (label, vectors settings): the fused vector in full (at float16), and projections to fewer
# dimensions with more or less whitening; the default is vectors.dims 128, whitening 0.25.
COMPACT_CONFIGS = (
    ("full fused vector", {"vectors.dims": 0}),
    ("pca 128, whitening 0", {"vectors.dims": 128, "vectors.whitening": 0.0}),
    ("pca 128, whitening 0.25 (default)", {}),
    ("pca 128, whitening 0.5", {"vectors.dims": 128, "vectors.whitening": 0.5}),
    ("pca 64, whitening 0.25", {"vectors.dims": 64}),
    ("pca 256, whitening 0.25", {"vectors.dims": 256}),
)


def run_compact(work: Path, quick: bool) -> None:
    """Compact vectors. NAIP, same place in another year: at 64 px (900 tiles, a creation
    sample of 640, projected by default) every setting of COMPACT_CONFIGS; at 128 px (240
    tiles: too few to project by default) the default fusion unprojected and projected by
    force (``vectors.min_sample`` 2: 120 dimensions, half its 240-tile sample). Sentinel-2 at
    128 px (12 bands, 4,276-d fused, 405 tiles with the shifted copies: projected by default),
    each shifted copy against the original, for the whitening settings."""
    runs = [(64, label, overrides) for label, overrides in COMPACT_CONFIGS[: 3 if quick else None]]
    runs += [
        (128, "full fused vector (default at this size)", {}),
        (128, "pca 120 forced, whitening 0.25", {"vectors.min_sample": 2}),
    ]
    for tile_size, label, overrides in runs:
        db = work / f"compact_naip{tile_size}_{_slug(label)}.gpkg"
        ingested = ingest_into(db, [NAIP], {"tile_size": tile_size} | overrides)
        with Store(db) as store:
            truth = naip_truth(store)
            dim = store.vectors([int(truth.ids[0])])[1].shape[1]
        metrics, _ = ranking_metrics(truth)
        emit(
            {"dataset": "naip", "part": "compact", "protocol": "same place, other year"}
            | {"tile_size": tile_size, "vectors": label, "dim": dim}
            | metrics
            | ingested
            | {"db_bytes_per_tile": round(db.stat().st_size / ingested["tiles"])}
        )
    folder = work / "compact_s2_128"
    folder.mkdir(exist_ok=True)
    original, copies, offset = sentinel2_scenes(folder, 128)
    for label, overrides in COMPACT_CONFIGS[: 3 if quick else 4]:
        db = work / f"compact_s2_128_{_slug(label)}.gpkg"
        ingested = ingest_into(db, [folder], {"tile_size": 128} | overrides)
        for protocol, truth in copy_truths(db, original, copies, offset):
            metrics, _ = ranking_metrics(truth)
            emit(
                {"dataset": "sentinel2", "part": "compact", "protocol": protocol}
                | {"tile_size": 128, "vectors": label, "dim": truth.vectors.shape[1]}
                | metrics
                | ingested
            )


def run(work: Path, quick: bool, only: str | None = None) -> None:
    if only == "compact":
        run_compact(work, quick)
        return
    if only == "orientation":
        run_orientation(work, quick)
        return
    if only == "offgrid":
        run_offgrid(work, quick)
        return
    if only == "scenes":
        run_scenes(work, quick)
        return
    for tile_size in (128,) if quick else (128, 256):
        run_naip(work, tile_size, quick)
        run_sentinel2(work, tile_size, quick)
        if tile_size == 128:
            run_orientation(work, quick)  # reuses the 128 px databases run_naip made
    run_scenes(work, quick)
    run_compact(work, quick)
    if not quick:
        run_offgrid(work, quick)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="128 px only, fewer configs")
    parser.add_argument("--workdir", type=Path, help="keep the databases here (default: temp)")
    parser.add_argument(
        "--only",
        choices=["orientation", "offgrid", "scenes", "compact"],
        help="run only this part: NAIP 128 px orientation, queries cut anywhere (offgrid), "
        "whole scenes as queries, or compact vectors",
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        run(args.workdir, args.quick, args.only)
    else:
        with tempfile.TemporaryDirectory(prefix="geosearch-quality-") as work:
            run(Path(work), args.quick, args.only)
    done = {"done": True, "quick": args.quick, "only": args.only}
    emit(done | {"seconds": round(time.perf_counter() - started, 1)})


if __name__ == "__main__":
    main()
