"""The run record: one folder schema for cluster, train, deep and tune runs, and MLflow.

Every kind of run writes its folder through these functions, so every folder reads back the
same way (:func:`read_run`) and the report renders any of them:

    config.yaml       the resolved config (written by the config's own ``to_yaml``)
    assignments.csv   ``ASSIGNMENT_COLUMNS`` (path, image_id, cluster, label), then any
                      columns a kind of run adds (deep: split); csv-quoted
    manifest.csv      path, image_id, label of every usable image
                      (the CSV files are UTF-8; a file name that is not UTF-8 keeps its bytes,
                      see ``CSV_ERRORS``)
    skipped.csv       path, reason, stage of every file left out
    metrics.json      scores and facts of the run (numpy values written as plain JSON)
    results.md        the score table in Markdown
    model.npz         what ``rayclust predict`` needs to assign new images (rayclust.reuse):
    model.json        the views' exact specs, the reduction, the centroids of the answer; a
                      cluster run only (not deep, tune or train)
    mlflow.json       ``{"tracking_uri", "run_id", "files"}`` of the run's MLflow run: the
                      URI without user or password, and the SHA-256 of the run files it was
                      recorded with; a pointer whose files no longer match (another run
                      wrote the folder since) or that is malformed is ignored

A sweep folder (``rayclust tune``) and a training folder hold no assignments.csv; they
read back with empty assignments. ``rayclust.run_mlflow`` copies a run folder into MLflow
(only the files of this schema, ``RUN_FILES``, or the list its caller names).
"""

from __future__ import annotations

import csv
import errno
import hashlib
import json
import logging
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from rayclust.config_text import ConfigError, load_yaml_text

log = logging.getLogger("rayclust")

ASSIGNMENT_COLUMNS = ("path", "image_id", "cluster", "label")
MANIFEST_COLUMNS = ("path", "image_id", "label")
SKIPPED_COLUMNS = ("path", "reason", "stage")

CONFIG_FILE = "config.yaml"
ASSIGNMENTS_FILE = "assignments.csv"
MANIFEST_FILE = "manifest.csv"
SKIPPED_FILE = "skipped.csv"
METRICS_FILE = "metrics.json"
RESULTS_FILE = "results.md"
MLFLOW_FILE = "mlflow.json"
MODEL_FILE = "model.npz"  # arrays of rayclust.reuse.ClusterModel
MODEL_INFO_FILE = "model.json"  # the rest of it, readable
REPORTS_FILE = "reports.json"  # method extras of a deep run (DivClust's inter-head NMI, ...)
# The report's files (rayclust.report.writer writes them; named here so MLflow gets them).
REPORT_FILES = (
    "report.html",
    "near_duplicates.csv",
    "outliers.csv",
    "mislabelled.csv",
    "image_quality.csv",
    "neighbours.npz",  # engine=ray: the whole collection's lists, for a report rendered again
)
# What record_in_mlflow uploads from a run folder when its caller names nothing else.
RUN_FILES = (
    CONFIG_FILE,
    ASSIGNMENTS_FILE,
    MANIFEST_FILE,
    SKIPPED_FILE,
    METRICS_FILE,
    RESULTS_FILE,
    REPORTS_FILE,
    MODEL_FILE,
    MODEL_INFO_FILE,
    *REPORT_FILES,
)
# The files an MLflow pointer is tied to: rewritten by every run, so a pointer left by an
# earlier run in the same folder no longer matches them.
POINTER_FILES = (CONFIG_FILE, METRICS_FILE, ASSIGNMENTS_FILE)


class RunFolderError(ValueError):
    """A folder that is not the run record asked for; the message says what is missing."""


# A write that fails for want of room: the record would be truncated, so the run fails.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


