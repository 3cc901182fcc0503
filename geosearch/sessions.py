"""Searching with a ``SearchRequest``, and feedback sessions: a query, the tiles marked good or
bad, and its latest results.

Every search through the API is saved as a session in the database (one per query), so it can
be refined in rounds (``geosearch feedback SESSION --good 3,5 --bad 2``), repeated, and
exported. A round moves the query with every mark so far; tiles already marked are not shown
again. The sessions' tables are ``geosearch.session_store``'s.
"""

from __future__ import annotations

import getpass
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from geosearch.catalog import Catalog, open_database
from geosearch.config import Settings
from geosearch.errors import ConfigError, ConflictError, InputError, is_disk_full
from geosearch.request import SearchRequest
from geosearch.search import (
    Query,
    SearchResult,
    check_marked,
    resolve_request,
    search_marked,
    stored_tile,
)


def current_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def search(
    catalog: Catalog, request: SearchRequest, settings: Settings, notes: Sequence[str] = ()
) -> list[SearchResult]:
    """Every query of ``request`` (``with_defaults`` applied) searched with its marks, nothing
    saved; each result notes what the reader should know (``notes`` first)."""
    queries = resolve_request(catalog, request)
    marks = request.marks()
    check_marked(catalog, list(marks))
    notes = _date_notes(catalog, request) + list(notes)
    results = []
    for query in queries:
        result = search_marked(catalog, query, request.top, request.filters, marks, settings)
        result.notes = notes + _undated_place(query)
        results.append(result)
    return results


def search_and_save(db: Path, request: SearchRequest, settings: Settings) -> list[SearchResult]:
    """Search and save each query as a feedback session with its marks (named
    ``request.session``, numbered when there are several queries; default: the time)."""
    request = request.with_defaults(settings)
    with open_database(db, settings) as catalog:
        request = _by_file(catalog, request)
        store = catalog.store
        unsaved = "searched without saving a feedback session"
        state = "has no space left on device" if store.full else "is read-only here"
        notes = [f"{store.path} {state}: {unsaved}"] if store.readonly else ()
        results = search(catalog, request, settings, notes)
        if store.readonly:
            return results
        base = request.session or time.strftime("%Y%m%d-%H%M%S")
        marks = request.marks()
        try:
            for number, result in enumerate(results, start=1):
                name = base if len(results) == 1 else f"{base}-{number}"
                saved = _one_query(request, result.query).saved()
                matches = [m.tile.id for m in result.matches]
                store.sessions.save(name, current_user(), saved, matches)
                if marks:
                    store.sessions.mark(name, marks, current_user())
                result.session = name
        except sqlite3.OperationalError as exc:  # the disk filled up: the results stand
            if not is_disk_full(exc):
                raise
            kept = sum(result.session is not None for result in results)
            lost = f"only {kept} of {len(results)} feedback sessions saved" if kept else unsaved
            for result in results:
                result.notes.append(f"{store.path} has no space left on device: {lost}")
        return results


def _by_file(catalog: Catalog, request: SearchRequest) -> SearchRequest:
    """A request by stored tile id as one by its file and position in it (``--tile N``), so
    that its session can be searched again; ConflictError when the file changed on disk since
    ingest (it would be embedded anew)."""
    if request.tile_id is None:
        return request
    if request.queries:
        raise ConfigError("give query files or a tile id, not both")
    record = stored_tile(catalog, request.tile_id)
    if catalog.unchanged_file(record.path) is None:
        raise ConflictError(
            f"tile {record.id}: its file changed since it was ingested; run 'geosearch ingest' "
            "on it again before starting a feedback session with it"
        )
    position = [t.id for t in catalog.store.tiles_of_file(record.path)].index(record.id)
    update = {"tile_id": None, "queries": [Path(record.path)], "tile_index": position}
    return request.model_copy(update=update)


def _one_query(request: SearchRequest, query: Query) -> SearchRequest:
    """The part of ``request`` that found ``query``: its file (and tile), or its place."""
    if query.lonlat is not None:
        return request.model_copy(update={"queries": [], "tile_id": None})
    return request.model_copy(
        update={"queries": [Path(query.path)], "tile_id": None, "lonlat": None, "date": None}
    )


def _date_notes(catalog: Catalog, request: SearchRequest) -> list[str]:
    """A date filter leaves undated tiles out: say how many, rather than print a short table."""
    if request.filters.after is None and request.filters.before is None:
        return []
    counts = catalog.store.date_sources()
    undated = counts.get("undated", 0)
    if not undated:
        return []
    total = sum(counts.values())
    return [
        f"{undated} of {total} tiles have no acquisition date and are left out by "
        "--after/--before (geosearch info shows where dates come from)"
    ]


def _undated_place(query: Query) -> list[str]:
    """A place's tile without a date was chosen as the last ingested, not the latest taken."""
    if query.lonlat is None or query.tiles[0].acquired is not None:
        return []
    lon, lat = query.lonlat
    return [
        f"the tile at {lon},{lat} (id {query.tiles[0].id}) has no acquisition date: it is the "
        "last ingested there, not the latest taken"
    ]


def refine(
    db: Path,
    session: str,
    good: Sequence[int] = (),
    bad: Sequence[int] = (),
    *,
    by_rank: bool = True,
    top: int | None = None,
    settings: Settings | None = None,
) -> SearchResult:
    """Mark tiles of a session's last results (by rank, or by tile id) and search again."""
    settings = settings or Settings()
    with open_database(db, settings) as catalog:
        store = catalog.store
        store.refuse_if_readonly()  # a round is saved: say so before anything else
        saved = store.sessions.get(session)
        if saved is None:
            known = ", ".join(store.sessions.names()[-5:]) or "none yet"
            raise InputError(f"no feedback session '{session}' in {db} (latest: {known})")
        last = saved["last_results"]

        def tile_ids(values: Sequence[int]) -> list[int]:
            if not by_rank:
                return [int(v) for v in values]
            wrong = [v for v in values if not 1 <= v <= len(last)]
            if wrong:
                raise ConfigError(
                    f"rank {wrong[0]} is not among the {len(last)} results of session {session}"
                )
            return [last[v - 1] for v in values]

        new_marks = {t: 1 for t in tile_ids(good)} | {t: -1 for t in tile_ids(bad)}
        check_marked(catalog, list(new_marks))
        if new_marks:
            store.sessions.mark(session, new_marks, current_user())
        marks = {m["tile_id"]: m["label"] for m in store.sessions.get(session)["marks"]}
        request = SearchRequest.from_saved(saved["query"])
        request = request.model_copy(update={"top": top or request.top}).with_defaults(settings)
        [query] = resolve_request(catalog, request)
        result = search_marked(catalog, query, request.top, request.filters, marks, settings)
        store.sessions.save(
            session, current_user(), saved["query"], [m.tile.id for m in result.matches]
        )
        result.session = session
        return result


def session_marks(db: Path, session: str, settings: Settings | None = None) -> dict[str, Any]:
    """A session as stored, with its marked tiles' records (for listing and export)."""
    with open_database(db, settings) as catalog:
        saved = catalog.store.sessions.get(session)
        if saved is None:
            raise InputError(f"no feedback session '{session}' in {db}")
        records = {t.id: t for t in catalog.store.tiles([m["tile_id"] for m in saved["marks"]])}
    for mark in saved["marks"]:
        mark["tile"] = records.get(mark["tile_id"])
    return saved
