"""The HTTP service: a JSON API (OpenAPI schema at /api/openapi.json) and the map page at /.

Routes call ``SearchService`` and turn geosearch's exceptions into JSON errors: a bad parameter
400 (422 when the request doesn't fit the schema), an unknown tile or session 404, marking in a
read-only service 403, an upload that is too large 413 or not an image 415, a missing or
unusable database or model 503. Every error body is ``{"error": "one line"}``.
"""

from __future__ import annotations

import contextlib
import datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import Depends, FastAPI, File, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from geosearch import __version__
from geosearch.config import Settings
from geosearch.errors import (
    ConfigError,
    DatabaseError,
    GeosearchError,
    InputError,
    ModelError,
    OutputError,
)
from geosearch.render import feature_collection, location_feature, lonlat_geometry
from geosearch.search import SearchFilters, SearchResult
from geosearch.serve.models import (
    MAX_TOP,
    ErrorBody,
    Feature,
    MarkRequest,
    PageConfig,
    Session,
    SessionRequest,
    SimilarCollection,
    TilesPage,
)
from geosearch.serve.service import (
    MAX_UPLOAD_BYTES,
    ConflictError,
    NotFoundError,
    QueryPoint,
    QueryTile,
    SearchService,
    UnsupportedUploadError,
    UploadTooLargeError,
)
from geosearch.store import TileRecord

STATIC = Path(__file__).resolve().parent / "static"
UPLOAD_PATH = "/api/similar/upload"
MAX_TILES_PAGE = 5000
PREVIEW_CACHE_CONTROL = "public, max-age=600"
READ_ONLY = (
    "read-only service: start it with 'geosearch serve --allow-feedback' to save feedback "
    "sessions and marks"
)

# Most specific first: the first class an exception is an instance of decides.
STATUS_OF_ERROR: tuple[tuple[type[GeosearchError], int], ...] = (
    (NotFoundError, 404),
    (ConflictError, 409),
    (UploadTooLargeError, 413),
    (UnsupportedUploadError, 415),
    (ConfigError, 400),
    (InputError, 400),
    (DatabaseError, 503),
    (ModelError, 503),
    (OutputError, 503),
    (GeosearchError, 500),
)

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody} for status in (400, 404, 503)
}