class RunRecordError(RuntimeError):
    """The run folder could not be written (a full disk, a folder gone read-only): the
    record is incomplete and the run failed. ``errno`` is the underlying OSError's."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


@contextmanager
def recording(
    run_dir: str | Path,
    what: str = "the run record",
    option: str = "--output",
    only_disk_full: bool = False,
) -> Iterator[None]:
    """Writes of a run's files inside this block: an OSError becomes a one-line
    :class:`RunRecordError` naming the file and the cause (with ``only_disk_full``, only
    a disk or quota that is full; other errors pass through)."""
    try:
        yield
    except OSError as exc:
        full = exc.errno in DISK_FULL_ERRNOS
        if only_disk_full and not full:
            raise
        where = exc.filename or run_dir
        raise RunRecordError(
            f"could not write {what} {where}: {exc.strerror or exc}"
            + (f"; free some space or give another {option}" if full else ""),
            exc.errno,
        ) from exc


class TrackingSettings(Protocol):
    """What :func:`record_in_mlflow` reads of a config's ``tracking`` section."""

    uri: str | None
    experiment: str


# --------------------------------------------------------------------------- writing


def to_jsonable(value: Any) -> Any:
    """``json.dumps`` default: numpy scalars and arrays as plain values, paths and anything
    else as text (a record must never fail on a stray type)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def write_json(path: str | Path, data: Any, indent: int = 2) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=indent, default=to_jsonable))
    return path


# File names are bytes on POSIX; Python hands a name that is not UTF-8 over as a str with
# "surrogate escapes" (os.fsdecode). The run's CSV files are UTF-8 and keep such a name's
# bytes verbatim (errors="surrogateescape"), so a path read back with read_csv (which uses
# the same rule) is the very str that opens the file; a name that is valid UTF-8 is
# unaffected. The rule is the same as Python's own for file names.
CSV_ENCODING = "utf-8"
CSV_ERRORS = "surrogateescape"


def write_csv(path: str | Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    """A CSV file written by the csv module: commas, quotes and newlines in values are quoted;
    file names that are not UTF-8 keep their bytes (``CSV_ERRORS``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding=CSV_ENCODING, errors=CSV_ERRORS) as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def read_csv(path: str | Path) -> list[dict[str, str]]:
    """The rows of a CSV file with a header, as dicts; [] when the file is missing."""
    path = Path(path)
    if not path.is_file():
        return []
    with path.open(newline="", encoding=CSV_ENCODING, errors=CSV_ERRORS) as handle:
        return list(csv.DictReader(handle))


def write_config(run_dir: str | Path, config: Any) -> Path:
    """config.yaml: a config object's own ``to_yaml``, or a plain mapping as YAML."""
    path = Path(run_dir) / CONFIG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    clear_mlflow_pointer(run_dir)  # a new record starts: an earlier run's pointer is not its
    for name in (MODEL_FILE, MODEL_INFO_FILE):  # nor an earlier cluster run's model
        (Path(run_dir) / name).unlink(missing_ok=True)
    if hasattr(config, "to_yaml"):
        config.to_yaml(path)
    else:
        import yaml

        from rayclust.redact import redact

        path.write_text(yaml.safe_dump(redact(dict(config)), sort_keys=False))
    return path


def write_assignments(
    run_dir: str | Path,
    paths: Sequence[str],
    image_ids: Sequence[str],
    clusters: Sequence[int] | np.ndarray,
    labels: Sequence[str | None] | None = None,
    extra_columns: Mapping[str, Sequence[Any]] | None = None,
) -> Path:
    """assignments.csv: one row per image, ``ASSIGNMENT_COLUMNS`` then ``extra_columns``.

    labels: the ground-truth label of each image, None (or "") where it has none.
    """
    n = len(paths)
    columns = {"image_ids": image_ids, "clusters": clusters}
    if labels is not None:
        columns["labels"] = labels
    for name, values in {**columns, **(extra_columns or {})}.items():
        if len(values) != n:
            raise ValueError(f"{name} has {len(values)} values but paths has {n}")
    clash = set(extra_columns or ()) & set(ASSIGNMENT_COLUMNS)
    if clash:
        raise ValueError(f"extra_columns {sorted(clash)} repeat columns of ASSIGNMENT_COLUMNS")
    extra = dict(extra_columns or {})
    label_column = labels if labels is not None else [None] * n
    rows = (
        [path, image_id, int(cluster), label or "", *(values[i] for values in extra.values())]
        for i, (path, image_id, cluster, label) in enumerate(
            zip(paths, image_ids, clusters, label_column, strict=True)
        )
    )
    return write_csv(Path(run_dir) / ASSIGNMENTS_FILE, [*ASSIGNMENT_COLUMNS, *extra], rows)


