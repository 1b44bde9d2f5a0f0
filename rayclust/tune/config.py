"""Typed configuration of a sweep (``rayclust tune CONFIG``).

A sweep file names the stage it tunes, the stage's own config to start from (``base``, a
path relative to the sweep file, plus inline ``config`` changes) and a ``search`` space
over that config's dotted keys. One file may hold several sweeps under ``sweeps:``
(name -> sweep), run one after the other or picked with ``--sweep NAME``.

    stage: cluster
    base: ../experiments/digits.yaml
    config: {clustering: {seeds: 3}}
    search:
      clustering.n_clusters: {randint: [8, 12]}       # both bounds included
      clustering.algorithm: {choice: [kmeans, spectral]}
      clustering.pca_dim: {grid: [16, 32]}
    objective: {metric: ari, mode: max}
    num_samples: 20
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rayclust.config import (
    ConfigError,
    ConfigSection,
    RayConfig,
    TrackingConfig,
    deep_merge,
    parse_overrides,
    read_yaml_mapping,
)

STAGES = ("cluster", "train", "deep")
# Scores computed against labels: a sweep asking for one on unlabelled data fails at load.
EXTERNAL_METRICS = ("acc", "nmi", "ami", "ari", "pur", "fmi")
# Label-free scores of the clustering stage: silhouette of each seed's partition, and the
# stability of the partitions across seeds (mean pairwise ARI between them).
INTERNAL_METRICS = ("silhouette", "stability")


@dataclass
class ObjectiveConfig(ConfigSection, section="objective"):
    # cluster: acc, nmi, ami, ari, pur, fmi (labels needed), silhouette, stability
    # train: val_accuracy (few-shot accuracy on data.val_classes, every epoch), loss
    # deep: acc, nmi, ari, ... on all images, or holdout_<metric> / train_<metric>
    metric: str = "ari"
    mode: Literal["max", "min"] = "max"


@dataclass
class ResourcesConfig(ConfigSection, section="resources"):
    """What each trial declares; Ray places trials where these are free."""

    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0

    def __post_init__(self) -> None:
        self.check_above(cpus_per_trial=0)
        self.check_at_least(gpus_per_trial=0)


@dataclass
class ASHAConfig(ConfigSection, section="asha"):
    """Asynchronous successive halving over epochs (stage train: one report per epoch)."""

    max_t: int | None = None  # None: the base config's epochs
    grace_period: int = 1  # epochs every trial runs before it can be stopped
    reduction_factor: float = 2.0  # keep the best 1/reduction_factor at each rung

    def __post_init__(self) -> None:
        self.check_at_least(grace_period=1)
        self.check_above(reduction_factor=1)
        if self.max_t is not None and self.max_t < self.grace_period:
            raise ConfigError(
                f"asha.max_t={self.max_t} should be >= asha.grace_period={self.grace_period}"
            )


@dataclass
class SweepConfig(ConfigSection):
    name: str | None = None  # None: the sweep file's stem (+ the sweep's key under sweeps:)
    output: str | None = None  # the sweep folder; None: runs/tune/<name>
    stage: Literal["cluster", "train", "deep"] = "cluster"
    base: str | None = None  # the stage's config YAML (relative to the sweep file)
    config: dict[str, Any] = field(default_factory=dict)  # changes to base, same keys as its YAML
    search: dict[str, Any] = field(default_factory=dict)  # dotted key -> {grid|choice|...: ...}
    search_alg: Literal["random", "grid", "optuna"] = "random"  # optuna: TPE (pip install optuna)
    num_samples: int = 10  # random / optuna: trials; grid: repeats of the whole grid
    scheduler: Literal["fifo", "asha"] = "fifo"  # asha: early stopping of training trials
    asha: ASHAConfig
    objective: ObjectiveConfig
    resources: ResourcesConfig
    max_concurrent_trials: int | None = None  # None: as many as the resources allow
    max_failures: int = 1  # an errored trial is retried this many times (from its checkpoint)
    seed: int = 0  # the searcher's seed: the same sweep file draws the same trials
    tracking: TrackingConfig = field(default_factory=lambda: TrackingConfig(experiment="tune"))
    ray: RayConfig

    def __post_init__(self) -> None:
        if not self.search:
            raise ConfigError(
                "search is empty: give at least one key, e.g. "
                "clustering.n_clusters: {randint: [3, 8]}"
            )
        self.check_at_least(num_samples=1, max_concurrent_trials=1, max_failures=0)
        if self.scheduler == "asha" and self.stage != "train":
            raise ConfigError(
                f"scheduler=asha needs trials that report every epoch (stage train); stage "
                f"{self.stage!r} reports once per trial: use scheduler=fifo"
            )


def load_sweeps(
    path: str | Path, overrides: list[str] | dict[str, Any] | None = None
) -> dict[str, tuple[SweepConfig, Path]]:
    """Every sweep in a sweep file: ``{name: (config, folder its relative paths start from)}``.

    ``overrides`` (``key.sub=value``) apply to every sweep of the file.
    """
    path = Path(path)
    loaded = read_yaml_mapping(path, what="sweep file")
    extra = parse_overrides(overrides) if isinstance(overrides, list) else (overrides or {})
    if "sweeps" in loaded:
        sweeps = loaded["sweeps"]
        others = sorted(set(loaded) - {"sweeps", "defaults"})
        if others:
            raise ConfigError(
                f"sweep file {path}: with sweeps: the top level holds only sweeps and "
                f"defaults, not {others}"
            )
        if not isinstance(sweeps, dict) or not sweeps:
            raise ConfigError(f"sweep file {path}: sweeps should map sweep names to sweeps")
        defaults = loaded.get("defaults") or {}
        items = {
            str(name): deep_merge(defaults, body or {}, extra) for name, body in sweeps.items()
        }
        named = {name: {"name": f"{path.stem}-{name}", **body} for name, body in items.items()}
    else:
        named = {path.stem: {"name": path.stem, **deep_merge(loaded, extra)}}
    out = {}
    for name, body in named.items():
        try:
            out[name] = (SweepConfig.from_dict(body), path.parent)
        except ConfigError as exc:
            raise ConfigError(f"sweep {name!r} in {path}: {exc}") from None
    return out
