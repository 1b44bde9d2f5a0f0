"""MLflow set-up and logging for a run, and for a sweep: one parent run, a child per trial.

Without ``--tracking-uri`` runs go to a local SQLite store, ``<runs_root>/mlflow.db``, with
artifacts beside it in ``<runs_root>/mlartifacts``: no server needed. MLflow 3.17 refuses the
old ``./mlruns`` file store unless ``MLFLOW_ALLOW_FILE_STORE=true`` and no longer develops
it, so SQLite is the default here too. View it with
``mlflow ui --backend-store-uri sqlite:///<runs_root>/mlflow.db``. Any other MLflow URI
(``http://host:5000``, ``postgresql://...``, ``databricks``) is used as given; a store shared
by several machines must be a server or a real database, never a SQLite file on a network
drive.

Parallel writers (Tune trials) and SQLite: the local store is switched to write-ahead
logging, so readers never block the writer and writes queue behind SQLite's busy timeout
(MLflow sets 20 s) instead of failing at once; the calls below also retry with backoff when
MLflow still reports the database as locked or unavailable. Creating a fresh store's schema
is serialised by a lock file (``mlflow.db.lock``), since concurrent alembic migrations break
it; :func:`prepare_store` in the driver before starting trials does it up front. Measured
guarantee (tests/tune/test_tracking_concurrency.py): 8 processes logging 200 metrics each,
one call per metric, into one default store lose none.

Sweeps: the driver opens the parent run; each trial opens its child with
:func:`open_run` (``parent_run_id``, ``reuse_tag="rayclust.trial_id"``), which reopens the
child a retried or resumed trial already has instead of creating a second one.

All logging goes through an explicit :class:`mlflow.MlflowClient`, never MLflow's global
"active run", so several runs can be open in one process (threads, trials) without mixing.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import numbers
import os
import random
import re
import sqlite3
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from rayclust.redact import redact, redact_text, strip_userinfo

log = logging.getLogger(__name__)

# MLflow's own limits (mlflow.utils.validation); values over them are truncated, not refused.
MAX_KEY_LENGTH = 250
MAX_PARAM_VALUE_LENGTH = 6000
MAX_TAG_VALUE_LENGTH = 8000
_PARAMS_PER_BATCH = 100
_METRICS_PER_BATCH = 1000

_INVALID_KEY_CHARS = re.compile(r"[^/\w.\- :]")
_T = TypeVar("_T")


def default_tracking_uri(runs_root: str | Path) -> str:
    """The local store for runs under ``runs_root``: ``sqlite:///<abs runs_root>/mlflow.db``.

    Pure: nothing is created until a run is started (or :func:`prepare_store` is called).
    """
    return f"sqlite:///{Path(runs_root).expanduser().resolve() / 'mlflow.db'}"


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, None for any other store or ``:memory:``."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").split("?", 1)[0]
    if not path or path == ":memory:":
        return None
    return Path(path)


def _local_artifact_location(uri: str) -> str | None:
    # For a SQLite store MLflow would otherwise put artifacts in ./mlruns of whatever the
    # current directory is; keep them next to the database instead. Servers choose their own.
    db_path = _sqlite_path(uri)
    if db_path is None:
        return None
    return (db_path.parent / "mlartifacts").resolve().as_uri()


def _enable_wal(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        connection = sqlite3.connect(db_path, timeout=30)
        try:
            connection.execute("PRAGMA journal_mode=WAL")
        finally:
            connection.close()
    except sqlite3.OperationalError as exc:
        # Another writer holds the lock; WAL is a persistent property of the file, so the
        # process that set it (or the next one) covers this store as well.
        log.debug("could not switch %s to WAL now: %s", db_path, exc)


@contextmanager
def _quiet_mlflow() -> Iterator[None]:
    """Silence MLflow's start-up chatter (schema creation, alembic, SQLAlchemy deprecations)."""
    loggers = [logging.getLogger(name) for name in ("mlflow", "alembic")]
    # Respect a level the user set explicitly; only raise the default (NOTSET/INFO) ones.
    saved = [logger.level for logger in loggers]
    for logger in loggers:
        if logger.level <= logging.INFO:
            logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"mlflow(\.|$)")
            warnings.filterwarnings("ignore", message=r".*noload.*")
            yield
    finally:
        for logger, level in zip(loggers, saved, strict=True):
            logger.setLevel(level)