def write_manifest(run_dir: str | Path, records: Iterable[Any]) -> Path:
    """manifest.csv from image records (anything with path, image_id and label)."""
    rows = ((r.path, r.image_id, r.label or "") for r in records)
    return write_csv(Path(run_dir) / MANIFEST_FILE, MANIFEST_COLUMNS, rows)


def write_skipped(run_dir: str | Path, skipped: Iterable[Any]) -> Path:
    """skipped.csv from skipped files: objects with path, reason, stage, or (path, reason)
    pairs (stage left empty: not known)."""
    rows = []
    for item in skipped:
        if isinstance(item, tuple | list):
            path, reason, *rest = item
            rows.append((path, reason, rest[0] if rest else ""))
        else:
            rows.append((item.path, item.reason, item.stage))
    return write_csv(Path(run_dir) / SKIPPED_FILE, SKIPPED_COLUMNS, rows)


def write_metrics(run_dir: str | Path, metrics: Mapping[str, Any]) -> Path:
    """metrics.json (numpy values written as plain JSON numbers and lists)."""
    return write_json(Path(run_dir) / METRICS_FILE, metrics)


def write_model(
    run_dir: str | Path, arrays: Mapping[str, np.ndarray], info: Mapping[str, Any]
) -> Path:
    """model.npz (``arrays``, read back without pickle) and model.json (``info``)."""
    run_dir = Path(run_dir)
    with (run_dir / MODEL_FILE).open("wb") as handle:  # np.savez would append ".npz" to a str
        np.savez(handle, **arrays)
    return write_json(run_dir / MODEL_INFO_FILE, info)


def write_results(run_dir: str | Path, markdown: str) -> Path:
    """results.md: the run's score table."""
    path = Path(run_dir) / RESULTS_FILE
    path.write_text(markdown)
    return path


def _file_digests(run_dir: Path, names: Sequence[str]) -> dict[str, str]:
    return {
        name: hashlib.sha256((run_dir / name).read_bytes()).hexdigest()
        for name in names
        if (run_dir / name).is_file()
    }


def write_mlflow_pointer(
    run_dir: str | Path, tracking_uri: str, run_id: str, files: Sequence[str] = POINTER_FILES
) -> Path:
    """mlflow.json: where the run's MLflow run is (the report attaches itself there), tied to
    the SHA-256 of ``files`` as they are now. The URI is kept without user and password:
    a server's credentials come from ``MLFLOW_TRACKING_USERNAME`` / ``_PASSWORD``."""
    from rayclust.redact import strip_userinfo

    run_dir = Path(run_dir)
    path = run_dir / MLFLOW_FILE
    pointer = {
        "tracking_uri": strip_userinfo(tracking_uri),
        "run_id": run_id,
        "files": _file_digests(run_dir, files),
    }
    path.write_text(json.dumps(pointer, indent=2))
    return path


def clear_mlflow_pointer(run_dir: str | Path) -> None:
    """Remove mlflow.json: the folder is being rewritten by a new run."""
    (Path(run_dir) / MLFLOW_FILE).unlink(missing_ok=True)


_RUN_ID = re.compile(r"^[0-9A-Za-z_-]{1,64}$")
_URI_SCHEMES = re.compile(
    r"^(sqlite:///|https?://|databricks(-uc)?($|://)|(postgresql|mysql|mssql)(\+\w+)?://)"
)


