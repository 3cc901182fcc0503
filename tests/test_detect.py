"""``geosearch detect``: a classifier of a session's marks over the whole database.

On EuroSAT pictures (the session fixture of tests/conftest.py) the marks of one page of results
find most of their class; on a small georeferenced raster, adjacent detected tiles become one
polygon in detections.gpkg beside the probability map; bad input is one line and exit 2.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.windows
import shapely
from PIL import Image
from pyogrio.raw import read as read_layer
from typer.testing import CliRunner

import geosearch
from geosearch.cli import app
from geosearch.config import Settings
from geosearch.store import Store
from tests.conftest import EUROSAT_CLASSES, EUROSAT_PER_CLASS, textured, write_geotiff

runner = CliRunner()
OGRINFO = Path("/usr/bin/ogrinfo")
TILE = 32  # the raster below: 8 x 8 tiles, a 2 x 2 block of them a different kind of place
BLOCK = (slice(64, 128), slice(32, 96))  # rows 2-3, columns 1-2 of tiles


def label_of(path: str) -> str:
    return Path(path).parent.name


def test_marks_of_one_page_find_most_of_their_class(eurosat_db, tmp_path) -> None:
    db, pictures = eurosat_db
    name = "Industrial"
    [first] = geosearch.similar(db, [pictures[name][3]], top=20, session="detect-eurosat")
    good = [m.tile.id for m in first.matches if label_of(m.tile.path) == name]
    bad = [m.tile.id for m in first.matches if label_of(m.tile.path) != name]
    first_round = geosearch.detect(
        db, "detect-eurosat", good=good, bad=bad, review=5, out=tmp_path / "first"
    )
    reviewed = {r.tile.id: label_of(r.tile.path) == name for r in first_round.review}
    assert len(reviewed) == 5 and not set(reviewed) & (set(good) | set(bad))
    good += [t for t, is_it in reviewed.items() if is_it]  # a round of review, marked by label
    bad += [t for t, is_it in reviewed.items() if not is_it]
    result = geosearch.detect(
        db, "detect-eurosat", good=good, bad=bad, review=5, out=tmp_path / "out", threshold=0.6
    )
    query = first.query.tiles[0].id
    marked = set(good) | set(bad)
    with Store(db) as store:
        detected = {t for d in result.detections for t in d.tile_ids}
        tiles = store.tiles(sorted(detected - marked - {query}))
    hits = sum(label_of(t.path) == name for t in tiles)
    unmarked_of_class = EUROSAT_PER_CLASS - 1 - len(good)  # the query is not marked
    print(f"{len(tiles)} unmarked detected, {hits} {name}; {unmarked_of_class} to find")
    assert hits / unmarked_of_class > 0.6  # most of the class (35 of 39 when written)
    assert hits / max(1, len(tiles)) >= 0.8  # and mostly the class (35 of 38)
    assert result.scored == len(EUROSAT_CLASSES) * EUROSAT_PER_CLASS
    # plain pictures: GeoJSON without geometry, a contact sheet, no GeoPackage or map
    out = tmp_path / "out"
    collection = json.loads((out / "detections.geojson").read_text())
    assert len(collection["features"]) == len(result.detections)
    assert all(
        f["geometry"] is None and f["properties"]["tiles"] == 1 for f in collection["features"]
    )
    assert (out / "contact_sheet.png").stat().st_size > 1000
    assert not (out / "detections.gpkg").exists() and not (out / "probability.tif").exists()
    review = {r.tile.id for r in result.review}
    assert len(review) == 5 and not review & marked
    assert all((out / r.preview).is_file() for r in result.review)
    with Store(db) as store:  # the marks given were saved to the session
        saved = store.sessions.get("detect-eurosat")["marks"]
    assert {m["tile_id"] for m in saved} == marked
    chips = geosearch.export_chips(db, "detect-eurosat", tmp_path / "chips", negatives=4)
    assert (chips.good, chips.bad, chips.background) == (len(good), len(bad), 4)
    assert len(list((tmp_path / "chips" / "good").glob("*.png"))) == len(good)
    with Image.open(next((tmp_path / "chips" / "bad").glob("*.png"))) as picture:
        assert picture.size == (64, 64)
    with open(tmp_path / "chips" / "labels.csv", newline="") as f:
        row = next(csv.DictReader(f))
    with (
        Image.open(tmp_path / "chips" / row["chip"]) as chip,
        Image.open(row["source_file"]) as jpeg,
    ):
        assert np.array_equal(np.asarray(chip), np.asarray(jpeg.convert("RGB")))  # lossless, RGB
    assert not (tmp_path / "chips" / "chips.gpkg").exists()  # pictures have no footprints


@pytest.fixture(scope="module")
def raster_db(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A 256 x 256 px GeoTIFF in EPSG:32633 of 64 tiles of 32 px, band statistics only, whose
    2 x 2 block of tiles ``BLOCK`` is striped: (raster, database, config)."""
    folder = tmp_path_factory.mktemp("detect_raster")
    pixels = textured((3, 256, 256), seed=5)
    stripes = np.tile(np.repeat([30, 230], 4), 8).astype(np.uint8)  # 8 px a period
    pixels[(slice(None), *BLOCK)] = stripes[None, None, :] + textured((3, 64, 64), 6) // 16
    raster = write_geotiff(folder / "images" / "scene_20240601.tif", pixels)
    config = folder / "config.yaml"
    config.write_text(f"tile_size: {TILE}\nworkers: 1\nfeatures:\n  cnn:\n    weight: 0\n")
    db = folder / "scene.gpkg"
    settings = Settings(tile_size=TILE, workers=1).with_overrides({"features.cnn.weight": 0.0})
    assert geosearch.ingest([raster], db, settings).tiles_added == 64
    geosearch.similar(db, [raster], tile=2 * 8 + 1, session="geo", settings=settings)
    return raster, db, config


