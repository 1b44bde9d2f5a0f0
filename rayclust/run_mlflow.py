"""The run record in MLflow: the one place a run folder is copied into an MLflow run.

:class:`MlflowRecording` is opened when a run starts (:func:`open_mlflow_run`, so the MLflow
run's duration is the run's) and finished with the folder's files; :func:`record_in_mlflow`
does both at once. Only the files of the run-folder schema (``runs.RUN_FILES``, or the list
its caller names) are uploaded, never whatever else lies in the folder. The folder itself is
``rayclust.runs``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rayclust import runs
from rayclust.runs import (
    RUN_FILES,
    RunFolder,
    TrackingSettings,
    clear_mlflow_pointer,
    to_jsonable,
    write_mlflow_pointer,
)

log = logging.getLogger("rayclust")


def tracking_uri(tracking: TrackingSettings, run_dir: str | Path | None) -> str:
    """The configured URI, else the local store beside the run folder (``<parent>/mlflow.db``)."""
    from rayclust.tracking import default_tracking_uri

    if tracking.uri:
        return tracking.uri
    return default_tracking_uri(Path(run_dir).parent if run_dir is not None else Path("runs"))


def check_tracking(tracking: TrackingSettings | Any, run_dir: str | Path | None) -> None:
    """Before any heavy work: when the run is to be tracked on an MLflow server, fail in a
    few seconds, in one line (password masked), if the server does not answer, rather than
    after the run and MLflow's minutes of retries. Raises ``ConfigError``."""
    from rayclust.config import ConfigError
    from rayclust.tracking import TrackingUnavailable, check_reachable

    if not getattr(tracking, "enabled", True):
        return
    try:
        check_reachable(tracking_uri(tracking, run_dir))
    except TrackingUnavailable as exc:
        raise ConfigError(str(exc)) from None


def record_in_mlflow(
    run_dir: str | Path | None,
    config_dict: Mapping[str, Any],
    metrics: Mapping[str, Any],
    tracking: TrackingSettings,
    run_name: str | None,
    *,
    tags: Mapping[str, Any] | None = None,
    history: Sequence[Mapping[str, Any]] = (),
    artifacts: Mapping[str, str | None] | None = None,
    dicts: Mapping[str, Mapping[str, Any]] | None = None,
) -> str | None:
    """A finished run as one MLflow run (:func:`open_mlflow_run`, then ``finish``)."""
    recording = open_mlflow_run(run_dir, config_dict, tracking, run_name, tags=tags)
    if recording is None:
        return None
    return recording.finish(metrics, history=history, artifacts=artifacts, dicts=dicts)


def open_mlflow_run(
    run_dir: str | Path | None,
    config_dict: Mapping[str, Any],
    tracking: TrackingSettings,
    run_name: str | None,
    *,
    tags: Mapping[str, Any] | None = None,
) -> MlflowRecording | None:
    """Open the MLflow run of a run that starts now (its duration is then the run's):
    ``config_dict`` as flattened params (credentials masked), ``tags`` and the provenance
    tags (version, git commit). None when MLflow failed (one warning: the run folder is the
    product and is complete without it). Then :meth:`MlflowRecording.finish` it, or
    :meth:`~MlflowRecording.fail` it (FAILED / KILLED) when the run fails."""
    from rayclust.provenance import provenance_tags
    from rayclust.tracking import check_reachable, start_run

    folder = Path(run_dir) if run_dir is not None else None
    if folder is not None:
        clear_mlflow_pointer(folder)  # whatever an earlier run in this folder left
    uri = tracking_uri(tracking, folder)
    try:
        check_reachable(uri)  # a server gone since the run was checked: fail now, not in minutes
        tags = {**provenance_tags(), **(tags or {})}
        mlrun = start_run(
            config_dict, uri=uri, experiment=tracking.experiment, run_name=run_name, tags=tags
        )
    except Exception as exc:  # noqa: BLE001 - see the docstring
        _not_recorded(exc, folder)
        return None
    return MlflowRecording(mlrun, folder, uri)