def read_mlflow_pointer(run_dir: str | Path) -> dict[str, str]:
    """mlflow.json's ``{"tracking_uri", "run_id"}`` when it belongs to this folder's run;
    {} when the run was not tracked, or the pointer is malformed, names an unknown kind of
    store, or was written for other files than the folder holds now (each logged)."""
    run_dir = Path(run_dir)
    path = run_dir / MLFLOW_FILE
    if not path.is_file():
        return {}
    try:
        pointer = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return _ignored(path, f"unreadable ({exc})")
    if not isinstance(pointer, dict):
        return _ignored(path, "not a JSON object")
    uri, run_id, files = pointer.get("tracking_uri"), pointer.get("run_id"), pointer.get("files")
    if not isinstance(run_id, str) or not _RUN_ID.match(run_id):
        return _ignored(path, f"run_id {str(run_id)[:80]!r} is not an MLflow run id")
    if not isinstance(uri, str) or not _URI_SCHEMES.match(uri):
        return _ignored(path, "tracking_uri is not a known kind of MLflow store")
    if not isinstance(files, dict) or not files:
        return _ignored(path, "it names no run files (not written by this version of rayclust)")
    if _file_digests(run_dir, list(files)) != files:
        return _ignored(path, "the run files changed since (another run wrote this folder)")
    return {"tracking_uri": uri, "run_id": run_id}


def _ignored(path: Path, why: str) -> dict[str, str]:
    log.warning("ignoring %s: %s", path, why)
    return {}


# --------------------------------------------------------------------------- reading


@dataclass
class RunFolder:
    """A run folder read back as plain data; empty assignments for a sweep or training run."""

    run_dir: Path
    paths: list[str]
    image_ids: list[str]
    clusters: np.ndarray
    labels: list[str]  # "" where the image has none
    metrics: dict[str, Any]
    config: dict[str, Any]
    skipped: list[dict[str, str]]
    # mlflow.json's pointer, set by a caller that has one; read_run leaves it empty and
    # attach_to_mlflow_run reads (and checks) the pointer only when it is to be used.
    mlflow: dict[str, Any] = field(default_factory=dict)
    reports: dict[str, Any] = field(default_factory=dict)  # reports.json of a deep run
    extra_columns: dict[str, list[str]] = field(default_factory=dict)  # e.g. deep's split

    @property
    def has_assignments(self) -> bool:
        return bool(self.paths)

    @property
    def has_labels(self) -> bool:
        return bool(self.labels) and all(self.labels)

    @property
    def name(self) -> str:
        return str(self.config.get("name") or self.run_dir.name)


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def read_run(run_dir: str | Path, require_assignments: bool = False) -> RunFolder:
    """Read a run folder's assignments, metrics, config and skipped files (not mlflow.json:
    see :func:`read_mlflow_pointer`).

    Missing files read as empty, so a sweep folder reads too; ``require_assignments``
    refuses a folder without assignments.csv.
    """

    run_dir = Path(run_dir)
    assignments_path = run_dir / ASSIGNMENTS_FILE
    if not run_dir.is_dir() or (require_assignments and not assignments_path.is_file()):
        raise RunFolderError(
            f"{assignments_path} is missing: {run_dir} is not a finished run folder "
            "(expected assignments.csv, metrics.json, config.yaml)"
        )
    rows = read_csv(assignments_path)
    missing = [c for c in ASSIGNMENT_COLUMNS if rows and c not in rows[0]]
    if missing:
        raise RunFolderError(
            f"{assignments_path} lacks the columns {missing}; expected {list(ASSIGNMENT_COLUMNS)}"
        )
    config_path = run_dir / CONFIG_FILE
    try:
        config = (load_yaml_text(config_path.read_text(), str(config_path)) or {}) \
            if config_path.is_file() else {}
    except ConfigError as exc:
        raise RunFolderError(str(exc)) from None
    extra = [c for c in (rows[0] if rows else {}) if c not in ASSIGNMENT_COLUMNS]
    return RunFolder(
        run_dir=run_dir,
        paths=[r["path"] for r in rows],
        image_ids=[r["image_id"] for r in rows],
        clusters=np.array([int(r["cluster"]) for r in rows], dtype=np.int64),
        labels=[r["label"] or "" for r in rows],
        metrics=_read_json(run_dir / METRICS_FILE),
        config=config,
        skipped=read_csv(run_dir / SKIPPED_FILE),
        reports=_read_json(run_dir / REPORTS_FILE),
        extra_columns={c: [r[c] for r in rows] for c in extra},
    )
