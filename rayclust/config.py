"""Typed, validated run configuration.

Layers, later ones win: the dataclass defaults, a YAML file that lists only what it changes,
then ``key.sub=value`` overrides from the command line. Unknown keys and wrong types fail at
load time with the dotted key named, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the key and how to fix it."""


# Keys of input.storage_options that hold secrets: the resolved config is written to the run
# folder and to MLflow, so credentials must come from the environment instead.
_SECRET_OPTION_WORDS = ("secret", "password", "token", "credential", "key")
_PUBLIC_GCS_TOKENS = ("anon", "google_default", "cloud")  # gcsfs token modes, not secrets


@dataclass
class InputConfig:
    source: str | None = None  # folder, .csv / .txt list, or s3://bucket/prefix, gs://bucket/prefix
    labels_from_folders: bool = False
    max_pixels: int = 89_478_485  # larger images are skipped as decompression bombs
    # s3fs / gcsfs options for s3:// and gs:// sources, e.g. {endpoint_url: "http://minio:9000"}
    # (rayclust/remote.py); no secrets here: credentials come from the environment.
    storage_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.max_pixels < 1:
            raise ConfigError(f"input.max_pixels={self.max_pixels} should be >= 1")
        if not isinstance(self.storage_options, dict):
            raise ConfigError(
                f"input.storage_options={self.storage_options!r} should be a mapping,"
                " e.g. {endpoint_url: 'http://127.0.0.1:9000'}"
            )
        for option, value in self.storage_options.items():
            if option == "token" and value in _PUBLIC_GCS_TOKENS:
                continue
            if any(word in str(option).lower() for word in _SECRET_OPTION_WORDS):
                raise ConfigError(
                    f"input.storage_options.{option} looks like a credential: the config is"
                    " written to the run folder and MLflow; set it in the environment instead"
                    " (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_PROFILE, or"
                    " GOOGLE_APPLICATION_CREDENTIALS)"
                )


@dataclass
class ExtractionConfig:
    batch_size: int = 32
    actors_per_view: int = 1
    cpus_per_actor: float | None = None  # None: share the cluster's CPUs among the views
    gpus_per_actor: float | None = None  # None: 1 when the cluster has GPUs, else 0
    cache_dir: str | None = None  # None: $RAYCLUST_CACHE_DIR or ~/.cache/rayclust/features
    max_restarts: int = 3  # an actor that dies is restarted and its batch retried
    # "actors": one actor pool per view, all views at once (rayclust/views/extract.py);
    # "stream": a Ray Data pipeline per view, decode tasks apart from the forward actors,
    # bounded memory, for collections far bigger than memory (rayclust/views/stream.py)
    engine: Literal["actors", "stream"] = "actors"
    stream_memory_mb: int | None = None  # stream engine: object-store budget; None: Ray's default

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"extraction.batch_size={self.batch_size} should be >= 1")
        if self.actors_per_view < 1:
            raise ConfigError(f"extraction.actors_per_view={self.actors_per_view} should be >= 1")
        if self.stream_memory_mb is not None and self.stream_memory_mb < 64:
            raise ConfigError(
                f"extraction.stream_memory_mb={self.stream_memory_mb} should be >= 64 or null"
            )


@dataclass
class ClusteringConfig:
    algorithm: Literal["kmeans", "spectral", "agglomerative"] = "kmeans"
    # None: the number of label classes (needs labels); "auto": chosen by the estimator
    n_clusters: int | Literal["auto"] | None = None
    seeds: int = 5  # repeated runs, reported as AVG(SD)
    normalize: bool = True  # L2-normalise features before clustering
    pca_dim: int | None = None  # reduce with PCA first (None: keep all dimensions)
    n_neighbors: int = 10  # kNN graph size for spectral
    backend: str = "auto"

    def __post_init__(self) -> None:
        if isinstance(self.n_clusters, int) and self.n_clusters < 1:
            raise ConfigError(f"clustering.n_clusters={self.n_clusters} should be >= 1")
        if self.seeds < 1:
            raise ConfigError(f"clustering.seeds={self.seeds} should be >= 1")
        if self.pca_dim is not None and self.pca_dim < 1:
            raise ConfigError(f"clustering.pca_dim={self.pca_dim} should be >= 1 or null")


