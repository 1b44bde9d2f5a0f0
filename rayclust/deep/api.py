"""``fit_deep(config) -> DeepResult``: images -> frozen features -> trained head -> labels,
per-epoch objective, external scores on the training and held-out images, method reports."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rayclust.config import ConfigError, config_from_dict
from rayclust.deep.config import DeepConfig, load_deep_config
from rayclust.deep.data import load_image_source
from rayclust.deep.features import extract_frozen_features
from rayclust.deep.training import create_objective, run_training

log = logging.getLogger(__name__)


@dataclass
class DeepResult:
    method: str
    labels: np.ndarray  # cluster of every image, in ``names`` order (train and held-out)
    names: list[str]
    train_index: np.ndarray  # rows of ``labels`` the head was trained on
    holdout_index: np.ndarray  # rows it never saw
    n_clusters: int
    history: list[dict[str, Any]]  # one entry per epoch: objective and its parts
    metrics: dict[str, dict[str, float]]  # {"train"|"holdout"|"all": external scores}
    reports: dict[str, Any]  # method extras (DivClust inter-head NMI, MMDC refinement, ...)
    config: DeepConfig
    checkpoint_path: str | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def objective(self) -> list[float]:
        """The minimised objective, epoch by epoch."""
        return [float(h["objective"]) for h in self.history]

    def summary(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "n_images": len(self.labels),
            "n_train": len(self.train_index),
            "n_holdout": len(self.holdout_index),
            "n_clusters": self.n_clusters,
            "objective_first": self.objective[0] if self.objective else None,
            "objective_last": self.objective[-1] if self.objective else None,
            "metrics": self.metrics,
        }


def _as_config(config: DeepConfig | dict[str, Any] | str | Path) -> DeepConfig:
    if isinstance(config, DeepConfig):
        return config
    if isinstance(config, dict):
        return config_from_dict(DeepConfig, config)
    return load_deep_config(config)


def _split(n: int, holdout_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    n_holdout = int(round(n * holdout_fraction))
    return np.sort(order[n_holdout:]), np.sort(order[:n_holdout])


def _external_scores(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    from rayclust.metrics import external_scores

    return {k: float(v) for k, v in external_scores(truth, pred).items()}


def fit_deep(config: DeepConfig | dict[str, Any] | str | Path) -> DeepResult:
    """Run one deep-clustering experiment end to end (see ``DeepConfig`` for every knob)."""
    import torch

    config = _as_config(config)
    source = load_image_source(config.data)
    features = extract_frozen_features(
        source, config.features, rotations=config.needs_rotations, seed=config.data.seed
    )
    n_clusters = config.n_clusters
    if n_clusters is None:
        if features.labels is None:
            raise ConfigError(
                f"n_clusters is null and {config.data.source} has no labels to count; set n_clusters"
            )
        n_clusters = int(len(np.unique(features.labels)))
    if n_clusters < 2:
        raise ConfigError(f"n_clusters={n_clusters} should be >= 2")
    train_index, holdout_index = _split(
        len(features), config.data.holdout_fraction, config.data.seed
    )
    if len(train_index) < 2 * n_clusters:
        raise ConfigError(
            f"n_train={len(train_index)} should be >= 2 * n_clusters={2 * n_clusters}; "
            "use more images or a smaller data.holdout_fraction"
        )
    train, holdout = features.subset(train_index), features.subset(holdout_index)
    if config.features.standardize:
        mean = train.base.mean(axis=0)
        std = train.base.std(axis=0) + 1e-6
        train, holdout = train.standardized(mean, std), holdout.standardized(mean, std)
    log.info(
        "deep %s: %d train / %d held-out images, %d features, %d clusters",
        config.method,
        len(train),
        len(holdout),
        train.dim,
        n_clusters,
    )

    output = run_training(config, train, n_clusters)

    objective = create_objective(config, n_clusters, train.dim)
    model = objective.build_model()
    model.load_state_dict(output.weights)
    objective.load_checkpoint_state(output.state)
    truth = {"train": train.labels, "holdout": holdout.labels}

    def score(split: str, pred: np.ndarray) -> dict[str, float] | None:
        return None if truth[split] is None else _external_scores(truth[split], pred)

    with torch.no_grad():
        split_labels, reports = objective.report(
            model, train, holdout if len(holdout) else None, output.history, score
        )
    labels = np.full(len(features), -1, dtype=np.int64)
    labels[train_index] = split_labels["train"]
    if len(holdout_index):
        labels[holdout_index] = split_labels["holdout"]
    metrics: dict[str, dict[str, float]] = {}
    if features.labels is not None:
        metrics["train"] = score("train", split_labels["train"])
        if len(holdout_index):
            metrics["holdout"] = score("holdout", split_labels["holdout"])
        metrics["all"] = _external_scores(features.labels, labels)
    result = DeepResult(
        method=config.method,
        labels=labels,
        names=features.names,
        train_index=train_index,
        holdout_index=holdout_index,
        n_clusters=n_clusters,
        history=output.history,
        metrics=metrics,
        reports=reports,
        config=config,
        checkpoint_path=output.checkpoint_path,
        skipped=list(source.skipped),
    )
    if config.output:
        write_outputs(result, Path(config.output))
    return result


def write_outputs(result: DeepResult, folder: Path) -> None:
    """A run folder complete on its own: resolved config, assignments, metrics, history, reports."""
    folder.mkdir(parents=True, exist_ok=True)
    result.config.to_yaml(folder / "config.yaml")
    split = np.where(
        np.isin(np.arange(len(result.labels)), result.holdout_index), "holdout", "train"
    )
    lines = ["image,cluster,split"] + [
        f"{name},{label},{s}"
        for name, label, s in zip(result.names, result.labels, split, strict=True)
    ]
    (folder / "assignments.csv").write_text("\n".join(lines) + "\n")
    (folder / "metrics.json").write_text(json.dumps(result.summary(), indent=2, default=_jsonable))
    (folder / "history.json").write_text(json.dumps(result.history, indent=1, default=_jsonable))
    (folder / "reports.json").write_text(json.dumps(result.reports, indent=1, default=_jsonable))
    if result.skipped:
        rows = ["path,reason"] + [f"{p},{r}" for p, r in result.skipped]
        (folder / "skipped.csv").write_text("\n".join(rows) + "\n")


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
