"""Set up and run one sweep: stage config, shared data, MLflow parent run, Tuner, summary.

Sweep folder (``runs/tune/<name>`` unless ``output`` is set), complete on its own:

    sweep.yaml         the resolved sweep config
    base.yaml          the stage config every trial starts from
    features.json      what the driver extracted for the trials (cluster / deep stages)
    tune/              Tune's experiment: trial folders, checkpoints, state for --resume
    trials.csv, results.md, best_config.yaml, plots/*.png   (see rayclust.tune.summary)
    mlflow.json        the tracking URI and the parent run's id

A sweep stopped midway (driver killed, machine rebooted) continues with ``resume=True``
(``rayclust tune CONFIG --resume``): ``Tuner.restore`` keeps every finished trial, resumes
unfinished ones from their last checkpoint and retries errored ones; the MLflow parent run
is reopened and each trial finds its own child run again by its trial-id tag.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rayclust import run_mlflow, runs
from rayclust.config import ConfigError, load_config, load_yaml_text
from rayclust.ray_session import ensure_ray
from rayclust.redact import redact, strip_userinfo
from rayclust.tune.config import SweepConfig
from rayclust.tune.objective import (
    CHILD_RUN_KEY,
    DEEP_FEATURE_KEYS,
    TRIAL_ID_TAG,
    ClusterData,
    TrialHooks,
    TrialSetup,
    TrialTracking,
    check_objective,
    deep_feature_settings,
    run_trial,
)
from rayclust.tune.space import SearchSpace, schema_for

log = logging.getLogger("rayclust.tune")

TUNE_DIR = "tune"
# Fields of sweep.yaml a resumed sweep may change: how it runs, not what it searches.
RESUMABLE_CHANGES = ("max_concurrent_trials", "resources", "ray", "max_failures")
DATASET_NAMES = ("digits", "cifar10", "stl10")


@dataclass
class SweepResult:
    sweep_dir: Path
    best_params: dict[str, Any]
    best_metrics: dict[str, Any]
    best_config_path: Path
    n_trials: int
    n_errored: int
    features: dict[str, Any]
    mlflow_parent_run_id: str | None
    result_grid: Any = None


def sweep_folder(sweep: SweepConfig) -> Path:
    return (
        Path(sweep.output or Path("runs") / "tune" / (sweep.name or "sweep")).expanduser().resolve()
    )


def _absolute(path: str | None, start: Path | None = None) -> str | None:
    """A local path made absolute (trials run in their own folders); s3:// and gs:// URIs as
    they are."""
    from rayclust.remote import is_remote

    if path is None or is_remote(path):
        return path
    candidate = Path(path).expanduser()
    if not candidate.is_absolute() and start is not None:
        candidate = start / candidate
    return str(candidate.resolve())


def load_base(sweep: SweepConfig, base_dir: Path):
    """The stage config trials start from: base YAML <- inline config, paths made absolute
    (trials run in their own folders)."""
    schema = schema_for(sweep.stage)
    base_path = _absolute(sweep.base, base_dir) if sweep.base else None
    if not isinstance(sweep.config, dict):
        raise ConfigError(f"config should be a mapping of {schema.__name__} keys")
    config = load_config(base_path, sweep.config, schema=schema)
    if config.name is None:
        # Stage configs default to a name with the time in it; a resumed sweep must build
        # the very same trial configs (their MLflow params are write-once).
        config = replace(config, name=sweep.name)
    if sweep.stage == "cluster":
        from rayclust.pipeline import resolve_run_paths

        config = resolve_run_paths(config)
        config = replace(
            config,
            input=replace(config.input, source=_absolute(config.input.source)),
            extraction=replace(config.extraction, cache_dir=_absolute(config.extraction.cache_dir)),
        )
    elif sweep.stage == "train":
        from rayclust.train.api import resolve_paths

        config = resolve_paths(config)
    else:
        data = config.data
        if data.source not in DATASET_NAMES:
            data = replace(data, source=_absolute(data.source))
        data = replace(data, root=_absolute(data.root))
        features = replace(config.features, cache_dir=_absolute(config.features.cache_dir))
        config = replace(config, data=data, features=features)
    return config


def _prepare_cluster(base, space: SearchSpace, sweep: SweepConfig, progress: bool):
    """Extract every view any trial can use, once; the trials get the features through
    ``tune.with_parameters`` (Ray's object store), so no trial touches a model or the cache.

    Scan and extraction are the pipeline's own stages, given the whole input section (a
    bucket's storage options included)."""
    from rayclust import pipeline
    from rayclust.clustering import read_features

    views = list(base.views)
    if "views" in space.keys:
        for value in space.dimension("views").args:
            for view in value if isinstance(value, list) else [value]:
                if view not in views:
                    views.append(view)
        space.discrete_product(("views",))  # views must be choice / grid: extracted up front
    image_set = pipeline.scan(base)
    check_objective("cluster", sweep.objective, image_set.has_labels)  # before extracting
    extraction = pipeline.extract(base, image_set, views=views, progress=progress)
    images = extraction.images
    data = ClusterData(
        features=read_features(
            base.extraction.cache_dir,
            images.image_ids,
            extraction.view_keys,
            base.input.storage_options,
        ),
        ids=images.image_ids,
        view_keys=extraction.view_keys,
        labels=images.labels,
    )
    summary = {
        view: {"n_extracted": r.n_extracted, "n_cached": r.n_cached, "spec_key": r.spec_key}
        for view, r in extraction.results.items()
    }
    log.info("sweep features: %s", summary)
    return data, {"n_images": len(images), "views": summary}


def _prepare_train(base, space: SearchSpace, sweep: SweepConfig, progress: bool):
    from rayclust.train.data import load_splits

    if base.data.source is None:
        raise ConfigError("data.source is not set: give a folder with one sub-folder per class")
    if base.mode == "none":
        raise ConfigError("stage train sweeps need mode classic or episodic, not none")
    check_objective("train", sweep.objective, bool(base.data.val_classes))
    splits = load_splits(
        base.data.source,
        {
            "train_classes": base.data.train_classes,
            "val_classes": base.data.val_classes,
            "cluster_classes": base.data.cluster_classes,
        },
        max_pixels=base.data.max_pixels,
    )
    return splits, {"n_train_images": len(splits["train_classes"])}


def _prepare_deep(base, space: SearchSpace, sweep: SweepConfig, progress: bool):
    from rayclust.deep.data import load_image_source
    from rayclust.deep.features import extract_frozen_features

    settings: dict[str, Any] = {}
    has_labels = True
    for combo in space.discrete_product(DEEP_FEATURE_KEYS):
        config = space.trial_config(combo)
        key = deep_feature_settings(config)
        if key in settings:
            continue
        source = load_image_source(config.data)
        features = extract_frozen_features(
            source, config.features, rotations=config.needs_rotations, seed=config.data.seed
        )
        has_labels = has_labels and features.labels is not None
        settings[key] = {"n_images": len(features), "dim": features.dim, **combo}
    check_objective("deep", sweep.objective, has_labels)
    return None, {"feature_settings": list(settings.values())}


PREPARE = {"cluster": _prepare_cluster, "train": _prepare_train, "deep": _prepare_deep}


# -- Tune objects --------------------------------------------------------------------------


def _search_alg(sweep: SweepConfig):
    if sweep.search_alg == "optuna":
        try:
            import optuna
            from ray.tune.search.optuna import OptunaSearch
        except ImportError:
            raise ConfigError(
                "search_alg=optuna needs optuna: pip install 'rayclust[optuna]' "
                "(or use search_alg=random)"
            ) from None
        return OptunaSearch(sampler=optuna.samplers.TPESampler(seed=sweep.seed))
    from ray.tune.search.basic_variant import BasicVariantGenerator

    # The random / grid generator caps concurrency itself: Tune ignores max_concurrent_trials
    # for a SearchGenerator passed as search_alg.
    return BasicVariantGenerator(
        random_state=sweep.seed, max_concurrent=sweep.max_concurrent_trials or 0
    )


def _param_space(space: SearchSpace, sweep: SweepConfig) -> dict[str, Any]:
    if sweep.search_alg != "grid":
        return space.param_space()
    from ray import tune

    return {d.key: tune.grid_search(list(d.args)) for d in space.dimensions}


def _scheduler(sweep: SweepConfig, base):
    if sweep.scheduler != "asha":
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        time_attr="training_iteration",
        max_t=sweep.asha.max_t or base.epochs,
        grace_period=sweep.asha.grace_period,
        reduction_factor=sweep.asha.reduction_factor,
    )


