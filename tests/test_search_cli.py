"""Search and the CLI as a user meets them: commands, exit codes, GeoJSON, previews, JSON lines."""

from __future__ import annotations

import json
import sys

import numpy as np
import pyogrio
import pytest
from PIL import Image
from typer.testing import CliRunner

import geosearch
from geosearch.cli import app
from geosearch.sources import open_source
from tests.conftest import SAMPLE_TILES, run_cli, textured, write_geotiff

NAIP_2009 = SAMPLE_TILES / "naip" / "m_4709963_se_14_1_20090818.tif"
NAIP_2012 = SAMPLE_TILES / "naip" / "m_4709963_se_14_1_20120731.tif"
runner = CliRunner()


def test_similar_writes_rfc7946_geojson_previews_and_contact_sheet(naip_db, tmp_path):
    out = tmp_path / "results"
    result = runner.invoke(
        app, ["similar", str(NAIP_2009), "--tile", "3", "--db", str(naip_db), "--top", "5",
              "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    collection = json.loads((out / "similar.geojson").read_text())
    assert collection["type"] == "FeatureCollection" and "crs" not in collection
    roles = [f["properties"]["role"] for f in collection["features"]]
    assert roles == ["query"] + ["result"] * 5
    ranks = [f["properties"]["rank"] for f in collection["features"][1:]]
    scores = [f["properties"]["score"] for f in collection["features"][1:]]
    assert ranks == [1, 2, 3, 4, 5] and scores == sorted(scores, reverse=True)
    for feature in collection["features"]:
        geometry = feature["geometry"]
        assert geometry["type"] == "Polygon"
        ring = np.asarray(geometry["coordinates"][0])
        assert np.all((ring[:, 0] >= -180) & (ring[:, 0] <= 180) & (ring[:, 1] >= -90))
        assert np.array_equal(ring[0], ring[-1])
        signed_area = np.sum(ring[:-1, 0] * ring[1:, 1] - ring[1:, 0] * ring[:-1, 1])
        assert signed_area > 0  # exterior ring counter-clockwise (RFC 7946 3.1.6)
        preview = out / feature["properties"]["preview"]
        with Image.open(preview) as image:
            assert image.format == "PNG" and image.size == (256, 256) and image.mode == "RGB"
    query = collection["features"][0]["properties"]
    assert query["path"] == str(NAIP_2009.resolve()) and (query["row"], query["col"]) == (256, 256)
    with Image.open(out / "contact_sheet.png") as sheet:
        assert sheet.width == 6 * 256
    frame = pyogrio.read_dataframe(out / "similar.geojson")  # GDAL reads it back
    assert len(frame) == 6 and frame.crs.to_epsg() == 4326


def test_query_tile_is_never_its_own_result_and_same_place_ranks_first(naip_db):
    [result] = geosearch.similar(naip_db, [NAIP_2009], top=19, tile=3)
    ids = [m.tile.id for m in result.matches]
    assert result.query.exclude.isdisjoint(ids) and len(ids) == 19
    first = result.matches[0].tile
    assert (first.window.row, first.window.col) == (256, 256) and first.acquired != "2009-08-18"


def test_json_output_is_one_object_per_query(naip_db, tmp_path):
    result = run_cli(
        "similar", str(NAIP_2009), str(NAIP_2012), "--db", str(naip_db), "--top", "3",
        "--json", "--out", str(tmp_path / "r"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2
    for line, query in zip(lines, (NAIP_2009, NAIP_2012), strict=True):
        obj = json.loads(line)
        assert obj["query"]["path"] == str(query.resolve()) and obj["query"]["indexed"]
        assert [r["rank"] for r in obj["results"]] == [1, 2, 3]
        for item in obj["results"]:
            assert {"path", "id", "rank", "score", "row", "col", "geometry"} <= set(item)
            assert item["path"] != obj["query"]["path"]  # whole-file query: own tiles excluded


def test_query_with_a_new_file_embeds_it_like_ingest(naip_db, tmp_path):
    chip = tmp_path / "chip.tif"
    with open_source(NAIP_2012) as source:
        import rasterio
        from rasterio.windows import Window

        with rasterio.open(NAIP_2012) as src:
            window = Window(256, 0, 256, 256)
            profile = src.profile | {
                "width": 256,
                "height": 256,
                "photometric": "MINISBLACK",
                "transform": src.window_transform(window),
            }
            with rasterio.open(chip, "w", **profile) as dst:
                dst.write(src.read(window=window))
        assert source.width == 512
    [result] = geosearch.similar(naip_db, [chip], top=1)
    assert not result.query.indexed
    best = result.matches[0]
    assert best.score > 0.999  # the very same pixels are in the database
    assert best.tile.path.endswith("20120731.tif") and (
        best.tile.window.row,
        best.tile.window.col,
    ) == (0, 256)


def test_indexed_query_loads_no_model(naip_db, tmp_path):
    code = (
        "import sys, geosearch;"
        f"geosearch.similar({str(naip_db)!r}, [{str(NAIP_2009)!r}], top=3);"
        "print(sorted(m for m in ('tensorflow', 'keras', 'ai_edge_litert') if m in sys.modules))"
    )
    import subprocess

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_info_reports_what_the_database_holds(naip_db):
    result = runner.invoke(app, ["info", "--db", str(naip_db), "--json"])
    facts = json.loads(result.stdout)
    assert facts["tiles"] == 20 and facts["files"] == 5 and facts["kind"] == "geo"
    assert [e["name"] for e in facts["extractors"]] == ["band_stats", "layout", "cnn"]
    assert facts["dim"] == 4 * 15 + 4 * 16 * 16 + 1024 and facts["index"]["vectors"] == 20
    text = runner.invoke(app, ["info", "--db", str(naip_db)]).stdout
    assert "20 from 5 files" in text and "mobilenet_v1" in text


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["similar", "x.tif", "--db", "missing.gpkg"], 4, "no database at missing.gpkg"),
        (["info", "--db", "missing.gpkg"], 4, "no database at missing.gpkg"),
        (["ingest", "no/such/folder"], 3, "no/such/folder: no such file or folder"),
    ],
)
def test_user_errors_are_one_line_with_documented_exit_codes(tmp_path, args, code, message):
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == code
    assert result.stderr.strip() == f"error: {message}" or message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_ingest_exit_code_6_when_files_were_skipped(tmp_path):
    folder = tmp_path / "in"
    write_geotiff(folder / "ok.tif", textured((3, 32, 32), seed=1))
    (folder / "broken.tif").write_text("garbage")
    result = run_cli("ingest", str(folder), "--db", str(tmp_path / "db.gpkg"), "--json")
    assert result.returncode == 6
    report = json.loads(result.stdout)
    assert report["tiles_added"] == 1 and report["skipped"][0]["path"].endswith("broken.tif")
    assert "skipped" not in result.stdout.split("\n", 1)[-1]


def test_bad_config_names_the_key(tmp_path):
    (tmp_path / "config.yaml").write_text("features:\n  cnn:\n    modle: vgg16\n")
    result = run_cli("info", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: config.yaml: unknown setting 'features.cnn.modle'"
    (tmp_path / "config.yaml").write_text("tile_size: -3\n")
    result = run_cli("info", cwd=tmp_path)
    assert result.returncode == 2 and "tile_size" in result.stderr and "-3" in result.stderr


def test_module_and_console_script_show_help():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("ingest", "similar", "info"):
        assert command in result.stdout
        assert "--db" in run_cli(command, "--help").stdout


def test_previews_make_nodata_transparent(tmp_path, stats_only):
    data = textured((3, 64, 64), seed=9)
    data[:, :, :32] = 0
    path = write_geotiff(tmp_path / "half.tif", data, nodata=0)
    db = tmp_path / "db.gpkg"
    geosearch.ingest([path], db, stats_only)
    write_geotiff(tmp_path / "other.tif", textured((3, 64, 64), seed=10), nodata=0)
    geosearch.ingest([tmp_path / "other.tif"], db, stats_only)
    results = geosearch.similar(db, [path], top=1, settings=stats_only)
    files = geosearch.write_results(results, db, tmp_path / "out", settings=stats_only)
    with Image.open(files.previews[0]) as image:
        alpha = np.asarray(image)[..., 3]
    assert (alpha[:, :32] == 0).all() and (alpha[:, 32:] == 255).all()
