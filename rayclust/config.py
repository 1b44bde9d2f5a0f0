"""Typed, validated configuration: one base for the configs of every stage.

Layers, later ones win: the dataclass defaults, a YAML file that lists only what it changes,
then ``key.sub=value`` overrides from the command line. Unknown keys and wrong types fail at
load time with the dotted key named, so a typo never silently falls back to a default.

Every config section (``RunConfig`` here, ``TrainConfig``, ``DeepConfig``, ``SweepConfig`` and
all their sections) is a dataclass deriving from ``ConfigSection``, which gives it
``to_dict()``, ``to_yaml(path)``, ``from_dict(data)`` and the checks its ``__post_init__``
uses (``check_at_least``, ``check_above``, ``check_in_range``, ``check_algorithm``). Each
failed check raises ``ConfigError`` stating the dotted key, its value and what would fix it.

``SourceConfig`` says where the images come from, for every stage: it is a clustering run's
``input`` section, and training and deep clustering extend it as their ``data`` section.

Dotted keys: ``deep_merge``, ``parse_overrides``, ``set_dotted``, ``get_dotted`` and
``nest_dotted`` serve the CLI, the stages and the tuner alike. They, ``ConfigError`` and the
YAML reading (no aliases) live in ``rayclust.config_text``, which imports nothing else of
rayclust (so the run record can read YAML without importing the stages' schemas), and are
exported from here too.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import yaml

from rayclust import remote
from rayclust.config_text import (
    ConfigError,
    deep_merge,
    get_dotted,
    load_yaml_text,
    nest_dotted,
    parse_overrides,
    read_yaml_mapping,
    set_dotted,
    yaml_problem,
)
from rayclust.images import DEFAULT_MAX_PIXELS
from rayclust.redact import redact, secret_paths

# What clustering.engine=ray can fit on shards (rayclust.clustering_ray).
RAY_ENGINE_ALGORITHMS = ("kmeans", "spectral")

__all__ = [
    "ClassFolderSource",
    "ClusteringConfig",
    "ConfigError",
    "ConfigSection",
    "EnsembleConfig",
    "EvaluationConfig",
    "ExtractionConfig",
    "RayConfig",
    "ReportConfig",
    "RunConfig",
    "SourceConfig",
    "TrackingConfig",
    "above",
    "at_least",
    "check_algorithm_name",
    "check_backend_name",
    "check_storage_options",
    "config_from_dict",
    "deep_merge",
    "get_dotted",
    "in_range",
    "load_config",
    "load_yaml_text",
    "nest_dotted",
    "parse_overrides",
    "read_yaml_mapping",
    "set_dotted",
    "yaml_problem",
]

Section = TypeVar("Section", bound="ConfigSection")


# --- checks: each names the key, its value and the fix ------------------------------------


def _failed(key: str, value: Any, expected: str, or_null: bool, hint: str) -> ConfigError:
    message = f"{key}={value} should be {expected}{' or null' if or_null else ''}"
    return ConfigError(f"{message} {hint}" if hint else message)


def at_least(
    key: str, value: float | None, minimum: float, *, or_null: bool = False, hint: str = ""
) -> None:
    """Raise unless ``value >= minimum`` (``None`` passes: the type check decides on it)."""
    if value is not None and value < minimum:
        raise _failed(key, value, f">= {minimum}", or_null, hint)


def above(
    key: str, value: float | None, bound: float, *, or_null: bool = False, hint: str = ""
) -> None:
    """Raise unless ``value > bound`` (``None`` passes)."""
    if value is not None and value <= bound:
        raise _failed(key, value, f"> {bound}", or_null, hint)


def in_range(
    key: str,
    value: float | None,
    low: float,
    high: float,
    *,
    low_open: bool = False,
    high_open: bool = False,
    or_null: bool = False,
    hint: str = "",
) -> None:
    """Raise unless ``value`` lies in the interval, written as ``[low, high]``, ``(low, high]``..."""
    if value is None:
        return
    above_low = value > low if low_open else value >= low
    below_high = value < high if high_open else value <= high
    if not (above_low and below_high):
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise _failed(key, value, f"in {interval}", or_null, hint)


def check_backend_name(key: str, name: str | None) -> None:
    """Raise unless ``name`` is a clustering backend (``rayclust.cluster.BACKENDS``)."""
    if name is None:
        return
    from rayclust.cluster import BACKENDS  # imported here, as in check_algorithm_name

    if name not in BACKENDS:
        close = difflib.get_close_matches(str(name), BACKENDS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(
            f"{key}={name!r} is not a clustering backend: {hint}use one of {', '.join(BACKENDS)}"
        )


def check_algorithm_name(key: str, name: str | None) -> None:
    """Raise unless ``name`` is a registered clustering algorithm (``None`` passes)."""
    if name is None:
        return
    # Imported here: rayclust.cluster brings scikit-learn, which loading a config should not.
    from rayclust.cluster.registry import UnknownAlgorithmError, check_algorithm

    try:
        check_algorithm(name, key)
    except UnknownAlgorithmError as exc:
        raise ConfigError(str(exc)) from None


def check_storage_options(key: str, options: Any) -> None:
    """A mapping of s3fs / gcsfs options without credentials in it, at any depth.

    The resolved config is written to the run folder and MLflow, so credentials must come
    from the environment; a URL with a password (``endpoint_url``) is masked when written
    (``rayclust.redact``)."""
    if not isinstance(options, dict):
        raise ConfigError(
            f"{key}={options!r} should be a mapping, e.g. {{endpoint_url: 'http://127.0.0.1:9000'}}"
        )
    for option in secret_paths(options):
        raise ConfigError(
            f"{key}.{option} looks like a credential: the config is written to the run"
            " folder and MLflow; set it in the environment instead (AWS_ACCESS_KEY_ID /"
            " AWS_SECRET_ACCESS_KEY / AWS_PROFILE, or GOOGLE_APPLICATION_CREDENTIALS)"
        )


# --- the base of every section ------------------------------------------------------------


@functools.cache
def _nullable_fields(cls: type) -> frozenset[str]:
    """Names of the fields whose type admits null (their messages say "or null")."""
    hints = typing.get_type_hints(cls)
    return frozenset(
        f.name for f in dataclasses.fields(cls) if type(None) in typing.get_args(hints[f.name])
    )


class ConfigSection:
    """Base of every config dataclass: serialisation, typed loading and the shared checks.

    A subclass is a ``@dataclass`` that names its ``section`` (its dotted place in a config
    file, for messages: ``class ClusteringConfig(ConfigSection, section="clustering")``) and
    checks its values in ``__post_init__``, calling
    ``super().__post_init__()`` first when it extends another section. A field whose type is
    a section and that has no default gets a fresh default section: ``clustering:
    ClusteringConfig`` alone declares the ``clustering`` section (its class must be defined
    before the class that holds it).
    """

    section: ClassVar[str] = ""  # "" for a whole config file, else e.g. "clustering"

    def __init_subclass__(cls, section: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if section is not None:
            cls.section = section
        # Runs before @dataclass reads the class, so the defaults below become its fields'.
        hints = typing.get_type_hints(cls)
        for name in cls.__dict__.get("__annotations__", {}):
            hint = hints[name]
            if (
                name not in cls.__dict__
                and isinstance(hint, type)
                and issubclass(hint, ConfigSection)
            ):
                setattr(cls, name, field(default_factory=hint))

    def __post_init__(self) -> None:
        """Sections check their values here; the base has nothing to check."""

    def key(self, name: str) -> str:
        """The dotted key of field ``name``, as a config file or an override writes it."""
        return f"{self.section}.{name}" if self.section else name

    def check_at_least(self, **minimums: float) -> None:
        """``self.check_at_least(epochs=1, seeds=1)``: each field >= its minimum."""
        for name, minimum in minimums.items():
            at_least(self.key(name), getattr(self, name), minimum, or_null=self._nullable(name))

    def check_above(self, **bounds: float) -> None:
        """``self.check_above(lr=0)``: each field > its bound."""
        for name, bound in bounds.items():
            above(self.key(name), getattr(self, name), bound, or_null=self._nullable(name))

    def check_in_range(
        self, name: str, low: float, high: float, *, low_open: bool = False, high_open: bool = False
    ) -> None:
        """``self.check_in_range("alpha", 0, 1)``: the field lies in [0, 1] (or an open side)."""
        in_range(
            self.key(name),
            getattr(self, name),
            low,
            high,
            low_open=low_open,
            high_open=high_open,
            or_null=self._nullable(name),
        )

    def check_algorithm(self, name: str) -> None:
        """The field names a registered clustering algorithm (``rayclust.cluster.registry``)."""
        check_algorithm_name(self.key(name), getattr(self, name))

    def _nullable(self, name: str) -> bool:
        return name in _nullable_fields(type(self))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self, path: str | Path) -> None:
        """The config as YAML, credentials masked (``rayclust.redact``): what a run folder
        keeps is safe to share; the run itself uses the real values."""
        Path(path).write_text(yaml.safe_dump(redact(self.to_dict()), sort_keys=False))

    @classmethod
    def from_dict(cls: type[Section], data: Mapping[str, Any], prefix: str = "") -> Section:
        """Typed construction from plain data (see ``config_from_dict``)."""
        return config_from_dict(cls, dict(data), prefix)


# --- sections of a clustering run (and the ones every stage shares) -----------------------


@dataclass
class SourceConfig(ConfigSection, section="input"):
    """Where the images come from; every stage reads its collection through this section."""

    source: str | None = None  # folder, .csv / .txt list, or s3://bucket/prefix, gs://bucket/prefix
    labels_from_folders: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS  # larger images are skipped as decompression bombs
    # s3fs / gcsfs options for s3:// and gs:// sources, e.g. {endpoint_url: "http://minio:9000"}
    # (rayclust/remote.py); no secrets here: credentials come from the environment.
    storage_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.check_at_least(max_pixels=1)
        check_storage_options(self.key("storage_options"), self.storage_options)


InputConfig = SourceConfig  # the name RunConfig.input's section had before it was shared


@dataclass
class ClassFolderSource(SourceConfig, section="data"):
    """A local collection whose first-level folders are the classes: the ``data`` section of
    training and deep clustering, which read images by path (no s3fs / gcsfs)."""

    labels_from_folders: bool = True  # always: the classes are the folder names

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.labels_from_folders:
            raise ConfigError(
                f"{self.key('labels_from_folders')}=False: the classes are the first-level "
                f"folders under {self.key('source')}; remove the key"
            )
        if self.storage_options:
            raise ConfigError(
                f"{self.key('storage_options')}={self.storage_options!r}: this stage reads a "
                "local folder; copy the images to local disk (`rayclust run` reads s3:// and "
                "gs:// sources)"
            )


@dataclass
class ExtractionConfig(ConfigSection, section="extraction"):
    batch_size: int = 32
    actors_per_view: int = 1
    cpus_per_actor: float | None = None  # None: share the cluster's CPUs among the views
    gpus_per_actor: float | None = None  # None: 1 when the cluster has GPUs, else 0
    # The feature store: a folder (shared storage for a cluster) or an s3:// / gs:// prefix
    # the workers write directly, read with input.storage_options (credentials from the
    # environment). None: $RAYCLUST_CACHE_DIR or ~/.cache/rayclust/features
    cache_dir: str | None = None
    max_restarts: int = 3  # an actor that dies is restarted and its batch retried
    # "auto": "local" unless Ray brings something (a cluster to join: ray.address or
    # RAY_ADDRESS, a Ray session already running in this process, or several GPUs), else
    # "actors" (rayclust.views.resolve_engine decides and logs it);
    # "actors": one actor pool per view, all views at once (rayclust/views/actors.py);
    # "stream": a Ray Data pipeline per view, decode tasks apart from the forward actors,
    # bounded memory, for collections far bigger than memory (rayclust/views/stream.py);
    # "local": in this process, no Ray at all, one decode per image for every view
    # (rayclust/views/local.py)
    engine: Literal["auto", "actors", "stream", "local"] = "auto"
    stream_memory_mb: int | None = None  # stream engine: object-store budget; None: Ray's default
    # "driver": the driver reads and hashes every image before extraction (rayclust.images);
    # "workers" (engine "stream" only): the driver only lists names, the stream engine's
    # workers read each image once, hash, probe, decode and extract every view, and the
    # manifest and skipped files are written in parts as batches arrive
    scan: Literal["driver", "workers"] = "driver"
    # Forward-pass precision, part of each view's cache key. "auto": bf16 autocast on CPUs
    # with native bf16 (AVX512-BF16 / AMX), fp16 autocast on CUDA, fp32 elsewhere
    # (rayclust.views.resolve_precision decides and logs it); the others pin it.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"

    def __post_init__(self) -> None:
        self.check_at_least(batch_size=1, actors_per_view=1, stream_memory_mb=64)
        for key, allowed in (
            ("engine", ("auto", "actors", "stream", "local")),
            ("scan", ("driver", "workers")),
            ("precision", ("auto", "fp32", "bf16", "fp16")),
        ):
            value = getattr(self, key)
            if value not in allowed:
                choices = ", ".join(map(repr, allowed))
                raise ConfigError(f"extraction.{key}={value!r} is not one of {choices}")
        if self.scan == "workers" and self.engine != "stream":
            raise ConfigError(
                f"extraction.scan=workers needs extraction.engine=stream, not {self.engine!r}"
            )
        if self.cache_dir and remote.scheme_of(self.cache_dir) is not None:
            if remote.has_userinfo(self.cache_dir):
                raise ConfigError(
                    f"{self.key('cache_dir')} holds credentials (user:password@): the config is"
                    " written to the run folder and MLflow; set them in the environment instead"
                    " (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_PROFILE, or"
                    " GOOGLE_APPLICATION_CREDENTIALS)"
                )
            try:
                remote.check_uri(self.cache_dir, self.key("cache_dir"))
            except ValueError as exc:
                raise ConfigError(str(exc)) from None


@dataclass
class ClusteringConfig(ConfigSection, section="clustering"):
    algorithm: str = "kmeans"  # a name of rayclust.cluster.registry: kmeans, spectral, ...
    # None: the number of label classes (needs labels); "auto": chosen by the estimator
    n_clusters: int | Literal["auto"] | None = None
    seeds: int = 5  # repeated runs, reported as AVG(SD)
    normalize: bool = True  # L2-normalise features before clustering
    pca_dim: int | None = None  # reduce with PCA first (None: keep all dimensions)
    n_neighbors: int = 10  # kNN graph size for spectral
    # Spectral's graph: "knn" (up to 20,000 rows under "auto"), "landmark" (beyond); the ray
    # engine always takes "landmark" ("auto" there means it, "knn" is refused).
    spectral_method: Literal["auto", "knn", "landmark"] = "auto"
    backend: str = "auto"
    # Label-free choice of representation x algorithm (rayclust/selection.py) in single-view
    # runs: "auto" (default) clusters with the candidate of best kNN-graph modularity, "off"
    # runs `algorithm` on the configured view only (`rayclust cluster --algorithm` sets "off").
    # (YAML reads a bare off / on as a boolean: False means "off", True "auto".)
    select: Literal["auto", "off"] | bool = "auto"
    select_views: list[str] = field(default_factory=lambda: ["pixels"])  # extra candidates
    select_algorithms: list[str] = field(
        default_factory=lambda: ["kmeans", "spectral", "agglomerative"]
    )
    select_max_samples: int = 20_000  # larger runs choose on a seeded sample of this size
    k_max: int = 20  # n_clusters="auto" tries k = 2 .. k_max
    k_tolerance: float = 0.01  # ... and keeps the smallest k within this of the best score
    refine: bool = False  # SCAN-style head on the selected partition (rayclust/refine.py)
    # "ray": features stay sharded in Ray actors (rayclust/cluster/distributed.py); K-means
    # or landmark spectral clustering (the shards find each row's nearest landmarks), one
    # view, an int n_clusters; no label-free selection (select is not applied).
    engine: Literal["local", "ray"] = "local"
    shards: int | None = None  # ray engine: shard actors (None: one per GPU, else per node)
    # ray engine: rows fetched from the shards to the driver (a seeded uniform sample), what
    # the scores, the report's map and thumbnails and the predict model are drawn from; the
    # driver never holds more features than this (20,000 x 2,048 float32 is 160 MB).
    driver_sample: int = 20_000
    # K-means levels: 1 a flat K-means, 2 TopDownKMeans (two-level, k up to 100,000);
    # "auto": 2 from k >= KMEANS_TWO_LEVELS_FROM (the local and the ray engine alike).
    kmeans_levels: Literal["auto", 1, 2] = "auto"

    def __post_init__(self) -> None:
        self.check_algorithm("algorithm")
        if isinstance(self.n_clusters, int):
            self.check_at_least(n_clusters=1)
        if isinstance(self.select, bool):
            self.select = "auto" if self.select else "off"
        self.check_at_least(seeds=1, pca_dim=1, n_neighbors=1, k_max=2, shards=1, driver_sample=2)
        self.check_at_least(select_max_samples=100)
        if isinstance(self.kmeans_levels, bool) or self.kmeans_levels not in ("auto", 1, 2):
            raise ConfigError(
                f"{self.key('kmeans_levels')}={self.kmeans_levels!r} should be auto, 1 or 2"
            )
        if self.engine == "ray" and (
            self.algorithm not in RAY_ENGINE_ALGORITHMS or self.n_clusters == "auto"
        ):
            raise ConfigError(
                f"{self.key('engine')}=ray runs K-means or spectral with a given k only; got "
                f"algorithm={self.algorithm!r}, n_clusters={self.n_clusters!r} "
                "(use clustering.engine=local for other algorithms or k=auto)"
            )
        if self.engine == "ray" and self.algorithm == "spectral" and self.spectral_method == "knn":
            raise ConfigError(
                f"{self.key('spectral_method')}=knn needs clustering.engine=local; the ray "
                "engine runs spectral with landmarks (spectral_method=landmark or auto)"
            )
        check_backend_name(self.key("backend"), self.backend)
        self.check_in_range("k_tolerance", 0, 1)
        if not self.select_algorithms:
            raise ConfigError(
                f"{self.key('select_algorithms')} is empty: name at least one algorithm, "
                "e.g. [kmeans]"
            )
        for i, name in enumerate(self.select_algorithms):
            check_algorithm_name(f"{self.key('select_algorithms')}[{i}]", name)
            if name == "hierarchical_kmeans":
                raise ConfigError(
                    f"{self.key('select_algorithms')}[{i}]={name!r}: selection compares "
                    "kmeans, spectral and agglomerative; remove it"
                )


@dataclass
class EnsembleConfig(ConfigSection, section="ensemble"):
    """Used when a run has several views (MVEC): each view clustered, then combined."""

    methods: list[str] = field(default_factory=lambda: ["coassociation", "bipartite"])
    primary: str = "consensus:bipartite"  # the row whose clustering is written to assignments
    # None: clustering.algorithm (mode=paper: scikit-learn's default AgglomerativeClustering)
    view_algorithm: str | None = None
    min_relative_quality: float = 0.5  # views below this share of the best silhouette get weight 0
    # rayclust: views weighted by silhouette (weak ones dropped), clustered by view_algorithm
    # or clustering.algorithm. paper: MVEC as Guerin et al. ran it: equal weights and each
    # view clustered by scikit-learn's AgglomerativeClustering() with its defaults.
    mode: Literal["rayclust", "paper"] = "rayclust"
    weighting: Literal["silhouette", "equal"] | None = None  # None: as mode says

    def __post_init__(self) -> None:
        self.check_algorithm("view_algorithm")
        self.check_in_range("min_relative_quality", 0, 1)
        if self.mode not in ("rayclust", "paper"):
            raise ConfigError(f"ensemble.mode={self.mode!r} should be 'rayclust' or 'paper'")
        if self.weighting not in (None, "silhouette", "equal"):
            raise ConfigError(
                f"ensemble.weighting={self.weighting!r} should be 'silhouette', 'equal' or null"
            )

    @property
    def resolved_weighting(self) -> str:
        if self.weighting is not None:
            return self.weighting
        return "equal" if self.mode == "paper" else "silhouette"
        valid = {"concat", "leader"} | {f"consensus:{m}" for m in self.methods}
        if not (self.primary in valid or self.primary.startswith("view:")):
            raise ConfigError(
                f"ensemble.primary={self.primary!r} should be one of {sorted(valid)} or view:<name>"
            )


@dataclass
class EvaluationConfig(ConfigSection, section="evaluation"):
    silhouette_sample: int = 10_000  # internal scores use a sample this large

    def __post_init__(self) -> None:
        self.check_at_least(silhouette_sample=2)


@dataclass
class TrackingConfig(ConfigSection, section="tracking"):
    enabled: bool = True
    uri: str | None = None  # None: a local store next to the run folders (no server needed)
    experiment: str = "rayclust"


@dataclass
class ReportConfig(ConfigSection, section="report"):
    enabled: bool = True  # write report.html (+ near_duplicates.csv, outliers.csv) after the run


@dataclass
class RayConfig(ConfigSection, section="ray"):
    address: str | None = None  # None: start a local Ray (or join RAY_ADDRESS)
    num_cpus: int | None = None  # a local session's CPUs (None: all); ignored when joining

    def __post_init__(self) -> None:
        self.check_at_least(num_cpus=1)


@dataclass
class RunConfig(ConfigSection):
    name: str | None = None  # None: derived from the input and the time
    output: str | None = None  # the run folder; None: runs/<name>
    views: list[str] = field(default_factory=lambda: ["efficientnet_lite0"])
    # The sections, each with its defaults unless the file changes them.
    input: SourceConfig
    extraction: ExtractionConfig
    clustering: ClusteringConfig
    ensemble: EnsembleConfig
    evaluation: EvaluationConfig
    tracking: TrackingConfig
    report: ReportConfig
    ray: RayConfig

    def __post_init__(self) -> None:
        if not self.views:
            raise ConfigError("views is empty: name at least one view, e.g. efficientnet_lite0")
        blank = [i for i, view in enumerate(self.views) if not view.strip()]
        if blank:
            raise ConfigError(f"views[{blank[0]}] is empty: name a view, e.g. efficientnet_lite0")
        if self.clustering.engine == "ray" and len(self.views) > 1:
            raise ConfigError(
                f"clustering.engine=ray clusters one view; got views={self.views} "
                "(use clustering.engine=local for multi-view consensus)"
            )
        view_algorithm = self.ensemble.view_algorithm
        if self.clustering.engine == "ray" and (
            self.ensemble.mode == "paper"
            or (view_algorithm is not None and view_algorithm != self.clustering.algorithm)
        ):
            # ClusterJob takes the ensemble's per-view algorithm before clustering.algorithm.
            raise ConfigError(
                "clustering.engine=ray runs clustering.algorithm on one view; got "
                f"ensemble.view_algorithm={view_algorithm!r}, ensemble.mode="
                f"{self.ensemble.mode!r} (leave them unset, or use clustering.engine=local)"
            )


# --- typed loading --------------------------------------------------------------------------


def _check_type(value: Any, hint: Any, key: str) -> Any:
    """Return value converted to hint where lossless (int -> float), else raise naming key."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return _check_type(value, option, key)
            except ConfigError:
                continue
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


