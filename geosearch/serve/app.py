"""The HTTP service: a JSON API (OpenAPI schema at /api/openapi.json) and the map page at /.

``create_app`` puts it together: the routes (``serve/routes.py``) over ``SearchService``
(``serve/service.py``), the Host, same-origin and upload-size checks (``serve/middleware.py``), the
error answers (``serve/handlers.py``): a bad parameter 400 (422 when the request doesn't fit
the schema), an unknown tile or session 404, marking in a read-only service 403, an upload
that is too large 413 or not an image 415, a missing or unusable database or model 503.
Every error body is ``{"error": "one line"}``.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from geosearch.config import Settings
from geosearch.serve.handlers import add_error_handlers
from geosearch.serve.middleware import KnownHostsOnly, SameOriginWrites, UploadLimit
from geosearch.serve.routes import STATIC, UPLOAD_BODY_LIMIT, UPLOAD_PATH, router
from geosearch.serve.service import UPLOAD_TOO_LARGE, SearchService
from geosearch.version import __version__


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
    app = FastAPI(
        title="geosearch",
        version=__version__,
        summary="Find similar places in imagery: tiles, similarity search, feedback sessions.",
        description=(
            "Tiles are named by id; results are GeoJSON (RFC 7946, WGS84) with a preview URL "
            "per tile. Searching saves nothing in the database (the index file beside it may "
            "be caught up with tiles ingested since); feedback sessions and marks are saved "
            "only when the service runs with `--allow-feedback` (403 otherwise)."
        ),
        openapi_url="/api/openapi.json",
        docs_url=None,  # Swagger UI and ReDoc load from a CDN: the page must work offline
        redoc_url=None,
    )
    app.state.service = SearchService(Path(db), settings or Settings())
    app.state.allow_feedback = allow_feedback
    app.add_middleware(UploadLimit, path=UPLOAD_PATH, max_bytes=UPLOAD_BODY_LIMIT,
                       message=UPLOAD_TOO_LARGE)  # fmt: skip
    app.add_middleware(SameOriginWrites)
    if trusted_hosts:
        app.add_middleware(KnownHostsOnly, hosts=trusted_hosts)
    add_error_handlers(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.include_router(router)
    return app
