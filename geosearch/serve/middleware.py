"""What every request passes through before a route: the Host check, the same-origin check for
writes and the upload's size limit, each answering as the API does: ``{"error": "one line"}``."""

from __future__ import annotations

import contextlib
from urllib.parse import urlsplit

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send


async def send_error(scope: Scope, send: Send, status: int, message: str) -> None:
    """Answer with ``{"error": message}`` without reading the request body."""
    response = JSONResponse({"error": message}, status_code=status)
    await response(scope, _no_body, send)


async def _no_body() -> Message:
    return {"type": "http.disconnect"}


class SameOriginWrites:
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
                await send_error(scope, send, 403, f"cross-origin request from {origin} refused")
                return
        await self.app(scope, receive, send)


class KnownHostsOnly:
    """Answer only requests whose Host header names one of ``hosts`` (port aside): a page
    elsewhere can't reach a loopback service through a DNS name rebound to 127.0.0.1.

    Starlette's TrustedHostMiddleware does the same check but answers in plain text; every
    error of this API is ``{"error": "one line"}``."""

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
                await send_error(scope, send, 400, f"unknown Host header {header!r}")
                return
        await self.app(scope, receive, send)


class UploadLimit:
    """Refuse upload bodies over ``max_bytes`` with 413, counting what arrives (a missing or
    false Content-Length does not get past it) before the multipart parser spools it.

    Starlette's RequestBodyLimitMiddleware (FastAPI's ``max_body_size``) counts alike but
    answers in plain text ("Content Too Large"); every error of this API is
    ``{"error": "one line"}``."""

    def __init__(self, app: ASGIApp, path: str, max_bytes: int, message: str) -> None:
        self.app, self.path, self.max_bytes, self.message = app, path, max_bytes, message

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length", b"").decode() or "0"
        if declared.isdigit() and int(declared) > self.max_bytes:
            await send_error(scope, send, 413, self.message)
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
            await send_error(scope, send, 413, self.message)


class _BodyTooLarge(Exception):
    pass
