"""The HTTP API's routes (one ``APIRouter``): the page, the database, tiles, search, feedback
sessions. Each route parses its request into geosearch's terms (a ``SearchRequest``), calls
``SearchService`` (through ``Depends``) and shapes the answer as GeoJSON (``render``)."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote, urlencode, urlsplit

from fastapi import APIRouter, Depends, File, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, Response
from starlette.exceptions import HTTPException

from geosearch.changes import ChangeResult, change_collection
from geosearch.config import Settings
from geosearch.detection import GEOJSON_NAME, GPKG_NAME
from geosearch.errors import ConfigError
from geosearch.render import feature_collection, location_feature, tile_feature
from geosearch.request import SearchFilters, SearchRequest
from geosearch.search import SearchResult
from geosearch.serve.models import (
    MAX_TOP,
    BoxMarkCollection,
    BoxMarkRequest,
    DetectRequest,
    ErrorBody,
    Feature,
    MarkRequest,
    PageConfig,
    Session,
    SessionRequest,
    SimilarCollection,
    TilesPage,
)
from geosearch.serve.service import MAX_UPLOAD_BYTES, SearchService
from geosearch.store import TileRecord
from geosearch.version import __version__

STATIC = Path(__file__).resolve().parent / "static"
UPLOAD_PATH = "/api/similar/upload"
UPLOAD_BODY_LIMIT = MAX_UPLOAD_BYTES + 64 * 1024  # the file and its multipart framing
MAX_TILES_PAGE = 5000
PREVIEW_CACHE_CONTROL = "public, max-age=600"
READ_ONLY = (
    "read-only service: start it with 'geosearch serve --allow-feedback' to save feedback "
    "sessions and marks"
)
_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody} for status in (400, 404, 503)
}

router = APIRouter()


def _service(request: Request) -> SearchService:
    return request.app.state.service


def _require_feedback(request: Request) -> None:
    if not request.app.state.allow_feedback:
        raise HTTPException(403, READ_ONLY)


Service = Annotated[SearchService, Depends(_service)]


def map_tile(
    z: Annotated[int, PathParam(ge=0, le=22)],
    x: Annotated[int, PathParam(ge=0)],
    y: Annotated[int, PathParam(ge=0)],
) -> tuple[int, int, int]:
    """An XYZ map tile's address (z, x, y); 404 off the map."""
    if x >= 2**z or y >= 2**z:
        raise HTTPException(404, f"no map tile {z}/{x}/{y}")
    return z, x, y


MapTile = Annotated[tuple[int, int, int], Depends(map_tile)]


def search_options(
    service: Service,
    top: Annotated[
        int | None, Query(ge=1, le=MAX_TOP, description="results [default: search.top]")
    ] = None,
    bbox: Annotated[
        str | None, Query(description="only results meeting minx,miny,maxx,maxy (lon/lat)")
    ] = None,
    exclude_near: Annotated[
        float | None, Query(ge=0, description="drop results within this many metres")
    ] = None,
    after: Annotated[datetime.date | None, Query(description="acquired on/after")] = None,
    before: Annotated[datetime.date | None, Query(description="acquired on/before")] = None,
    other_files: Annotated[bool, Query(description="only results from other files")] = False,
    good: Annotated[list[int], Query(description="relevant tile ids (repeat the key)")] = [],  # noqa: B006
    bad: Annotated[list[int], Query(description="not relevant tile ids")] = [],  # noqa: B006
    any_orientation: Annotated[
        bool | None,
        Query(description="also match places rotated or mirrored [default: config]"),
    ] = None,
) -> SearchRequest:
    """The options every search takes, as ``geosearch similar`` does (the query aside)."""
    filters = SearchFilters(
        bbox=parse_bbox(bbox), after=after, before=before, exclude_near=exclude_near,
        other_files=other_files,
    )  # fmt: skip
    return SearchRequest(
        top=top or min(service.settings.search.top, MAX_TOP), filters=filters, good=good,
        bad=bad, any_orientation=any_orientation,
    )  # fmt: skip


Options = Annotated[SearchRequest, Depends(search_options)]


# -- page and database ----------------------------------------------------------------------


@router.get("/", include_in_schema=False)
def page(service: Service) -> FileResponse:
    return FileResponse(STATIC / "index.html", headers=_page_headers(service.settings))