@dataclass
class EnsembleConfig:
    """Used when a run has several views (MVEC): each view clustered, then combined."""

    methods: list[str] = field(default_factory=lambda: ["coassociation", "bipartite"])
    primary: str = "consensus:bipartite"  # the row whose clustering is written to assignments
    view_algorithm: Literal["kmeans", "spectral", "agglomerative"] | None = (
        None  # None: clustering.algorithm
    )
    min_relative_quality: float = 0.5  # views below this share of the best silhouette get weight 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_relative_quality <= 1.0:
            raise ConfigError(
                f"ensemble.min_relative_quality={self.min_relative_quality} should be in [0, 1]"
            )
        valid = {"concat", "leader"} | {f"consensus:{m}" for m in self.methods}
        if not (self.primary in valid or self.primary.startswith("view:")):
            raise ConfigError(
                f"ensemble.primary={self.primary!r} should be one of {sorted(valid)} or view:<name>"
            )


@dataclass
class EvaluationConfig:
    silhouette_sample: int = 10_000  # internal scores use a sample this large


@dataclass
class TrackingConfig:
    enabled: bool = True
    uri: str | None = None  # None: a local store next to the run folders (no server needed)
    experiment: str = "rayclust"


@dataclass
class ReportConfig:
    enabled: bool = True  # write report.html (+ near_duplicates.csv, outliers.csv) after the run


@dataclass
class RayConfig:
    address: str | None = None  # None: start a local Ray (or join RAY_ADDRESS)
    num_cpus: int | None = None


@dataclass
class RunConfig:
    name: str | None = None  # None: derived from the input and the time
    output: str | None = None  # the run folder; None: runs/<name>
    views: list[str] = field(default_factory=lambda: ["efficientnet_lite0"])
    input: InputConfig = field(default_factory=InputConfig)
    extraction: ExtractionConfig = field(default_factory=ExtractionConfig)
    clustering: ClusteringConfig = field(default_factory=ClusteringConfig)
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    def __post_init__(self) -> None:
        if not self.views:
            raise ConfigError("views is empty: name at least one view, e.g. efficientnet_lite0")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def _check_type(value: Any, hint: Any, key: str) -> Any:
    """Return value converted to hint where lossless (int -> float), else raise naming key."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(hint):
            try:
                return _check_type(value, option, key)
            except ConfigError as exc:
                errors.append(exc)
        raise ConfigError(f"{key}={value!r} has the wrong type: expected {_type_name(hint)}")
    if hint is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key}={value!r} should be null")
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise ConfigError(f"{key}={value!r} is not one of {', '.join(map(repr, allowed))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}={value!r} should be a list")
        (item_hint,) = typing.get_args(hint)
        return [_check_type(v, item_hint, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} should be a mapping of {hint.__name__} fields")
        return config_from_dict(hint, value, prefix=f"{key}.")
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        # YAML 1.1 reads 1e-3 (no dot) as a string; people mean the number.
        try:
            return float(value)
        except ValueError:
            pass
    if hint in (int, float, str, bool):
        if isinstance(value, bool) and hint is not bool:
            raise ConfigError(f"{key}={value!r} should be {hint.__name__}, not a boolean")
        if not isinstance(value, hint):
            raise ConfigError(f"{key}={value!r} should be {hint.__name__}")
        return value
    return value


def _type_name(hint: Any) -> str:
    args = typing.get_args(hint)
    if args:
        return " or ".join(
            "null" if a is type(None) else getattr(a, "__name__", str(a)) for a in args
        )
    return getattr(hint, "__name__", str(hint))


def config_from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        import difflib

        key = unknown[0]
        close = difflib.get_close_matches(key, sorted(names), n=1)
        hint = (
            f"; did you mean {prefix}{close[0]}?"
            if close
            else f"; known keys: {', '.join(sorted(names))}"
        )
        raise ConfigError(f"unknown config key {prefix}{key}{hint}")
    kwargs = {k: _check_type(v, hints[k], f"{prefix}{k}") for k, v in data.items()}
    return cls(**kwargs)


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """Turn ``["clustering.seeds=3", "views=[a,b]"]`` into a nested dict (values parsed as YAML)."""
    nested: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} should look like key.sub=value")
        dotted, raw = item.split("=", 1)
        node = nested
        parts = dotted.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None
    return nested


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
    schema: type = RunConfig,
) -> Any:
    """Defaults <- YAML file <- overrides, validated into ``schema`` (a config dataclass).

    Other stages (training, deep clustering, tuning) pass their own dataclass as ``schema``.
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} should hold a mapping at the top level")
        data = loaded
    if overrides:
        extra = parse_overrides(overrides) if isinstance(overrides, list) else overrides
        data = _deep_merge(data, extra)
    return config_from_dict(schema, data)
