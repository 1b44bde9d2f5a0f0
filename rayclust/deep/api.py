"""``fit_deep(config) -> DeepResult``: images -> frozen features -> trained head -> labels,
per-epoch objective, external scores on the training and held-out images, method reports."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rayclust import run_mlflow, runs
from rayclust.config import ConfigError, config_from_dict
from rayclust.deep.config import DeepConfig, load_deep_config
from rayclust.deep.data import load_image_source
from rayclust.deep.features import extract_frozen_features
from rayclust.deep.training import create_objective, run_training
from rayclust.train.runtime import choose_device

log = logging.getLogger(__name__)

BASELINE_RESTARTS = 10  # K-means runs of the baseline; the lowest inertia is kept
CHECKPOINT_FILE = "checkpoint.pt"  # final weights (head, and backbone when fine-tuned) + state
# Run-folder files copied to the MLflow run (reports.json holds DivClust's inter-head NMI).
ARTIFACTS = (
    "config.yaml",
    "metrics.json",
    "history.json",
    "reports.json",
    "assignments.csv",
    "inter_head_nmi.csv",
    "skipped.csv",
)


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
    trained_view: str | None = None  # fine-tuning: the exported backbone, "arch@file"
    truth: np.ndarray | None = None  # ground-truth class of every image (None: unlabelled)
    class_names: list[str] = field(default_factory=list)  # names of the ``truth`` classes
    mlflow_run_id: str | None = None

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
            "kmeans_baseline": self.reports.get("kmeans_baseline"),
            "trained_view": self.trained_view,
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


def split_scores(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """rayclust's external scores plus ``nmi_geometric``: NMI normalised by sqrt(H(y) H(c)),
    as MMDC's thesis (paper 002, Section 4.2) and DEC-era papers report it."""
    from sklearn.metrics import normalized_mutual_info_score

    from rayclust.metrics import external_scores

    scores = {k: float(v) for k, v in external_scores(truth, pred).items()}
    scores["nmi_geometric"] = float(
        normalized_mutual_info_score(truth, pred, average_method="geometric")
    )
    return scores


def _prepare_inputs(config: DeepConfig, source) -> tuple[Any, Any]:
    """Frozen features of every image, or (fine-tuning) the decoded images and the backbone."""
    if config.features.mode == "finetune":
        from rayclust.deep.finetune import decode_images, load_backbone

        backbone = load_backbone(config)
        return decode_images(source, config, backbone), backbone
    features = extract_frozen_features(
        source, config.features, rotations=config.needs_rotations, seed=config.data.seed
    )
    return features, None


def fit_deep(config: DeepConfig | dict[str, Any] | str | Path) -> DeepResult:
    """Run one deep-clustering experiment end to end (see ``DeepConfig`` for every knob)."""
    config = _as_config(config)
    run_mlflow.check_tracking(config.tracking, config.output)  # before any work: seconds, one line
    # Opened before the work: the MLflow run's duration is the run's; a failed run stays
    # there, marked FAILED (KILLED when stopped).
    recording = _open_run(config) if config.tracking.enabled else None
    try:
        result = _fit_deep(config)
        if recording is not None:
            result.mlflow_run_id = track_run(result, recording)
        return result
    except BaseException as exc:
        if recording is not None:
            recording.fail(exc)
        raise