@router.get("/api/config", response_model=PageConfig, responses=_ERRORS, tags=["database"])
def config(request: Request, service: Service) -> dict[str, Any]:
    """What the page needs: database kind and size, whether marks are saved, basemap."""
    settings = service.settings
    return service.summary() | {
        "allow_feedback": request.app.state.allow_feedback,
        "basemap": settings.serve.basemap,
        "top": min(settings.search.top, MAX_TOP),
        "max_top": MAX_TOP,
        "max_upload_bytes": MAX_UPLOAD_BYTES,
        "version": __version__,
    }


@router.get("/api/info", responses=_ERRORS, tags=["database"])
def info(service: Service) -> dict[str, Any]:
    """What the database holds (as ``geosearch info --json``)."""
    return service.info()


# -- tiles ----------------------------------------------------------------------------------


@router.get("/api/tiles", response_model=TilesPage, responses=_ERRORS, tags=["tiles"])
def tiles(
    request: Request,
    service: Service,
    bbox: Annotated[
        str | None, Query(description="minx,miny,maxx,maxy in lon/lat; all tiles if absent")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_TILES_PAGE)] = 500,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    """Tiles meeting a box (GeoPackage R-tree; tiles without a footprint never do), or
    every tile ordered by file and window, a page at a time."""
    found = service.tiles_page(parse_bbox(bbox), limit, offset)
    following = None
    if offset + limit < found.total:
        following = str(request.url.include_query_params(offset=offset + limit))
    return {
        "type": "FeatureCollection",
        "features": [stored_tile_feature(request, t) for t in found.tiles],
        "total": found.total,
        "limit": limit,
        "offset": offset,
        "next": following,
    }


@router.get(
    "/api/coverage/{z}/{x}/{y}.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}} | _ERRORS,
    tags=["tiles"],
)
def coverage_tile(
    service: Service,
    tile: MapTile,
) -> Response:
    """Where the database has tiles, as an XYZ map tile (Web Mercator, 256 px): each pixel
    coloured by how many tiles have their centre there. The page's first view at any size."""
    return _map_tile(tile, service.coverage_tile)


def _map_tile(tile: tuple[int, int, int], render: Callable[[int, int, int], bytes]) -> Response:
    """A layer's XYZ map tile as PNG (cached by browsers like previews)."""
    png = render(*tile)
    return Response(png, headers={"Cache-Control": PREVIEW_CACHE_CONTROL}, media_type="image/png")


@router.get("/api/tiles/{tile_id}", response_model=Feature, responses=_ERRORS, tags=["tiles"])
def tile(request: Request, service: Service, tile_id: int) -> dict[str, Any]:
    """One tile as a GeoJSON feature."""
    return stored_tile_feature(request, service.tile(tile_id))


@router.get(
    "/api/tiles/{tile_id}/preview.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, 304: {"description": "not modified"}} | _ERRORS,
    tags=["tiles"],
)
def tile_preview(
    request: Request,
    service: Service,
    tile_id: int,
    size: Annotated[int, Query(ge=16, le=1024, description="longest side, px")] = 256,
) -> Response:
    """The tile as an RGB PNG (2-98 % stretch, nodata transparent), with an ETag: a request
    with ``If-None-Match`` gets 304 while the tile and its file are unchanged."""
    held = _etags(request.headers.get("if-none-match"))
    preview = service.preview(tile_id, size, next(iter(held), None))
    headers = {"ETag": f'"{preview.etag}"', "Cache-Control": PREVIEW_CACHE_CONTROL}
    if preview.png is None or preview.etag in held:
        return Response(b"", status_code=304, headers=headers)
    return Response(preview.png, headers=headers, media_type="image/png")


# -- similarity -----------------------------------------------------------------------------


@router.get("/api/similar", response_model=SimilarCollection, responses=_ERRORS, tags=["search"])
def similar(
    request: Request,
    service: Service,
    options: Options,
    tile: Annotated[int | None, Query(description="query with this tile (id)")] = None,
    lon: Annotated[float | None, Query(ge=-180, le=180)] = None,
    lat: Annotated[float | None, Query(ge=-90, le=90)] = None,
    date: Annotated[
        datetime.date | None, Query(description="with lon/lat: the tile of that day")
    ] = None,
) -> dict[str, Any]:
    """The ``top`` tiles most like a stored tile, or like the tile at a place. Nothing is
    saved: ``good``/``bad`` ids refine the search for this request only."""
    by_place = lon is not None or lat is not None
    if (tile is None) == (not by_place) or (by_place and None in (lon, lat)):
        raise ConfigError("give either tile=ID, or lon=LON&lat=LAT (and maybe date=)")
    if tile is not None:
        asked = options.model_copy(update={"tile_id": tile})
    else:
        day = date.isoformat() if date else None
        asked = options.model_copy(update={"lonlat": (lon, lat), "date": day})
    return result_collection(request, service.similar(asked))


