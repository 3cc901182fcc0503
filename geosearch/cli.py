"""The ``geosearch`` command: options parsed into the API's terms (settings, a
``SearchRequest``; comma lists by click callbacks), the API called, its answer printed. What a
command does is the API's; here is only how it is asked and shown.

Exit codes (also in the README): 0 ok; 1 internal error; 2 bad usage or config; 3 bad input
file; 4 database problem; 5 model/weights problem; 6 ingest finished but skipped some files;
7 results could not be written; 130 interrupted.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer

from geosearch import engines
from geosearch.errors import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SKIPPED,
    ConfigError,
    DatabaseError,
    DiskFullError,
    GeosearchError,
    InputError,
    is_disk_full,
)
from geosearch.formats import KINDS
from geosearch.version import __version__

if TYPE_CHECKING:
    from geosearch.config import Settings
    from geosearch.ingest import IngestReport
    from geosearch.request import SearchRequest
    from geosearch.search import Match


class _MadeOnUse:
    """An object made at its first attribute access: the API module pulls in numpy, rasterio,
    GDAL and FAISS, and rich's consoles take a while too; ``geosearch --version`` and
    ``--help`` need none of them."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self._make = make
        self._made: Any = None

    def made(self) -> Any:
        if self._made is None:
            self._made = self._make()
        return self._made

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.made(), attr)


@contextmanager
def _collection_paused() -> Iterator[None]:
    """For importing the libraries a command uses: they make hundreds of thousands of objects
    that live as long as the process, and the cyclic garbage collector's passes among them as
    they load cost ~30 ms of a search (bench/README.md, "The command line"). Paused meanwhile;
    what was made is then frozen (never scanned again) and collection goes on."""
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


def _api() -> Any:
    with _collection_paused():
        return importlib.import_module("geosearch.api")


api: Any = _MadeOnUse(_api)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,  # help text as written: "[default: x]" and "geosearch[spark]" stay
    help="Find similar places in imagery: ingest folders of GeoTIFF/JPEG/PNG, search by example.",
)


def _console(**options: Any) -> Any:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True, **options)


out: Any = _MadeOnUse(lambda: _console(width=None if sys.stdout.isatty() else 120))
err: Any = _MadeOnUse(lambda: _console(stderr=True))

T = TypeVar("T")


VERSION_LINE = f"geosearch {__version__}"


def _version(shown: bool) -> None:
    if shown:
        out.print(VERSION_LINE, markup=False)
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
    verbose: Annotated[
        bool,
        typer.Option("--verbose", "-v", help="Show GDAL's and rasterio's warnings too."),
    ] = False,
) -> None:
    """Find similar places in imagery: ingest folders of GeoTIFF/JPEG/PNG, search by example."""
    with _collection_paused():  # numpy, rasterio, GDAL, PROJ
        from geosearch.sources import gdal_messages

    gdal_messages(verbose)


DbOption = Annotated[
    Path | None, typer.Option("--db", help="Database (GeoPackage). [default: geosearch.gpkg]")
]
ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", help="Settings file. [default: ./config.yaml if present]"),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]
EngineOption = Annotated[str, typer.Option("--engine", help=engines.engines_help())]
MasterOption = Annotated[
    str | None,
    typer.Option("--master", help="Spark master: local[2], spark://host:7077, yarn. [config]"),
]


def _run(action: Callable[[], T]) -> T:
    """Run an API call; user errors become one line on stderr and their exit code."""
    try:
        return action()
    except GeosearchError as exc:
        err.print(f"error: {exc}", markup=False)
        raise typer.Exit(exc.exit_code) from None
    except Exception as exc:  # a full disk met outside the API's writes: still one line
        if not is_disk_full(exc):
            raise
        full = DiskFullError(getattr(exc, "filename", None) or "the database's files")
        err.print(f"error: {full}", markup=False)
        raise typer.Exit(full.exit_code) from None
    except KeyboardInterrupt:
        err.print("interrupted: committed work is kept; run the same command to resume")
        raise typer.Exit(EXIT_INTERRUPTED) from None


def _settings(config: Path | None, db: Path | None, **overrides: Any) -> tuple[Settings, Path]:
    settings = _run(lambda: api.load_settings(config).with_overrides(overrides))
    return settings, db or settings.db


def _fail(message: str) -> NoReturn:
    """A bad option: one line on stderr, exit 2."""
    err.print(f"error: {message}", markup=False)
    raise typer.Exit(ConfigError.exit_code)


# -- options given as comma lists: parsed by their click callbacks --------------------------


def _numbers(kind: type = int) -> Callable[[typer.Context, typer.CallbackParam, Any], Any]:
    """A callback turning "3,5" into [3, 5] (``kind`` each); None when not given."""

    def parse(ctx: typer.Context, param: typer.CallbackParam, text: str | None) -> list | None:
        if not text:
            return None
        try:
            return [kind(part) for part in text.split(",") if part.strip()] or None
        except ValueError:
            _fail(f"{param.opts[0]}: expected comma-separated numbers, got {text!r}")

    return parse