def _fit_deep(config: DeepConfig) -> DeepResult:
    import torch

    source = load_image_source(config.data)
    inputs, backbone = _prepare_inputs(config, source)
    n_clusters = config.n_clusters
    if n_clusters is None:
        if inputs.labels is None:
            raise ConfigError(
                f"n_clusters is null and {config.data.source} has no labels to count; set n_clusters"
            )
        n_clusters = int(len(np.unique(inputs.labels)))
    if n_clusters < 2:
        raise ConfigError(f"n_clusters={n_clusters} should be >= 2")
    train_index, holdout_index = _split(len(inputs), config.data.holdout_fraction, config.data.seed)
    if len(train_index) < 2 * n_clusters:
        raise ConfigError(
            f"n_train={len(train_index)} should be >= 2 * n_clusters={2 * n_clusters}; "
            "use more images or a smaller data.holdout_fraction"
        )
    train, holdout = inputs.subset(train_index), inputs.subset(holdout_index)
    if backbone is None and config.features.standardize:
        mean = train.base.mean(axis=0)
        std = train.base.std(axis=0) + 1e-6
        train, holdout = train.standardized(mean, std), holdout.standardized(mean, std)
    log.info(
        "deep %s (%s): %d train / %d held-out images, %s, %d clusters",
        config.method,
        config.features.mode,
        len(train),
        len(holdout),
        f"{train.dim} features" if backbone is None else f"{train.size} px images",
        n_clusters,
    )

    output = run_training(config, train, n_clusters)

    objective = create_objective(
        config, n_clusters, train.dim if backbone is None else backbone.feature_dim
    )
    model = objective.build_model()
    extra_reports: dict[str, Any] = {}
    if backbone is None:
        model.load_state_dict(output.weights)
    else:
        # The trained backbone encodes every image once; the head then predicts and reports
        # on those features exactly as on frozen ones.
        from rayclust.deep.finetune import BackboneHead, encode_with_backbone, save_trained_backbone

        net = BackboneHead(backbone.model, model)
        net.load_state_dict(output.weights)
        device = choose_device(config.trainer.use_gpu)
        encode = {
            "config": config,
            "backbone": backbone,
            "rotations": config.needs_rotations,
            "seed": config.trainer.seed,
            "device": device,
        }
        train = encode_with_backbone(net, train, **encode)
        holdout = (
            encode_with_backbone(net, holdout, **encode)
            if len(holdout)
            else train.subset(np.array([], dtype=np.int64))
        )
        net.cpu()
        if config.output:
            extra_reports["trained_view"] = save_trained_backbone(
                net, backbone, Path(config.output)
            )
    objective.load_checkpoint_state(output.state)
    truth = {"train": train.labels, "holdout": holdout.labels}

    def score(split: str, pred: np.ndarray) -> dict[str, float] | None:
        return None if truth[split] is None else split_scores(truth[split], pred)

    with torch.no_grad():
        split_labels, reports = objective.report(
            model, train, holdout if len(holdout) else None, output.history, score
        )
    reports.update(extra_reports)
    if output.runtime:
        reports["training"] = output.runtime
    if config.kmeans_baseline and inputs.labels is not None:
        reports["kmeans_baseline"] = kmeans_baseline(
            train, holdout, n_clusters, config.trainer.seed, score
        )
        reports["kmeans_baseline"]["features"] = (
            "frozen view (as the head sees them)" if backbone is None else "fine-tuned backbone"
        )
    labels = np.full(len(inputs), -1, dtype=np.int64)
    labels[train_index] = split_labels["train"]
    if len(holdout_index):
        labels[holdout_index] = split_labels["holdout"]
    metrics: dict[str, dict[str, float]] = {}
    if inputs.labels is not None:
        metrics["train"] = score("train", split_labels["train"])
        if len(holdout_index):
            metrics["holdout"] = score("holdout", split_labels["holdout"])
        metrics["all"] = split_scores(inputs.labels, labels)
    result = DeepResult(
        method=config.method,
        labels=labels,
        names=inputs.names,
        train_index=train_index,
        holdout_index=holdout_index,
        n_clusters=n_clusters,
        history=output.history,
        metrics=metrics,
        reports=reports,
        config=config,
        checkpoint_path=output.checkpoint_path,
        skipped=list(source.skipped),
        trained_view=extra_reports.get("trained_view"),
        truth=inputs.labels,
        class_names=list(inputs.class_names),
    )
    if config.output:
        folder = Path(config.output)
        write_outputs(result, folder)
        torch.save(
            {"weights": output.weights, "objective_state": output.state},
            folder / CHECKPOINT_FILE,
        )
    return result


