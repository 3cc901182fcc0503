"""Spatial and date filters, queries by place, and relevance-feedback sessions."""

from __future__ import annotations

import json

import pyogrio
import pytest
from rasterio.transform import from_origin

import geosearch
from geosearch import SearchFilters
from tests.conftest import SAMPLE_TILES, run_cli, textured, write_geotiff

NAIP_2009 = SAMPLE_TILES / "naip" / "m_4709963_se_14_1_20090818.tif"


@pytest.fixture(scope="module")
def spread(
    tmp_path_factory,
):
    """Five 2-tile scenes 10 km apart along a UTM row, dated 2020-01-01 .. 2020-01-05."""
    folder = tmp_path_factory.mktemp("spread")
    for i in range(5):
        write_geotiff(
            folder / f"scene_2020010{i + 1}.tif",
            textured((3, 64, 128), seed=i % 2),  # two kinds of texture, alternating
            transform=from_origin(500000 + 10000 * i, 5200000, 10, 10),
        )
    db = folder / "spread.gpkg"
    settings = geosearch.load_settings(None).with_overrides({"tile_size": 64})
    geosearch.ingest([folder], db, settings)
    return folder, db


def _paths(result):
    return [m.tile.path.rsplit("/", 1)[-1] for m in result.matches]


def test_bbox_and_within_limit_results(spread, tmp_path):
    folder, db = spread
    # One tile as the query (a whole scene would get one result per scene): every other tile.
    [everything] = geosearch.similar(db, [folder / "scene_20200101.tif"], top=20, tile=0)
    assert len(everything.matches) == 9
    third = [m.tile for m in everything.matches if m.tile.path.endswith("20200103.tif")]
    minx, miny, maxx, maxy = third[0].footprint.bounds
    box = (minx + 1e-4, miny + 1e-4, maxx - 1e-4, maxy - 1e-4)
    [boxed] = geosearch.similar(db, [folder / "scene_20200101.tif"], top=20, tile=0,
                                filters=SearchFilters(bbox=box))  # fmt: skip
    assert [m.tile.id for m in boxed.matches] == [third[0].id]
    area = tmp_path / "area.geojson"
    area.write_text(json.dumps({"type": "FeatureCollection", "features": [{
        "type": "Feature", "properties": {},
        "geometry": {"type": "Polygon", "coordinates": [[[box[0], box[1]], [box[2], box[1]],
                     [box[2], box[3]], [box[0], box[3]], [box[0], box[1]]]]}}]}))  # fmt: skip
    query = str(folder / "scene_20200101.tif")
    result = run_cli("similar", query, "--tile", "0", "--db", str(db), "--within", str(area),
                     "--json", "--out", str(tmp_path / "o"))  # fmt: skip
    assert [r["id"] for r in json.loads(result.stdout)["results"]] == [third[0].id]


def test_exclude_near_and_other_files(spread, tmp_path):
    folder, db = spread
    query = folder / "scene_20200101.tif"
    [near] = geosearch.similar(db, [query], top=20, tile=0)
    assert "scene_20200101.tif" in _paths(near)  # its neighbour tile is a result
    [far] = geosearch.similar(db, [query], top=20, tile=0,
                              filters=SearchFilters(exclude_near=15000))  # fmt: skip
    assert sorted(set(_paths(far))) == ["scene_20200103.tif", "scene_20200104.tif",
                                        "scene_20200105.tif"]  # fmt: skip
    [others] = geosearch.similar(db, [query], top=20, tile=0,
                                 filters=SearchFilters(other_files=True))  # fmt: skip
    assert "scene_20200101.tif" not in _paths(others) and len(others.matches) == 8


def test_date_range(spread):
    folder, db = spread
    dates = SearchFilters(after="2020-01-02", before="2020-01-03")
    [result] = geosearch.similar(db, [folder / "scene_20200101.tif"], top=20, filters=dates)
    assert sorted(set(_paths(result))) == ["scene_20200102.tif", "scene_20200103.tif"]
    bad = run_cli("similar", str(folder / "scene_20200101.tif"), "--db", str(db), "--after", "May")
    assert bad.returncode == 2 and "--after: expected a date" in bad.stderr


