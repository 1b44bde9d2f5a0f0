"""What one trial runs, per stage, and how it reports (to Tune and to its MLflow child run).

Every trial gets a :class:`TrialSetup` from the driver through ``tune.with_parameters``: the
search space (to turn its drawn values into a full, validated config), the objective, its
resource share, where to log, and the stage's shared data, prepared once per sweep:

- ``cluster``: the features of every view any trial can use, extracted by the driver
  before the trials start and handed over through Ray's object store; a trial only
  normalises, reduces and clusters them (no forward pass, no cache lookups).
- ``train``: the class splits (paths and labels); each trial fine-tunes in its own process
  with the training loop of ``rayclust.train`` and reports every epoch (ASHA can stop it),
  checkpointing every epoch so a retried or resumed trial continues where it stopped.
- ``deep``: nothing; the driver filled the deep-feature cache for every features setting
  the search can draw, so ``fit_deep`` in a trial reads the cache.

Test hooks (real faults in real trials), read from the driver's environment when the sweep
starts and handed to the trials (Ray's worker processes do not see later changes to it):
- ``RAYCLUST_TUNE_TRIAL_LOG=PATH``: each trial appends ``start <trial_id>`` when it starts
  and ``done <trial_id>`` after its last report, so tests count how often trials ran.
- ``RAYCLUST_TUNE_TRIAL_DELAY_S=X``: each trial sleeps X seconds before its work.
- ``RAYCLUST_TUNE_FAIL_ONCE=PATH``: the first trial to start creates PATH and raises, so
  tests see an errored trial retried.
- ``RAYCLUST_TUNE_FAIL_AFTER_EPOCH=PATH``: the first training trial to report an epoch (and
  its checkpoint) creates PATH and raises, so tests see the retried trial continue from that
  checkpoint instead of from epoch 0.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from rayclust.config import ConfigError
from rayclust.tune.config import (
    EXTERNAL_METRICS,
    INTERNAL_METRICS,
    ObjectiveConfig,
    ResourcesConfig,
)
from rayclust.tune.space import SearchSpace

log = logging.getLogger("rayclust.tune")

TRIAL_LOG_ENV = "RAYCLUST_TUNE_TRIAL_LOG"
TRIAL_DELAY_ENV = "RAYCLUST_TUNE_TRIAL_DELAY_S"
FAIL_ONCE_ENV = "RAYCLUST_TUNE_FAIL_ONCE"
FAIL_AFTER_EPOCH_ENV = "RAYCLUST_TUNE_FAIL_AFTER_EPOCH"
TRIAL_ID_TAG = "rayclust.trial_id"
BEST_CHECKPOINT_DIR = "best_checkpoint"
CHILD_RUN_KEY = "mlflow_child_run_id"  # in every result a trial reports


class InjectedTrialFailure(RuntimeError):
    """Raised by the RAYCLUST_TUNE_FAIL_ONCE test hook."""


@dataclass(frozen=True)
class TrialTracking:
    uri: str
    experiment: str
    parent_run_id: str
    sweep: str


@dataclass
class ClusterData:
    """What clustering trials share: each view's raw stored features (rows = usable images,
    in ``ids`` order), the views' cache keys and the images' labels (None: unlabelled)."""

    features: dict[str, np.ndarray]
    ids: list[str]
    view_keys: dict[str, str]
    labels: list[str | None] | None


@dataclass(frozen=True)
class TrialHooks:
    trial_log: str | None = None
    delay_s: float = 0.0
    fail_once: str | None = None
    fail_after_epoch: str | None = None

    @classmethod
    def from_environment(cls) -> TrialHooks:
        raw_delay = os.environ.get(TRIAL_DELAY_ENV) or "0"
        try:
            delay = float(raw_delay)
        except ValueError:
            raise ValueError(f"{TRIAL_DELAY_ENV}={raw_delay!r} should be a number") from None
        return cls(
            trial_log=os.environ.get(TRIAL_LOG_ENV) or None,
            delay_s=delay,
            fail_once=os.environ.get(FAIL_ONCE_ENV) or None,
            fail_after_epoch=os.environ.get(FAIL_AFTER_EPOCH_ENV) or None,
        )


@dataclass
class TrialSetup:
    stage: str
    space: SearchSpace
    objective: ObjectiveConfig
    resources: ResourcesConfig
    tracking: TrialTracking | None
    data: Any = None
    hooks: TrialHooks = TrialHooks()


def check_objective(stage: str, objective: ObjectiveConfig, has_labels: bool) -> None:
    """Fail before any trial when the metric cannot be computed on this data."""
    metric = objective.metric
    if stage == "cluster":
        known = EXTERNAL_METRICS + INTERNAL_METRICS
        if metric not in known:
            raise ConfigError(f"objective.metric={metric!r} is not one of {', '.join(known)}")
        if metric in EXTERNAL_METRICS and not has_labels:
            raise ConfigError(
                f"objective.metric={metric!r} needs labels and these images have none "
                "(set input.labels_from_folders=true, or use silhouette or stability)"
            )
    elif stage == "train":
        if metric == "val_accuracy" and not has_labels:
            raise ConfigError(
                "objective.metric='val_accuracy' needs data.val_classes (few-shot validation)"
            )
        if metric != "val_accuracy" and not metric.startswith("train_"):
            raise ConfigError(
                f"objective.metric={metric!r} should be val_accuracy or a train_* metric "
                "(train_loss, ...)"
            )
    elif stage == "deep":
        base = metric.split("_", 1)[1] if metric.startswith(("train_", "holdout_")) else metric
        if base not in EXTERNAL_METRICS and metric != "objective":
            raise ConfigError(
                f"objective.metric={metric!r} should be one of {', '.join(EXTERNAL_METRICS)} "
                "(all images), holdout_<metric>, train_<metric> or objective"
            )
        if base in EXTERNAL_METRICS and not has_labels:
            raise ConfigError(f"objective.metric={metric!r} needs labels; this data has none")


# -- reporting ---------------------------------------------------------------------------------


class Reporter:
    """Logs a trial's metrics to its MLflow child run, then hands them to Tune.

    MLflow first: Tune may stop the trial inside ``tune.report`` (ASHA), and what it was
    told must already be recorded.
    """

    def __init__(self, child) -> None:
        self.child = child

    def __call__(
        self, metrics: dict[str, Any], checkpoint_dir: str | Path | None = None, step: int = 0
    ) -> None:
        from ray import tune

        numbers = {
            k: v
            for k, v in metrics.items()
            if isinstance(v, (int, float, np.number)) and not isinstance(v, bool)
        }
        if self.child is not None:
            self.child.log_metrics(numbers, step=step)
        checkpoint = None
        if checkpoint_dir is not None:
            checkpoint = tune.Checkpoint.from_directory(str(checkpoint_dir))
        result = dict(metrics)
        if self.child is not None:
            result[CHILD_RUN_KEY] = self.child.run_id  # the driver ends this run, no search
        tune.report(result, checkpoint=checkpoint)


def _open_child(setup: TrialSetup, trial_id: str, trial_name: str, config, params: dict):
    if setup.tracking is None:
        return None
    from rayclust import tracking

    t = setup.tracking
    return tracking.open_run(
        config.to_dict(),
        uri=t.uri,
        experiment=t.experiment,
        run_name=trial_name,
        tags={
            TRIAL_ID_TAG: trial_id,
            "rayclust.sweep": t.sweep,
            "rayclust.stage": setup.stage,
            "rayclust.searched": json.dumps(params, sort_keys=True, default=str),
        },
        parent_run_id=t.parent_run_id,
        reuse_tag=TRIAL_ID_TAG,
    )


def _append_trial_log(path: str | None, event: str, trial_id: str) -> None:
    if path:
        with open(path, "a") as fh:  # one short line per write: appends do not interleave
            fh.write(f"{event} {trial_id}\n")


def _maybe_fail_once(marker: str | None) -> None:
    if not marker:
        return
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(fd)
    raise InjectedTrialFailure(f"{FAIL_ONCE_ENV}: this trial fails once on purpose")


def run_trial(params: dict[str, Any], setup: TrialSetup) -> None:
    """The Tune function trainable of every stage (``tune.with_parameters(run_trial, setup=)``)."""
    from ray import tune
    from threadpoolctl import threadpool_limits

    context = tune.get_context()
    trial_id = context.get_trial_id()
    trial_dir = Path(context.get_trial_dir())
    config = setup.space.trial_config(params)
    hooks = setup.hooks
    _append_trial_log(hooks.trial_log, "start", trial_id)
    if hooks.delay_s:
        time.sleep(hooks.delay_s)
    child = _open_child(setup, trial_id, context.get_trial_name(), config, params)
    _maybe_fail_once(hooks.fail_once)
    threads = max(1, int(setup.resources.cpus_per_trial))
    import torch

    torch.set_num_threads(threads)
    with threadpool_limits(threads):
        STAGE_TRIALS[setup.stage](config, setup, Reporter(child), trial_dir)
    _append_trial_log(hooks.trial_log, "done", trial_id)


# -- clustering on shared features -------------------------------------------------------------


def score_clustering(config, data: ClusterData) -> dict[str, float]:
    """Cluster the shared features as ``config`` says; every score's mean (and SD) over seeds.

    The clustering stage of ``rayclust cluster`` itself (``rayclust.clustering``), so the best
    trial's config reproduces its score there.
    """
    from rayclust.clustering import cluster_features, prepare_features

    missing = [view for view in config.views if view not in data.features]
    if missing:
        raise ConfigError(f"views {missing} were not extracted for this sweep")
    features = prepare_features(
        {view: data.features[view] for view in config.views},
        config.clustering,
        data.ids,
        data.view_keys,
        data.labels,
    )
    # The trial holds its CPU share: views are clustered one after the other, not in tasks.
    result = cluster_features(features, config, parallel=False)
    scores: dict[str, float] = {}
    for metric, stats in result.summary.items():
        scores[metric] = float(stats["mean"])
        scores[f"{metric}_std"] = float(stats["std"])
    scores["stability"] = result.stability()
    scores["n_clusters_found"] = float(len(np.unique(result.labels)))
    return scores


def _cluster_trial(config, setup: TrialSetup, report: Reporter, trial_dir: Path) -> None:
    started = time.perf_counter()
    scores = score_clustering(config, setup.data)
    scores["trial_seconds"] = time.perf_counter() - started
    if not math.isfinite(scores.get(setup.objective.metric, float("nan"))):
        log.warning("trial objective %s is undefined (NaN)", setup.objective.metric)
    report(scores)


# -- fine-tuning -------------------------------------------------------------------------------


def _better(value: float, best: float | None, mode: str) -> bool:
    if best is None:
        return True
    return value > best if mode == "max" else value < best


def _train_trial(config, setup: TrialSetup, report: Reporter, trial_dir: Path) -> None:
    import torch
    from ray import tune

    from rayclust.train.loop import BACKBONE_FILE, HISTORY_FILE, TrainWorker, WorkerContext

    use_gpu = setup.resources.gpus_per_trial > 0 and torch.cuda.is_available()
    device = torch.device("cuda" if use_gpu else "cpu")
    metric, mode = setup.objective.metric, setup.objective.mode
    best_dir = trial_dir / BEST_CHECKPOINT_DIR
    score_file = best_dir / "score.json"
    best = json.loads(score_file.read_text())["value"] if score_file.is_file() else None

    def on_epoch(metrics: dict[str, Any], folder: Path | None) -> None:
        nonlocal best
        value = metrics.get(metric)
        if folder is not None and value is not None and _better(float(value), best, mode):
            # The checkpoint folder lives only during this call: keep the best epoch's files.
            best = float(value)
            staging = trial_dir / (BEST_CHECKPOINT_DIR + ".new")
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            for name in (BACKBONE_FILE, HISTORY_FILE):
                shutil.copyfile(Path(folder) / name, staging / name)
            (staging / "score.json").write_text(
                json.dumps({"metric": metric, "value": best, "epoch": metrics["epoch"]})
            )
            shutil.rmtree(best_dir, ignore_errors=True)
            staging.rename(best_dir)
            if report.child is not None:
                report.child.log_artifacts(best_dir, BEST_CHECKPOINT_DIR)
        report(metrics, checkpoint_dir=folder, step=int(metrics["epoch"]))
        if folder is not None:
            _maybe_fail_once(setup.hooks.fail_after_epoch)  # after its checkpoint is reported

    checkpoint = tune.get_checkpoint()
    context = WorkerContext(
        device=device,
        checkpoint_folder=None if checkpoint is None else checkpoint.as_directory,
        report=on_epoch,
    )
    TrainWorker(config, setup.data, None, context).run()


# -- deep clustering heads ---------------------------------------------------------------------


# Searched keys that change a deep trial's features: the driver extracts each setting once.
DEEP_FEATURE_KEYS = ("data.", "features.", "method", "mmdc.rotation")


def deep_feature_settings(config) -> str:
    """What decides a deep run's cached features, as a comparable string."""
    from dataclasses import asdict

    return json.dumps(
        {
            "data": asdict(config.data),
            "features": asdict(config.features),
            "rotations": config.needs_rotations,
        },
        sort_keys=True,
    )