def kmeans_baseline(train, holdout, n_clusters: int, seed: int, score) -> dict[str, Any]:
    """K-means on the very features the head reads: fitted on the training rows, held-out
    rows assigned to the nearest centre (as the heads never see them either)."""
    from rayclust.cluster import KMeans

    kmeans = KMeans(n_clusters=n_clusters, n_init=BASELINE_RESTARTS, random_state=seed)
    kmeans.fit(train.base)
    out: dict[str, Any] = {"train": score("train", kmeans.labels_)}
    if len(holdout):
        out["holdout"] = score("holdout", kmeans.predict(holdout.base))
    return out


def _open_run(config: DeepConfig) -> run_mlflow.MlflowRecording | None:
    folder = Path(config.output) if config.output else None
    tags = {
        "rayclust.stage": "deep",
        "rayclust.method": config.method,
        "rayclust.view": config.features.view,
        "rayclust.features_mode": config.features.mode,
    }
    name = config.name or (folder.name if folder else f"deep-{config.method}")
    return run_mlflow.open_mlflow_run(folder, config.to_dict(), config.tracking, name, tags=tags)


def track_run(result: DeepResult, recording: run_mlflow.MlflowRecording | None = None) -> str | None:
    """One MLflow run: the resolved config as params, each epoch's objective and its parts
    as step metrics, the final scores, and the run folder's files (reports, checkpoint).
    ``recording``: the run opened when the work started; None opens one now."""
    recording = recording or _open_run(result.config)
    if recording is None:
        return None
    artifacts = {name: None for name in ARTIFACTS}
    artifacts.update({CHECKPOINT_FILE: "checkpoint", "backbone.safetensors": "checkpoint"})
    return recording.finish(
        _final_metrics(result),
        history=result.history,
        artifacts=artifacts,
        dicts=None if result.config.output else {"reports.json": result.reports},
    )


def _final_metrics(result: DeepResult) -> dict[str, Any]:
    final: dict[str, Any] = {"n_clusters": result.n_clusters, **result.metrics}
    if result.objective:
        final["objective_first"] = result.objective[0]
        final["objective_last"] = result.objective[-1]
    for key, value in result.reports.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            final[key] = value
    baseline = result.reports.get("kmeans_baseline")
    if baseline:
        final["kmeans_baseline"] = {k: v for k, v in baseline.items() if isinstance(v, dict)}
    return final


def write_outputs(result: DeepResult, folder: Path) -> None:
    """A run folder complete on its own (the common schema of ``rayclust.runs``, so
    ``rayclust report`` renders it): resolved config, assignments, metrics, history, reports."""
    folder.mkdir(parents=True, exist_ok=True)
    runs.write_config(folder, result.config)
    holdout = np.isin(np.arange(len(result.labels)), result.holdout_index)
    truth_names = None
    if result.truth is not None:
        names = result.class_names or [str(c) for c in range(int(result.truth.max()) + 1)]
        truth_names = [names[int(c)] for c in result.truth]
    runs.write_assignments(
        folder,
        [_image_path(name) for name in result.names],
        result.names,
        result.labels,
        truth_names,
        extra_columns={"split": np.where(holdout, "holdout", "train").tolist()},
    )
    runs.write_metrics(folder, result.summary())
    runs.write_json(folder / "history.json", result.history, indent=1)
    runs.write_json(folder / runs.REPORTS_FILE, result.reports, indent=1)
    nmi = result.reports.get("inter_head_nmi_train")
    if nmi is not None:  # DivClust: heads x heads NMI over the training images
        runs.write_csv(
            folder / "inter_head_nmi.csv",
            ["head", *(str(k) for k in range(len(nmi)))],
            ([k, *(f"{v:.4f}" for v in row)] for k, row in enumerate(nmi)),
        )
    if result.skipped:
        runs.write_skipped(folder, result.skipped)


def _image_path(name: str) -> str:
    """Where an image is: its file, or ``<dataset>/<index>`` for an in-memory dataset image
    (named ``<dataset>:<index>``)."""
    dataset, sep, index = name.partition(":")
    if sep and index.isdigit() and "/" not in dataset:
        return f"{dataset}/{index}"
    return name