def _is_transient(exc: BaseException) -> bool:
    from mlflow.exceptions import MlflowException

    text = str(exc).lower()
    if "database is locked" in text or "database table is locked" in text:
        return True
    if isinstance(exc, MlflowException):
        return exc.error_code in ("TEMPORARILY_UNAVAILABLE", "RESOURCE_EXHAUSTED")
    return isinstance(exc, sqlite3.OperationalError) and "locked" in text


def with_retry(
    call: Callable[..., _T], *args: Any, attempts: int = 6, base_delay: float = 0.2, **kwargs: Any
) -> _T:
    """Run ``call``, retrying transient store errors with jittered exponential backoff."""
    for attempt in range(1, attempts + 1):
        try:
            return call(*args, **kwargs)
        except Exception as exc:
            if attempt == attempts or not _is_transient(exc):
                raise
            delay = base_delay * 2 ** (attempt - 1) * (0.5 + random.random())
            log.warning(
                "MLflow store busy (%s); retry %d/%d in %.1f s",
                redact_text(str(exc)),
                attempt,
                attempts - 1,
                delay,
            )
            time.sleep(delay)
    raise AssertionError("unreachable")


class TrackingUnavailable(ConnectionError):
    """The tracking server cannot be reached, or a store that should exist does not; the
    message is one line with any password masked."""


# MLflow's own HTTP defaults retry a refused connection 7 times with a factor-2 backoff
# (~4 minutes) and wait 120 s per request: a run whose server went away would hang there.
# Ours give up in seconds; a value the user set in the environment is kept.
HTTP_RETRY_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
PROBE_TIMEOUT_S = 5.0


def is_http_uri(uri: str) -> bool:
    return uri.lower().startswith(("http://", "https://"))