# Names people reach for that the config spells otherwise (no alias: one key per setting).
_SYNONYMS = {"extraction.store": ("cache_dir",), "extraction.feature_store": ("cache_dir",)}


def config_from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build the config dataclass ``cls`` from plain data, type-checking every key.

    ``prefix`` is the dotted place of ``cls`` in its file, for messages ("clustering.").
    """
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, sorted(names), n=1) or [
            name for name in _SYNONYMS.get(f"{prefix}{key}", ()) if name in names
        ]
        hint = (
            f"; did you mean {prefix}{close[0]}?"
            if close
            else f"; known keys: {', '.join(sorted(names))}"
        )
        raise ConfigError(f"unknown config key {prefix}{key}{hint}")
    kwargs = {k: _check_type(v, hints[k], f"{prefix}{k}") for k, v in data.items()}
    return cls(**kwargs)


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | Mapping[str, Any] | None = None,
    schema: type = RunConfig,
) -> Any:
    """Defaults <- YAML file <- overrides, validated into ``schema`` (a config dataclass).

    Other stages (training, deep clustering, tuning) pass their own dataclass as ``schema``.
    """
    data = read_yaml_mapping(path) if path is not None else {}
    if overrides:
        extra = parse_overrides(overrides) if isinstance(overrides, list) else overrides
        data = deep_merge(data, extra)
    return config_from_dict(schema, data)