def tile_id(db: Path, row: int, col: int) -> int:
    with Store(db) as store:
        ids, _ = store.vectors()
        [tile] = [
            t for t in store.tiles(ids.tolist()) if (t.window.row, t.window.col) == (row, col)
        ]
    return int(tile.id)


def test_adjacent_detections_are_one_polygon_on_the_map(raster_db, tmp_path) -> None:
    raster, db, config = raster_db
    good = tile_id(db, 2 * TILE, 1 * TILE)
    bad = [tile_id(db, r * TILE, c * TILE) for r, c in ((0, 0), (5, 5), (7, 2), (3, 6))]
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["detect", "geo", "--db", str(db), "--config", str(config), "--good", str(good),
              "--bad", ",".join(map(str, bad)), "--out", str(out), "--threshold", "0.5",
              "--review", "3"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "64 tiles scored" in result.stderr and "review tile" in result.stdout
    info, _, geometries, fields = read_layer(str(out / "detections.gpkg"), layer="detections")
    assert info["crs"] == "EPSG:4326" and info["geometry_type"] == "MultiPolygon"
    names = list(info["fields"])
    biggest = int(np.argmax(fields[names.index("tiles")]))
    block = {tile_id(db, r * TILE, c * TILE) for r in (2, 3) for c in (1, 2)}
    ids = {int(t) for t in fields[names.index("tile_ids")][biggest].split(",")}
    assert ids >= block  # the 4 striped tiles in one detection
    polygon = shapely.from_wkb(geometries[biggest])
    assert len(polygon.geoms) == 1  # merged, not 4 parts
    with Store(db) as store:
        footprints = shapely.union_all([t.footprint for t in store.tiles(sorted(block))])
    assert polygon.covers(footprints.buffer(-1e-9))
    assert fields[names.index("prob_max")][biggest] >= 0.5
    assert fields[names.index("dates")][biggest] == "2024-06-01"
    with rasterio.open(out / "probability.tif") as dataset:
        assert dataset.crs.to_epsg() == 32633 and dataset.shape == (8, 8)
        values = dataset.read(1)
        assert values[2:4, 1:3].min() >= 0.5 and np.median(values) < 0.5
    assert (out / "probability.qml").is_file()
    collection = json.loads((out / "detections.geojson").read_text())
    assert len(collection["features"]) == len(fields[0])


def test_detections_gpkg_opens_in_ogrinfo_without_warnings(raster_db, tmp_path) -> None:
    if not OGRINFO.exists():
        pytest.skip(f"{OGRINFO} not installed (Debian's gdal-bin)")
    _, db, config = raster_db
    good = tile_id(db, 2 * TILE, 1 * TILE)
    result = runner.invoke(
        app, ["detect", "geo", "--db", str(db), "--config", str(config), "--good", str(good),
              "--out", str(tmp_path), "--threshold", "0.5"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    done = subprocess.run(
        [str(OGRINFO), "-so", "-al", str(tmp_path / "detections.gpkg")],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "Warning" not in done.stderr and "Geometry: Multi Polygon" in done.stdout


@pytest.mark.parametrize(
    ("options", "config_text", "message"),
    [
        ([], "", "no tile marked good"),
        (["--good", "GOOD", "--threshold", "1.5"], "", "--threshold 1.5"),
        (["--good-within", "missing.geojson"], "", "not a readable vector file"),
        (["--good", "GOOD"], "detect:\n  background: 0\n", "mark some tiles bad"),
    ],
    ids=["no-good-mark", "threshold", "area-file", "no-negatives"],
)
def test_bad_input_is_one_line_and_exit_2(raster_db, tmp_path, options, config_text, message):
    raster, db, config = raster_db
    copy = tmp_path / "scene.gpkg"  # a session of its own: marks given here are saved
    shutil.copy(db, copy)
    for index in db.parent.glob(db.name + ".faiss*"):
        shutil.copy(index, tmp_path / index.name.replace(db.name, copy.name))
    geosearch.similar(copy, [raster], tile=0, session="bare", settings=Settings(tile_size=TILE))
    settings = tmp_path / "config.yaml"
    settings.write_text(config.read_text() + config_text)
    options = [str(tile_id(db, 2 * TILE, TILE)) if o == "GOOD" else o for o in options]
    options = [str(tmp_path / o) if o.endswith(".geojson") else o for o in options]
    result = runner.invoke(
        app, ["detect", "bare", "--db", str(copy), "--config", str(settings), "--out",
              str(tmp_path / "out"), *options],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_exported_chips_are_georeferenced_and_labelled(raster_db, tmp_path) -> None:
    raster, db, config = raster_db
    good = [tile_id(db, 2 * TILE, TILE), tile_id(db, 3 * TILE, 2 * TILE)]
    bad = [tile_id(db, 0, 0)]
    settings = Settings(tile_size=TILE, workers=1).with_overrides({"features.cnn.weight": 0.0})
    geosearch.similar(db, [raster], tile=0, session="chips", good=good, bad=bad, settings=settings)
    out = tmp_path / "chips"
    result = runner.invoke(
        app, ["feedback", "chips", "--db", str(db), "--config", str(config), "--export-chips",
              str(out), "--negatives", "3"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "wrote 2 good and 4 bad chips (3 of them background)" in result.stderr
    with open(out / "labels.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert sorted((r["label"], r["origin"]) for r in rows) == sorted(
        [("good", "marked")] * 2 + [("bad", "marked")] + [("bad", "background")] * 3
    )
    with rasterio.open(raster) as source:
        for row in rows:
            with rasterio.open(out / row["chip"]) as chip:
                assert chip.crs == source.crs and chip.count == 3 and chip.shape == (TILE, TILE)
                window = rasterio.windows.Window(int(row["col"]), int(row["row"]), TILE, TILE)
                assert chip.transform == source.window_transform(window)
                assert np.array_equal(chip.read(), source.read(window=window))
    assert {Path(r["chip"]).stem for r in rows if r["label"] == "good"} == {
        f"tile{t}" for t in good
    }
    info, _, geometries, fields = read_layer(str(out / "chips.gpkg"), layer="chips")
    assert len(geometries) == 6 and info["crs"] == "EPSG:4326"
    assert sorted(fields[list(info["fields"]).index("label")]) == ["bad"] * 4 + ["good"] * 2
    if OGRINFO.exists():
        done = subprocess.run([str(OGRINFO), "-so", "-al", str(out / "chips.gpkg")],
                              capture_output=True, text=True, check=True)  # fmt: skip
        assert "Warning" not in done.stderr and "Feature Count: 6" in done.stdout


def test_spark_gives_the_same_detections_as_the_local_run(raster_db, tmp_path) -> None:
    pytest.importorskip("pyspark", reason="the spark extra is installed by make test")
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    _, db, config = raster_db
    good = tile_id(db, 2 * TILE, TILE)
    bad = tile_id(db, 0, 0)
    outputs = []
    for engine in (["--engine", "local"], ["--engine", "spark", "--master", "local[2]"]):
        out = tmp_path / engine[1]
        result = runner.invoke(
            app, ["detect", "geo", "--db", str(db), "--config", str(config), "--good", str(good),
                  "--bad", str(bad), "--out", str(out), "--threshold", "0.5", "--json", *engine],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        outputs.append((json.loads(result.stdout), out))
    (local, local_out), (spark, spark_out) = outputs
    assert local["scored"] == spark["scored"] == 64
    assert [d["properties"]["tile_ids"] for d in local["detections"]] == [
        d["properties"]["tile_ids"] for d in spark["detections"]
    ]
    assert [d["geometry"] for d in local["detections"]] == [
        d["geometry"] for d in spark["detections"]
    ]
    assert [r["id"] for r in local["review"]] == [r["id"] for r in spark["review"]]
    with (
        rasterio.open(local_out / "probability.tif") as a,
        rasterio.open(spark_out / "probability.tif") as b,
    ):
        np.testing.assert_allclose(a.read(1), b.read(1), atol=1e-5)


def test_the_classifier_is_scikit_learns_logistic_regression() -> None:
    """The L-BFGS fit reaches the minimum scikit-learn's LogisticRegression(C) finds, with the
    same weights a row (background lighter, classes balanced), on vectors like the stored ones."""
    from sklearn.linear_model import LogisticRegression

    from geosearch.classifier import train_classifier

    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((300, 128)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors[:20] += vectors[0]  # the marked kind: near one another
    positives, negatives, background = vectors[:12], vectors[20:30], vectors[30:]
    ours = train_classifier(positives, negatives, background, background_weight=0.04, c=0.3)
    rows = np.vstack([positives, negatives, background]).astype(np.float64)
    labels = np.r_[np.ones(12), np.zeros(10 + len(background))]
    weights = np.r_[np.ones(22), np.full(len(background), 0.04)]
    for label in (0, 1):
        weights[labels == label] *= len(weights) / (2 * weights[labels == label].sum())
    theirs = LogisticRegression(C=0.3, tol=1e-10, max_iter=10_000)
    theirs.fit(rows, labels, sample_weight=weights)
    np.testing.assert_allclose(ours.weights, theirs.coef_[0], atol=1e-4)
    assert ours.bias == pytest.approx(theirs.intercept_[0], abs=1e-4)
    unmarked = vectors[12:20]  # the kind's unmarked tiles score above the background
    assert ours.probability(unmarked).min() > ours.probability(background).max()


def test_adjacent_groups_and_the_largest_scores_without_sorting_all() -> None:
    """The merging's union-find groups nodes as a graph search would; ``largest`` is what a
    stable descending sort gives, ties in index order."""
    from geosearch.detection import connected_groups, largest

    # 0-1-2 a chain, 3 alone, 4-5 and 5-4 twice, 6 joined to itself
    groups = connected_groups(7, np.array([0, 2, 4, 5, 6]), np.array([1, 1, 5, 4, 6]))
    assert groups.tolist() == [0, 0, 0, 1, 2, 2, 3]
    assert connected_groups(0, np.zeros(0, int), np.zeros(0, int)).tolist() == []
    values = np.array([0.5, 2.0, -np.inf, 2.0, 0.5, 0.5, 1.0, -np.inf], np.float32)
    for count in range(0, 10):
        expected = np.argsort(-values, kind="stable")[:count]
        assert largest(values, count).tolist() == expected.tolist(), count
