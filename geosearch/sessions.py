"""Feedback sessions: a query, the tiles marked good or bad, and its latest results.

Every search is saved as a session in the database (one per query), so it can be refined in
rounds (``geosearch feedback SESSION --good 3,5 --bad 2``), repeated, and exported. A round
moves the query with every mark so far; tiles already marked are not shown again.
"""

from __future__ import annotations

import datetime
import getpass
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from geosearch.catalog import Catalog, open_database
from geosearch.config import Settings
from geosearch.errors import ConfigError, InputError
from geosearch.search import (
    Feedback,
    Query,
    SearchFilters,
    SearchResult,
    resolve_point,
    resolve_query,
    search_vectors,
)


def current_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _spec(query: Query, date: str | None) -> dict[str, Any]:
    """How to find a query again: its file (and tile), or its place (and date)."""
    turned = query.turned is not None
    if query.lonlat is not None:
        return {"lonlat": list(query.lonlat), "date": date, "any_orientation": turned}
    return {"path": query.path, "tile": query.tile, "any_orientation": turned}


def _resolve(catalog: Catalog, spec: dict[str, Any]) -> Query:
    turned = bool(spec.get("any_orientation"))
    if spec.get("lonlat"):
        return resolve_point(catalog, *spec["lonlat"], spec.get("date"), turned)
    return resolve_query(catalog, Path(spec["path"]), spec.get("tile"), turned)


def _search(
    catalog: Catalog,
    query: Query,
    top: int,
    filters: SearchFilters,
    marks: dict[int, int],
    settings: Settings,
) -> SearchResult:
    feedback = Feedback(
        good=tuple(t for t, label in marks.items() if label > 0),
        bad=tuple(t for t, label in marks.items() if label < 0),
    )
    query.also_exclude = frozenset(marks)
    [result] = search_vectors(
        catalog, [query], top, filters, feedback, settings.feedback,
        settings.search.orientation_bonus, settings.search,
    )  # fmt: skip
    return result


def search_and_save(
    db: Path,
    queries: Sequence[Path],
    top: int,
    *,
    tile: int | None = None,
    lonlat: tuple[float, float] | None = None,
    date: str | None = None,
    filters: SearchFilters | None = None,
    good: Sequence[int] = (),
    bad: Sequence[int] = (),
    session: str | None = None,
    any_orientation: bool | None = None,
    settings: Settings | None = None,
) -> list[SearchResult]:
    """Search (files and/or a place) and save each query as a session with its marks.

    ``any_orientation`` (default: config ``search.orientations``) matches tiles however turned.
    """
    settings = settings or Settings()
    if any_orientation is None:
        any_orientation = settings.search.orientations == "any"
    filters = filters or SearchFilters()
    _check_date(date, lonlat)
    catalog = open_database(db, settings)
    store = catalog.store
    try:
        resolved = [resolve_query(catalog, Path(q), tile, any_orientation) for q in queries]
        if lonlat is not None:
            resolved.append(resolve_point(catalog, *lonlat, date, any_orientation))
        if not resolved:
            raise ConfigError("no query: give a query file or --lonlat LON,LAT")
        marks = {int(t): 1 for t in good} | {int(t): -1 for t in bad}
        _check_ids(catalog, marks)
        base = session or time.strftime("%Y%m%d-%H%M%S")
        notes = _date_notes(catalog, filters)
        if store.readonly:
            notes.append(
                f"{store.path} is read-only here: searched without saving a feedback session"
            )
        results = []
        for number, query in enumerate(resolved, start=1):
            name = base if len(resolved) == 1 else f"{base}-{number}"
            result = _search(catalog, query, top, filters, marks, settings)
            result.notes = notes + _undated_place(query)
            if not store.readonly:
                spec = _spec(query, date) | {"top": top, "filters": filters.to_dict()}
                matched = [m.tile.id for m in result.matches]
                store.sessions.save(name, current_user(), spec, matched)
                if marks:
                    store.sessions.mark(name, marks, current_user())
                result.session = name
            results.append(result)
        return results
    finally:
        store.close()


def _check_date(date: str | None, lonlat: tuple[float, float] | None) -> None:
    """``--date`` picks the tile at ``--lonlat`` acquired that day: alone it means nothing."""
    if date is None:
        return
    if lonlat is None:
        raise ConfigError(
            "--date needs --lonlat LON,LAT (it picks the tile there acquired that day); "
            "--after/--before filter results by date"
        )
    try:
        datetime.date.fromisoformat(date)
    except ValueError:
        raise ConfigError(f"--date: expected a date like 2014-07-20, got {date!r}") from None


def _date_notes(catalog: Catalog, filters: SearchFilters) -> list[str]:
    """A date filter leaves undated tiles out: say how many, rather than print a short table."""
    if filters.after is None and filters.before is None:
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
    catalog = open_database(db, settings)
    store = catalog.store
    try:
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
        _check_ids(catalog, new_marks)
        if new_marks:
            store.sessions.mark(session, new_marks, current_user())
        marks = {m["tile_id"]: m["label"] for m in store.sessions.get(session)["marks"]}
        spec = saved["query"]
        filters = SearchFilters.from_dict(spec.get("filters") or {})
        top = top or spec.get("top") or settings.search.top
        result = _search(catalog, _resolve(catalog, spec), top, filters, marks, settings)
        store.sessions.save(session, current_user(), spec, [m.tile.id for m in result.matches])
        result.session = session
        return result
    finally:
        store.close()


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


def _check_ids(catalog: Catalog, marks: dict[int, int]) -> None:
    found = {t.id for t in catalog.store.tiles(sorted(marks))}
    missing = sorted(set(marks) - found)
    if missing:
        raise ConfigError(f"tile id {missing[0]} is not in {catalog.name}")