class ChildRunCloser:
    """Ends each trial's child run as Tune ends the trial (a ``tune.Callback``, made by
    :func:`child_run_closer`).

    Trials cannot do it themselves: ASHA stops a trial inside its report, and a killed
    trial runs no cleanup. The child's id comes with the trial's results; a trial that
    errored before its first report is looked up by its trial-id tag.
    """

    def __init__(self, tracking: TrialTracking) -> None:
        self.tracking = tracking
        self._client = None
        self._experiment_id: str | None = None

    def _connect(self):
        from rayclust import tracking as mlflow_tracking

        if self._client is None:
            self._client = mlflow_tracking.open_client(self.tracking.uri)
            parent = mlflow_tracking.with_retry(self._client.get_run, self.tracking.parent_run_id)
            self._experiment_id = parent.info.experiment_id
        return self._client

    def end(self, trial_id: str, status: str, run_id: str | None = None) -> None:
        from rayclust import tracking as mlflow_tracking

        try:
            client = self._connect()
            if run_id is None:
                run_id = mlflow_tracking.find_run(
                    client,
                    self._experiment_id,
                    {TRIAL_ID_TAG: trial_id, "mlflow.parentRunId": self.tracking.parent_run_id},
                )
            if run_id is not None:
                mlflow_tracking.with_retry(client.set_terminated, run_id, status)
        except Exception as exc:  # noqa: BLE001 - a tracking hiccup must not stop the sweep
            log.warning("could not end the MLflow run of trial %s: %s", trial_id, exc)