def check_reachable(uri: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Raise :class:`TrackingUnavailable` within about ``timeout_s`` when an HTTP(S) tracking
    server does not answer; any HTTP answer (even 401 or 404) counts as reachable. Other
    stores (SQLite, databases, ``databricks``) are not probed."""
    import urllib.error
    import urllib.request

    if not is_http_uri(uri):
        return
    probe = strip_userinfo(uri).rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(probe, timeout=timeout_s):  # noqa: S310 - http(s) only
            return
    except urllib.error.HTTPError:
        return  # the server answered
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingUnavailable(
            f"MLflow tracking server {redact_text(uri)} is unreachable ({redact_text(str(reason))});"
            " start it, fix --tracking-uri / tracking.uri, or pass --no-mlflow"
        ) from None


def open_client(uri: str, create: bool = True):
    """An ``MlflowClient`` for ``uri``; a local SQLite store gets its schema (once) and WAL.

    ``create=False``: a SQLite store that does not exist yet is an error
    (:class:`TrackingUnavailable`), never created (attaching files to an existing run)."""
    from mlflow import MlflowClient

    # MLflow prints emoji run links to stdout for servers; the pipeline logs the run id itself.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    db_path = _sqlite_path(uri)
    if db_path is not None and not create and not db_path.is_file():
        raise TrackingUnavailable(f"MLflow store {db_path} does not exist")
    with _quiet_mlflow():
        if db_path is None:
            if is_http_uri(uri):
                for name, value in HTTP_RETRY_DEFAULTS.items():
                    os.environ.setdefault(name, value)
                # urllib3 logs each retry with the request's URL; the failure is reported
                # once, password masked, by the caller.
                pool_log = logging.getLogger("urllib3.connectionpool")
                if pool_log.level == logging.NOTSET:
                    pool_log.setLevel(logging.ERROR)
            return with_retry(MlflowClient, tracking_uri=uri)
        # Opening a fresh SQLite store creates its schema with alembic migrations; processes
        # racing to do that corrupt the version table ("expected to match one row"), so
        # processes on this machine take turns. Once the schema exists this is quick.
        with _file_lock(db_path.with_name(db_path.name + ".lock")):
            _enable_wal(db_path)
            return with_retry(MlflowClient, tracking_uri=uri)


@contextmanager
def _file_lock(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def prepare_store(uri: str) -> str:
    """Create the store's schema once (call in the driver before parallel trials); returns uri."""
    open_client(uri)
    return uri


def _experiment_id(client, experiment: str, artifact_location: str | None) -> str:
    from mlflow.exceptions import MlflowException

    found = with_retry(client.get_experiment_by_name, experiment)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            raise ValueError(
                f"experiment={experiment!r} is deleted in this store; restore it "
                f"(mlflow experiments restore --experiment-id {found.experiment_id}) or pick "
                "another name"
            )
        return found.experiment_id
    try:
        return with_retry(client.create_experiment, experiment, artifact_location=artifact_location)
    except MlflowException:
        # A parallel trial created it between our lookup and create.
        found = with_retry(client.get_experiment_by_name, experiment)
        if found is None:
            raise
        return found.experiment_id


def _clean_key(key: str) -> str:
    """A name MLflow accepts: allowed characters only, at most MAX_KEY_LENGTH long."""
    key = _INVALID_KEY_CHARS.sub("_", str(key)).strip("/") or "_"
    return key[:MAX_KEY_LENGTH]


def flatten_dict(nested: Mapping[str, Any], sep: str = ".", prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "c": [1, 2]}`` -> ``{"a.b": 1, "c": [1, 2]}`` (lists stay values)."""
    flat: dict[str, Any] = {}
    for key, value in nested.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            flat.update(flatten_dict(value, sep=sep, prefix=name))
        else:
            flat[name] = value
    return flat


def param_text(value: Any) -> str:
    """A param value as the config file writes it: text as it is, numbers, ``true`` /
    ``false``, ``null``, lists and mappings as JSON (never Python's ``None`` or ``['a']``)."""
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, bool | list | tuple | Mapping):
        return json.dumps(value, default=str)
    return str(value)


def _truncate(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    marker = "...[truncated]"
    return text[: limit - len(marker)] + marker


def _chunks(items: list[_T], size: int) -> Iterator[list[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class MlflowRun:
    """One open MLflow run; every method logs immediately through the run's own client.

    Get one from :func:`open_run` (the caller ends it) or :func:`start_run` in a ``with``
    block, which ends it FINISHED, or FAILED when the block raises.
    """

    def __init__(self, client, run_id: str, experiment_id: str, tracking_uri: str) -> None:
        self.client = client
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.tracking_uri = tracking_uri

    def __repr__(self) -> str:
        return f"MlflowRun(run_id={self.run_id!r}, tracking_uri={redact_text(self.tracking_uri)!r})"

    def log_params(self, params: Mapping[str, Any]) -> dict[str, str]:
        """Log nested params under dotted names, values as text cut to MLflow's 6000 chars.

        Returns what was logged. MLflow params are write-once: logging a key again with a
        different value raises.
        """
        from mlflow.entities import Param

        flat = {
            _clean_key(key): _truncate(param_text(value), MAX_PARAM_VALUE_LENGTH)
            for key, value in flatten_dict(redact(params)).items()
        }
        entities = [Param(key, value) for key, value in flat.items()]
        for batch in _chunks(entities, _PARAMS_PER_BATCH):
            with_retry(self.client.log_batch, self.run_id, params=batch)
        return flat

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> dict[str, float]:
        """Log numbers under dotted names (nested dicts flattened); returns what was logged.

        NaN and infinite values are skipped (an undefined silhouette is "no value", and some
        servers reject non-finite JSON); so are ``None`` values. Anything else that is not
        a number raises ``TypeError`` naming the key.
        """
        from mlflow.entities import Metric

        logged: dict[str, float] = {}
        for key, value in flatten_dict(metrics).items():
            if value is None:
                continue
            if not isinstance(value, numbers.Real):
                # numpy scalars are numbers.Real; strings, lists and arrays are not.
                raise TypeError(
                    f"metric {key!r}={value!r} should be a number, not {type(value).__name__}"
                )
            value = float(value)
            if math.isfinite(value):
                logged[_clean_key(key)] = value
        now_ms = int(time.time() * 1000)
        entities = [Metric(key, value, now_ms, step or 0) for key, value in logged.items()]
        for batch in _chunks(entities, _METRICS_PER_BATCH):
            with_retry(self.client.log_batch, self.run_id, metrics=batch)
        return logged

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        entities = [
            RunTag(_clean_key(key), _truncate(param_text(value), MAX_TAG_VALUE_LENGTH))
            for key, value in flatten_dict(redact(tags)).items()
        ]
        for batch in _chunks(entities, _PARAMS_PER_BATCH):
            with_retry(self.client.log_batch, self.run_id, tags=batch)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Copy a file, or a folder's contents, into the run's artifacts (under artifact_path)."""
        path = Path(path)
        if path.is_dir():
            self.log_artifacts(path, artifact_path)
        elif path.is_file():
            with_retry(self.client.log_artifact, self.run_id, str(path), artifact_path)
        else:
            raise FileNotFoundError(f"artifact path {str(path)!r} does not exist")

    def log_artifacts(self, folder: str | Path, artifact_path: str | None = None) -> None:
        """Copy a folder's contents (recursively) into the run's artifacts."""
        folder = Path(folder)
        if not folder.is_dir():
            raise NotADirectoryError(f"artifact folder {str(folder)!r} is not a directory")
        with_retry(self.client.log_artifacts, self.run_id, str(folder), artifact_path)

    def log_dataset(
        self,
        frame: Any,
        source: str,
        name: str,
        context: str,
        targets: str | None = None,
    ) -> None:
        """Log a pandas frame as the run's input dataset (MLflow's Datasets tab): its
        schema, row count and digest, and ``source`` (where it came from); the data itself
        is not copied."""
        import mlflow.data
        from mlflow.entities import Dataset, DatasetInput, InputTag

        with _quiet_mlflow():  # "source can be interpreted in multiple ways" for a folder
            described = mlflow.data.from_pandas(frame, source=source, name=name, targets=targets)
            fields = described.to_dict()  # name, digest, source_type, source, schema, profile
            entity = Dataset(
                name=fields["name"],
                digest=fields["digest"],
                source_type=fields["source_type"],
                source=fields["source"],
                schema=fields.get("schema"),
                profile=fields.get("profile"),
            )
            tag = InputTag(key="mlflow.data.context", value=context)
            with_retry(
                self.client.log_inputs, self.run_id, datasets=[DatasetInput(entity, [tag])]
            )

    def log_dict(self, data: Mapping[str, Any], artifact_file: str) -> None:
        """Write ``data`` as a .json or .yaml artifact (by the file's suffix)."""
        with_retry(self.client.log_dict, self.run_id, dict(data), artifact_file)

    def __enter__(self) -> MlflowRun:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        self.end("FINISHED" if exc_type is None else "FAILED")

    def end(self, status: str = "FINISHED") -> None:
        """Mark the run ended: FINISHED, FAILED or KILLED."""
        with_retry(self.client.set_terminated, self.run_id, status)


def start_run(
    config_dict: Mapping[str, Any] | None = None, uri: str | None = None, **options: Any
) -> MlflowRun:
    """Open a run for a ``with`` block: ``with start_run(config, uri=...) as run: ...``.

    Takes :func:`open_run`'s arguments (``experiment``, ``run_name``, ``tags``,
    ``parent_run_id``). ``uri``: any MLflow tracking URI; None uses ``MLFLOW_TRACKING_URI``
    or else a local ``./mlflow.db`` (pass :func:`default_tracking_uri` to keep it beside the
    runs). The run ends FINISHED when the block ends, or FAILED when it raises (the exception
    propagates).
    """
    return open_run(config_dict, uri, **options)


def open_run(
    config_dict: Mapping[str, Any] | None = None,
    uri: str | None = None,
    experiment: str = "rayclust",
    run_name: str | None = None,
    tags: Mapping[str, Any] | None = None,
    parent_run_id: str | None = None,
    reuse_tag: str | None = None,
) -> MlflowRun:
    """Create a run (or reopen one) and log ``config_dict`` as params; the caller ends it.

    ``reuse_tag`` names a key of ``tags`` that identifies the run, such as a Tune trial id:
    a run of the experiment (under the same parent) that already carries that tag value is
    reopened (status RUNNING again) instead of a second one being created, so a retried or
    resumed trial keeps its one run. Params are logged again only with the values they had.
    """
    from mlflow.entities import RunStatus
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    if uri is None:
        uri = os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(Path.cwd())
    if not experiment:
        raise ValueError("experiment='' should be a non-empty experiment name")
    client = open_client(uri)
    experiment_id = _experiment_id(client, experiment, _local_artifact_location(uri))
    all_tags = dict(flatten_dict(redact(tags or {})))
    if parent_run_id is not None:
        all_tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
    run_tags = {
        _clean_key(k): _truncate(param_text(v), MAX_TAG_VALUE_LENGTH) for k, v in all_tags.items()
    }
    existing = None
    if reuse_tag is not None:
        key = _clean_key(reuse_tag)
        if key not in run_tags:
            raise ValueError(f"reuse_tag={reuse_tag!r} should be one of the tags given")
        match = {key: run_tags[key]}
        if parent_run_id is not None:
            match[MLFLOW_PARENT_RUN_ID] = parent_run_id
        existing = find_run(client, experiment_id, match)
    if existing is not None:
        with_retry(client.update_run, existing, RunStatus.to_string(RunStatus.RUNNING))
        mlrun = MlflowRun(client, existing, experiment_id, uri)
        log.info("MLflow run %s reopened in experiment %r", existing, experiment)
    else:
        run = with_retry(client.create_run, experiment_id, run_name=run_name, tags=run_tags)
        mlrun = MlflowRun(client, run.info.run_id, experiment_id, uri)
        log.debug("MLflow run %s in experiment %r at %s", mlrun.run_id, experiment, redact_text(uri))
    if config_dict:
        mlrun.log_params(config_dict)
    return mlrun


def find_run(client, experiment_id: str, tags: Mapping[str, str]) -> str | None:
    """The id of the oldest run in the experiment carrying every tag value given, or None."""
    if not tags:
        raise ValueError("tags is empty: name at least one tag to find a run by")
    query = " and ".join(
        f"tags.`{key}` = '{str(value).replace(chr(39), chr(39) * 2)}'"
        for key, value in tags.items()
    )
    runs = with_retry(
        client.search_runs, [experiment_id], filter_string=query, order_by=["start_time ASC"]
    )
    return runs[0].info.run_id if runs else None


def child_runs(uri: str, parent_run_id: str) -> list:
    """Every run nested directly under ``parent_run_id`` (all pages), oldest first."""
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    client = open_client(uri)
    parent = with_retry(client.get_run, parent_run_id)
    query = f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}'"
    runs, token = [], None
    while True:
        page = with_retry(
            client.search_runs,
            [parent.info.experiment_id],
            filter_string=query,
            order_by=["start_time ASC"],
            max_results=1000,
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def attach_artifacts(
    uri: str, run_id: str, files: Iterable[str | Path], artifact_path: str | None = None
) -> None:
    """Copy files into the artifacts of an existing run, ended or not (e.g. a report
    rewritten later for a finished run)."""
    client = open_client(uri, create=False)
    for path in files:
        with_retry(client.log_artifact, run_id, str(path), artifact_path)


def reopen_run(uri: str, run_id: str) -> MlflowRun:
    """An existing run, marked RUNNING again (a resumed sweep's parent); the caller ends it."""
    from mlflow.entities import RunStatus

    client = open_client(uri, create=False)
    run = with_retry(client.get_run, run_id)
    with_retry(client.update_run, run_id, RunStatus.to_string(RunStatus.RUNNING))
    return MlflowRun(client, run_id, run.info.experiment_id, uri)