@router.post(
    UPLOAD_PATH,
    response_model=SimilarCollection,
    responses={413: {"model": ErrorBody}, 415: {"model": ErrorBody}} | _ERRORS,
    tags=["search"],
)
def similar_to_upload(
    request: Request,
    service: Service,
    options: Options,
    file: Annotated[UploadFile, File(description="PNG, JPEG or GeoTIFF, at most 20 MB")],
    tile: Annotated[
        int | None, Query(ge=0, description="query with this tile of the image (0-based)")
    ] = None,
) -> dict[str, Any]:
    """The tiles most like an uploaded image, embedded as ingest would (a multi-tile
    raster by the mean of its tiles, or ``tile``). The upload is deleted afterwards."""
    asked = options.model_copy(update={"tile_index": tile})
    result = service.similar_to_upload(file.file, file.filename or "upload", asked)
    return result_collection(request, result)


# -- what changed ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ChangePeriods:
    """The two periods compared and the box (what names a run of ``changes``)."""

    date_from: str
    date_to: str
    bbox: tuple[float, float, float, float] | None

    def query(self) -> str:
        asked = {"from": self.date_from, "to": self.date_to}
        if self.bbox is not None:
            asked["bbox"] = ",".join(str(v) for v in self.bbox)
        return urlencode(asked)


def change_periods(
    date_from: Annotated[
        str, Query(alias="from", description="earlier period: YYYY, YYYY-MM or YYYY-MM-DD")
    ],
    date_to: Annotated[
        str, Query(alias="to", description="later period: YYYY, YYYY-MM or YYYY-MM-DD")
    ],
    bbox: Annotated[str | None, Query(description="minx,miny,maxx,maxy (lon/lat)")] = None,
) -> ChangePeriods:
    return ChangePeriods(date_from, date_to, parse_bbox(bbox))


Periods = Annotated[ChangePeriods, Depends(change_periods)]


@router.get("/api/changes", responses=_ERRORS, tags=["search"])
def changes(
    request: Request,
    service: Service,
    periods: Periods,
    top: Annotated[int, Query(ge=1, le=MAX_TOP)] = 20,
) -> dict[str, Any]:
    """The ``top`` places whose picture changed most between two periods, as GeoJSON: each
    place's footprint with its change, significance, and before/after tiles' preview URLs.
    ``layer``: the URL template of the map layer of every significant place; ``place``: the
    URL that finds the place at a point (add ``&lon=..&lat=..``)."""
    result = service.changes(periods.date_from, periods.date_to, periods.bbox, top)
    return (
        change_places(request, result)
        | result.to_dict()
        | {
            "layer": f"api/changes/{{z}}/{{x}}/{{y}}.png?{periods.query()}",
            "place": f"api/changes/place?{periods.query()}",
        }
    )


@router.get("/api/changes/place", responses=_ERRORS, tags=["search"])
def change_place(
    request: Request,
    service: Service,
    periods: Periods,
    lon: Annotated[float, Query(ge=-180, le=180)],
    lat: Annotated[float, Query(ge=-90, le=90)],
) -> dict[str, Any]:
    """The place paired between the two periods at lon/lat (a significant one first), as a
    FeatureCollection of one place like ``/api/changes`` lists them (empty where none is)."""
    place = service.change_at(periods.date_from, periods.date_to, periods.bbox, lon, lat)
    return change_places(request, place)


@router.get(
    "/api/changes/{z}/{x}/{y}.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}} | _ERRORS,
    tags=["search"],
)
def changes_tile(
    service: Service,
    periods: Periods,
    tile: MapTile,
) -> Response:
    """Every significant place between the two periods as an XYZ map tile (rendered here like
    the coverage layer, whatever their number): each pixel coloured by the places centred
    there."""
    asked = (periods.date_from, periods.date_to, periods.bbox)
    return _map_tile(tile, lambda *zxy: service.changes_tile(*asked, *zxy))