def child_run_closer(tracking: TrialTracking):
    from ray import tune

    class _Callback(tune.Callback):
        def __init__(self) -> None:
            self.closer = ChildRunCloser(tracking)

        def on_trial_complete(self, iteration, trials, trial, **info):
            run_id = (trial.last_result or {}).get(CHILD_RUN_KEY)
            self.closer.end(trial.trial_id, "FINISHED", run_id)

        def on_trial_error(self, iteration, trials, trial, **info):
            self.closer.end(trial.trial_id, "FAILED")

    return _Callback()


def trial_dirname(trial) -> str:
    """Trial folders named by trial id only (Tune's default spells out every searched value)."""
    return f"trial_{trial.trial_id}"


def _check_resume(
    sweep: SweepConfig, sweep_dir: Path, resume: bool, base_dict: dict[str, Any]
) -> bool:
    """Whether Tune's state is there to restore; refuses to mix a new sweep into an old one."""
    from ray import tune

    exists = tune.Tuner.can_restore(str(sweep_dir / TUNE_DIR))
    if exists and not resume:
        raise ConfigError(
            f"sweep folder {sweep_dir} already holds a sweep; pass --resume to continue it, "
            "or choose another name/output"
        )
    if resume and not exists:
        raise ConfigError(
            f"--resume: sweep folder {sweep_dir} holds no sweep to resume; run without --resume"
        )
    saved_base = sweep_dir / "base.yaml"
    if (
        resume
        and saved_base.is_file()
        and load_yaml_text(saved_base.read_text(), str(saved_base)) != redact(base_dict)
    ):
        raise ConfigError(
            f"--resume: the stage config (base and config:) differs from {saved_base}; a "
            "resumed sweep's trials must run the same configs"
        )
    saved = sweep_dir / "sweep.yaml"
    if resume and saved.is_file():
        before = load_yaml_text(saved.read_text(), str(saved))
        now = redact(sweep.to_dict())  # sweep.yaml is written with credentials masked
        changed = sorted(
            k for k in set(before) | set(now)
            if k not in RESUMABLE_CHANGES and before.get(k) != now.get(k)
        )  # fmt: skip
        if changed:
            raise ConfigError(
                f"--resume: {', '.join(changed)} differ from {saved}; a resumed sweep must "
                f"search the same space (only {', '.join(RESUMABLE_CHANGES)} may change)"
            )
    return exists


def _parent_run(sweep: SweepConfig, sweep_dir: Path, resume: bool):
    from rayclust import tracking

    uri = run_mlflow.tracking_uri(sweep.tracking, sweep_dir)
    tracking.prepare_store(uri)
    saved = runs.read_mlflow_pointer(sweep_dir)
    # Trusted only when it names the store this sweep is configured for (the pointer keeps
    # the URI without credentials; the configured one has them).
    if resume and saved and saved["tracking_uri"] == strip_userinfo(uri):
        return tracking.reopen_run(uri, saved["run_id"])
    parent = tracking.open_run(
        sweep.to_dict(),
        uri=uri,
        experiment=sweep.tracking.experiment,
        run_name=sweep.name,
        tags={
            "rayclust.sweep": sweep.name,
            "rayclust.stage": sweep.stage,
            "rayclust.role": "sweep",
        },
    )
    runs.write_mlflow_pointer(sweep_dir, uri, parent.run_id, files=("base.yaml",))
    return parent