@dataclass
class MlflowRecording:
    """A run's open MLflow run (``rayclust.tracking.MlflowRun``) and the folder it records."""

    run: Any
    folder: Path | None
    uri: str

    def finish(
        self,
        metrics: Mapping[str, Any],
        *,
        tags: Mapping[str, Any] | None = None,
        history: Sequence[Mapping[str, Any]] = (),
        artifacts: Mapping[str, str | None] | None = None,
        dicts: Mapping[str, Mapping[str, Any]] | None = None,
        dataset: Mapping[str, Any] | None = None,
    ) -> str | None:
        """Log the outcome and end the run FINISHED; writes mlflow.json in the folder. Its
        id, or None when MLflow failed (one warning; the run is then ended FAILED).

        metrics: final numbers (nested dicts flattened; non-numbers left out). history: one
        mapping per epoch, logged at step ``epoch`` (its other numbers). artifacts: run-folder
        file name -> artifact folder (None: top level); missing files are passed over; None
        uploads the schema's own files (``RUN_FILES``), never anything else in the folder.
        dicts: artifact file name -> data, written as JSON or YAML artifacts (for a run
        without a folder). dataset: ``MlflowRun.log_dataset``'s arguments (the run's input).
        """
        files = artifacts if artifacts is not None else dict.fromkeys(RUN_FILES)
        mlrun, folder = self.run, self.folder
        try:
            if tags:
                mlrun.set_tags(tags)
            for entry in history:
                mlrun.log_metrics(_numbers(entry, leave_out="epoch"), step=int(entry["epoch"]))
            mlrun.log_metrics(_numbers(metrics))
            if dataset is not None:
                self._log_dataset(dataset)
            if folder is not None:
                for name, artifact_path in files.items():
                    # Plain files only: a link or a folder under a schema name is not the run's.
                    path = folder / name
                    if path.is_file() and not path.is_symlink():
                        mlrun.log_artifact(path, artifact_path)
            for artifact_file, data in (dicts or {}).items():
                mlrun.log_dict(json.loads(json.dumps(data, default=to_jsonable)), artifact_file)
            mlrun.end("FINISHED")
        except Exception as exc:  # noqa: BLE001 - see open_mlflow_run
            _not_recorded(exc, folder)
            self.end("FAILED")
            return None
        if folder is not None:
            write_mlflow_pointer(folder, self.uri, mlrun.run_id)
        return mlrun.run_id

    def _log_dataset(self, dataset: Mapping[str, Any]) -> None:
        try:
            self.run.log_dataset(**dataset)
        except Exception as exc:  # noqa: BLE001 - a description of the input, not the record
            log.warning("the input was not logged as an MLflow dataset: %s", exc)

    def fail(self, exc: BaseException) -> None:
        """End the run as the work ended on ``exc``: KILLED when stopped (Ctrl-C), else
        FAILED; never raises."""
        self.end("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")

    def end(self, status: str) -> None:
        """End the run FAILED or KILLED (the work failed or was stopped); never raises."""
        try:
            self.run.end(status)
        except Exception as exc:  # noqa: BLE001 - the run's own error is the one to report
            log.debug("could not mark MLflow run %s %s: %s", self.run.run_id, status, exc)


def _not_recorded(exc: Exception, folder: Path | None) -> None:
    from rayclust.redact import redact_text

    message = redact_text(str(exc)).splitlines()[0] if str(exc) else type(exc).__name__
    log.warning(
        "the run was not recorded in MLflow (%s: %s); its folder %s is complete",
        type(exc).__name__,
        message[:500],
        folder if folder is not None else "(none)",
    )


def _numbers(values: Mapping[str, Any], leave_out: str | None = None) -> dict[str, Any]:
    """The numbers of a (nested) mapping: MLflow metrics are numbers, the rest stays out."""
    kept: dict[str, Any] = {}
    for key, value in values.items():
        if key == leave_out:
            continue
        if isinstance(value, Mapping):
            inner = _numbers(value)
            if inner:
                kept[key] = inner
        elif isinstance(value, int | float | np.number):
            kept[key] = value
    return kept


def attach_to_mlflow_run(run: RunFolder, files: Sequence[Path]) -> bool:
    """Copy files written after the run (its report) into its MLflow run, when it has one.

    Returns whether they were attached; a failure is logged, never raised: the files on disk
    are the product, MLflow holds copies.
    """
    from rayclust.redact import redact_text
    from rayclust.tracking import attach_artifacts, check_reachable

    # Read here, only when asked to attach: `rayclust report --no-mlflow` never reads it.
    pointer = run.mlflow or runs.read_mlflow_pointer(run.run_dir)
    if not pointer.get("run_id"):
        return False
    try:
        check_reachable(pointer["tracking_uri"])
        attach_artifacts(pointer["tracking_uri"], pointer["run_id"], files)
    except Exception as exc:  # noqa: BLE001 - see above
        log.warning(
            "could not attach to MLflow run %s (%s)",
            pointer.get("run_id"),
            redact_text(str(exc)).splitlines()[0][:500] if str(exc) else type(exc).__name__,
        )
        return False
    return True