def change_places(request: Request, result: ChangeResult) -> dict[str, Any]:
    """A run's listed places as GeoJSON (``changes.change_collection``) with preview URLs."""
    collection = change_collection(result)
    for feature in collection["features"]:
        properties = feature["properties"]
        properties["before_preview"] = preview_url(request, properties["before_id"])
        properties["after_preview"] = preview_url(request, properties["after_id"])
    return collection


# -- feedback sessions ----------------------------------------------------------------------


@router.get("/api/sessions", responses=_ERRORS, tags=["feedback"])
def sessions(service: Service) -> list[str]:
    """Names of the feedback sessions in the database, oldest first."""
    return service.sessions()


@router.post(
    "/api/sessions",
    response_model=SimilarCollection,
    status_code=201,
    responses={403: {"model": ErrorBody}, 409: {"model": ErrorBody}} | _ERRORS,
    tags=["feedback"],
    dependencies=[Depends(_require_feedback)],
)
def create_session(request: Request, service: Service, body: SessionRequest) -> dict[str, Any]:
    """Search and save the query as a feedback session (``geosearch similar --session``);
    ``good``/``bad`` ids are its first marks."""
    asked = body.search_request(service.settings.search.top)
    return result_collection(request, service.create_session(asked))


@router.get("/api/sessions/{name}", response_model=Session, responses=_ERRORS, tags=["feedback"])
def session(service: Service, name: str) -> dict[str, Any]:
    """A session's query, the ids of its last results and its marks."""
    return service.session(name)


@router.post(
    "/api/sessions/{name}/marks",
    response_model=SimilarCollection,
    responses={403: {"model": ErrorBody}} | _ERRORS,
    tags=["feedback"],
    dependencies=[Depends(_require_feedback)],
)
def mark(request: Request, service: Service, name: str, body: MarkRequest) -> dict[str, Any]:
    """Mark tiles (ids) good or bad and search again with every mark of the session
    (``geosearch feedback NAME --ids``); marked tiles are not shown again."""
    return result_collection(request, service.mark(name, body.good, body.bad, body.top))


@router.post(
    "/api/sessions/{name}/marks/box",
    response_model=BoxMarkCollection,
    responses={403: {"model": ErrorBody}} | _ERRORS,
    tags=["feedback"],
    dependencies=[Depends(_require_feedback)],
)
def mark_box(request: Request, service: Service, name: str, body: BoxMarkRequest) -> dict[str, Any]:
    """Mark every tile whose footprint meets a box good or bad (as ``geosearch detect
    --good-within`` does with an area) and search again; at most 1,000 tiles a box (400
    beyond, saving nothing)."""
    label = 1 if body.label == "good" else -1
    marked, result = service.mark_box(name, body.bbox, label, body.top)
    return result_collection(request, result) | {"marked": marked}


@router.get(
    "/api/sessions/{name}/marks.geojson",
    response_class=Response,
    responses={200: {"content": {"application/geo+json": {}}}} | _ERRORS,
    tags=["feedback"],
)
def marks_geojson(service: Service, name: str) -> Response:
    """The session's marked tiles as GeoJSON: label (good/bad), when, by whom."""
    headers = {"Content-Disposition": f'attachment; filename="{name}-marks.geojson"'}
    return Response(service.marks_geojson(name), media_type="application/geo+json", headers=headers)


@router.post(
    "/api/sessions/{name}/detect",
    responses={403: {"model": ErrorBody}} | _ERRORS,
    tags=["feedback"],
    dependencies=[Depends(_require_feedback)],
)
def detect(request: Request, service: Service, name: str, body: DetectRequest) -> dict[str, Any]:
    """Run ``geosearch detect`` on the session: every tile scored by a classifier of its
    marks. The answer: the summary, the tiles to mark next (GeoJSON features with their
    probability), the URL template of the detections layer and the downloads."""
    run, result, geo = service.detect(name, body.review, body.threshold)
    base = f"api/sessions/{quote(name)}/detections"
    review = []
    for tile in result.review:
        found = stored_tile_feature(request, tile.tile)
        found["properties"]["probability"] = round(tile.probability, 4)
        review.append(found)
    return {
        "summary": result.summary(),
        "threshold": result.threshold,
        "scored": result.scored,
        "detected_tiles": result.detected,
        "detections": len(result.detections),
        "review": {"type": "FeatureCollection", "features": review},
        "layer": f"{base}/{{z}}/{{x}}/{{y}}.png?run={run}",
        "downloads": {
            kind: f"{base}.{kind}?run={run}"
            for kind in (("gpkg", "geojson") if geo else ("geojson",))
        },
    }


