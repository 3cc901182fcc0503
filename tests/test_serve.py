"""geosearch serve: the HTTP API on real ingested imagery, through FastAPI's TestClient and a
real uvicorn server on loopback (for concurrency with an ingest running in another process)."""

from __future__ import annotations

import io
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import geosearch
from geosearch.config import Settings
from geosearch.errors import DatabaseError
from tests.conftest import ROOT, SAMPLE_TILES, run_cli, shared, write_geotiff

pytest.importorskip("fastapi", reason="needs the serve extra: pip install 'geosearch[serve]'")
from fastapi.testclient import TestClient  # noqa: E402

from geosearch.serve import create_app  # noqa: E402

NAIP = SAMPLE_TILES / "naip"
NAIP_2009 = NAIP / "m_4709963_se_14_1_20090818.tif"


# -- helpers ------------------------------------------------------------------------------


def copy_database(db: Path, folder: Path) -> Path:
    """A copy of a database and its index files, to write to without touching the original."""
    folder.mkdir(parents=True, exist_ok=True)
    for file in db.parent.glob(db.name + "*"):
        if not file.name.endswith(".lock"):
            shutil.copy2(file, folder / file.name)
    return folder / db.name


@contextmanager
def running_server(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a thread on 127.0.0.1 (a free port); yields its URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


def get_json(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def result_ids(collection: dict) -> list[int]:
    return [f["properties"]["id"] for f in collection["features"] if f["properties"]["rank"]]


def tile_ids_of(client: TestClient, path: Path) -> list[int]:
    """Ids of a file's tiles, row-major (as ``--tile N`` counts them)."""
    features = client.get("/api/tiles", params={"limit": 5000}).json()["features"]
    mine = [f["properties"] for f in features if f["properties"]["path"] == str(path)]
    return [p["id"] for p in sorted(mine, key=lambda p: (p["row"], p["col"]))]


def uploads_left() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("geosearch-upload-*")}


# -- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def read_only(naip_db: Path) -> TestClient:
    return TestClient(create_app(naip_db, Settings(), allow_feedback=False))


@pytest.fixture(scope="module")
def writable_db(naip_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_database(naip_db, tmp_path_factory.mktemp("serve-rw"))


@pytest.fixture(scope="module")
def feedback(writable_db: Path) -> TestClient:
    return TestClient(create_app(writable_db, Settings(), allow_feedback=True))


@pytest.fixture(scope="module")
def gallery(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TestClient]:
    images = shared("images")
    db = tmp_path_factory.mktemp("serve-gallery") / "gallery.gpkg"
    assert geosearch.ingest([images], db).tiles_added == 8
    return images, TestClient(create_app(db, Settings()))


# -- database, tiles, page ----------------------------------------------------------------


def test_info_config_and_openapi(read_only, naip_db):
    info = read_only.get("/api/info").json()
    assert (info["tiles"], info["files"], info["kind"]) == (20, 5, "geo")
    config = read_only.get("/api/config").json()
    assert config["kind"] == "geo" and config["tiles"] == 20
    assert config["allow_feedback"] is False and config["basemap"] is None
    schema = read_only.get("/api/openapi.json").json()
    for path in (
        "/api/info", "/api/tiles", "/api/tiles/{tile_id}", "/api/tiles/{tile_id}/preview.png",
        "/api/similar", "/api/similar/upload", "/api/sessions", "/api/sessions/{name}/marks",
        "/api/sessions/{name}/marks.geojson",
    ):  # fmt: skip
        assert path in schema["paths"], path
    assert "404" in schema["paths"]["/api/tiles/{tile_id}"]["get"]["responses"]


def test_tiles_in_a_box_come_paged_as_geojson(read_only):
    everything = read_only.get("/api/tiles").json()
    assert everything["type"] == "FeatureCollection" and everything["total"] == 20
    feature = everything["features"][0]
    assert feature["geometry"]["type"] == "Polygon"
    assert feature["properties"]["preview"] == f"/api/tiles/{feature['id']}/preview.png"
    lons = [x for f in everything["features"] for x, _ in f["geometry"]["coordinates"][0]]
    lats = [y for f in everything["features"] for _, y in f["geometry"]["coordinates"][0]]
    box = f"{min(lons) - 0.01},{min(lats) - 0.01},{max(lons) + 0.01},{max(lats) + 0.01}"
    seen, offset, url = [], 0, None
    while True:
        page = read_only.get("/api/tiles", params={"bbox": box, "limit": 7, "offset": offset})
        body = page.json()
        assert body["total"] == 20 and len(body["features"]) == min(7, 20 - offset)
        seen += [f["id"] for f in body["features"]]
        url = body["next"]
        if url is None:
            break
        assert f"offset={offset + 7}" in url
        offset += 7
    assert sorted(seen) == sorted(f["id"] for f in everything["features"])
    elsewhere = read_only.get("/api/tiles", params={"bbox": "10,10,11,11"}).json()
    assert elsewhere["total"] == 0 and elsewhere["features"] == []
    # a box over the western half of the area holds fewer tiles
    west = f"{min(lons) - 0.01},{min(lats) - 0.01},{(min(lons) + max(lons)) / 2 - 0.001},90"
    assert 0 < read_only.get("/api/tiles", params={"bbox": west}).json()["total"] < 20


def test_coverage_layer_shows_where_tiles_are_at_any_zoom(read_only):
    """The map page's first view: the extent of every tile and XYZ map tiles coloured where
    tiles lie (transparent elsewhere), the same whatever the database's size."""
    from geosearch.coverage import map_tile_bounds

    config = read_only.get("/api/config").json()
    west, south, east, north = config["extent"]
    tiles = read_only.get("/api/tiles").json()["features"]
    centres = [np.mean(np.array(f["geometry"]["coordinates"][0])[:-1], axis=0) for f in tiles]
    assert all(west - 1e-3 <= x <= east + 1e-3 and south - 1e-3 <= y <= north + 1e-3
               for x, y in centres)  # fmt: skip
    lon, lat = (west + east) / 2, (south + north) / 2
    for z in (3, 12):
        n = 2**z
        x = int((lon + 180) / 360 * n)
        y = int((1 - np.arcsinh(np.tan(np.radians(lat))) / np.pi) / 2 * n)
        w, s, e, nn = map_tile_bounds(z, x, y)
        assert w <= lon <= e and s <= lat <= nn
        response = read_only.get(f"/api/coverage/{z}/{x}/{y}.png")
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        alpha = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGBA"))[..., 3]
        covered = int((alpha > 0).sum())
        assert 0 < covered < alpha.size  # tiles here, and empty ground around them
    empty = read_only.get("/api/coverage/3/0/0.png")  # the Arctic west of Alaska: no tile
    assert not np.asarray(Image.open(io.BytesIO(empty.content)).convert("RGBA"))[..., 3].any()
    assert read_only.get("/api/coverage/2/4/0.png").status_code == 404  # no such map tile


def test_one_tile_and_unknown_ids(read_only):
    one = read_only.get("/api/tiles/1")
    assert one.status_code == 200 and one.json()["properties"]["id"] == 1
    missing = read_only.get("/api/tiles/99999")
    assert missing.status_code == 404
    assert missing.json() == {"error": "no tile 99999 in naip.gpkg"}
    assert read_only.get("/api/tiles/99999/preview.png").status_code == 404
    assert read_only.get("/api/similar", params={"tile": 99999}).status_code == 404


def test_the_page_and_its_map_library_are_served_without_a_cdn(read_only):
    page = read_only.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert 'src="static/vendor/leaflet/leaflet.js"' in page.text
    leaflet = read_only.get("/static/vendor/leaflet/leaflet.js")
    assert leaflet.status_code == 200 and "Leaflet 1.9.4" in leaflet.text[:300]
    assert read_only.get("/static/vendor/leaflet/leaflet.css").status_code == 200
    static = ROOT / "geosearch" / "serve" / "static"
    for name in ("index.html", "app.js", "app.css"):
        text = (static / name).read_text().replace("http://www.w3.org/2000/svg", "")
        assert "http://" not in text and "https://" not in text, name
    licence = (static / "vendor" / "leaflet" / "LICENSE").read_text()
    assert "BSD 2-Clause" in licence


def test_basemap_comes_from_settings(naip_db):
    with_basemap = Settings().with_overrides(
        {"serve.basemap": "https://tiles.invalid/{z}/{x}/{y}.png"}
    )
    client = TestClient(create_app(naip_db, with_basemap))
    assert client.get("/api/config").json()["basemap"] == "https://tiles.invalid/{z}/{x}/{y}.png"
    assert "img-src 'self' data: blob: https:" in client.get("/").headers["content-security-policy"]


def test_a_missing_database_is_503_and_run_refuses_it(tmp_path):
    client = TestClient(create_app(tmp_path / "none.gpkg", Settings()))
    answer = client.get("/api/config")
    assert answer.status_code == 503
    assert answer.json()["error"].startswith(f"no database at {tmp_path / 'none.gpkg'}")
    from geosearch.serve import run

    with pytest.raises(DatabaseError, match="no database at"):
        run(tmp_path / "none.gpkg", "127.0.0.1", 0)


def test_run_serves_on_loopback_until_interrupted(naip_db):
    code = f"from geosearch.serve import run; run({str(naip_db)!r}, '127.0.0.1', 0)"
    server = subprocess.Popen(
        [sys.executable, "-c", code], stderr=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        line = server.stderr.readline()
        assert line.startswith("geosearch serve: http://127.0.0.1:"), line
        assert f"(20 tiles in {naip_db}, read-only); Ctrl+C stops" in line
        url = line.split()[2]
        assert get_json(url + "api/config")[1]["tiles"] == 20
        rebound = urllib.request.Request(url + "api/config", headers={"Host": "evil.invalid"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(rebound, timeout=30)
        assert refused.value.code == 400
        assert json.loads(refused.value.read()) == {"error": "unknown Host header 'evil.invalid'"}
        taken = int(url.rsplit(":", 1)[1].strip("/"))
        from geosearch.errors import ConfigError
        from geosearch.serve import run

        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{taken}: "):
            run(naip_db, "127.0.0.1", taken)
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(30)
    assert server.returncode == 0
    assert server.stderr.read() == "geosearch serve: stopped\n"


def test_core_install_does_not_import_fastapi_and_names_the_extra():
    code = (
        "import sys, geosearch.serve\n"
        "assert 'fastapi' not in sys.modules and 'uvicorn' not in sys.modules\n"
        "sys.modules['fastapi'] = None  # as if the extra were not installed\n"
        "from geosearch.errors import ConfigError\n"
        "try:\n"
        "    geosearch.serve.run('x.gpkg')\n"
        "except ConfigError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        "geosearch serve needs the optional package 'fastapi': pip install 'geosearch[serve]'"
    )


# -- previews -----------------------------------------------------------------------------


def test_previews_are_pngs_with_etag_and_304(read_only):
    first = read_only.get("/api/tiles/2/preview.png")
    assert first.status_code == 200 and first.headers["content-type"] == "image/png"
    assert first.headers["cache-control"] == "public, max-age=600"
    etag = first.headers["etag"]
    with Image.open(io.BytesIO(first.content)) as image:
        assert image.format == "PNG" and image.size == (256, 256) and image.mode == "RGB"
    service = read_only.app.state.service
    hits = service.previews.hits
    again = read_only.get("/api/tiles/2/preview.png")
    assert again.content == first.content and service.previews.hits == hits + 1
    unchanged = read_only.get("/api/tiles/2/preview.png", headers={"If-None-Match": etag})
    assert unchanged.status_code == 304 and unchanged.content == b""
    assert unchanged.headers["etag"] == etag
    weak = read_only.get("/api/tiles/2/preview.png", headers={"If-None-Match": f"W/{etag}"})
    assert weak.status_code == 304
    small = read_only.get("/api/tiles/2/preview.png", params={"size": 64})
    assert small.status_code == 200 and small.headers["etag"] != etag
    with Image.open(io.BytesIO(small.content)) as image:
        assert image.size == (64, 64)
    other = read_only.get("/api/tiles/3/preview.png", headers={"If-None-Match": etag})
    assert other.status_code == 200 and other.headers["etag"] != etag
    too_big = read_only.get("/api/tiles/2/preview.png", params={"size": 5000})
    assert too_big.status_code == 422 and too_big.json()["error"].startswith("size: ")


# -- searching ----------------------------------------------------------------------------


def test_similar_to_a_tile_matches_the_library(read_only, naip_db):
    query_id = tile_ids_of(read_only, NAIP_2009)[3]
    answer = read_only.get("/api/similar", params={"tile": query_id, "top": 6})
    assert answer.status_code == 200
    body = answer.json()
    query, *results = body["features"]
    assert query["properties"]["role"] == "query" and query["properties"]["id"] == query_id
    assert [f["properties"]["rank"] for f in results] == [1, 2, 3, 4, 5, 6]
    scores = [f["properties"]["score"] for f in results]
    assert scores == sorted(scores, reverse=True)
    assert query_id not in result_ids(body)
    assert results[0]["properties"]["preview"].endswith("/preview.png")
    assert body["session"] is None  # nothing saved
    [library] = geosearch.similar(naip_db, [NAIP_2009], top=6, tile=3)
    assert result_ids(body) == [m.tile.id for m in library.matches]
    assert scores == [round(m.score, 6) for m in library.matches]


def test_similar_any_orientation_parameter_matches_the_library(read_only, naip_db):
    query_id = tile_ids_of(read_only, NAIP_2009)[3]
    params = {"tile": query_id, "top": 4, "any_orientation": "true"}
    body = read_only.get("/api/similar", params=params).json()
    [library] = geosearch.similar(naip_db, [NAIP_2009], top=4, tile=3, any_orientation=True)
    assert library.query.turned is not None
    assert result_ids(body) == [m.tile.id for m in library.matches]


def test_similar_takes_the_cli_options(read_only):
    query_id = tile_ids_of(read_only, NAIP_2009)[0]
    other = read_only.get("/api/similar", params={"tile": query_id, "other_files": True})
    paths = [f["properties"]["path"] for f in other.json()["features"][1:]]
    assert paths and str(NAIP_2009) not in paths
    recent = read_only.get(
        "/api/similar", params={"tile": query_id, "after": "2014-01-01", "top": 20}
    ).json()
    dates = [f["properties"]["acquired"] for f in recent["features"][1:]]
    assert len(dates) == 8 and min(dates) >= "2014-01-01"
    window = read_only.get(
        "/api/similar",
        params={"tile": query_id, "after": "2010-01-01", "before": "2012-12-31", "top": 20},
    ).json()
    assert {f["properties"]["acquired"] for f in window["features"][1:]} == {
        "2010-06-29", "2012-07-31",
    }  # fmt: skip
    far = read_only.get("/api/similar", params={"tile": query_id, "exclude_near": 5000}).json()
    assert far["features"][1:] == []  # every tile lies within 2.6 km
    boxed = read_only.get("/api/similar", params={"tile": query_id, "bbox": "10,10,11,11"})
    assert boxed.json()["features"][1:] == []
    plain = result_ids(read_only.get("/api/similar", params={"tile": query_id}).json())
    moved = read_only.get(
        "/api/similar", params={"tile": query_id, "good": [plain[2]], "bad": [plain[0]]}
    ).json()
    assert moved["feedback"] == {"good": [plain[2]], "bad": [plain[0]]}
    assert {plain[0], plain[2]}.isdisjoint(result_ids(moved))


def test_similar_to_a_place_picks_the_tile_and_date(read_only):
    tile = read_only.get(f"/api/tiles/{tile_ids_of(read_only, NAIP_2009)[0]}").json()
    ring = tile["geometry"]["coordinates"][0]
    lon = sum(x for x, _ in ring[:-1]) / (len(ring) - 1)
    lat = sum(y for _, y in ring[:-1]) / (len(ring) - 1)
    latest = read_only.get("/api/similar", params={"lon": lon, "lat": lat}).json()
    assert latest["features"][0]["properties"]["acquired"] == "2015-09-26"
    dated = read_only.get("/api/similar", params={"lon": lon, "lat": lat, "date": "2009-08-18"})
    assert dated.json()["features"][0]["properties"]["id"] == tile["id"]
    nowhere = read_only.get("/api/similar", params={"lon": 10, "lat": 10})
    assert nowhere.status_code == 400
    assert nowhere.json()["error"] == "no indexed tile contains 10.0,10.0 in naip.gpkg"


@pytest.mark.parametrize(
    ("params", "status", "message"),
    [
        ({"tile": 1, "top": 0}, 422, "top: Input should be greater than or equal to 1"),
        ({"tile": 1, "top": 501}, 422, "top: Input should be less than or equal to 500"),
        ({"tile": "one"}, 422, "tile: Input should be a valid integer"),
        ({"tile": 1, "bbox": "1,2,3"}, 400, "bbox: expected minx,miny,maxx,maxy"),
        ({"tile": 1, "bbox": "3,2,1,4"}, 400, "bbox: expected minx,miny,maxx,maxy"),
        ({}, 400, "give either tile=ID, or lon=LON&lat=LAT"),
        ({"tile": 1, "lon": 1, "lat": 2}, 400, "give either tile=ID"),
        ({"lon": -99.1}, 400, "give either tile=ID"),
        ({"lon": 1, "lat": 95}, 422, "lat: Input should be less than or equal to 90"),
        ({"tile": 1, "after": "last week"}, 422, "after: Input should be a valid date"),
        ({"tile": 1, "exclude_near": -1}, 422, "exclude_near: Input should be greater"),
        ({"tile": 1, "good": 99999}, 400, "tile id 99999 is not in naip.gpkg"),
        ({"lon": -99.16, "lat": 47.02, "date": "2011-01-01"}, 400, "no tile at -99.16,47.02"),
    ],
)
def test_bad_parameters_are_4xx_with_one_clear_line(read_only, params, status, message):
    answer = read_only.get("/api/similar", params=params)
    assert answer.status_code == status, answer.text
    assert answer.json()["error"].startswith(message), answer.json()["error"]


# -- uploads ------------------------------------------------------------------------------


def test_upload_a_geotiff(read_only):
    before = uploads_left()
    with open(NAIP_2009, "rb") as file:
        answer = read_only.post(
            "/api/similar/upload", params={"tile": 0, "top": 3}, files={"file": ("q.tif", file)}
        )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    query = body["features"][0]["properties"]
    assert query["path"] == "q.tif" and query["id"] is None and query["preview"] is None
    assert body["features"][0]["geometry"]["type"] == "Polygon"  # the upload is georeferenced
    best = body["features"][1]["properties"]
    # the same pixels as the stored tile: found first, with the same vector
    assert best["id"] == tile_ids_of(read_only, NAIP_2009)[0] and best["score"] > 0.999
    assert "geosearch-upload-" not in answer.text  # no temporary path goes back
    assert uploads_left() == before  # the private folder is gone


def test_upload_a_png_to_a_gallery_and_to_a_raster_database(gallery, read_only):
    images, client = gallery
    config = client.get("/api/config").json()
    assert (config["kind"], config["tiles"]) == ("plain", 8)
    tiles = client.get("/api/tiles").json()
    assert tiles["total"] == 8 and all(f["geometry"] is None for f in tiles["features"])
    png = io.BytesIO()
    with Image.open(images / "cat.jpg") as cat:
        cat.convert("RGB").save(png, format="PNG")
    answer = client.post(
        "/api/similar/upload", params={"top": 3}, files={"file": ("my cat.png", png.getvalue())}
    )
    assert answer.status_code == 200, answer.text
    results = answer.json()["features"][1:]
    assert results[0]["properties"]["name"] in ("cat.jpg", "cat_2.png")
    assert all(f["geometry"] is None for f in results)
    # On a raster database a picture is compared on its RGB bands; a cat is found nowhere.
    answer = read_only.post("/api/similar/upload", files={"file": ("x.png", png.getvalue())})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["query"]["compared_on"]["missing"] == ["band4"]
    assert body["location"] is None


def test_uploads_that_are_not_images_or_too_large(read_only, tmp_path):
    before = uploads_left()
    text = read_only.post("/api/similar/upload", files={"file": ("x.png", b"hello world")})
    assert text.status_code == 415
    assert text.json() == {"error": "upload: not a PNG, JPEG or TIFF image"}
    broken = read_only.post(
        "/api/similar/upload", files={"file": ("x.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 100)}
    )
    assert broken.status_code == 400 and "not a readable image" in broken.json()["error"]
    huge = b"\x89PNG\r\n\x1a\n" + b"\0" * (21 * 2**20)
    declared = read_only.post("/api/similar/upload", files={"file": ("x.png", huge)})
    assert declared.status_code == 413
    assert declared.json() == {"error": "upload: larger than 20 MB; crop or downsample it"}

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n\r\n'
        for _ in range(22):
            yield b"\0" * 2**20
        yield b"\r\n--b--\r\n"

    streamed = read_only.post(
        "/api/similar/upload",
        content=chunks(),
        headers={"Content-Type": "multipart/form-data; boundary=b"},
    )
    assert streamed.status_code == 413
    wide = io.BytesIO()
    Image.new("L", (10_000, 5_000)).save(wide, format="PNG")  # 50 MP of black: 50 kB
    pixels = read_only.post("/api/similar/upload", files={"file": ("x.png", wide.getvalue())})
    assert pixels.status_code == 413
    assert pixels.json()["error"] == (
        "upload: 10000x5000 px is more than 40 megapixels; downsample it"
    )
    scene = write_geotiff(
        tmp_path / "scene.tif", np.zeros((4, 2100, 2100), "uint8"), compress="deflate"
    )
    with open(scene, "rb") as file:
        tiles = read_only.post("/api/similar/upload", files={"file": ("scene.tif", file)})
    assert tiles.status_code == 413
    assert tiles.json()["error"] == (
        "upload: 2100x2100 px is 81 tiles of 256 px; a query image may have at most 64 (crop it)"
    )
    missing = read_only.post("/api/similar/upload")
    assert missing.status_code == 422 and missing.json()["error"].startswith("file: Field required")
    with open(NAIP_2009, "rb") as file:
        wrong_tile = read_only.post(
            "/api/similar/upload", params={"tile": 9}, files={"file": ("q.tif", file)}
        )
    assert wrong_tile.status_code == 400 and "has 4 tiles" in wrong_tile.json()["error"]
    assert uploads_left() == before


# -- feedback sessions --------------------------------------------------------------------


def test_read_only_service_refuses_marks_with_403(read_only, naip_db):
    sessions = read_only.get("/api/sessions").json()
    created = read_only.post("/api/sessions", json={"tile": 1})
    assert created.status_code == 403
    assert "--allow-feedback" in created.json()["error"]
    marked = read_only.post("/api/sessions/anything/marks", json={"good": [1]})
    assert marked.status_code == 403
    assert read_only.get("/api/sessions").json() == sessions


def test_feedback_session_rounds(feedback, writable_db, tmp_path):
    query_id = tile_ids_of(feedback, NAIP_2009)[3]
    plain = result_ids(feedback.get("/api/similar", params={"tile": query_id, "top": 6}).json())
    created = feedback.post(
        "/api/sessions", json={"tile": query_id, "top": 6, "good": [plain[0]], "name": "web-1"}
    )
    assert created.status_code == 201, created.text
    round1 = created.json()
    assert round1["session"] == "web-1" and round1["feedback"] == {"good": [plain[0]], "bad": []}
    assert plain[0] not in result_ids(round1) and len(result_ids(round1)) == 6
    stored = feedback.get("/api/sessions/web-1").json()
    assert stored["query"]["path"] == str(NAIP_2009) and stored["query"]["tile"] == 3
    assert [(m["tile_id"], m["label"]) for m in stored["marks"]] == [(plain[0], 1)]
    assert stored["last_results"] == result_ids(round1)
    bad = result_ids(round1)[0]
    round2 = feedback.post("/api/sessions/web-1/marks", json={"bad": [bad]}).json()
    assert round2["feedback"] == {"good": [plain[0]], "bad": [bad]}
    assert {plain[0], bad}.isdisjoint(result_ids(round2))
    export = feedback.get("/api/sessions/web-1/marks.geojson")
    assert export.status_code == 200 and export.headers["content-type"] == "application/geo+json"
    marks = {(f["properties"]["id"], f["properties"]["label"]) for f in export.json()["features"]}
    assert marks == {(plain[0], "good"), (bad, "bad")}
    # the command line sees the same session and marks
    exported = tmp_path / "marks.geojson"
    cli = run_cli("feedback", "web-1", "--export", str(exported), "--db", str(writable_db))
    assert cli.returncode == 0, cli.stderr
    assert json.loads(exported.read_text()) == export.json()
    assert "web-1" in feedback.get("/api/sessions").json()


def test_sessions_by_place_and_their_errors(feedback):
    tile = feedback.get("/api/tiles/1").json()
    lon, lat = tile["geometry"]["coordinates"][0][0]
    lon, lat = lon + 0.001, lat - 0.001
    made = feedback.post("/api/sessions", json={"lon": lon, "lat": lat, "top": 3})
    assert made.status_code == 201, made.text
    name = made.json()["session"]
    assert name.startswith("web-") and len(result_ids(made.json())) == 3
    assert feedback.get(f"/api/sessions/{name}").json()["query"]["lonlat"] == [lon, lat]
    again = feedback.post("/api/sessions", json={"tile": 1, "name": "web-1b"})
    assert again.status_code == 201
    clash = feedback.post("/api/sessions", json={"tile": 1, "name": "web-1b"})
    assert clash.status_code == 409 and "exists already" in clash.json()["error"]
    for body, text in (
        ({"tile": 1, "name": "../etc"}, "name: String should match pattern"),
        ({"tile": 1, "lon": 1, "lat": 1}, "give either tile, or lon and lat"),
        ({"lon": 1}, "give either tile, or lon and lat"),
        ({"tile": 1, "colour": "red"}, "colour: Extra inputs are not permitted"),
    ):
        answer = feedback.post("/api/sessions", json=body)
        assert answer.status_code == 422 and answer.json()["error"].startswith(text), answer.text
    assert feedback.post("/api/sessions", json={"tile": 99999}).status_code == 404
    assert feedback.get("/api/sessions/nope").status_code == 404
    unknown = feedback.post("/api/sessions/nope/marks", json={"good": [1]})
    assert unknown.status_code == 404 and unknown.json()["error"].startswith("no feedback session")
    wrong = feedback.post(f"/api/sessions/{name}/marks", json={"good": [99999]})
    assert wrong.status_code == 400 and wrong.json()["error"] == "tile id 99999 is not in naip.gpkg"
    assert feedback.get("/api/sessions/nope/marks.geojson").status_code == 404


BOX_MARKS = "/api/sessions/web-box/marks/box"


def test_a_box_marks_exactly_the_tiles_whose_footprint_meets_it(feedback, read_only):
    import shapely
    from shapely.geometry import shape

    features = feedback.get("/api/tiles", params={"limit": 5000}).json()["features"]
    footprints = {f["id"]: shape(f["geometry"]) for f in features}
    west, south, east, north = footprints[1].bounds
    # a box from inside tile 1 to just past its east edge: tile 1's place and its neighbour's
    box = [west + 0.3 * (east - west), south + 0.4 * (north - south),
           east + 0.1 * (east - west), south + 0.6 * (north - south)]  # fmt: skip
    expected = sorted(t for t, f in footprints.items() if f.intersects(shapely.box(*box)))
    assert 5 < len(expected) < 20  # several dates of two places, not the whole database
    made = feedback.post("/api/sessions", json={"tile": 1, "top": 4, "name": "web-box"})
    assert made.status_code == 201, made.text
    answer = feedback.post(BOX_MARKS, json={"bbox": box, "label": "bad"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["marked"] == expected and body["feedback"]["bad"] == expected
    assert set(expected).isdisjoint(result_ids(body))  # marked tiles are not shown again
    saved = feedback.get("/api/sessions/web-box").json()["marks"]
    assert sorted(m["tile_id"] for m in saved if m["label"] == -1) == expected

    service = feedback.app.state.service
    service.max_box_tiles = 4
    try:
        everything = [-180, -85, 180, 85]
        over = feedback.post(BOX_MARKS, json={"bbox": everything, "label": "good"})
    finally:
        service.max_box_tiles = 1000
    assert over.status_code == 400
    assert over.json()["error"].endswith("one box marks at most 4: draw a smaller box (zoom in)")
    assert len(feedback.get("/api/sessions/web-box").json()["marks"]) == len(expected)
    for bad_box, status in (([1, 1, 0, 0], 422), ([0.0, 0.0, 0.001, 0.001], 400)):
        wrong = feedback.post(BOX_MARKS, json={"bbox": bad_box, "label": "good"})
        assert wrong.status_code == status, wrong.text
    refused = read_only.post(BOX_MARKS, json={"bbox": box, "label": "bad"})
    assert refused.status_code == 403


def test_writes_from_other_origins_are_refused(feedback):
    answer = feedback.post(
        "/api/sessions", json={"tile": 1}, headers={"Origin": "http://evil.invalid"}
    )
    assert answer.status_code == 403 and "cross-origin" in answer.json()["error"]
    same = feedback.post("/api/sessions", json={"tile": 1}, headers={"Origin": "http://testserver"})
    assert same.status_code == 201


# -- what changed ------------------------------------------------------------------------

CHANGE_TILE = 64
PLANTED_PLACES = {(64, 64), (128, 192)}  # (row, col) of the tiles replaced in 2016


@pytest.fixture(scope="module")
def two_years(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    """A 256 px crop of NAIP 2015 (16 tiles of 64 px) and its copy dated 2016 with two tiles
    replaced by other ground from the same scene."""
    import rasterio

    folder = tmp_path_factory.mktemp("serve-changes")
    with rasterio.open(shared("naip", "m_4709963_se_14_1_20150926.tif")) as src:
        whole = src.read()
        profile = src.profile | {"width": 256, "height": 256, "tiled": False}
    profile.pop("blockxsize", None), profile.pop("blockysize", None)
    image = whole[:, :256, :256]
    planted = image.copy()
    for (row, col), (top, left) in zip(
        sorted(PLANTED_PLACES), ((600, 700), (40, 800)), strict=True
    ):
        planted[:, row : row + 64, col : col + 64] = whole[:, top : top + 64, left : left + 64]
    for year, data in ((2015, image), (2016, planted)):
        with rasterio.open(folder / f"naip_{year}0926.tif", "w", **profile) as dst:
            dst.write(data)
    db = folder / "two_years.gpkg"
    assert geosearch.ingest([folder], db, Settings(tile_size=CHANGE_TILE)).tiles_added == 32
    return TestClient(create_app(db, Settings()))


def map_pixel(lon: float, lat: float, z: int) -> tuple[int, int, int, int]:
    """(x, y) of the XYZ map tile holding lon/lat at zoom z, and the pixel's column and row."""
    scale = 2**z * 256
    across = (lon + 180) / 360 * scale
    down = (1 - np.log(np.tan(np.radians(lat)) + 1 / np.cos(np.radians(lat))) / np.pi) / 2 * scale
    return int(across // 256), int(down // 256), int(across % 256), int(down % 256)


def test_changes_layer_is_drawn_by_the_server_where_places_are_significant(two_years):
    from shapely.geometry import shape

    from geosearch.coverage import CHANGES_COLOUR

    answer = two_years.get("/api/changes", params={"from": "2015", "to": "2016", "top": 16})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["pairs"] == 16 and len(body["features"]) == 16
    flagged = {(f["properties"]["window"][0], f["properties"]["window"][1])
               for f in body["features"] if f["properties"]["significant"]}  # fmt: skip
    assert flagged == PLANTED_PLACES and body["significant"] == 2
    assert body["layer"].startswith("api/changes/{z}/{x}/{y}.png?from=2015&to=2016")

    def layer_pixel(lon: float, lat: float, z: int) -> np.ndarray:
        x, y, column, row = map_pixel(lon, lat, z)
        png = two_years.get("/" + body["layer"].format(z=z, x=x, y=y))
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        return np.asarray(Image.open(io.BytesIO(png.content)).convert("RGBA"))[row, column]

    for feature in body["features"]:
        west, south, east, north = shape(feature["geometry"]).bounds
        centre = ((west + east) / 2, (south + north) / 2)
        if not feature["properties"]["significant"]:
            assert layer_pixel(*centre, 16)[3] == 0  # (at z 10 a neighbour may share its pixel)
            continue
        # a place is a pixel zoomed out, its whole box zoomed in (a tile is ~200 px at z 16)
        near_corners = [(west + 0.02 * (east - west), south + 0.02 * (north - south)),
                        (east - 0.02 * (east - west), north - 0.02 * (north - south))]  # fmt: skip
        for lon, lat, z in [(*centre, 10), (*centre, 16)] + [(*c, 16) for c in near_corners]:
            pixel = layer_pixel(lon, lat, z)
            assert pixel[3] > 0 and tuple(pixel[:3]) == CHANGES_COLOUR

    # a click on a significant place's ground: that place, with its before | after previews
    first = next(f for f in body["features"] if f["properties"]["significant"])
    inside = shape(first["geometry"]).representative_point()
    place = two_years.get(f"/{body['place']}&lon={inside.x}&lat={inside.y}")
    assert place.status_code == 200, place.text
    [found] = place.json()["features"]
    assert found["properties"] == first["properties"]
    assert two_years.get(found["properties"]["after_preview"]).content[:4] == b"\x89PNG"
    nowhere = two_years.get(f"/{body['place']}&lon=10&lat=10")
    assert nowhere.status_code == 200 and nowhere.json()["features"] == []


# -- new tiles while serving --------------------------------------------------------------


def test_tiles_ingested_after_start_are_found_without_restart(naip_db, tmp_path):
    db = copy_database(naip_db, tmp_path / "db")
    client = TestClient(create_app(db, Settings()))
    assert client.get("/api/config").json()["tiles"] == 20
    old_id = tile_ids_of(client, NAIP_2009)[0]
    assert client.get("/api/similar", params={"tile": old_id}).status_code == 200
    twin = tmp_path / "more" / "twin_20090818.tif"
    twin.parent.mkdir()
    shutil.copy2(NAIP_2009, twin)
    assert geosearch.ingest([twin.parent], db).tiles_added == 4
    assert client.get("/api/config").json()["tiles"] == 24
    assert client.get("/api/tiles").json()["total"] == 24
    new_id = tile_ids_of(client, twin)[0]
    found = client.get("/api/similar", params={"tile": old_id, "top": 3}).json()
    best = found["features"][1]["properties"]
    assert (best["id"], best["path"]) == (new_id, str(twin)) and best["score"] > 0.999
    preview = client.get(f"/api/tiles/{new_id}/preview.png")
    assert preview.status_code == 200


def test_many_readers_while_an_ingest_runs_in_another_process(naip_db, tmp_path):
    db = copy_database(naip_db, tmp_path / "db")
    folder = tmp_path / "incoming"
    folder.mkdir()
    for number, source in enumerate(sorted(NAIP.glob("*.tif"))[:3]):
        shutil.copy2(source, folder / f"copy{number}_{source.name}")
    config = tmp_path / "config.yaml"
    config.write_text("batch_size: 4\nworkers: 1\n")  # a commit every 4 tiles
    outcomes: list[tuple[int, int]] = []
    errors: list[str] = []
    with running_server(create_app(db, Settings())) as url:
        ingest = subprocess.Popen(
            [sys.executable, "-m", "geosearch", "ingest", str(folder), "--db", str(db),
             "--config", str(config), "--quiet"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

        def reader() -> None:
            last = 0
            while True:
                running = ingest.poll() is None
                status, config_body = get_json(f"{url}/api/config")
                found, body = get_json(f"{url}/api/similar?tile=1&top=5")
                if status != 200 or found != 200:
                    errors.append(f"{status} {found} {config_body} {body}")
                    return
                tiles = config_body["tiles"]
                if tiles < last:
                    errors.append(f"tile count went back from {last} to {tiles}")
                last = tiles
                outcomes.append((tiles, len(body["features"])))
                if not running:
                    return

        readers = [threading.Thread(target=reader) for _ in range(4)]
        for thread in readers:
            thread.start()
        for thread in readers:
            thread.join(300)
        _, stderr = ingest.communicate(timeout=300)
        assert ingest.returncode == 0, stderr
        assert not errors, errors[:3]
        status, final = get_json(f"{url}/api/similar?tile=1&top=40")
        assert status == 200 and len(final["features"]) == 1 + 31
        status, page = get_json(f"{url}/api/tiles?limit=100")
        assert page["total"] == 32
    seen = {tiles for tiles, _ in outcomes}
    assert min(seen) == 20 and max(seen) == 32 and outcomes[-1][0] == 32  # read all along
    assert all(count == 6 for _, count in outcomes)  # the query and 5 results, every time