def _bands(ctx: typer.Context, param: typer.CallbackParam, text: str | None) -> list | None:
    if text is None:
        return None
    try:
        bands = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        bands = []
    if not bands or min(bands) < 1:
        _fail(f"--bands: expected 1-based band numbers like 4,3,2, got {text!r}")
    return bands


def _bbox(ctx: typer.Context, param: typer.CallbackParam, text: str | None) -> tuple | None:
    box = _numbers(float)(ctx, param, text)
    if box is not None and (len(box) != 4 or box[0] > box[2] or box[1] > box[3]):
        _fail("--bbox: expected minx,miny,maxx,maxy in lon/lat degrees")
    return tuple(box) if box else None


def _lonlat(ctx: typer.Context, param: typer.CallbackParam, text: str | None) -> tuple | None:
    point = _numbers(float)(ctx, param, text)
    if point is not None and len(point) != 2:
        _fail("--lonlat: expected LON,LAT in degrees")
    return tuple(point) if point else None


def _day(ctx: typer.Context, param: typer.CallbackParam, text: str | None) -> str | None:
    if text is not None:
        try:
            date.fromisoformat(text)
        except ValueError:
            _fail(f"{param.opts[0]}: expected a date like 2014-07-20, got {text!r}")
    return text


class _ProgressBar:
    """Rich progress bar for ingest; skipped files are printed above it as they happen."""

    def __init__(self, enabled: bool, quiet: bool) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.quiet = quiet
        self.bar = Progress(
            TextColumn("[bold]ingest"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("files · {task.fields[tiles]} tiles"),
            TimeElapsedColumn(),
            console=err.made(),
            disable=not enabled,
            transient=False,
        )
        self.task = self.bar.add_task("ingest", total=None, tiles=0)
        self.tiles = 0

    def begin(self, files: int) -> None:
        self.bar.update(self.task, total=files)

    def advance(self, files: float, tiles: int = 0) -> None:
        self.tiles += tiles
        self.bar.update(self.task, advance=files, tiles=self.tiles)

    def skipped(self, path: str, reason: str) -> None:
        if not self.quiet:
            self.bar.console.print(f"skipped {path}: {reason}", markup=False)


Bands = Annotated[
    str | None,
    typer.Option("--bands", callback=_bands, help="Bands to use, 1-based, in order: 4,3,2."),
]
TileSize = Annotated[
    int | None, typer.Option("--tile-size", help="Tile size in pixels (new databases).")
]
Workers = Annotated[int | None, typer.Option("--workers", help="Worker processes (0 = all cores).")]
Verify = Annotated[
    bool, typer.Option("--verify", help="Judge changed files by content hash (SHA-256).")
]
DryRun = Annotated[
    bool,
    typer.Option(
        "--dry-run", help="Say what the database will be and what would be done; write nothing."
    ),
]
Kind = Annotated[
    str | None,
    typer.Option(
        "--kind",
        help="geo (georeferenced rasters, scenes) or plain (JPEG/PNG) for a new database; "
        "files of the other kind are skipped. [default: most inputs' kind]",
    ),
]
Include = Annotated[
    list[str] | None,
    typer.Option("--include", help="Only inputs matching this glob (repeatable): '*.tif'."),
]
Exclude = Annotated[
    list[str] | None,
    typer.Option("--exclude", help="Leave out inputs matching this glob (repeatable)."),
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress, no skip lines.")]


@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Folders (searched recursively) or files.")],
    db: DbOption = None,
    config: ConfigOption = None,
    bands: Bands = None,
    tile_size: TileSize = None,
    workers: Workers = None,
    verify: Verify = False,
    dry_run: DryRun = False,
    kind: Kind = None,
    include: Include = None,
    exclude: Exclude = None,
    engine: EngineOption = engines.DEFAULT_ENGINE,
    master: MasterOption = None,
    json_output: JsonOption = False,
    quiet: Quiet = False,
) -> None:
    """Ingest imagery into the database: tiles, features, footprints, index.

    Re-running skips unchanged files, replaces changed ones and resumes interrupted ones.
    """
    settings, db_path = _settings(config, db, tile_size=tile_size, workers=workers)
    show_bar = not (json_output or quiet or dry_run) and err.is_terminal
    progress = _ProgressBar(enabled=show_bar, quiet=quiet)
    with progress.bar:
        report = _run(
            lambda: api.ingest(
                paths, db_path, settings, bands=bands, progress=progress, verify=verify,
                dry_run=dry_run, engine=engine, master=master, kind=kind,
                include=include or (), exclude=exclude or (),
            )
        )  # fmt: skip
    if dry_run and not json_output:
        _print_plan(report, db_path)
        return
    if json_output:
        out.print(json.dumps(report.to_dict()), markup=False)
    elif not quiet:
        _print_ingest_summary(report, db_path)
    raise typer.Exit(EXIT_SKIPPED if report.skipped else EXIT_OK)


def _print_plan(report: IngestReport, db_path: Path) -> None:
    """``ingest --dry-run``: what the database will be, then each input with its action."""
    state = "new" if report.new_database else "existing"
    kind = KINDS[report.kind]
    out.print(f"{db_path}: {state} database of {kind} ({report.kind_reason})", markup=False)
    for item in report.planned or []:
        detail = f"  ({item['detail']})" if item.get("detail") else ""
        out.print(f"{item['action']:<9}  {item['path']}{detail}", markup=False)


def _print_ingest_summary(report: IngestReport, db_path: Path) -> None:
    for note in report.notes:
        err.print(f"note: {note}", markup=False)
    if report.new_database:
        err.print(f"new database of {KINDS[report.kind]} ({report.kind_reason})", markup=False)
    rate = report.tiles_added / report.seconds if report.seconds else 0.0
    err.print(
        f"{report.tiles_added} tiles added from {_inputs(report)} "
        f"({report.files_unchanged} unchanged, {report.files_replaced} replaced, "
        f"{report.files_resumed} resumed, {len(report.skipped)} skipped; "
        f"{report.tiles_nodata} tiles mostly nodata) in {report.seconds:.1f} s "
        f"({rate:.0f} tiles/s) -> {db_path}",
        markup=False,
    )


def _inputs(report: IngestReport) -> str:
    """What an ingest read: "3 files", "1 scene", "2 scenes and 4 files"."""
    scenes, files = report.scenes_ingested, report.files_ingested - report.scenes_ingested
    parts = [f"{scenes} scene{'s' * (scenes != 1)}"] if scenes else []
    if files or not scenes:
        parts.append(f"{files} files")
    return " and ".join(parts)


@app.command()
def remove(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders to take out.")],
    db: DbOption = None,
    config: ConfigOption = None,
    json_output: JsonOption = False,
) -> None:
    """Remove files (or all files under folders) and their tiles from the database."""
    _, db_path = _settings(config, db)
    summary = _run(lambda: api.remove(db_path, paths))
    if json_output:
        out.print(json.dumps(summary), markup=False)
    else:
        err.print(
            f"removed {summary['tiles_removed']} tiles of {summary['files_removed']} files "
            f"from {db_path}",
            markup=False,
        )


@app.command()
def check(
    db: DbOption = None,
    config: ConfigOption = None,
    repair: Annotated[
        bool, typer.Option("--repair", help="Fix what can be fixed without losing data.")
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """Verify the database: counts, vectors finite and unit length, footprints, index in sync."""
    settings, db_path = _settings(config, db)
    report = _run(lambda: api.check(db_path, repair, settings))
    if json_output:
        out.print(json.dumps(report.to_dict()), markup=False)
    else:
        for problem in report.problems:
            state = "fixed" if problem.fixed else "problem"
            out.print(f"{state}: {problem.kind}: {problem.detail}", markup=False)
        verdict = "ok" if report.ok else "NOT ok (geosearch check --repair fixes what it can)"
        out.print(f"{db_path}: {report.tiles} tiles, {report.files} files: {verdict}", markup=False)
    if not report.ok:
        raise typer.Exit(DatabaseError.exit_code)


@app.command()
def migrate(
    db: DbOption = None, config: ConfigOption = None, json_output: JsonOption = False
) -> None:
    """Compact a database made before compact vectors: vectors projected to vectors.dims,
    stored at float16, raw features dropped (unless vectors.raw_features), space given back."""
    settings, db_path = _settings(config, db)
    report = _run(lambda: api.migrate(db_path, settings))
    if json_output:
        out.print(json.dumps(report.to_dict()), markup=False)
        return
    err.print(
        f"{db_path}: {report.tiles} tiles, vectors {report.dim_before} -> {report.dim_after} "
        f"dimensions at float16, {report.bytes_before / 1e6:.1f} -> "
        f"{report.bytes_after / 1e6:.1f} MB; the index is rebuilt at the next search",
        markup=False,
    )


def _print_results(results: list, files, json_output: bool) -> None:
    for result in results:
        _say_compared_on(result.query)
    for note in dict.fromkeys(note for result in results for note in result.notes):
        err.print(f"note: {note}", markup=False)
    if json_output:
        for result in results:
            out.print(json.dumps(result.to_dict()), markup=False)
        return
    from rich.table import Table

    for result in results:
        title = f"similar to {result.query.label}"
        title += f"  (session {result.session})" if result.session else ""
        table = Table(title=title, title_justify="left")
        columns = ("rank", "similarity", "id", "file", "window (row,col size)", "acquired", "place")
        for column in columns:
            table.add_column(
                column, justify="right" if column in ("rank", "similarity", "id") else "left"
            )
        for match in result.matches:
            w = match.tile.window
            table.add_row(
                str(match.rank),
                f"{match.similarity:.3f}",
                str(match.tile.id),
                _shown_path(match.tile.path),
                f"{w.row},{w.col} {w.width}x{w.height}",
                match.tile.acquired or "",
                _place_text(match),
            )
        out.print(table)
        if result.location is not None:
            out.print(f"found at: {_placement_line(result.location)}", markup=False)
    err.print(
        f"wrote {files.geojson}, {len(files.previews)} previews, "
        f"{', '.join(str(p) for p in files.contact_sheets)}",
        markup=False,
    )


def _place_text(match: Match) -> str:
    """The "place" column: the share of the query the tile shows where the second stage placed
    it, or that it is a near copy of the query picture."""
    if match.located is not None:
        return f"{match.located.coverage:.0%} of the query"
    return "near copy" if match.near_copy is not None else ""


Queries = Annotated[list[Path] | None, typer.Argument(help="Query files (indexed or not).")]
Top = Annotated[int | None, typer.Option("--top", "-k", help="Results per query.")]
TileIndex = Annotated[
    int | None,
    typer.Option(
        "--tile",
        help="Query with this tile of the file (0-based, row-major) "
        "instead of the mean of all its tiles.",
    ),
]
LonLat = Annotated[
    str | None,
    typer.Option(
        "--lonlat", callback=_lonlat, help="Query with the indexed tile containing LON,LAT."
    ),
]
OnDate = Annotated[
    str | None, typer.Option("--date", help="With --lonlat: the tile acquired that day.")
]
Bbox = Annotated[
    str | None,
    typer.Option(
        "--bbox", callback=_bbox, help="Only results meeting minx,miny,maxx,maxy (WGS84)."
    ),
]
Within = Annotated[
    Path | None,
    typer.Option("--within", help="Only results meeting this area (GeoJSON, GPKG, SHP...)."),
]
After = Annotated[
    str | None,
    typer.Option("--after", callback=_day, help="Only results acquired on/after this date."),
]
Before = Annotated[
    str | None,
    typer.Option("--before", callback=_day, help="Only results acquired on/before this date."),
]
ExcludeNear = Annotated[
    float | None,
    typer.Option(
        "--exclude-near", min=0, help="Drop results within this many metres of the query."
    ),
]
OtherFiles = Annotated[
    bool, typer.Option("--other-files", help="Only results from other files than the query's.")
]
GoodIds = Annotated[
    str | None,
    typer.Option("--good", callback=_numbers(), help="Tile ids that are relevant: 12,40."),
]
BadIds = Annotated[
    str | None,
    typer.Option("--bad", callback=_numbers(), help="Tile ids that are not relevant: 7."),
]
SessionName = Annotated[
    str | None, typer.Option("--session", help="Name the feedback session. [default: time]")
]
OutDir = Annotated[
    Path | None,
    typer.Option("--out", help="Folder for GeoJSON and previews. [default: results]"),
]
Previews = Annotated[
    str | None,
    typer.Option(
        "--previews",
        help="Results of each query given a preview PNG: N (the top N), all or none; the "
        "others say preview: null. [default: search.previews, 10]",
    ),
]
AnyOrientation = Annotated[
    bool | None,
    typer.Option(
        "--any-orientation/--as-is",
        help="Also match places rotated or mirrored (the query is embedded under 8 "
        "orientations: this loads the CNN even for an indexed tile). [config]",
    ),
]
AllTiles = Annotated[
    bool, typer.Option("--all-tiles", help="With --engine spark: every indexed tile is a query.")
]
MapTiles = Annotated[
    Path | None,
    typer.Option("--map", help="Also write a GeoTIFF of every tile's similarity (+ a QGIS .qml)."),
]
MapPixels = Annotated[
    Path | None,
    typer.Option(
        "--map-pixels",
        help="Embedding databases: a GeoTIFF of every pixel's similarity over the "
        "--bbox/--within area, at the rasters' resolution (+ a QGIS .qml).",
    ),
]


@app.command()
def similar(
    queries: Queries = None,
    db: DbOption = None,
    config: ConfigOption = None,
    top: Top = None,
    tile: TileIndex = None,
    lonlat: LonLat = None,
    on_date: OnDate = None,
    bbox: Bbox = None,
    within: Within = None,
    after: After = None,
    before: Before = None,
    exclude_near: ExcludeNear = None,
    other_files: OtherFiles = False,
    good: GoodIds = None,
    bad: BadIds = None,
    session: SessionName = None,
    out_dir: OutDir = None,
    previews: Previews = None,
    any_orientation: AnyOrientation = None,
    engine: EngineOption = engines.DEFAULT_ENGINE,
    master: MasterOption = None,
    all_tiles: AllTiles = False,
    json_output: JsonOption = False,
    map_tiles: MapTiles = None,
    map_pixels: MapPixels = None,
) -> None:
    """Find the tiles most similar to each query; write GeoJSON, previews, contact sheet.

    Each query is saved as a feedback session: refine it with 'geosearch feedback SESSION'.
    """
    from geosearch.request import SearchFilters, SearchRequest

    overrides = {"search.top": top, "search.out": out_dir, "search.previews": previews}
    settings, db_path = _settings(config, db, **overrides)
    area = _run(lambda: api.load_area(within)) if within is not None else None
    filters = SearchFilters(
        bbox=bbox, within=area, after=after, before=before, exclude_near=exclude_near,
        other_files=other_files,
    )  # fmt: skip
    request = SearchRequest(
        queries=queries or [], tile_index=tile, lonlat=lonlat, date=on_date, filters=filters,
        good=good or [], bad=bad or [], session=session, any_orientation=any_orientation,
    )  # fmt: skip
    chosen = _run(lambda: engines.engine(engine))
    search = settings.search
    _run(lambda: api.prepare_output(search.out))
    if chosen.batch_search:
        if map_tiles or map_pixels:
            _fail(f"--map/--map-pixels: use --engine {engines.DEFAULT_ENGINE}")
        _similar_in_batch(request, db_path, settings, master, all_tiles, json_output)
        return
    results = _run(lambda: api.similar(db_path, request, settings=settings))
    files = _run(
        lambda: api.write_results(results, db_path, search.out, search.preview_size, settings)
    )
    _print_results(results, files, json_output)
    if map_tiles or map_pixels:
        maps = _run(
            lambda: api.similarity_maps(results, db_path, map_tiles, map_pixels, filters, settings)
        )
        for written in maps:
            err.print(f"wrote {written.describe()}", markup=False)


@app.command()
def changes(
    date_from: Annotated[
        str, typer.Option("--from", help="The earlier period: a year, YYYY-MM or YYYY-MM-DD.")
    ],
    date_to: Annotated[
        str, typer.Option("--to", help="The later period: a year, YYYY-MM or YYYY-MM-DD.")
    ],
    db: DbOption = None,
    config: ConfigOption = None,
    bbox: Bbox = None,
    within: Within = None,
    top: Annotated[int, typer.Option("--top", "-k", min=1, help="Places listed.")] = 20,
    out_dir: Annotated[
        Path, typer.Option("--out", help="Folder for changes.geojson, previews, contact sheet.")
    ] = Path("changes"),
    map_tiles: Annotated[
        Path | None,
        typer.Option("--map", help="Also write every pair's change on the tile grid (+ .qml)."),
    ] = None,
    map_pixels: Annotated[
        Path | None,
        typer.Option(
            "--map-pixels",
            help="Embedding databases: a GeoTIFF of every pixel's change between the two "
            "periods, (1 - cosine) / 2, over the --bbox/--within area (default: the places "
            "paired), at the rasters' resolution (+ a QGIS .qml).",
        ),
    ] = None,
    engine: EngineOption = engines.DEFAULT_ENGINE,
    master: MasterOption = None,
    json_output: JsonOption = False,
) -> None:
    """The places whose picture changed most between two periods, ranked.

    Pairs every place covered in both periods (same grid, else footprints overlapping by half;
    the tile nearest each period's end), scores each pair's change 0..1 and flags those that
    stand out of the database's own spread. Exit 3 when no place is covered in both.
    """
    from geosearch.request import SearchFilters

    settings, db_path = _settings(config, db)
    area = _run(lambda: api.load_area(within)) if within is not None else None
    filters = SearchFilters(bbox=bbox, within=area)
    _run(lambda: api.prepare_output(out_dir))
    result = _run(
        lambda: api.changes(
            db_path, date_from, date_to, filters=filters, top=top,
            pixel_map=map_pixels is not None, settings=settings, engine=engine, master=master,
        )
    )  # fmt: skip
    files = _run(
        lambda: api.write_changes(
            result, db_path, out_dir, tiles_map=map_tiles, pixels_map=map_pixels,
            filters=filters, settings=settings,
        )
    )  # fmt: skip
    for note in result.notes:
        err.print(f"note: {note}", markup=False)
    if json_output:
        for place in result.places:
            out.print(json.dumps(place.to_dict()), markup=False)
    else:
        _print_changes(result)
    err.print(
        f"{result.pairs} places in both {result.before.text} and {result.after.text}, "
        f"{result.significant} significant (above "
        + ", ".join(f"{name} {value:.3f}" for name, value in result.thresholds.items())
        + f"); wrote {files.geojson}"
        + (f", {files.contact_sheet}" if files.contact_sheet else ""),
        markup=False,
    )
    for written in files.maps:
        err.print(f"wrote {written.describe()}", markup=False)


def _print_changes(result) -> None:
    from rich.table import Table

    table = Table(
        title=f"changes {result.before.text} -> {result.after.text}", title_justify="left"
    )
    for column in ("rank", "change", "significant", "before", "after", "file", "window"):
        table.add_column(column, justify="right" if column in ("rank", "change") else "left")
    for place in result.places:
        before, after = place.pair.before, place.pair.after
        w = before.window
        table.add_row(
            str(place.rank), f"{place.change:.3f}", "yes" if place.significant else "",
            f"{before.acquired} #{before.id}", f"{after.acquired} #{after.id}",
            _shown_path(after.path), f"{w.row},{w.col} {w.width}x{w.height}",
        )  # fmt: skip
    out.print(table)


def _say_compared_on(query) -> None:
    """One line on stderr for a query lacking some of the database's bands."""
    shared = query.compared_on
    if shared:
        err.print(
            f"{query.label}: compared on bands {','.join(shared['bands'])} "
            f"({', '.join(shared['blocks'])}); it has no {','.join(shared['missing'])}",
            markup=False,
        )


def _placement_line(placement) -> str:
    turn = f", turned {90 * placement.orientation.quarter_turns} degrees" * bool(
        placement.orientation.quarter_turns
    )
    mirrored = ", mirrored" if placement.orientation.mirrored else ""
    return (
        f"{_shown_path(placement.path)} at col {placement.query_to_scene.c:.0f}, "
        f"row {placement.query_to_scene.f:.0f}, scale {placement.scale:.2f}{turn}{mirrored} "
        f"(correlation {placement.correlation:.2f}, margin {placement.margin:.2f})"
    )


@app.command()
def locate(
    query: Annotated[Path, typer.Argument(help="A picture: a chip, an upload, a screenshot.")],
    db: DbOption = None,
    config: ConfigOption = None,
    tile: Annotated[
        int | None, typer.Option("--tile", help="Locate this tile of the file (0-based).")
    ] = None,
    any_orientation: Annotated[
        bool | None,
        typer.Option("--any-orientation/--as-is", help="Also try it rotated or mirrored."),
    ] = None,
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", help="Folder for located.geojson and the georeferenced copy."),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Say where a picture lies in the database's scenes, and georeference a copy of it.

    Writes located.geojson (every scene it was found in) and the query georeferenced by the
    best fit: a GeoTIFF, or a PNG with a world file. Exit 3 when it is found nowhere.
    """
    settings, db_path = _settings(config, db, **{"search.out": out_dir})
    _run(lambda: api.prepare_output(settings.search.out, previews=False))
    result = _run(
        lambda: api.locate(
            db_path, query, tile=tile, any_orientation=any_orientation, settings=settings
        )
    )
    _say_compared_on(result.query)
    files = _run(lambda: api.write_location(result, db_path, settings.search.out, settings))
    if json_output:
        out.print(json.dumps(result.to_dict()), markup=False)
    elif result.placements:
        for placement in result.placements:
            out.print(_placement_line(placement), markup=False)
    if not result.placements:
        err.print(f"{query}: not found in {db_path.name}", markup=False)
        raise typer.Exit(InputError.exit_code)
    err.print(f"wrote {files.geojson} and {files.georeferenced}", markup=False)


def _similar_in_batch(
    request: SearchRequest,
    db_path: Path,
    settings: Settings,
    master: str | None,
    all_tiles: bool,
    json_output: bool,
) -> None:
    """Batch search (Spark): results as Parquet and the same GeoJSON (previews if few)."""
    search = settings.search
    turned = bool(request.any_orientation) or settings.search.orientations == "any"
    results = _run(
        lambda: api.similar_batch(
            db_path, request.queries, search.top, all_tiles=all_tiles, master=master,
            any_orientation=turned, settings=settings,
        )
    )  # fmt: skip
    files = _run(
        lambda: api.write_results(
            results, db_path, search.out, search.preview_size, settings,
            previews=None if len(results) <= 20 else "none", parquet=True,
        )
    )  # fmt: skip
    if json_output:
        for result in results:
            out.print(json.dumps(result.to_dict()), markup=False)
    err.print(
        f"{len(results)} queries on Spark: wrote {files.geojson} and {files.parquet}", markup=False
    )


@app.command()
def feedback(
    session: Annotated[str, typer.Argument(help="Session name (printed by similar).")],
    good: Annotated[
        str | None,
        typer.Option("--good", callback=_numbers(), help="Relevant results, by rank: 3,5."),
    ] = None,
    bad: Annotated[
        str | None,
        typer.Option("--bad", callback=_numbers(), help="Not relevant results, by rank: 2."),
    ] = None,
    by_id: Annotated[
        bool, typer.Option("--ids", help="--good/--bad give tile ids instead of ranks.")
    ] = False,
    export: Annotated[
        Path | None,
        typer.Option("--export", help="Write the marked tiles (with labels) to this GeoJSON."),
    ] = None,
    export_chips: Annotated[
        Path | None,
        typer.Option(
            "--export-chips",
            help="Write every marked tile as an image chip to DIR/good and DIR/bad (ImageFolder "
            "layout), with labels.csv and chips.gpkg.",
        ),
    ] = None,
    negatives: Annotated[
        int,
        typer.Option("--negatives", help="With --export-chips: also N background tiles as bad."),
    ] = 0,
    db: DbOption = None,
    config: ConfigOption = None,
    top: Top = None,
    out_dir: OutDir = None,
    previews: Previews = None,
    json_output: JsonOption = False,
) -> None:
    """Mark a session's results good or bad and search again (or --export its marks, or
    --export-chips for training data)."""
    settings, db_path = _settings(
        config, db, **{"search.out": out_dir, "search.previews": previews}
    )
    if export_chips is not None and not (good or bad):
        chips = _run(lambda: api.export_chips(db_path, session, export_chips, negatives, settings))
        for skipped in chips.skipped:
            err.print(f"skipped {skipped}", markup=False)
        err.print(chips.summary(), markup=False)
        return
    if export is not None and not (good or bad):
        written = _run(lambda: api.export_feedback(db_path, session, export, settings))
        err.print(f"wrote {written}", markup=False)
        return
    _run(lambda: api.prepare_output(settings.search.out))
    result = _run(
        lambda: api.feedback(
            db_path, session, good or [], bad or [], by_rank=not by_id, top=top,
            settings=settings,
        )
    )  # fmt: skip
    if export is not None:
        _run(lambda: api.export_feedback(db_path, session, export, settings))
    if export_chips is not None:
        chips = _run(lambda: api.export_chips(db_path, session, export_chips, negatives, settings))
        err.print(chips.summary(), markup=False)
    search = settings.search
    files = _run(
        lambda: api.write_results([result], db_path, search.out, search.preview_size, settings)
    )
    _print_results([result], files, json_output)


@app.command()
def detect(
    session: Annotated[str, typer.Argument(help="Feedback session whose marks teach it.")],
    good: Annotated[
        str | None,
        typer.Option("--good", callback=_numbers(), help="Also mark these tile ids good: 12,40."),
    ] = None,
    bad: Annotated[
        str | None,
        typer.Option("--bad", callback=_numbers(), help="Also mark these tile ids bad: 7."),
    ] = None,
    good_within: Annotated[
        Path | None,
        typer.Option("--good-within", help="Mark good the tiles meeting these points/polygons."),
    ] = None,
    bad_within: Annotated[
        Path | None,
        typer.Option("--bad-within", help="Mark bad the tiles meeting these points/polygons."),
    ] = None,
    bbox: Bbox = None,
    within: Within = None,
    after: After = None,
    before: Before = None,
    threshold: Annotated[
        float | None,
        typer.Option(
            "--threshold", help="Probability a detected tile reaches, 0..1. [config: 0.5]"
        ),
    ] = None,
    review: Annotated[
        int,
        typer.Option("--review", min=0, help="Also list N tiles to mark next (most uncertain)."),
    ] = 0,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Folder for detections.gpkg/.geojson, probability.tif, "
            "contact sheet. [default: detections]",
        ),
    ] = None,
    engine: EngineOption = engines.DEFAULT_ENGINE,
    master: MasterOption = None,
    db: DbOption = None,
    config: ConfigOption = None,
    json_output: JsonOption = False,
) -> None:
    """Find every place like a session's marks: a classifier over the whole database.

    Writes merged detections (GeoPackage, GeoJSON), a probability map and a contact sheet;
    the new marks are saved to the session. Mark the --review tiles with
    'geosearch feedback SESSION --ids --good/--bad' and run detect again.
    """
    from geosearch.request import SearchFilters

    settings, db_path = _settings(config, db)
    area = _run(lambda: api.load_area(within)) if within is not None else None
    filters = SearchFilters(bbox=bbox, within=area, after=after, before=before)
    result = _run(
        lambda: api.detect(
            db_path, session, good=good or [], bad=bad or [], good_within=good_within,
            bad_within=bad_within, filters=filters, threshold=threshold, review=review,
            out=out_dir, engine=engine, master=master, settings=settings,
        )
    )  # fmt: skip
    if json_output:
        out.print(json.dumps(result.to_dict()), markup=False)
    else:
        for tile in result.review:
            out.print(
                f"review tile {tile.tile.id}  p {tile.probability:.2f}  "
                f"{_shown_path(tile.tile.path)}  {tile.preview or ''}",
                markup=False,
            )
        if result.review:
            ids = ",".join(str(tile.tile.id) for tile in result.review)
            out.print(
                f"mark them: geosearch feedback {session} --ids --good ... --bad ...  ({ids})",
                markup=False,
            )
    err.print(result.summary(), markup=False)


@app.command()
def serve(
    db: DbOption = None,
    config: ConfigOption = None,
    host: Annotated[
        str,
        typer.Option(
            "--host",
            help="Address to listen on. Anything but loopback opens the service, without "
            "authentication, to the network.",
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port.")] = 8000,
    allow_feedback: Annotated[
        bool,
        typer.Option("--allow-feedback", help="Save feedback sessions and marks (else read-only)."),
    ] = False,
) -> None:
    """Serve the database over HTTP: a map page at / and a JSON API (/api/openapi.json)."""
    settings, db_path = _settings(config, db)
    from geosearch.serve import run  # FastAPI/uvicorn are imported only here (serve extra)

    _run(lambda: run(db_path, host, port, allow_feedback, settings))


def _shown_path(path: str) -> str:
    """A stored (absolute) path, shortened to its name (the full path is in the GeoJSON)."""
    return Path(path).name


@app.command()
def info(db: DbOption = None, config: ConfigOption = None, json_output: JsonOption = False) -> None:
    """What the database holds: tiles, files, extractors, bands, index."""
    settings, db_path = _settings(config, db)
    facts = _run(lambda: api.info(db_path, settings))
    if json_output:
        out.print(json.dumps(facts), markup=False)
        return
    bands = facts["bands"]
    index = facts["index"]
    lines = [
        ("database", facts["db"]),
        (
            "tiles",
            f"{facts['tiles']} from {facts['files']} files"
            + (f" ({facts['files_partial']} partly ingested)" if facts["files_partial"] else ""),
        ),
        ("kind", facts["kind"]),
        (
            "bands",
            f"{len(bands['bands'])} ({','.join(bands['names'])}) {bands['dtype']}, "
            f"scaling {bands['scaling']}, RGB = bands "
            f"{','.join(bands['names'][i] for i in bands['rgb'])}",
        ),
        ("tile size", f"{facts['tile_size']} px"),
        ("dates", _dates_line(facts["dates"])),
        (
            "extractors",
            " + ".join(
                f"{e['name']} [{e['version']}] {e['dim']}-d x{e['weight']:g}"
                for e in facts["extractors"]
            ),
        ),
        ("vector", _vector_line(facts["vectors"])),
        (
            "per tile",
            f"{facts['bytes_per_tile']['disk']} bytes on disk (database "
            f"{facts['bytes_per_tile']['database']}, index files "
            f"{facts['bytes_per_tile']['index_files']}), "
            f"{facts['bytes_per_tile']['index_memory']} bytes of index in memory",
        ),
        (
            "index",
            f"{index['type']}, {index['vectors']} vectors, "
            f"{(index['bytes'] or 0) / 1e6:.1f} MB; "
            f"memory {index['bytes_per_million_tiles'] / 1e9:.1f} GB per million tiles",
        ),
    ]
    width = max(len(label) for label, _ in lines)
    for label, value in lines:
        out.print(f"{label:<{width}}  {value}", markup=False)


def _vector_line(vectors: dict[str, Any]) -> str:
    """e.g. "128 float16 (PCA of the 2108-d fused vector), raw features not kept"."""
    how = f"PCA of the {vectors['fused_dim']}-d fused vector" if vectors["projected"] else "fused"
    raw = "raw features kept" if vectors["raw_features"] else "raw features not kept"
    line = f"{vectors['dim']} {vectors['dtype']} ({how}), {raw}"
    if vectors["dtype"] == "float32":  # made before compact vectors
        line += "; 'geosearch migrate' compacts them"
    return line


def _dates_line(sources: dict[str, int]) -> str:
    """Tiles per date source, undated last: "20 from names, 3 from metadata, 5 undated"."""
    from geosearch.dates import DATE_SOURCES

    words = DATE_SOURCES
    shown = [f"{n} from {words.get(k, k)}" for k, n in sources.items() if k != "undated"]
    return ", ".join([*shown, f"{sources.get('undated', 0)} undated"])


def main() -> NoReturn:
    """Entry point of the ``geosearch`` console script."""
    if sys.argv[1:] == ["--version"]:  # answered before Typer builds every command's options
        print(VERSION_LINE)
        _exit_without_teardown(0)
    # pydantic (settings, and Typer's options) looks for plugins in every installed package's
    # entry points the first time it builds a model: ~10 ms of each command, for none we use
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    # A command's own matrices are small (a query, a batch of tiles; the heavy work runs in
    # workers, TFLite or FAISS), and OpenBLAS's threads spin ~0.1 s after each call, taking the
    # other core from previews and workers: a search burnt 0.9 s of CPU for 0.7 s of wall, one
    # BLAS thread 0.67 s (bench/README.md, "The command line"). Set before numpy loads.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    try:
        app()
        code: object = 0
    except KeyboardInterrupt:
        err.print("interrupted")
        code = EXIT_INTERRUPTED
    except SystemExit as stop:  # how Typer ends every command
        code = stop.code
    _exit_without_teardown(code)


def _exit_without_teardown(code: object) -> NoReturn:
    """End the process as ``sys.exit(code)`` would, once the command's work is done, without
    CPython's teardown of every library it imported (GDAL, PROJ, FAISS, numpy...: 60-110 ms of
    a search, bench/README.md; mypy ends the same way). Every file and database is closed by
    then; other threads are waited for, the atexit handlers run and the output is flushed."""
    import atexit
    import contextlib
    import threading

    if code is None:
        code = 0
    elif not isinstance(code, int):  # sys.exit("message"): the message on stderr, exit 1
        print(code, file=sys.stderr)
        code = 1
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe (| head) or stream
            stream.flush()
    os._exit(code)