@router.get(
    "/api/sessions/{name}/detections/{z}/{x}/{y}.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}} | _ERRORS,
    tags=["feedback"],
)
def detections_tile(
    service: Service,
    name: str,
    tile: MapTile,
) -> Response:
    """The session's last detections as an XYZ map tile (rendered here, like the coverage
    layer, whatever their number): each pixel coloured by the detected tiles centred there."""
    return _map_tile(tile, lambda *zxy: service.detections_tile(name, *zxy))


@router.get(
    "/api/sessions/{name}/detections.{kind}",
    response_class=FileResponse,
    responses={200: {"content": {"application/geopackage+sqlite3": {}}}} | _ERRORS,
    tags=["feedback"],
)
def detections_file(service: Service, name: str, kind: Literal["gpkg", "geojson"]) -> FileResponse:
    """The session's last detections as a GeoPackage or GeoJSON file."""
    path = service.detections_file(name, GPKG_NAME if kind == "gpkg" else GEOJSON_NAME)
    media = "application/geopackage+sqlite3" if kind == "gpkg" else "application/geo+json"
    return FileResponse(path, media_type=media, filename=f"{name}-detections.{kind}")


# -- parsing and answering ------------------------------------------------------------------


def parse_bbox(text: str | None) -> tuple[float, float, float, float] | None:
    """``minx,miny,maxx,maxy`` in lon/lat degrees, or None."""
    if text is None or not text.strip():
        return None
    try:
        box = tuple(float(part) for part in text.split(","))
    except ValueError:
        box = ()
    if len(box) != 4 or box[0] > box[2] or box[1] > box[3]:
        raise ConfigError(f"bbox: expected minx,miny,maxx,maxy in lon/lat degrees, got {text!r}")
    return box  # type: ignore[return-value]


def _etags(header: str | None) -> set[str]:
    """The entity tags of an If-None-Match header, without quotes or weak markers."""
    if not header:
        return set()
    return {tag.strip().removeprefix("W/").strip('"') for tag in header.split(",") if tag.strip()}


def preview_url(request: Request, tile_id: int) -> str:
    return f"{request.scope.get('root_path', '')}/api/tiles/{tile_id}/preview.png"


def stored_tile_feature(request: Request, tile: TileRecord) -> dict[str, Any]:
    """A stored tile as a GeoJSON feature with its file's name and its preview URL."""
    leading = {"id": tile.id, "path": tile.path, "name": Path(tile.path).name}
    trailing = {"nodata_fraction": tile.nodata_fraction, "preview": preview_url(request, tile.id)}
    return tile_feature(tile, leading, trailing, feature_id=True)


def result_collection(request: Request, result: SearchResult) -> dict[str, Any]:
    """A search as GeoJSON (``render.feature_collection``) with preview URLs and the session."""
    for match in result.matches:
        match.preview = preview_url(request, match.tile.id)
    tiles = result.query.tiles
    if len(tiles) == 1 and tiles[0].id is not None:
        result.query_preview = preview_url(request, tiles[0].id)
    collection = feature_collection([result])
    for feature in collection["features"]:
        path = feature["properties"]["path"]
        feature["properties"]["name"] = Path(path).name if path else None
    location = location_feature(result.location) if result.location is not None else None
    return collection | {
        "session": result.session,
        "feedback": result.feedback,
        "query": result.query.to_dict(),
        "location": location,
    }


def _page_headers(settings: Settings) -> dict[str, str]:
    """The page loads only its own files (and the basemap's tiles, if one is set)."""
    images = "'self' data: blob:"
    if settings.serve.basemap:
        images += f" {urlsplit(settings.serve.basemap).scheme}:"
    policy = (
        f"default-src 'self'; img-src {images}; style-src 'self' 'unsafe-inline'; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    )
    return {"Content-Security-Policy": policy, "X-Content-Type-Options": "nosniff"}
