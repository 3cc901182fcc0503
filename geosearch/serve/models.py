"""Request bodies and responses of the HTTP API, as the OpenAPI schema shows them."""

from __future__ import annotations

import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from geosearch.request import SearchFilters, SearchRequest

MAX_TOP = 500
SESSION_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class ErrorBody(BaseModel):
    """Every error: one line saying what is wrong and, where it helps, how to fix it."""

    error: str = Field(examples=["no tile 999 in geosearch.gpkg"])


class Feature(BaseModel):
    """An RFC 7946 feature: a tile (``geometry`` null for plain images and unlocated rasters)."""

    type: Literal["Feature"] = "Feature"
    id: int | None = None
    geometry: dict[str, Any] | None
    properties: dict[str, Any]


class TilesPage(BaseModel):
    """Tiles as a FeatureCollection, one page at a time (``total`` tiles match)."""

    type: Literal["FeatureCollection"] = "FeatureCollection"
    features: list[Feature]
    total: int
    limit: int
    offset: int
    next: str | None = Field(None, description="URL of the next page, null on the last")


class SimilarCollection(BaseModel):
    """A search as a FeatureCollection: the query (``role: query``, rank 0), then the results
    (``role: result``) with ``rank``, ``score``, ``cosine``, ``id``, ``path``, window, ``acquired``
    and ``preview`` (URL of the tile's PNG). ``session`` names the feedback session (if saved);
    ``feedback`` lists the tile ids applied as good and bad; ``location`` (a Feature, or null)
    is where the query's picture was found by the second search stage."""

    type: Literal["FeatureCollection"] = "FeatureCollection"
    features: list[dict[str, Any]]
    session: str | None = None
    feedback: dict[str, list[int]] | None = None
    query: dict[str, Any]
    location: dict[str, Any] | None = None


class SearchOptions(BaseModel):
    """Result options, as ``geosearch similar`` takes them."""

    model_config = ConfigDict(extra="forbid")

    top: int | None = Field(None, ge=1, le=MAX_TOP, description="results [default: search.top]")
    bbox: tuple[float, float, float, float] | None = Field(
        None, description="only results meeting [minx, miny, maxx, maxy] (lon/lat)"
    )
    exclude_near: float | None = Field(None, ge=0, description="metres from the query")
    after: datetime.date | None = None
    before: datetime.date | None = None
    other_files: bool = False
    good: list[int] = Field(default_factory=list, description="tile ids that are relevant")
    bad: list[int] = Field(default_factory=list, description="tile ids that are not relevant")

    def filters(self) -> SearchFilters:
        return SearchFilters(
            bbox=self.bbox, after=self.after, before=self.before,
            exclude_near=self.exclude_near, other_files=self.other_files,
        )  # fmt: skip


class SessionRequest(SearchOptions):
    """A new feedback session: a query by tile id, or by place (lon, lat and maybe date)."""

    tile: int | None = Field(None, description="query with this tile (id)")
    lon: float | None = Field(None, ge=-180, le=180)
    lat: float | None = Field(None, ge=-90, le=90)
    date: datetime.date | None = Field(None, description="with lon/lat: the tile of that day")
    name: str | None = Field(
        None, pattern=SESSION_NAME_PATTERN, description="session name [default: web-TIME-RANDOM]"
    )

    @model_validator(mode="after")
    def _one_query(self) -> SessionRequest:
        by_place = self.lon is not None or self.lat is not None
        if (self.tile is None) == (not by_place) or (by_place and None in (self.lon, self.lat)):
            raise ValueError("give either tile, or lon and lat")
        return self

    def search_request(self, default_top: int) -> SearchRequest:
        """The search this body asks for (``tile`` is a tile id)."""
        place = (self.lon, self.lat) if self.tile is None else None
        return SearchRequest(
            tile_id=self.tile, lonlat=place, date=self.date, top=self.top or default_top,
            filters=self.filters(), good=self.good, bad=self.bad, session=self.name,
            any_orientation=False,  # a session made on the page searches tiles as they lie
        )  # fmt: skip


class MarkRequest(BaseModel):
    """Tiles (ids) to mark in a session; a new mark replaces an old one of the same tile."""

    model_config = ConfigDict(extra="forbid")

    good: list[int] = Field(default_factory=list)
    bad: list[int] = Field(default_factory=list)
    top: int | None = Field(None, ge=1, le=MAX_TOP)


class BoxMarkRequest(BaseModel):
    """Every tile whose footprint meets a lon/lat box, marked good or bad in a session."""

    model_config = ConfigDict(extra="forbid")

    bbox: tuple[float, float, float, float] = Field(
        description="[west, south, east, north] in lon/lat degrees (WGS84)"
    )
    label: Literal["good", "bad"]
    top: int | None = Field(None, ge=1, le=MAX_TOP)

    @model_validator(mode="after")
    def _ordered(self) -> BoxMarkRequest:
        west, south, east, north = self.bbox
        if not (-180 <= west <= east <= 180 and -90 <= south <= north <= 90):
            given = list(self.bbox)
            raise ValueError(f"expected [west, south, east, north] in lon/lat, got {given}")
        return self


class BoxMarkCollection(SimilarCollection):
    """The search again after a box was marked, and the tiles the box marked."""

    marked: list[int] = Field(description="ids of the tiles the box marked")


class DetectRequest(BaseModel):
    """``geosearch detect`` on a session: how many tiles to review, and the threshold."""

    model_config = ConfigDict(extra="forbid")

    review: int = Field(10, ge=0, le=100, description="tiles to mark next")
    threshold: float | None = Field(
        None, ge=0, le=1, description="probability of a detection [default: detect.threshold]"
    )


class Mark(BaseModel):
    tile_id: int
    label: int = Field(description="1 relevant, -1 not relevant")
    marked_at: str
    marked_by: str | None


class Session(BaseModel):
    """A feedback session as stored: its query, the ids of its last results, its marks."""

    name: str
    created: str
    created_by: str | None
    query: dict[str, Any]
    last_results: list[int]
    marks: list[Mark]


class PageConfig(BaseModel):
    """What the map page needs to start."""

    kind: Literal["geo", "plain"]
    tiles: int
    generation: int
    extent: tuple[float, float, float, float] | None = Field(
        None, description="west, south, east, north of the tiles' centres (lon/lat)"
    )
    allow_feedback: bool
    basemap: str | None
    top: int
    max_top: int
    max_upload_bytes: int
    version: str