def run_sweep(
    sweep: SweepConfig,
    base_dir: str | Path = ".",
    resume: bool = False,
    progress: bool = True,
) -> SweepResult:
    """Run (or with ``resume=True`` continue) one sweep; see the module docstring."""
    from ray import tune

    from rayclust.tune.summary import write_summary

    base_dir = Path(base_dir)
    base = load_base(sweep, base_dir)
    space = SearchSpace.from_yaml(sweep.search, schema_for(sweep.stage), base.to_dict())
    space.check_search_alg(sweep.search_alg)
    sweep_dir = sweep_folder(sweep)
    # An unreachable server: seconds, not hours.
    run_mlflow.check_tracking(sweep.tracking, sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    restoring = _check_resume(sweep, sweep_dir, resume, base.to_dict())
    ensure_ray(sweep.ray.address, sweep.ray.num_cpus)
    data, features = PREPARE[sweep.stage](base, space, sweep, progress)
    sweep.to_yaml(sweep_dir / "sweep.yaml")
    base.to_yaml(sweep_dir / "base.yaml")
    runs.write_json(sweep_dir / "features.json", features)

    parent = None
    trial_tracking = None
    if sweep.tracking.enabled:
        parent = _parent_run(sweep, sweep_dir, resume)
        trial_tracking = TrialTracking(
            uri=parent.tracking_uri,
            experiment=sweep.tracking.experiment,
            parent_run_id=parent.run_id,
            sweep=sweep.name or sweep_dir.name,
        )
    setup = TrialSetup(
        stage=sweep.stage,
        space=space,
        objective=sweep.objective,
        resources=sweep.resources,
        tracking=trial_tracking,
        data=data,
        hooks=TrialHooks.from_environment(),
    )
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, setup=setup),
        {"cpu": sweep.resources.cpus_per_trial, "gpu": sweep.resources.gpus_per_trial},
    )
    run_config = tune.RunConfig(
        name=TUNE_DIR,
        storage_path=str(sweep_dir),
        failure_config=tune.FailureConfig(max_failures=sweep.max_failures),
        # Training trials checkpoint every epoch; the latest two are kept for resuming (the
        # best epoch's backbone is copied aside by the trial). Keeping only one would make
        # Tune snapshot its state at every single checkpoint.
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2 if sweep.stage == "train" else None),
        callbacks=[child_run_closer(trial_tracking)] if trial_tracking else None,
        verbose=1 if progress else 0,
    )
    status = "FAILED"
    try:
        if restoring:
            log.info("resuming the sweep in %s", sweep_dir)
            tuner = tune.Tuner.restore(
                str(sweep_dir / TUNE_DIR),
                trainable,
                resume_unfinished=True,
                resume_errored=True,
            )
        else:
            tuner = tune.Tuner(
                trainable,
                param_space=_param_space(space, sweep),
                tune_config=tune.TuneConfig(
                    metric=sweep.objective.metric,
                    mode=sweep.objective.mode,
                    search_alg=_search_alg(sweep),
                    scheduler=_scheduler(sweep, base),
                    num_samples=sweep.num_samples,
                    max_concurrent_trials=(
                        sweep.max_concurrent_trials if sweep.search_alg == "optuna" else None
                    ),
                    # Clustering trials are short: a reused trial process saves its start-up.
                    reuse_actors=sweep.stage == "cluster",
                    trial_dirname_creator=trial_dirname,
                ),
                run_config=run_config,
            )
        grid = tuner.fit()
        summary = write_summary(grid, space, sweep, sweep_dir, parent)
        status = "FINISHED"
    finally:
        if parent is not None:
            parent.end(status)
    return SweepResult(
        sweep_dir=sweep_dir,
        best_params=summary["best_params"],
        best_metrics=summary["best_metrics"],
        best_config_path=summary["best_config_path"],
        n_trials=summary["n_trials"],
        n_errored=summary["n_errored"],
        features=features,
        mlflow_parent_run_id=parent.run_id if parent else None,
        result_grid=grid,
    )
