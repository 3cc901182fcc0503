"""geosearch's exceptions.

Every error a user can cause or fix is a ``GeosearchError``; the CLI prints its message on one
line and exits with its ``exit_code``. Each class also subclasses the built-in it resembles, so
callers of the Python API can catch either.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager
from os import PathLike


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


class DiskFullError(DatabaseError):
    """The disk filled up while writing: what was committed is kept, the rest rolled back."""

    def __init__(self, path: str | PathLike[str]) -> None:
        super().__init__(
            f"no space left on device writing {path}: free space and run the same command "
            "again; it resumes"
        )
        self.path = path


def is_disk_full(exc: BaseException) -> bool:
    """Whether an error from the OS, SQLite ("database or disk is full") or FAISS (its C++
    write errors carry the errno's text) means the disk or quota is full."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc)
    return "database or disk is full" in text or "No space left on device" in text


@contextmanager
def disk_full_said(path: str | PathLike[str]) -> Iterator[None]:
    """Turn a full disk met while writing ``path`` (or the file the error names) into one
    ``DiskFullError``, whatever layer met it."""
    try:
        yield
    except GeosearchError:
        raise
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        raise DiskFullError(getattr(exc, "filename", None) or path) from None


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


# Exit codes that are not an exception's (docs/errors.md lists them all, with these comments).
EXIT_OK = 0  # success
EXIT_SKIPPED = 6  # ingest finished, but some files were skipped (each reported)
EXIT_INTERRUPTED = 130  # interrupted (Ctrl-C): committed work is kept; the same command resumes
