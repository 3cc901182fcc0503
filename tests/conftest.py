"""Shared test helpers: real rasters written with rasterio, the team's shared data, CLI runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyogrio  # noqa: F401  GDAL before TensorFlow, which test_keras_models imports when collected
import pytest
import rasterio
from rasterio.transform import from_origin

from geosearch.config import Settings
from geosearch.store import Store, TileRecord

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
SAMPLE_TILES = ROOT / "sample_tiles"


def write_geotiff(
    path: Path,
    data: np.ndarray,
    *,
    crs: str | None = "EPSG:32633",
    transform: rasterio.Affine | None = None,
    nodata: float | None = None,
    **profile: object,
) -> Path:
    """Write (bands, h, w) ``data`` as a GeoTIFF with rasterio; 10 m pixels by default.

    Bands are plain (photometric MINISBLACK: no alpha, no colour names) unless ``profile``
    says otherwise."""
    profile.setdefault("photometric", "MINISBLACK")
    count, height, width = data.shape
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=width,
        height=height,
        count=count,
        dtype=data.dtype,
        crs=crs,
        transform=transform or from_origin(500000, 5200000, 10, 10),
        nodata=nodata,
        **profile,
    ) as dst:
        dst.write(data)
    return path


def textured(shape: tuple[int, int, int], seed: int, dtype: str = "uint8") -> np.ndarray:
    """Smooth random imagery (not noise): blobs of varying brightness per band."""
    rng = np.random.default_rng(seed)
    count, height, width = shape
    coarse = rng.random((count, max(2, height // 16), max(2, width // 16)))
    ys = np.linspace(0, coarse.shape[1] - 1, height).astype(int)
    xs = np.linspace(0, coarse.shape[2] - 1, width).astype(int)
    image = coarse[:, ys][:, :, xs] * 0.8 + rng.random(shape) * 0.2
    top = np.iinfo(dtype).max if np.dtype(dtype).kind in "ui" else 1.0
    return (image * top * 0.9).astype(dtype)


def shared(*parts: str) -> Path:
    """A path in ../shared/data; the test fails in CI (and skips elsewhere) if it is missing."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{path} missing: CI must have ../shared beside the clone")
        pytest.skip(f"{path} not available")
    return path


