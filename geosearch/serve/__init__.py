"""``geosearch serve``: an HTTP service over a database (JSON API + map page).

FastAPI and uvicorn are an optional extra (``pip install 'geosearch[serve]'``); they are
imported only when the service is built or run, so the core install works without them.
"""

from __future__ import annotations

import importlib
import ipaddress
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from geosearch.config import Settings
from geosearch.errors import ConfigError, DatabaseError

if TYPE_CHECKING:
    from fastapi import FastAPI

LOOPBACK_NAMES = ["localhost", "127.0.0.1", "::1", "[::1]"]


def _require_extra() -> None:
    """ConfigError naming the install command when the serve extra is missing."""
    for package, modules in (
        ("fastapi", ("fastapi",)),
        ("uvicorn", ("uvicorn",)),
        ("python-multipart", ("python_multipart", "multipart")),  # uploads
        ("cachetools", ("cachetools",)),  # the preview cache
    ):
        if not any(_importable(module) for module in modules):
            raise ConfigError(
                f"geosearch serve needs the optional package {package!r}: "
                "pip install 'geosearch[serve]'"
            )


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def create_app(db: Path, settings: Settings | None = None, allow_feedback: bool = False) -> FastAPI:
    """The FastAPI app serving ``db`` (see ``geosearch.serve.app.create_app``)."""
    _require_extra()
    from geosearch.serve.app import create_app as build

    return build(Path(db), settings or Settings(), allow_feedback)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def run(
    db: Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    allow_feedback: bool = False,
    settings: Settings | None = None,
) -> None:
    """Serve ``db`` on ``host:port`` until interrupted (what ``geosearch serve`` runs).

    Fails before listening if the extra is missing (ConfigError) or the database can't be
    opened (DatabaseError). On a loopback address only loopback Host headers are accepted.
    """
    _require_extra()
    import uvicorn

    from geosearch import api
    from geosearch.serve.app import create_app as build

    settings = settings or Settings()
    facts = api.info(db, settings)  # the database opens, and its index is in sync
    if allow_feedback and facts["read_only"]:
        raise DatabaseError(
            f"permission denied: {db} (read-only here: serve without --allow-feedback)"
        )
    local = is_loopback(host)
    app = build(Path(db), settings, allow_feedback, trusted_hosts=LOOPBACK_NAMES if local else None)
    app.state.service.coverage()  # the tiles' centres (a second at 1M tiles) before the first page
    sock = _listen(host, port)
    shown = f"[{host}]" if ":" in host else host
    mode = "feedback sessions are saved" if allow_feedback else "read-only"
    print(
        f"geosearch serve: http://{shown}:{sock.getsockname()[1]}/ ({facts['tiles']} tiles in "
        f"{db}, {mode}); Ctrl+C stops",
        file=sys.stderr,
        flush=True,
    )
    if not local:
        print(
            f"warning: listening on {host}, beyond this machine, without authentication",
            file=sys.stderr,
            flush=True,
        )
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass  # Ctrl+C is how the service stops; uvicorn re-raises it after shutting down
    finally:
        sock.close()
    print("geosearch serve: stopped", file=sys.stderr, flush=True)


def _listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port, or a ConfigError saying why not (port in use...)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM
        )[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)  # connections wait from now on, even before uvicorn accepts them
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


__all__ = ["create_app", "run"]
