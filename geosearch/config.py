"""Settings: ``config.yaml`` loaded and validated into typed models.

Every key is optional; the models' defaults are the documented defaults (``config.yaml`` at the
repository root lists them all). Settings that shape the vectors (tile size, bands, features)
are written into a database when it is created; later runs on that database use the stored ones.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from geosearch.errors import ConfigError

DEFAULT_CONFIG_NAME = "config.yaml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class BandSettings(_Section):
    select: list[int] | None = None
    rgb: list[int | str] | None = None
    scaling: Literal["auto", "dtype", "percentile", "none"] = "auto"
    percentiles: tuple[float, float] = (2.0, 98.0)

    @field_validator("select")
    @classmethod
    def _positive_indexes(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (not value or min(value) < 1):
            raise ValueError("band indexes are 1-based and the list must not be empty")
        return value

    @field_validator("rgb")
    @classmethod
    def _three_bands(cls, value: list[int | str] | None) -> list[int | str] | None:
        if value is not None and len(value) != 3:
            raise ValueError("give exactly three bands (red, green, blue)")
        return value

    @field_validator("percentiles")
    @classmethod
    def _ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0 <= low < high <= 100:
            raise ValueError("need 0 <= low < high <= 100")
        return value


class BandStatsSettings(_Section):
    weight: float = Field(0.25, ge=0)
    histogram_bins: int = Field(8, ge=2, le=64)

    @field_validator("histogram_bins")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value & (value - 1):
            raise ValueError("must be a power of two (2, 4, 8, 16, 32 or 64)")
        return value


class LayoutSettings(_Section):
    weight: float = Field(1.0, ge=0)
    plain_weight: float = Field(0.0, ge=0)  # the weight in plain-image (JPEG/PNG) databases
    side: int = Field(16, ge=2, le=64)


class CnnSettings(_Section):
    weight: float = Field(1.0, ge=0)
    model: Literal["mobilenet_v1", "vgg16", "resnet50", "efficientnetb0"] = "mobilenet_v1"
    weights: Path | None = None
    download: bool = True
    threads: int = Field(0, ge=0)
    batch_size: int = Field(32, ge=1, le=1024)


class EmbeddingSettings(_Section):
    """Embedding rasters (``bands.scaling: none``): how raw values become vector components."""

    dequantize: Literal["auto", "none", "linear", "alphaearth"] = "auto"
    scale: float = 1.0  # linear: value = raw * scale + offset
    offset: float = 0.0


class FeatureSettings(_Section):
    band_stats: BandStatsSettings = BandStatsSettings()
    layout: LayoutSettings = LayoutSettings()
    cnn: CnnSettings = CnnSettings()
    embedding: EmbeddingSettings = EmbeddingSettings()


class SearchSettings(_Section):
    top: int = Field(5, ge=1, le=10000)
    out: Path = Path("results")
    preview_size: int = Field(256, ge=16, le=2048)
    # results of each query given a preview PNG (and the query one): a number, all or none
    previews: int | Literal["all", "none"] = 10
    orientations: Literal["as_is", "any"] = "as_is"
    orientation_bonus: float = Field(0.05, ge=0, le=1)
    expansion: int = Field(10, ge=0, le=1000)  # query moved toward its nearest tiles; 0 = off
    locate: bool = True
    locate_shortlist: int = Field(64, ge=1, le=1000)
    locate_margin_sigmas: float = Field(1.5, ge=0, le=100)

    @field_validator("previews", mode="before")
    @classmethod
    def _count_or_word(cls, value: Any) -> Any:
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        if isinstance(value, bool) or not (
            value in ("all", "none") or (isinstance(value, int) and value >= 0)
        ):
            raise ValueError("expected a number of previews (0 or more), all or none")
        return value

    def previews_per_query(self, previews: int | str | None = None) -> int | None:
        """``previews`` (default: ``self.previews``) as a count: None for all, 0 for none."""
        chosen = self.previews if previews is None else previews
        return {"all": None, "none": 0}.get(chosen, chosen)  # type: ignore[arg-type]


class MapSettings(_Section):
    window: int = Field(512, ge=64, le=8192)  # --map-pixels: pixels per side of a window
    threads: int = Field(0, ge=0)  # --map-pixels: windows computed at once; 0 = cores


class ChangeSettings(_Section):
    """``geosearch changes``: how pairs are judged."""

    mad_k: float = Field(1.5, gt=0, le=100)  # significant: every measure above median + k MADs
    vectors_only_mad_k: float = Field(3.0, gt=0, le=100)  # where the vectors judge alone
    second_look: int = Field(100, ge=0, le=100000)  # top pairs whose pixels are compared
    reference_pairs: int = Field(128, ge=2, le=100000)  # random pairs: the pixels' own spread


class FeedbackSettings(_Section):
    method: Literal["rocchio", "classifier", "both"] = "classifier"
    alpha: float = Field(1.0, ge=0)
    beta: float = Field(0.75, ge=0)
    gamma: float = Field(0.25, ge=0)
    candidates: int = Field(200, ge=10, le=100000)
    background: int = Field(100, ge=0, le=100000)  # classifier: database tiles as negatives


class DetectSettings(_Section):
    threshold: float = Field(0.5, ge=0, le=1)  # probability a detected tile reaches at least
    background: int = Field(500, ge=0, le=100000)  # database tiles sampled as negatives
    background_weight: float = Field(0.04, gt=0, le=1)  # a background tile's weight (mark = 1)
    c: float = Field(0.3, gt=0)  # inverse regularisation strength of the logistic regression
    self_training: int = Field(4, ge=0, le=100)  # weak positives per good mark; 0: one pass
    self_training_weight: float = Field(0.5, gt=0, le=1)  # a weak positive's weight (mark = 1)
    out: Path = Path("detections")  # folder of the files written


class SparkSettings(_Section):
    master: str = "local[*]"
    executor_memory: str = "2g"
    driver_memory: str = "2g"
    partitions: int = Field(0, ge=0)


class ServeSettings(_Section):
    basemap: str | None = None

    @field_validator("basemap")
    @classmethod
    def _xyz_template(cls, value: str | None) -> str | None:
        if value is not None and not (
            value.startswith(("http://", "https://"))
            and all(k in value for k in ("{z}", "{x}", "{y}"))
        ):
            raise ValueError("expected an http(s) XYZ tile URL with {z}, {x} and {y}")
        return value


class VectorSettings(_Section):
    dims: int = Field(128, ge=0, le=4096)  # 0: no projection, the fused vector as it is
    whitening: float = Field(0.25, ge=0, le=0.5)  # divided by (eigenvalue + mean) ** this
    min_sample: int = Field(256, ge=2)  # fewer sample tiles at creation: no projection
    raw_features: bool = False  # also store each tile's raw features (check --repair re-fuses)
    learn_from_copies: bool = False  # projection whitened against turned/zoomed sample copies


class Settings(_Section):
    db: Path = Path("geosearch.gpkg")
    tile_size: int = Field(256, ge=16, le=8192)
    max_nodata_fraction: float = Field(0.9, ge=0, le=1)
    workers: int = Field(0, ge=0)
    batch_size: int = Field(64, ge=1, le=100000)
    bands: BandSettings = BandSettings()
    features: FeatureSettings = FeatureSettings()
    vectors: VectorSettings = VectorSettings()
    search: SearchSettings = SearchSettings()
    feedback: FeedbackSettings = FeedbackSettings()
    detect: DetectSettings = DetectSettings()
    maps: MapSettings = MapSettings()
    changes: ChangeSettings = ChangeSettings()
    spark: SparkSettings = SparkSettings()
    serve: ServeSettings = ServeSettings()

    def with_overrides(self, overrides: dict[str, Any]) -> Settings:
        """A copy with dotted keys (``"features.cnn.model"``) replaced; ``None`` values ignored."""
        data = self.model_dump()
        for dotted, value in overrides.items():
            if value is None:
                continue
            *parents, leaf = dotted.split(".")
            node = data
            for key in parents:
                node = node[key]
            node[leaf] = value
        return _validate(data, "command line")


def _validate(data: dict[str, Any], source: str) -> Settings:
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(str(part) for part in error["loc"]) or "(top level)"
        if error["type"] == "extra_forbidden":
            raise ConfigError(f"{source}: unknown setting '{key}'") from None
        value = error.get("input")
        raise ConfigError(f"{source}: {key}: {error['msg']} (got {value!r})") from None


def load_settings(path: Path | None = None) -> Settings:
    """Settings from ``path``, else ``./config.yaml`` if present, else the defaults."""
    if path is None:
        candidate = Path(os.environ.get("GEOSEARCH_CONFIG", DEFAULT_CONFIG_NAME))
        if not candidate.is_file():
            return Settings()
        path = candidate
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    return _validate(data, str(path))
