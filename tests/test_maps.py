"""Similarity maps (``similar --map`` / ``--map-pixels``): GeoTIFFs read back with rasterio
(CRS, transform, NoData, values against vectors computed here: (1 + cosine) / 2, the similarity
the results show) and their QGIS styles as XML."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import rasterio
from pyproj import Transformer
from rasterio.transform import Affine, from_origin
from typer.testing import CliRunner

import geosearch
from geosearch.cli import app
from geosearch.config import Settings
from geosearch.embeddings import Dequantization
from geosearch.maps import NODATA
from tests.conftest import (
    ALPHAEARTH_LABELS,
    ALPHAEARTH_TILE,
    alphaearth_values,
    planted_embeddings,
    stored_tiles,
    textured,
    write_alphaearth,
    write_geotessera,
    write_geotiff,
)

LABELS, TILE = ALPHAEARTH_LABELS, ALPHAEARTH_TILE  # see conftest.alphaearth_db
# Vectors are stored at float16: a value in -1..1 moves by up to half its step, 2^-11.
FLOAT16 = 1e-3
QUERY = (3, 3)  # the query tile (row, col), of class LABELS[3, 3]
runner = CliRunner()


def stored(db: Path) -> dict[tuple[int, int], tuple[np.ndarray, tuple[float, float]]]:
    """Per tile (row, col) of the tile grid: its stored vector and lon/lat centre."""
    return {
        (t.window.row // TILE, t.window.col // TILE): (
            v,
            (t.footprint.centroid.x, t.footprint.centroid.y),
        )
        for t, v in stored_tiles(db)
    }


def similar(db: Path, tmp_path: Path, *options: str, query: Path | None = None) -> None:
    """``geosearch similar`` with the tile QUERY of ``query`` (default: ``db``) as query."""
    lon, lat = stored(query or db)[QUERY][1]
    result = runner.invoke(
        app, ["similar", "--lonlat", f"{lon},{lat}", "--db", str(db), "--out", str(tmp_path / "r"),
              *options],
    )  # fmt: skip
    assert result.exit_code == 0, result.output


def check_style(path: Path, low: float, high: float) -> None:
    """The .qml is QGIS XML: band 1, single-band pseudocolour, an interpolated ramp low..high."""
    text = path.read_text()
    assert text.startswith("<!DOCTYPE qgis")
    root = ET.fromstring(text.split("\n", 1)[1])
    assert root.tag == "qgis"
    renderer = root.find("pipe/rasterrenderer")
    assert renderer.get("type") == "singlebandpseudocolor" and renderer.get("band") == "1"
    shader = renderer.find("rastershader/colorrampshader")
    assert shader.get("colorRampType") == "INTERPOLATED"
    values = [float(item.get("value")) for item in shader.findall("item")]
    assert values == sorted(values) and len(values) == 5
    assert np.isclose(values[0], low, atol=1e-3) and np.isclose(values[-1], high, atol=1e-3)


def test_tile_map_holds_every_tiles_similarity_on_the_tile_grid(alphaearth_db, tmp_path) -> None:
    _, db = alphaearth_db
    similar(db, tmp_path, "--map", str(tmp_path / "map.tif"))
    with rasterio.open(tmp_path / "map.tif") as dataset:
        assert dataset.crs.to_epsg() == 32633  # the rasters' UTM zone
        assert dataset.transform == Affine(640.0, 0.0, 500000.0, 0.0, -640.0, 5200000.0)
        assert dataset.shape == (8, 8) and dataset.nodata == NODATA
        values = dataset.read(1)
    tiles = stored(db)
    query = tiles[QUERY][0]
    expected = np.full((8, 8), NODATA, dtype=np.float32)
    for (row, col), (vector, _) in tiles.items():
        expected[row, col] = (1 + vector @ query) / 2  # the similarity results show
    assert np.allclose(values, expected, atol=FLOAT16)
    assert values[0, 0] == NODATA and np.isclose(values[QUERY], 1.0, atol=FLOAT16)
    same = LABELS[QUERY] == LABELS
    same[0, 0] = False
    other = (LABELS[QUERY] != LABELS) & (values != NODATA)
    assert values[same].min() > values[other].max()  # higher over the class than off it
    found = values[values != NODATA]
    check_style(tmp_path / "map.qml", np.percentile(found, 2), found.max())


def test_pixel_map_is_each_pixels_cosine_at_the_rasters_resolution(alphaearth_db, tmp_path) -> None:
    _, db = alphaearth_db
    tiles = stored(db)
    west, north = tiles[(0, 1)][1]  # centre of the half-NoData tile ...
    east, south = tiles[(4, 5)][1]  # ... to the centre of tile (4, 5)
    bbox = f"{west},{south},{east},{north}"
    config = tmp_path / "small-windows.yaml"
    config.write_text("maps:\n  window: 96\n  threads: 2\n")  # many windows, two at a time
    similar(db, tmp_path, "--map-pixels", str(tmp_path / "pixels.tif"), "--bbox", bbox, "--config",
            str(config))  # fmt: skip
    with rasterio.open(tmp_path / "pixels.tif") as dataset:
        assert dataset.crs.to_epsg() == 32633 and dataset.nodata == NODATA
        transform = dataset.transform
        assert (transform.a, transform.e) == (10.0, -10.0)  # the rasters' own pixels
        values = dataset.read(1)
        assert dataset.overviews(1) == [] or dataset.overviews(1)[0] == 2
    col0 = round((transform.c - 500000) / 10)
    row0 = round((5200000 - transform.f) / 10)
    assert (transform.c - 500000) % 10 == 0 and (5200000 - transform.f) % 10 == 0  # on its grid
    height, width = values.shape
    assert abs(row0 - TILE // 2) <= 2 and abs(col0 - TILE * 3 // 2) <= 2  # the bbox's corner
    raw = alphaearth_values()[:, row0 : row0 + height, col0 : col0 + width]
    query = tiles[QUERY][0]
    vectors = Dequantization("alphaearth").apply(raw).reshape(64, -1)
    cosine = query @ vectors / np.linalg.norm(vectors, axis=0)
    by_hand = ((1 + cosine) / 2).reshape(height, width)
    nodata = (raw == -128).any(axis=0)
    inside = values != NODATA
    assert not (inside & nodata).any() and nodata.any()  # NoData pixels stay NoData
    middle = np.s_[5:-5, 5:-5]  # away from the bbox's edges (a lon/lat box, curved in UTM)
    assert inside[middle][~nodata[middle]].all()
    assert np.allclose(values[inside], by_hand[inside], atol=FLOAT16)
    classes = np.repeat(np.repeat(LABELS, TILE, 0), TILE, 1)[
        row0 : row0 + height, col0 : col0 + width
    ]
    same = classes == LABELS[QUERY]
    assert values[inside & same].mean() > values[inside & ~same].mean() + 0.08
    found = values[inside]
    check_style(tmp_path / "pixels.qml", np.percentile(found, 2), found.max())


def test_maps_of_an_image_database_and_their_errors(tmp_path) -> None:
    """A tile map of any georeferenced database, tiles of another UTM zone placed by
    reprojection; --map-pixels only on embedding databases, and only for an area."""
    west = write_geotiff(tmp_path / "a" / "west.tif", textured((3, 64, 80), seed=1))  # 3 x 2 tiles,
    # the third column 16 px wide (edge tiles)
    corner = Transformer.from_crs(32633, 32634, always_xy=True).transform(500960, 5200000)
    east = write_geotiff(
        tmp_path / "a" / "east.tif", textured((3, 32, 32), seed=2), crs="EPSG:32634",
        transform=from_origin(*corner, 10, 10),
    )  # fmt: skip  # west.tif's east neighbour, stored in the next UTM zone
    db = tmp_path / "images.gpkg"
    config = tmp_path / "config.yaml"
    config.write_text("tile_size: 32\nfeatures:\n  cnn:\n    weight: 0\n")
    result = runner.invoke(
        app, ["ingest", str(tmp_path / "a"), "--db", str(db), "--config", str(config)]
    )
    assert result.exit_code == 0, result.output
    out = tmp_path / "r"
    result = runner.invoke(
        app, ["similar", str(west), "--tile", "0", "--db", str(db), "--out", str(out), "--map",
              str(tmp_path / "map.tif"), "--config", str(config)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    with rasterio.open(tmp_path / "map.tif") as dataset:
        assert dataset.crs.to_epsg() == 32633  # 6 tiles in 32633, 1 in 32634
        values = dataset.read(1)
        assert np.isclose(values[0, 0], 1.0, atol=FLOAT16)
        assert values.shape == (2, 4) and (values != NODATA).sum() == 7
        assert values[0, 3] != NODATA  # east.tif's tile, beside west.tif's
    for options, message in (
        (["--map-pixels", str(tmp_path / "p.tif")], "needs an area"),
        (["--map-pixels", str(tmp_path / "p.tif"), "--bbox", "14,46,16,48"], "needs an embedding"),
    ):
        result = runner.invoke(
            app, ["similar", str(east), "--db", str(db), "--out", str(out), "--config", str(config),
                  *options],
        )  # fmt: skip
        assert result.exit_code == 2 and message in result.output, result.output


def test_a_bottom_up_copy_gives_the_same_maps(alphaearth_db, tmp_path) -> None:
    """Source Cooperative's AlphaEarth COGs are stored bottom-up (positive y pixel size)."""
    _, db = alphaearth_db
    size = alphaearth_values().shape[1]
    flipped = write_alphaearth(
        tmp_path / "bottom_up.tiff", alphaearth_values()[:, ::-1],
        transform=Affine(10.0, 0.0, 500000.0, 0.0, 10.0, 5200000.0 - size * 10),
    )  # fmt: skip
    other = tmp_path / "bottom_up.gpkg"
    report = geosearch.ingest([flipped], other, Settings(tile_size=TILE, workers=1))
    assert report.tiles_added == 63
    mine, theirs = stored(db), stored(other)
    by_place = {np.round(centre, 6).tobytes(): vector for vector, centre in theirs.values()}
    for vector, centre in mine.values():  # the same tiles, found from the bottom
        assert np.allclose(by_place[np.round(centre, 6).tobytes()], vector, atol=FLOAT16)
    west, north = mine[(0, 1)][1]
    east, south = mine[(4, 5)][1]
    bbox = f"{west},{south},{east},{north}"
    maps = []
    for database in (db, other):
        similar(
            database, tmp_path, "--map-pixels", str(tmp_path / "p.tif"), "--bbox", bbox, query=db
        )
        with rasterio.open(tmp_path / "p.tif") as dataset:
            maps.append((dataset.transform, dataset.read(1)))
    assert maps[0][0] == maps[1][0] and np.allclose(maps[0][1], maps[1][1], atol=FLOAT16)


