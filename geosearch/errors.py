"""geosearch's exceptions.

Every error a user can cause or fix is a ``GeosearchError``; the CLI prints its message on one
line and exits with its ``exit_code``. Each class also subclasses the built-in it resembles, so
callers of the Python API can catch either.
"""

from __future__ import annotations


class GeosearchError(Exception):
    """Base class: a problem the user can act on, with a one-line message."""

    exit_code = 1


class ConfigError(GeosearchError, ValueError):
    """config.yaml or a command-line option has a bad key or value."""

    exit_code = 2


class InputError(GeosearchError, OSError):
    """An input file cannot be read as imagery, or does not fit the database."""

    exit_code = 3


class NotFoundError(InputError):
    """A tile id or feedback session the database does not hold (HTTP 404)."""


class ConflictError(InputError):
    """The request can't be carried out in the database's present state (HTTP 409)."""


class BandLayoutError(InputError):
    """A file's bands do not match the database's band manifest."""


class DatabaseError(GeosearchError, OSError):
    """The database is missing, incompatible, locked or inconsistent."""

    exit_code = 4


class ModelError(GeosearchError, RuntimeError):
    """A feature extractor cannot run: missing weights or missing optional package."""

    exit_code = 5


class OutputError(GeosearchError, OSError):
    """Results cannot be written (read-only folder, disk full...)."""

    exit_code = 7


def error_reason(exc: GeosearchError, path: str) -> str:
    """An error's message without the path it starts with (the caller shows the path)."""
    text = str(exc)
    prefix = f"{path}: "
    return text[len(prefix) :] if text.startswith(prefix) else text


# Exit codes that are not an exception's: documented in the README.
EXIT_OK = 0
EXIT_SKIPPED = 6  # ingest finished, but some files were skipped (each reported)
EXIT_INTERRUPTED = 130
