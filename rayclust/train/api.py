"""``fit(config) -> TrainResult``: fine-tune a view's backbone on Ray Train, export it as a view.

The run folder (``config.output``) is complete on its own:

    config.yaml            the resolved config
    ray/                   Ray Train storage: checkpoint_*/ (state.pt, backbone.safetensors,
                           history.json), the best ones and the latest kept
    backbone.safetensors   the best epoch's backbone; the view ``arch@<this file>``
    history.json           metrics of every epoch
    result.json            best epoch, its metrics, the view name, clustering scores
    clustering/            the clustering run of data.cluster_classes with the new view
    mlflow.json            tracking URI and run id

A stopped run (driver killed) continues with ``fit(config, resume=True)``: Ray Train finds
its checkpoints in ``ray/`` and every worker restarts after the last finished epoch.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from rayclust import run_mlflow, runs
from rayclust.config import ConfigError
from rayclust.ray_session import ensure_ray
from rayclust.train.config import TrainConfig
from rayclust.train.data import LabeledImages, load_splits
from rayclust.train.export import checkpoint_view_name
from rayclust.train.loop import BACKBONE_FILE, HISTORY_FILE, StepHook, plan_steps
from rayclust.train.runtime import (
    TrainerLaunch,
    best_checkpoint,
    final_checkpoint,
    launch_trainer,
    resolve_use_gpu,
)

log = logging.getLogger("rayclust.train")

RESULT_FILE = "result.json"

RAY_RUN_NAME = "ray"
# Keys that may change between a run and its --resume: how it runs, not what it computes.
RESUMABLE_CHANGES = (
    "name",
    "scaling",
    "max_failures",
    "ray",
    "tracking",
    "evaluation",
    "keep_checkpoints",
)


@dataclass
class TrainResult:
    output_dir: Path
    view: str  # the view to cluster with: "arch@<output>/backbone.safetensors" (or config.view)
    backbone_path: Path | None  # None for mode="none"
    best_epoch: int | None
    best_metrics: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    checkpoint_path: str | None = None  # the best epoch's Ray checkpoint folder
    clustering: dict[str, Any] | None = None  # {"summary": {metric: {mean, std, n}}, ...}
    mlflow_run_id: str | None = None
    resumed: bool = False


def resolve_paths(config: TrainConfig) -> TrainConfig:
    """Fill in name and output so the written config names its own folder."""
    name = config.name
    if name is None:
        view = re.sub(r"[^A-Za-z0-9_.-]+", "-", config.view.split("@")[0])
        name = f"{view}-{config.mode}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    output = config.output or str(Path("runs") / "train" / name)
    data = config.data
    if data.source is not None:
        data = replace(data, source=str(Path(data.source).expanduser().resolve()))
    return replace(config, name=name, output=str(Path(output).expanduser().resolve()), data=data)


def _has_checkpoints(output_dir: Path) -> bool:
    return any(path.is_dir() for path in (output_dir / RAY_RUN_NAME).glob("checkpoint_*"))


def _check_resume(config: TrainConfig, output_dir: Path, resume: bool) -> None:
    exists = _has_checkpoints(output_dir)
    if exists and not resume:
        raise ConfigError(
            f"run folder {output_dir} already holds checkpoints of an earlier run; pass "
            "--resume (fit(..., resume=True)) to continue it, or choose another output/name"
        )
    if resume and not exists:
        raise ConfigError(
            f"--resume: run folder {output_dir} holds no checkpoint to resume from; "
            "run without --resume to start it"
        )
    saved_path = output_dir / "config.yaml"
    if resume and saved_path.is_file():
        from rayclust.config import load_config

        saved = load_config(saved_path, schema=TrainConfig).to_dict()
        current = config.to_dict()
        changed = sorted(
            key
            for key in set(saved) | set(current)
            if key not in RESUMABLE_CHANGES and saved.get(key) != current.get(key)
        )
        if changed:
            raise ConfigError(
                f"--resume: {', '.join(changed)} differ from the run's config.yaml in "
                f"{output_dir}; a resumed run must compute the same thing (only "
                f"{', '.join(RESUMABLE_CHANGES)} may change)"
            )


def _run_ray_train(
    config: TrainConfig,
    splits: dict[str, LabeledImages],
    output_dir: Path,
    on_step: StepHook | None,
):
    from rayclust.train.loop import train_loop_per_worker

    use_gpu = resolve_use_gpu(config.scaling.use_gpu)
    log.info(
        "training %s (%s) on %d worker(s), %s",
        config.view,
        config.mode,
        config.scaling.num_workers,
        "one GPU each" if use_gpu else f"{config.scaling.cpus_per_worker:g} CPU each",
    )
    launch = TrainerLaunch(
        name=RAY_RUN_NAME,
        storage_path=output_dir,
        num_workers=config.scaling.num_workers,
        use_gpu=use_gpu,
        cpus_per_worker=config.scaling.cpus_per_worker,
        max_failures=config.max_failures,
        keep_checkpoints=config.keep_checkpoints,
        score_metric=config.score_metric,
    )
    loop_config = {"config": config, "splits": splits, "on_step": on_step}
    return launch_trainer(train_loop_per_worker, loop_config, launch)


def fit(
    config: TrainConfig,
    *,
    resume: bool = False,
    on_step: StepHook | None = None,
    progress: bool = True,
) -> TrainResult:
    """Fine-tune ``config.view`` as configured; returns where the new view is and its scores.

    ``on_step(epoch, step, rank)`` runs in every worker at every micro-step (progress
    probes, fault injection in tests); it must be picklable.
    """
    if resume and config.output is None and config.name is None:
        raise ConfigError("--resume needs output (or name) set to find the run folder to continue")
    config = resolve_paths(config)
    if config.data.source is None:
        raise ConfigError("data.source is not set: give a folder with one sub-folder per class")
    output_dir = Path(config.output)
    _check_resume(config, output_dir, resume)
    run_mlflow.check_tracking(config.tracking, output_dir)  # before any work: seconds, one line
    output_dir.mkdir(parents=True, exist_ok=True)
    runs.write_config(output_dir, config)
    # Opened before the work: the MLflow run's duration is the run's; a failed run stays
    # there, marked FAILED (KILLED when stopped).
    recording = _open_run(config, output_dir) if config.tracking.enabled else None
    try:
        result = _fit(config, output_dir, resume, on_step, progress)
        if recording is not None:
            result.mlflow_run_id = _track(result, recording)
        return result
    except BaseException as exc:
        if recording is not None:
            recording.fail(exc)
        raise


def _fit(
    config: TrainConfig,
    output_dir: Path,
    resume: bool,
    on_step: StepHook | None,
    progress: bool,
) -> TrainResult:
    names = {
        "train_classes": config.data.train_classes,
        "val_classes": config.data.val_classes,
        "cluster_classes": config.data.cluster_classes,
    }
    splits = load_splits(config.data.source, names, max_pixels=config.data.max_pixels)
    for split, images in splits.items():
        if len(images):
            log.info("%s: %d images in %d classes", split, len(images), len(images.class_names))

    result = TrainResult(
        output_dir=output_dir, view=config.view, backbone_path=None, best_epoch=None
    )
    if config.mode != "none":
        try:
            plan_steps(config, len(splits["train_classes"]), config.scaling.num_workers)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        # Driver logs on: a training run is watched from the terminal.
        ensure_ray(config.ray.address, config.ray.num_cpus, log_to_driver=True)
        ray_result = _run_ray_train(config, splits, output_dir, on_step)
        best, best_metrics = best_checkpoint(ray_result, config.score_metric)
        backbone_path = output_dir / BACKBONE_FILE
        with best.as_directory() as folder:
            shutil.copyfile(Path(folder) / BACKBONE_FILE, backbone_path)
        with final_checkpoint(ray_result).as_directory() as folder:
            history = json.loads((Path(folder) / HISTORY_FILE).read_text())
        (output_dir / HISTORY_FILE).write_text(json.dumps(history, indent=1))
        result = replace(
            result,
            view=checkpoint_view_name(_arch_of(config.view), backbone_path),
            backbone_path=backbone_path,
            best_epoch=int(best_metrics["epoch"]),
            best_metrics=dict(best_metrics),
            history=history,
            checkpoint_path=best.path,
            resumed=resume,
        )

    evaluation = config.evaluation
    if evaluation.enabled and config.data.cluster_classes:
        from rayclust.train.evaluate import evaluate_clustering

        result.clustering = evaluate_clustering(
            result.view, splits["cluster_classes"], evaluation, output_dir / "clustering", progress
        )

    runs.write_json(output_dir / RESULT_FILE, _result_record(result))
    return result


def _arch_of(view: str) -> str:
    from rayclust.views import get_view_spec

    return get_view_spec(view).arch


def _result_record(result: TrainResult) -> dict[str, Any]:
    return {
        "view": result.view,
        "backbone": str(result.backbone_path) if result.backbone_path else None,
        "best_epoch": result.best_epoch,
        "best_metrics": result.best_metrics,
        "checkpoint": result.checkpoint_path,
        "clustering": None if result.clustering is None else result.clustering["summary"],
        "resumed": result.resumed,
    }


def _open_run(config: TrainConfig, output_dir: Path) -> run_mlflow.MlflowRecording | None:
    tags = {"rayclust.stage": "train", "rayclust.view": config.view}
    return run_mlflow.open_mlflow_run(
        output_dir, config.to_dict(), config.tracking, config.name, tags=tags
    )


def _track(result: TrainResult, recording: run_mlflow.MlflowRecording) -> str | None:
    """Finish the run's MLflow run: each epoch's metrics as steps, scores, files; the tag
    ``rayclust.view`` is the trained view (the checkpoint) when training ran."""
    final: dict[str, Any] = {f"best_{k}": v for k, v in result.best_metrics.items()}
    if result.clustering is not None:
        for metric, stats in result.clustering["summary"].items():
            final[f"cluster_{metric}_mean"] = stats["mean"]
            final[f"cluster_{metric}_std"] = stats["std"]
    return recording.finish(
        final,
        tags={"rayclust.view": result.view},
        history=result.history,
        artifacts={runs.CONFIG_FILE: None, HISTORY_FILE: None, RESULT_FILE: None},
    )