def test_query_by_place_picks_the_tile_and_date(naip_db, tmp_path):
    tiles = geosearch.similar(naip_db, [NAIP_2009], top=1, tile=0)[0].query.tiles
    centre = tiles[0].footprint.centroid
    [latest] = geosearch.similar(naip_db, lonlat=(centre.x, centre.y), top=3)
    assert latest.query.tiles[0].acquired == "2015-09-26"
    assert (latest.query.tiles[0].window.row, latest.query.tiles[0].window.col) == (0, 0)
    [dated] = geosearch.similar(naip_db, lonlat=(centre.x, centre.y), date="2009-08-18", top=3)
    assert dated.query.tiles[0].id == tiles[0].id
    result = run_cli("similar", "--lonlat", "10,10", "--db", str(naip_db))
    assert result.returncode == 3 and "no indexed tile contains 10.0,10.0" in result.stderr
    result = run_cli("similar", "--lonlat", f"{centre.x},{centre.y}", "--date", "2011-01-01",
                     "--db", str(naip_db), "--out", str(tmp_path / "o"))  # fmt: skip
    assert result.returncode == 3 and "(there are: 2009-08-18, 2010-06-29" in result.stderr


def test_feedback_session_rounds_persist_and_export(naip_db, tmp_path):
    first = run_cli("similar", str(NAIP_2009), "--tile", "3", "--db", str(naip_db), "--top", "6",
                    "--session", "pivots", "--json", "--out", str(tmp_path / "r1"))  # fmt: skip
    assert first.returncode == 0, first.stderr
    round1 = json.loads(first.stdout)
    assert round1["session"] == "pivots"
    ids = [r["id"] for r in round1["results"]]
    second = run_cli("feedback", "pivots", "--good", "1", "--bad", "2", "--db", str(naip_db),
                     "--json", "--out", str(tmp_path / "r2"))  # fmt: skip
    assert second.returncode == 0, second.stderr
    round2 = json.loads(second.stdout)
    assert round2["feedback"] == {"good": [ids[0]], "bad": [ids[1]]}
    shown = [r["id"] for r in round2["results"]]
    assert ids[0] not in shown and ids[1] not in shown  # judged tiles are not shown again
    export = tmp_path / "marks.geojson"
    assert (
        run_cli("feedback", "pivots", "--export", str(export), "--db", str(naip_db)).returncode == 0
    )
    marks = json.loads(export.read_text())["features"]
    assert {(f["properties"]["id"], f["properties"]["label"]) for f in marks} == {
        (ids[0], "good"), (ids[1], "bad"),
    }  # fmt: skip
    assert all(f["geometry"]["type"] == "Polygon" and f["properties"]["marked_by"] for f in marks)
    assert {"feedback_sessions", "feedback_marks"} <= {
        name for name, _ in pyogrio.list_layers(naip_db)
    }
    missing = run_cli("feedback", "nope", "--good", "1", "--db", str(naip_db))
    assert missing.returncode == 3 and "no feedback session 'nope'" in missing.stderr
    wrong = run_cli("feedback", "pivots", "--good", "99", "--db", str(naip_db))
    assert wrong.returncode == 2 and "rank 99 is not among the" in wrong.stderr


def test_similar_with_good_and_bad_ids(naip_db):
    [plain] = geosearch.similar(naip_db, [NAIP_2009], top=5, tile=3)
    good, bad = plain.matches[2].tile.id, plain.matches[0].tile.id
    [moved] = geosearch.similar(naip_db, [NAIP_2009], top=5, tile=3, good=[good], bad=[bad])
    assert moved.feedback == {"good": [good], "bad": [bad]}
    assert {good, bad}.isdisjoint(m.tile.id for m in moved.matches)
