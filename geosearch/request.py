"""What a search asks for: a ``SearchRequest`` and the ``SearchFilters`` in it.

One description of a search's options, built by every front end and read by the search: the
command line builds it from flags (``cli.similar``), the HTTP service from query parameters and
JSON bodies (``serve/routes.py``), a feedback session stores it and builds it again
(``sessions``), and ``geosearch.similar(db, request)`` takes it.

A new filter is a field of ``SearchFilters`` here and its use in ``search.py`` (``allowed_ids``
for what the database can answer, the per-tile check in ``search_vectors`` otherwise); the
command line and the service offer it with one option each.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import shapely
from pydantic import BaseModel, ConfigDict, Field, field_validator
from shapely.geometry.base import BaseGeometry

from geosearch.config import Settings
from geosearch.errors import ConfigError


class SearchFilters(BaseModel):
    """What results may be: inside a lon/lat box or area, in a date range, far enough from the
    query, from other files than the query's."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    bbox: tuple[float, float, float, float] | None = Field(
        None, description="only results meeting [minx, miny, maxx, maxy] (lon/lat degrees)"
    )
    within: BaseGeometry | None = Field(None, description="only results meeting this lon/lat area")
    after: str | None = Field(None, description="only results acquired on/after (ISO date)")
    before: str | None = Field(None, description="only results acquired on/before (ISO date)")
    exclude_near: float | None = Field(None, description="no results within this many metres")
    other_files: bool = Field(False, description="only results from other files than the query's")

    @field_validator("after", "before", mode="before")
    @classmethod
    def _iso_date(cls, value: Any) -> Any:
        return value.isoformat() if isinstance(value, datetime.date) else value

    def to_dict(self) -> dict[str, Any]:
        """As a feedback session stores them (``within`` as WKT)."""
        return {
            "bbox": list(self.bbox) if self.bbox else None,
            "within": shapely.to_wkt(self.within, rounding_precision=7) if self.within else None,
            "after": self.after,
            "before": self.before,
            "exclude_near": self.exclude_near,
            "other_files": self.other_files,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchFilters:
        """The filters of ``to_dict``."""
        within = shapely.from_wkt(data["within"]) if data.get("within") else None
        return cls.model_validate(
            data | {"within": within, "other_files": bool(data.get("other_files"))}
        )


class SearchRequest(BaseModel):
    """One search: its queries, how many results, the filters, feedback marks and session.

    Queries are files (``queries``, each by the mean of its tiles or, with ``tile_index``, by
    one tile: 0-based, row-major among its indexed tiles), a stored tile (``tile_id``) and/or a
    place (``lonlat``: the indexed tile containing it, on ``date`` if given, else the latest).
    ``good``/``bad`` tile ids move the queries and are not shown. ``None`` means: as the
    settings say (``search.top``, ``search.orientations``).
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    queries: list[Path] = Field(default_factory=list)
    tile_index: int | None = None
    tile_id: int | None = None
    lonlat: tuple[float, float] | None = None
    date: str | None = None
    top: int | None = None
    filters: SearchFilters = SearchFilters()
    good: list[int] = Field(default_factory=list)
    bad: list[int] = Field(default_factory=list)
    session: str | None = None  # the feedback session's name (several queries: NAME-1, ...)
    any_orientation: bool | None = None

    @field_validator("date", mode="before")
    @classmethod
    def _iso_date(cls, value: Any) -> Any:
        return value.isoformat() if isinstance(value, datetime.date) else value

    def with_defaults(self, settings: Settings) -> SearchRequest:
        """The request with what it leaves to the settings filled in; ConfigError for a
        ``date`` without a place or not a date."""
        if self.date is not None:
            if self.lonlat is None:
                raise ConfigError(
                    "--date needs --lonlat LON,LAT (it picks the tile there acquired that day); "
                    "--after/--before filter results by date"
                )
            try:
                datetime.date.fromisoformat(self.date)
            except ValueError:
                raise ConfigError(
                    f"--date: expected a date like 2014-07-20, got {self.date!r}"
                ) from None
        top = self.top or settings.search.top
        turned = self.any_orientation
        if turned is None:
            turned = settings.search.orientations == "any"
        return self.model_copy(update={"top": top, "any_orientation": turned})

    def marks(self) -> dict[int, int]:
        """Tile id -> +1 (good) or -1 (bad); a tile given as both counts as bad."""
        return {int(t): 1 for t in self.good} | {int(t): -1 for t in self.bad}

    def saved(self) -> dict[str, Any]:
        """A request of one query (one file, or one place) as its feedback session keeps it."""
        common = {"any_orientation": bool(self.any_orientation)}
        if self.lonlat is not None:
            query = {"lonlat": list(self.lonlat), "date": self.date} | common
        else:
            query = {"path": str(self.queries[0]), "tile": self.tile_index} | common
        return query | {"top": self.top, "filters": self.filters.to_dict()}

    @classmethod
    def from_saved(cls, saved: dict[str, Any]) -> SearchRequest:
        """The request a feedback session keeps (``saved``), to search again."""
        filters = SearchFilters.from_dict(saved.get("filters") or {})
        turned = bool(saved.get("any_orientation"))
        if saved.get("lonlat"):
            lonlat = tuple(saved["lonlat"])
            return cls(
                lonlat=lonlat, date=saved.get("date"), top=saved.get("top"), filters=filters,
                any_orientation=turned,
            )  # fmt: skip
        return cls(
            queries=[Path(saved["path"])], tile_index=saved.get("tile"), top=saved.get("top"),
            filters=filters, any_orientation=turned,
        )  # fmt: skip