def run_cli(
    *args: str, cwd: Path | None = None, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run ``python -m geosearch ARGS`` as a user would, capturing output."""
    return subprocess.run(
        [sys.executable, "-m", "geosearch", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=600,
    )


def stored_tiles(db: Path) -> list[tuple[TileRecord, np.ndarray]]:
    """Every tile of ``db`` with its stored vector, in id order."""
    with Store(db) as store:
        ids, vectors = store.vectors()
        return list(zip(store.tiles(ids.tolist()), vectors, strict=True))


@pytest.fixture
def stats_only() -> Settings:
    """Settings without the CNN: fast, for tests about plumbing rather than features."""
    return Settings().with_overrides({"features.cnn.weight": 0.0})


@pytest.fixture(scope="session")
def naip_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sample_tiles/ ingested with the default settings (the demo's database)."""
    import geosearch

    db = tmp_path_factory.mktemp("naip") / "naip.gpkg"
    report = geosearch.ingest([SAMPLE_TILES], db)
    assert report.tiles_added == 20 and not report.skipped
    return db


# -- embedding rasters (AlphaEarth Foundations, GeoTessera) ---------------------------------


def planted_embeddings(
    labels: np.ndarray, tile: int, dim: int, seed: int = 0, noise: float = 0.35
) -> np.ndarray:
    """(dim, h, w) float32 unit vectors with planted classes: tile (i, j) is of class
    ``labels[i, j]``. Each class mixes six land covers in its own proportions; a tile draws
    8 x 8-pixel patches of covers from them (so tiles of a class differ in layout and make-up),
    and every pixel is its cover's direction plus noise, at unit length."""
    rng = np.random.default_rng(seed)
    covers = rng.standard_normal((6, dim)).astype(np.float32)
    mixes = rng.dirichlet(np.full(6, 0.5), size=int(labels.max()) + 1)
    rows, cols = labels.shape
    patch = max(1, tile // 8)
    cells = rng.random((rows * tile // patch, cols * tile // patch))
    cumulative = np.cumsum(mixes, axis=1)[
        np.repeat(np.repeat(labels, tile // patch, 0), tile // patch, 1)
    ]
    cover = (cells[..., None] > cumulative).sum(axis=2).clip(0, 5)
    cover = np.repeat(np.repeat(cover, patch, axis=0), patch, axis=1)
    vectors = covers[cover] + rng.standard_normal((*cover.shape, dim), dtype=np.float32) * noise
    vectors /= np.linalg.norm(vectors, axis=2, keepdims=True)
    return vectors.transpose(2, 0, 1)


def alphaearth_quantize(vectors: np.ndarray) -> np.ndarray:
    """int8 values whose AlphaEarth de-quantisation ((v / 127.5) ** 2 * sign(v)) is closest to
    ``vectors`` (the inverse of the published mapping), -127..127; -128 stays free for NoData."""
    raw = np.sign(vectors) * np.sqrt(np.abs(vectors)) * 127.5
    return np.clip(np.round(raw), -127, 127).astype(np.int8)


def write_alphaearth(path: Path, values: np.ndarray, **profile: object) -> Path:
    """Write (64, h, w) int8 ``values`` as AlphaEarth writes its Satellite Embedding COGs: a
    Cloud Optimized GeoTIFF (internal overviews), 64 int8 bands named A00..A63, NoData -128,
    10 m pixels in a UTM zone."""
    count, height, width = values.shape
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {
        "driver": "COG", "width": width, "height": height, "count": count, "dtype": "int8",
        "crs": "EPSG:32633", "transform": from_origin(500000, 5200000, 10, 10), "nodata": -128,
        "compress": "deflate", "blocksize": 128, "overview_resampling": "average",
    } | profile  # fmt: skip
    with rasterio.open(path, "w", **options) as dst:
        dst.write(values)
        dst.descriptions = tuple(f"A{band:02d}" for band in range(count))
    return path


def write_geotessera(path: Path, values: np.ndarray, year: int = 2024) -> Path:
    """Write (128, h, w) float32 ``values`` as ``geotessera download`` writes its GeoTIFFs:
    de-quantised float32, bands named Tessera_Band_0..127, TESSERA_* tags, no NoData value,
    256-pixel tiles, LZW, in the tile's UTM zone."""
    count, height, width = values.shape
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(
        path, "w", driver="GTiff", width=width, height=height, count=count, dtype="float32",
        crs="EPSG:32631", transform=from_origin(300000, 5770000, 10, 10), compress="lzw",
        tiled=True, blockxsize=256, blockysize=256,
    ) as dst:  # fmt: skip
        dst.write(values.astype(np.float32))
        for band in range(count):
            dst.set_band_description(band + 1, f"Tessera_Band_{band}")
        dst.update_tags(
            TESSERA_YEAR=str(year), TESSERA_DESCRIPTION="GeoTessera satellite embedding tile"
        )
    return path


ALPHAEARTH_TILE = 64
# 8 x 8 tiles of 4 planted classes; tile (0, 0) is all NoData, the left half of (0, 1) too.
ALPHAEARTH_LABELS = np.random.default_rng(3).integers(0, 4, (8, 8))


def alphaearth_values() -> np.ndarray:
    """(64, 512, 512) int8: the planted-class AlphaEarth raster of ``alphaearth_db``."""
    tile = ALPHAEARTH_TILE
    values = alphaearth_quantize(planted_embeddings(ALPHAEARTH_LABELS, tile, 64, seed=1))
    values[:, :tile, : tile + tile // 2] = -128
    return values


@pytest.fixture(scope="session")
def alphaearth_db(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An AlphaEarth-shaped COG (``alphaearth_values``) ingested at 64 px tiles: (raster, db)."""
    import geosearch

    folder = tmp_path_factory.mktemp("alphaearth")
    raster = write_alphaearth(folder / "xq2019-0000000000-0000000000.tiff", alphaearth_values())
    db = folder / "aef.gpkg"
    settings = Settings(tile_size=ALPHAEARTH_TILE, workers=1)
    report = geosearch.ingest([raster], db, settings)
    assert report.tiles_added == 63 and report.tiles_nodata == 1 and not report.skipped
    return raster, db


# -- EuroSAT pictures (kinds of places) ------------------------------------------------------

EUROSAT_CLASSES = ("AnnualCrop", "HerbaceousVegetation", "Industrial", "Pasture", "PermanentCrop")
EUROSAT_PER_CLASS = 60


@pytest.fixture(scope="session")
def eurosat_db(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[Path]]]:
    """A plain-image database of 5 EuroSAT classes x 60 pictures (links to ../shared/data):
    (database, pictures by class)."""
    import geosearch

    folder = tmp_path_factory.mktemp("eurosat")
    pictures: dict[str, list[Path]] = {}
    for name in EUROSAT_CLASSES:
        (folder / name).mkdir()
        for source in sorted(shared("eurosat", name).glob("*.jpg"))[:EUROSAT_PER_CLASS]:
            (folder / name / source.name).symlink_to(source)
        pictures[name] = sorted((folder / name).glob("*.jpg"))
    db = folder / "eurosat.gpkg"
    geosearch.ingest([folder], db, Settings())
    return db, pictures
