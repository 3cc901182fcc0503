"""geosearch's exceptions (and FastAPI's) as HTTP answers: every error body is
``{"error": "one line"}``, with the status its kind calls for."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from geosearch.errors import (
    ConfigError,
    ConflictError,
    DatabaseError,
    GeosearchError,
    InputError,
    ModelError,
    NotFoundError,
    OutputError,
)
from geosearch.serve.service import UnsupportedUploadError, UploadTooLargeError

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


def add_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(GeosearchError, _geosearch_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)


async def _geosearch_error(request: Request, exc: Exception) -> JSONResponse:
    status = next(code for kind, code in STATUS_OF_ERROR if isinstance(exc, kind))
    return JSONResponse({"error": str(exc)}, status_code=status)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    return JSONResponse(
        {"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    return JSONResponse(
        {"error": _describe(errors), "detail": _plain_errors(errors)}, status_code=422
    )


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
