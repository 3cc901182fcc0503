"""Embedding rasters (AlphaEarth Foundations, GeoTessera, or declared in config.yaml): recognised
from the data, de-quantised as published, one vector per tile, searched like any database."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from typer.testing import CliRunner

import geosearch
from geosearch.catalog import open_database
from geosearch.cli import app
from geosearch.config import Settings
from geosearch.embeddings import Dequantization
from geosearch.request import SearchFilters
from tests.conftest import (
    ALPHAEARTH_LABELS,
    ALPHAEARTH_TILE,
    alphaearth_values,
    planted_embeddings,
    stored_tiles,
    write_alphaearth,
    write_geotessera,
    write_geotiff,
)

LABELS, TILE = ALPHAEARTH_LABELS, ALPHAEARTH_TILE  # see conftest.alphaearth_db
# Vectors are stored at float16: a value in -1..1 moves by up to half its step, 2^-11.
FLOAT16 = 1e-3
runner = CliRunner()


def expected_vector(values: np.ndarray, dequantization: Dequantization) -> np.ndarray:
    """A tile's vector computed by hand: the mean of its valid pixels' vectors, unit length."""
    flat = values.reshape(values.shape[0], -1).astype(np.float64)
    valid = (flat != -128).all(axis=0) & (flat != 0).any(axis=0)
    mean = dequantization.apply(flat[:, valid].astype(values.dtype)).mean(axis=1)
    return mean / np.linalg.norm(mean)


def tile_vectors(db: Path) -> dict[tuple[int, int], np.ndarray]:
    """Stored vectors by (row, col) of their window."""
    return {(t.window.row, t.window.col): v for t, v in stored_tiles(db)}


def test_alphaearth_dequantisation_is_the_published_mapping() -> None:
    raw = np.array([-127, -64, -1, 0, 1, 64, 127], dtype=np.int8)
    # divide by 127.5, square, multiply by the sign: by hand
    by_hand = [-16129 / 16256.25, -4096 / 16256.25, -1 / 16256.25, 0.0, 1 / 16256.25,
               4096 / 16256.25, 16129 / 16256.25]  # fmt: skip
    dequantization = Dequantization("alphaearth")
    assert np.allclose(dequantization.apply(raw), by_hand, rtol=1e-6, atol=0)
    every = np.arange(-128, 128, dtype=np.int16).astype(np.int8)
    table = dequantization.table(np.dtype("int8"))
    assert np.array_equal(table[every.view(np.uint8)], dequantization.apply(every))
    assert np.allclose(Dequantization("linear", 0.5, -1.0).apply(raw), raw * 0.5 - 1.0)


def test_alphaearth_cog_is_recognised_and_one_vector_per_tile_is_stored(alphaearth_db) -> None:
    raster, db = alphaearth_db
    with rasterio.open(raster) as dataset:  # written as the real COGs are
        assert dataset.overviews(1) and dataset.nodata == -128
        assert dataset.descriptions[:2] == ("A00", "A01")
    facts = geosearch.info(db)
    assert facts["bands"]["scaling"] == "none" and facts["dim"] == 64
    assert [(e["name"], e["version"]) for e in facts["extractors"]] == [
        ("embedding", "1-alphaearth")
    ]
    values = alphaearth_values()
    stored = tile_vectors(db)
    alphaearth = Dequantization("alphaearth")
    for row, col in [(0, TILE), (TILE, 0), (7 * TILE, 5 * TILE)]:  # (0, 64) is half NoData
        window = values[:, row : row + TILE, col : col + TILE]
        assert np.allclose(stored[(row, col)], expected_vector(window, alphaearth), atol=FLOAT16)
    assert (0, 0) not in stored  # all NoData: not indexed


def test_planted_classes_find_their_own_class_in_the_top_5(alphaearth_db) -> None:
    _, db = alphaearth_db
    stored = tile_vectors(db)
    places = sorted(stored)
    vectors = np.vstack([stored[p] for p in places])
    classes = np.array([LABELS[row // TILE, col // TILE] for row, col in places])
    scores = vectors @ vectors.T
    np.fill_diagonal(scores, -np.inf)
    top5 = np.argsort(-scores, axis=1)[:, :5]
    precision = (classes[top5] == classes[:, None]).mean()
    assert precision >= 0.9  # measured 1.0
    [result] = geosearch.similar(db, [], top=5, lonlat=lonlat_of(db, (3 * TILE, 3 * TILE)))
    found = [LABELS[m.tile.window.row // TILE, m.tile.window.col // TILE] for m in result.matches]
    assert found == [LABELS[3, 3]] * 5  # the same through the search API


def lonlat_of(db: Path, place: tuple[int, int]) -> tuple[float, float]:
    """The lon/lat centre of the tile at window (row, col)."""
    catalog = open_database(db)
    try:
        ids, _ = catalog.store.vectors()
        [tile] = [
            t for t in catalog.store.tiles(ids.tolist()) if (t.window.row, t.window.col) == place
        ]
    finally:
        catalog.store.close()
    centre = tile.footprint.centroid
    return centre.x, centre.y


def test_a_new_file_cut_from_the_raster_finds_its_own_place(alphaearth_db, tmp_path) -> None:
    raster, db = alphaearth_db
    values = alphaearth_values()[:, 4 * TILE : 5 * TILE, 2 * TILE : 3 * TILE]
    chip = write_alphaearth(
        tmp_path / "chip.tif",
        values,
        transform=from_origin(500000 + 2 * TILE * 10, 5200000 - 4 * TILE * 10, 10, 10),
    )
    [result] = geosearch.similar(db, [chip], top=3)
    assert not result.query.indexed
    best = result.matches[0]
    assert (best.tile.window.row, best.tile.window.col) == (4 * TILE, 2 * TILE)
    assert best.cosine == pytest.approx(1.0, abs=1e-4)  # to the query as given; stored in float16


def test_geotessera_tiff_is_recognised_and_zero_fill_is_nodata(tmp_path) -> None:
    values = planted_embeddings(LABELS[:2, :2], TILE, 128, seed=2)
    values[:, :TILE, :10] = 0.0  # no vector here (GeoTessera has no NoData value)
    raster = write_geotessera(tmp_path / "grid_0.15_52.05_2024.tiff", values)
    db = tmp_path / "tessera.gpkg"
    report = geosearch.ingest([raster], db, Settings(tile_size=TILE, workers=1))
    assert report.tiles_added == 4
    facts = geosearch.info(db)
    assert facts["bands"]["scaling"] == "none" and facts["dim"] == 128
    assert facts["extractors"][0]["version"] == "1-none"
    stored = tile_vectors(db)
    window = values[:, :TILE, :TILE]
    assert np.allclose(
        stored[(0, 0)], expected_vector(window, Dequantization("none")), atol=FLOAT16
    )
    catalog = open_database(db)
    try:
        [tile] = [t for t in catalog.store.tiles([1, 2, 3, 4]) if t.window.col == t.window.row == 0]
    finally:
        catalog.store.close()
    assert tile.nodata_fraction == pytest.approx(10 / TILE)


def test_a_raster_declared_in_config_uses_its_linear_dequantisation(tmp_path) -> None:
    rng = np.random.default_rng(5)
    values = rng.integers(0, 2000, (8, 32, 32)).astype(np.int16)
    raster = write_geotiff(tmp_path / "embeddings.tif", values)
    config = tmp_path / "config.yaml"
    config.write_text(
        "tile_size: 16\nbands:\n  scaling: none\n"
        "features:\n  embedding:\n    dequantize: linear\n    scale: 0.001\n    offset: -1.0\n"
    )
    db = tmp_path / "declared.gpkg"
    result = runner.invoke(app, ["ingest", str(raster), "--db", str(db), "--config", str(config)])
    assert result.exit_code == 0, result.output
    stored = tile_vectors(db)
    linear = Dequantization("linear", 0.001, -1.0)
    for row, col in [(0, 0), (16, 16)]:
        window = values[:, row : row + 16, col : col + 16]
        assert np.allclose(stored[(row, col)], expected_vector(window, linear), atol=FLOAT16)


def test_feedback_and_filters_work_on_an_embedding_database(alphaearth_db, tmp_path) -> None:
    _, db = alphaearth_db
    west, south = lonlat_of(db, (7 * TILE, 0))
    east, north = lonlat_of(db, (4 * TILE, 3 * TILE))
    bbox = (west, south, east, north)  # the 4 x 4 tiles of the bottom-left quarter
    lon, lat = lonlat_of(db, (2 * TILE, 6 * TILE))
    [result] = geosearch.similar(
        db, [], top=5, lonlat=(lon, lat), filters=SearchFilters(bbox=bbox), session="emb"
    )
    rows_cols = [(m.tile.window.row, m.tile.window.col) for m in result.matches]
    assert len(rows_cols) == 5 and all(r >= 4 * TILE and c < 4 * TILE for r, c in rows_cols)
    out = tmp_path / "results"
    refined = runner.invoke(
        app, ["feedback", "emb", "--good", "1", "--bad", "2", "--db", str(db), "--out", str(out),
              "--json"],
    )  # fmt: skip
    assert refined.exit_code == 0, refined.output
    answer = json.loads(refined.stdout.splitlines()[0])
    marked = {result.matches[0].tile.id, result.matches[1].tile.id}
    ids = [r["id"] for r in answer["results"]]
    assert answer["feedback"] == {
        "good": [result.matches[0].tile.id],
        "bad": [result.matches[1].tile.id],
    }
    assert marked.isdisjoint(ids) and len(ids) == 5
    assert all(r["row"] >= 4 * TILE and r["col"] < 4 * TILE for r in answer["results"])


def test_serve_answers_on_an_embedding_database(alphaearth_db) -> None:
    pytest.importorskip("fastapi", reason="needs the serve extra: pip install 'geosearch[serve]'")
    from fastapi.testclient import TestClient

    from geosearch.serve import create_app

    _, db = alphaearth_db
    client = TestClient(create_app(db, Settings()))
    assert client.get("/api/info").json()["extractors"][0]["name"] == "embedding"
    page = client.get("/api/tiles", params={"limit": 5}).json()
    tile = page["features"][0]["properties"]["id"]
    answer = client.get("/api/similar", params={"tile": tile, "top": 3})
    assert answer.status_code == 200, answer.text
    results = [f for f in answer.json()["features"] if f["properties"]["role"] == "result"]
    assert len(results) == 3 and results[0]["properties"]["score"] > 0.9
    preview = client.get(f"/api/tiles/{tile}/preview.png")
    assert preview.status_code == 200 and preview.content.startswith(b"\x89PNG")
