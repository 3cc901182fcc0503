"""Shared test helpers: real rasters written with rasterio, the team's shared data, CLI runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from geosearch.config import Settings

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