def test_pixel_map_places_rasters_of_other_grids_at_the_nearest_pixel(tmp_path) -> None:
    """GeoTessera's GeoTIFFs (one per 0.1 degree) lie on their own 10 m grids."""
    values = [planted_embeddings(np.array([[k]]), 64, 128, seed=4) for k in (0, 1)]
    write_geotessera(tmp_path / "t" / "a.tiff", values[0])
    east = write_geotessera(tmp_path / "t" / "b.tiff", values[1])
    with rasterio.open(east, "r+") as dataset:  # 3 m east and 2 m south of a.tiff's grid
        dataset.transform = from_origin(300000 + 640 + 3, 5770000 - 2, 10, 10)
    db = tmp_path / "tessera.gpkg"
    geosearch.ingest([tmp_path / "t"], db, Settings(tile_size=64, workers=1))
    frames = [SimpleNamespace(footprint=t.footprint, window=t.window, vector=v)
              for t, v in stored_tiles(db)]  # fmt: skip
    west, south, _, north = frames[0].footprint.bounds
    _, _, east_edge, _ = frames[1].footprint.bounds
    result = runner.invoke(
        app, ["similar", str(tmp_path / "t" / "a.tiff"), "--db", str(db), "--out",
              str(tmp_path / "r"), "--map-pixels", str(tmp_path / "p.tif"), "--bbox",
              f"{west},{south},{east_edge},{north}"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "left out" not in result.output
    with rasterio.open(tmp_path / "p.tif") as dataset:
        assert dataset.transform.c == 300000 and dataset.width == 129  # 1283 m wide
        pixels = dataset.read(1)
    query = frames[0].vector
    for half, raw in zip((np.s_[:64, :64], np.s_[:64, 64:128]), values, strict=True):
        cosine = np.einsum("b,bhw->hw", query, raw) / np.linalg.norm(raw, axis=0)
        by_hand = (1 + cosine) / 2
        inside = pixels[half] != NODATA
        assert inside.mean() > 0.9
        assert np.allclose(pixels[half][inside], by_hand[inside], atol=FLOAT16)
