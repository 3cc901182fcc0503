"""Sentinel-2 (one date, so no other-year truth): the 12 spectral bands stacked on the 10 m
grid; copies shifted by a quarter tile (as is, with 1 % noise, darkened 10 %, both) are the
queries; the tiles of the original scene that overlap a query tile are relevant, the one
overlapping most is the top-1 target. Compares all 12 bands with RGB only for band statistics.
Landsat 8's scene and its synthetic second acquisition are made here for the off-grid family."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.protocols.common import (
    DATA,
    GroundTruth,
    emit,
    feature_sets,
    ingest_into,
    label_of,
    measure,
    shifted_truth,
    slug,
    weight_overrides,
    weights_of,
    write_raster,
)
from geosearch.store import Store

SENTINEL2 = DATA / "sentinel2" / "S2A_29RKH_20200219_L2A"
S2_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
S2_RGB = [4, 3, 2]  # B04, B03, B02 in S2_BANDS (1-based)
LANDSAT = DATA / "landsat8" / "LC08_L1TP_016037_20170813"
L8_BANDS = ("B1", "B2", "B3", "B4", "B5", "B6", "B7")


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
        db = work / f"s2_{tile_size}_{slug(label)}_{slug(bands)}.gpkg"
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