def _deep_trial(config, setup: TrialSetup, report: Reporter, trial_dir: Path) -> None:
    from rayclust.deep.api import fit_deep

    # The head trains in the trial's own process, on the trial's CPU/GPU share: a nested
    # Ray Train run would ask for CPUs the trials already hold.
    trainer = replace(
        config.trainer,
        backend="local",
        use_gpu=setup.resources.gpus_per_trial > 0,
        storage_path=None,
    )
    config = replace(config, trainer=trainer, output=str(trial_dir / "run"))
    # The trial's child run under the sweep is its record; no second, unnested run.
    config = replace(config, tracking=replace(config.tracking, enabled=False))
    result = fit_deep(config)
    metrics: dict[str, float] = {}
    for split, scores in result.metrics.items():
        prefix = "" if split == "all" else f"{split}_"
        metrics.update({f"{prefix}{k}": float(v) for k, v in scores.items()})
    metrics["objective"] = float(result.objective[-1])
    if "diversity_reached" in result.reports:
        metrics["diversity_reached"] = float(result.reports["diversity_reached"])
    if report.child is not None:
        for entry in result.history:
            report.child.log_metrics({"epoch_objective": entry["objective"]}, step=entry["epoch"])
        for name in ("config.yaml", "metrics.json", "reports.json"):
            if (trial_dir / "run" / name).is_file():
                report.child.log_artifact(trial_dir / "run" / name, "run")
    report(metrics)


STAGE_TRIALS: dict[str, Callable[..., None]] = {
    "cluster": _cluster_trial,
    "train": _train_trial,
    "deep": _deep_trial,
}