def create_app(
    db: Path,
    settings: Settings | None = None,
    allow_feedback: bool = False,
    *,
    trusted_hosts: list[str] | None = None,
) -> FastAPI:
    """The service for database ``db``; feedback sessions are saved only if ``allow_feedback``.

    ``trusted_hosts``: Host header values to accept (``run`` passes the loopback names when
    bound to loopback, against DNS rebinding); None accepts any.
    """
    settings = settings or Settings()
    service = SearchService(Path(db), settings)
    app = FastAPI(
        title="geosearch",
        version=__version__,
        summary="Find similar places in imagery: tiles, similarity search, feedback sessions.",
        description=(
            "Tiles are named by id; results are GeoJSON (RFC 7946, WGS84) with a preview URL "
            "per tile. Searching never writes to the database; feedback sessions and marks "
            "are saved only when the service runs with `--allow-feedback` (403 otherwise)."
        ),
        openapi_url="/api/openapi.json",
        docs_url=None,  # Swagger UI and ReDoc load from a CDN: the page must work offline
        redoc_url=None,
    )
    app.state.service = service
    app.state.allow_feedback = allow_feedback
    app.add_middleware(_UploadLimit, path=UPLOAD_PATH, max_bytes=MAX_UPLOAD_BYTES + 64 * 1024)
    app.add_middleware(_SameOriginWrites)
    if trusted_hosts:
        app.add_middleware(_KnownHostsOnly, hosts=trusted_hosts)
    _add_error_handlers(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    def require_feedback() -> None:
        if not allow_feedback:
            raise HTTPException(403, READ_ONLY)

    # -- page and database ------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers=_page_headers(settings))

    @app.get("/api/config", response_model=PageConfig, responses=_ERRORS, tags=["database"])
    def config() -> dict[str, Any]:
        """What the page needs: database kind and size, whether marks are saved, basemap."""
        return service.summary() | {
            "allow_feedback": allow_feedback,
            "basemap": basemap_url(settings),
            "top": min(settings.search.top, MAX_TOP),
            "max_top": MAX_TOP,
            "max_upload_bytes": MAX_UPLOAD_BYTES,
            "version": __version__,
        }

    @app.get("/api/info", responses=_ERRORS, tags=["database"])
    def info() -> dict[str, Any]:
        """What the database holds (as ``geosearch info --json``)."""
        return service.info()

    # -- tiles ------------------------------------------------------------------------------

    @app.get("/api/tiles", response_model=TilesPage, responses=_ERRORS, tags=["tiles"])
    def tiles(
        request: Request,
        bbox: Annotated[
            str | None, Query(description="minx,miny,maxx,maxy in lon/lat; all tiles if absent")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_TILES_PAGE)] = 500,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> dict[str, Any]:
        """Tiles meeting a box (GeoPackage R-tree; tiles without a footprint never do), or
        every tile ordered by file and window, a page at a time."""
        page = service.tiles_page(parse_bbox(bbox), limit, offset)
        following = None
        if offset + limit < page.total:
            following = str(request.url.include_query_params(offset=offset + limit))
        return {
            "type": "FeatureCollection",
            "features": [tile_feature(request, t) for t in page.tiles],
            "total": page.total,
            "limit": limit,
            "offset": offset,
            "next": following,
        }

    @app.get("/api/tiles/{tile_id}", response_model=Feature, responses=_ERRORS, tags=["tiles"])
    def tile(request: Request, tile_id: int) -> dict[str, Any]:
        """One tile as a GeoJSON feature."""
        return tile_feature(request, service.tile(tile_id))

    @app.get(
        "/api/tiles/{tile_id}/preview.png",
        response_class=Response,
        responses={200: {"content": {"image/png": {}}}, 304: {"description": "not modified"}}
        | _ERRORS,
        tags=["tiles"],
    )
    def tile_preview(
        request: Request,
        tile_id: int,
        size: Annotated[int, Query(ge=16, le=1024, description="longest side, px")] = 256,
    ) -> Response:
        """The tile as an RGB PNG (2-98 % stretch, nodata transparent), with an ETag: a request
        with ``If-None-Match`` gets 304 while the tile and its file are unchanged."""
        held = _etags(request.headers.get("if-none-match"))
        preview = service.preview(tile_id, size, next(iter(held), None))
        if preview.png is None or preview.etag in held:
            status, body = 304, b""
        else:
            status, body = 200, preview.png
        headers = {"ETag": f'"{preview.etag}"', "Cache-Control": PREVIEW_CACHE_CONTROL}
        media = "image/png" if status == 200 else None
        return Response(body, status_code=status, headers=headers, media_type=media)

    # -- similarity -------------------------------------------------------------------------

    @app.get("/api/similar", response_model=SimilarCollection, responses=_ERRORS, tags=["search"])
    def similar(
        request: Request,
        options: Annotated[dict[str, Any], Depends(search_options)],
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
        query = (
            QueryTile(tile) if tile is not None else QueryPoint(lon, lat, _iso(date))  # type: ignore[arg-type]
        )
        return result_collection(request, service.similar(query, **options))

    @app.post(
        UPLOAD_PATH,
        response_model=SimilarCollection,
        responses={413: {"model": ErrorBody}, 415: {"model": ErrorBody}} | _ERRORS,
        tags=["search"],
    )
    def similar_to_upload(
        request: Request,
        options: Annotated[dict[str, Any], Depends(search_options)],
        file: Annotated[UploadFile, File(description="PNG, JPEG or GeoTIFF, at most 20 MB")],
        tile: Annotated[
            int | None, Query(ge=0, description="query with this tile of the image (0-based)")
        ] = None,
    ) -> dict[str, Any]:
        """The tiles most like an uploaded image, embedded as ingest would (a multi-tile
        raster by the mean of its tiles, or ``tile``). The upload is deleted afterwards."""
        result = service.similar_to_upload(
            file.file, file.filename or "upload", tile=tile, **options
        )
        return result_collection(request, result)

    # -- feedback sessions ------------------------------------------------------------------

    @app.get("/api/sessions", responses=_ERRORS, tags=["feedback"])
    def sessions() -> list[str]:
        """Names of the feedback sessions in the database, oldest first."""
        return service.sessions()

    @app.post(
        "/api/sessions",
        response_model=SimilarCollection,
        status_code=201,
        responses={403: {"model": ErrorBody}, 409: {"model": ErrorBody}} | _ERRORS,
        tags=["feedback"],
        dependencies=[Depends(require_feedback)],
    )
    def create_session(request: Request, body: SessionRequest) -> dict[str, Any]:
        """Search and save the query as a feedback session (``geosearch similar --session``);
        ``good``/``bad`` ids are its first marks."""
        filters = _filters(
            tuple(body.bbox) if body.bbox else None, body.exclude_near, body.after,
            body.before, body.other_files,
        )  # fmt: skip
        query = (
            QueryTile(body.tile)
            if body.tile is not None
            else QueryPoint(body.lon, body.lat, _iso(body.date))  # type: ignore[arg-type]
        )
        result = service.create_session(
            query, body.top or settings.search.top, filters, body.good, body.bad, body.name
        )
        return result_collection(request, result)

    @app.get("/api/sessions/{name}", response_model=Session, responses=_ERRORS, tags=["feedback"])
    def session(name: str) -> dict[str, Any]:
        """A session's query, the ids of its last results and its marks."""
        return service.session(name)

    @app.post(
        "/api/sessions/{name}/marks",
        response_model=SimilarCollection,
        responses={403: {"model": ErrorBody}} | _ERRORS,
        tags=["feedback"],
        dependencies=[Depends(require_feedback)],
    )
    def mark(request: Request, name: str, body: MarkRequest) -> dict[str, Any]:
        """Mark tiles (ids) good or bad and search again with every mark of the session
        (``geosearch feedback NAME --ids``); marked tiles are not shown again."""
        return result_collection(request, service.mark(name, body.good, body.bad, body.top))

    @app.get(
        "/api/sessions/{name}/marks.geojson",
        response_class=Response,
        responses={200: {"content": {"application/geo+json": {}}}} | _ERRORS,
        tags=["feedback"],
    )
    def marks_geojson(name: str) -> Response:
        """The session's marked tiles as GeoJSON: label (good/bad), when, by whom."""
        headers = {"Content-Disposition": f'attachment; filename="{name}-marks.geojson"'}
        return Response(
            service.marks_geojson(name), media_type="application/geo+json", headers=headers
        )

    return app


# -- request parsing ----------------------------------------------------------------------


def search_options(
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
    *,
    request: Request,
) -> dict[str, Any]:
    """The options every search takes, as ``geosearch similar`` does."""
    settings: Settings = request.app.state.service.settings
    if any_orientation is None:
        any_orientation = settings.search.orientations == "any"
    return {
        "top": top or min(settings.search.top, MAX_TOP),
        "filters": _filters(parse_bbox(bbox), exclude_near, after, before, other_files),
        "good": list(good),
        "bad": list(bad),
        "any_orientation": any_orientation,
    }


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


def _filters(
    bbox: tuple[float, float, float, float] | None,
    exclude_near: float | None,
    after: datetime.date | None,
    before: datetime.date | None,
    other_files: bool,
) -> SearchFilters:
    return SearchFilters(bbox, None, _iso(after), _iso(before), exclude_near, other_files)


def _iso(day: datetime.date | None) -> str | None:
    return day.isoformat() if day else None


def _etags(header: str | None) -> set[str]:
    """The entity tags of an If-None-Match header, without quotes or weak markers."""
    if not header:
        return set()
    return {tag.strip().removeprefix("W/").strip('"') for tag in header.split(",") if tag.strip()}


# -- responses ----------------------------------------------------------------------------


def preview_url(request: Request, tile_id: int) -> str:
    return f"{request.scope.get('root_path', '')}/api/tiles/{tile_id}/preview.png"


def tile_feature(request: Request, tile: TileRecord) -> dict[str, Any]:
    """A stored tile as a GeoJSON feature with its preview URL."""
    window = tile.window
    return {
        "type": "Feature",
        "id": tile.id,
        "geometry": lonlat_geometry(tile.footprint),
        "properties": {
            "id": tile.id,
            "path": tile.path,
            "name": Path(tile.path).name,
            "row": window.row,
            "col": window.col,
            "width": window.width,
            "height": window.height,
            "acquired": tile.acquired,
            "crs": tile.crs,
            "nodata_fraction": tile.nodata_fraction,
            "preview": preview_url(request, tile.id),
        },
    }


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


def basemap_url(settings: Settings) -> str | None:
    """``serve.basemap`` of the settings (an XYZ tile URL template), if any."""
    serve = getattr(settings, "serve", None)
    if isinstance(serve, dict):
        return serve.get("basemap")
    return getattr(serve, "basemap", None)


def _page_headers(settings: Settings) -> dict[str, str]:
    """The page loads only its own files (and the basemap's tiles, if one is set)."""
    images = "'self' data: blob:"
    basemap = basemap_url(settings)
    if basemap:
        images += f" {urlsplit(basemap).scheme}:"
    policy = (
        f"default-src 'self'; img-src {images}; style-src 'self' 'unsafe-inline'; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    )
    return {"Content-Security-Policy": policy, "X-Content-Type-Options": "nosniff"}


def _add_error_handlers(app: FastAPI) -> None:
    async def geosearch_error(request: Request, exc: Exception) -> JSONResponse:
        status = next(code for kind, code in STATUS_OF_ERROR if isinstance(exc, kind))
        return JSONResponse({"error": str(exc)}, status_code=status)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        return JSONResponse(
            {"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers
        )

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = exc.errors()
        return JSONResponse(
            {"error": _describe(errors), "detail": _plain_errors(errors)}, status_code=422
        )

    app.add_exception_handler(GeosearchError, geosearch_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)


def _describe(errors: Any) -> str:
    """The first validation error as one line: ``top: Input should be ... (got '0')``."""
    if not errors:
        return "invalid request"
    first = errors[0]
    where = [str(part) for part in first.get("loc", ()) if part not in ("query", "body", "path")]
    name = ".".join(where)
    message = str(first.get("msg", "invalid")).removeprefix("Value error, ")
    given = first.get("input")
    shown = f" (got {given!r})" if isinstance(given, str | int | float) else ""
    return f"{name}: {message}{shown}" if name else message


def _plain_errors(errors: Any) -> list[dict[str, Any]]:
    """Validation errors reduced to what JSON can hold (their ``ctx`` may hold exceptions)."""
    return [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg")), "type": str(e.get("type"))}
        for e in errors
    ]


# -- middleware ---------------------------------------------------------------------------


async def _send_json(scope: Scope, send: Send, status: int, message: str) -> None:
    response = JSONResponse({"error": message}, status_code=status)
    await response(scope, _no_body, send)


async def _no_body() -> Message:
    return {"type": "http.disconnect"}


class _UploadLimit:
    """Refuse upload bodies over ``max_bytes`` with 413, counting what arrives (a missing or
    false Content-Length does not get past it) before the multipart parser spools it."""

    def __init__(self, app: ASGIApp, path: str, max_bytes: int) -> None:
        self.app, self.path, self.max_bytes = app, path, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        message = f"upload: larger than {MAX_UPLOAD_BYTES // 2**20} MB; crop or downsample it"
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length", b"").decode() or "0"
        if declared.isdigit() and int(declared) > self.max_bytes:
            await _send_json(scope, send, 413, message)
            return
        received = 0
        too_large = False

        async def counted() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    too_large = True
                    raise _BodyTooLarge
            return message

        async def unless_too_large(message: Message) -> None:
            if not too_large:  # the app's own answer to the broken-off body is dropped
                await send(message)

        with contextlib.suppress(_BodyTooLarge):
            await self.app(scope, counted, unless_too_large)
        if too_large:
            await _send_json(scope, send, 413, message)


class _BodyTooLarge(Exception):
    pass


class _SameOriginWrites:
    """Refuse POSTs from pages of other origins (a browser sends their Origin): no web page
    elsewhere can mark tiles through a user's browser."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in ("GET", "HEAD", "OPTIONS"):
            headers = dict(scope.get("headers") or [])
            origin = headers.get(b"origin", b"").decode()
            host = headers.get(b"host", b"").decode()
            if origin and urlsplit(origin).netloc != host:  # "null" (sandboxed pages) too
                await _send_json(scope, send, 403, f"cross-origin request from {origin} refused")
                return
        await self.app(scope, receive, send)


class _KnownHostsOnly:
    """Answer only requests whose Host header names one of ``hosts`` (port aside): a page
    elsewhere can't reach a loopback service through a DNS name rebound to 127.0.0.1."""

    def __init__(self, app: ASGIApp, hosts: list[str]) -> None:
        self.app = app
        self.hosts = {host.strip("[]").lower() for host in hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            header = dict(scope.get("headers") or []).get(b"host", b"").decode()
            try:
                name = urlsplit(f"//{header}").hostname or ""
            except ValueError:
                name = ""
            if name.lower() not in self.hosts:
                await _send_json(scope, send, 400, f"unknown Host header {header!r}")
                return
        await self.app(scope, receive, send)
