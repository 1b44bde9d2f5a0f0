"""Issue 18 item 5: credentials never reach config.yaml, MLflow params or log lines, at any
depth; an unreachable tracking server fails in seconds, in one line, password masked."""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass

import pytest
import yaml
from mlflow import MlflowClient

from rayclust import run_mlflow, runs
from rayclust.cli import main
from rayclust.config import ConfigError, RunConfig, load_config
from rayclust.redact import redact, redact_text
from rayclust.tracking import default_tracking_uri, open_run

PASSWORD = "s3cr3t-Pa55"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens once the socket is closed


@dataclass
class Tracking:
    uri: str | None = None
    experiment: str = "secrets"
    enabled: bool = True


@pytest.mark.parametrize(
    "override, key",
    [
        (
            f"input.storage_options={{client_kwargs: {{aws_secret_access_key: {PASSWORD}}}}}",
            "input.storage_options.client_kwargs.aws_secret_access_key",
        ),
        (
            f"input.storage_options={{config_kwargs: {{s3: {{session_token: {PASSWORD}}}}}}}",
            "input.storage_options.config_kwargs.s3.session_token",
        ),
        (
            f"input.storage_options={{headers: [{{Authorization: {PASSWORD}}}]}}",
            r"input.storage_options.headers\[0\].Authorization",
        ),
    ],
)
def test_nested_credentials_in_storage_options_are_refused_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=rf"{key} looks like a credential") as caught:
        load_config(overrides=[override])
    assert PASSWORD not in str(caught.value)


def test_url_passwords_are_masked_in_config_yaml_and_mlflow_params(tmp_path, caplog):
    config = load_config(
        overrides=[
            f"input.storage_options.endpoint_url=http://minio:{PASSWORD}@127.0.0.1:9000",
            f"tracking.uri=http://alice:{PASSWORD}@mlflow.example:5000",
            "input.storage_options.token=anon",  # gcsfs mode, not a secret: kept
        ]
    )
    assert config.tracking.uri.endswith(f"alice:{PASSWORD}@mlflow.example:5000")  # used as is
    config.to_yaml(tmp_path / "config.yaml")
    text = (tmp_path / "config.yaml").read_text()
    assert PASSWORD not in text
    written = yaml.safe_load(text)
    assert written["tracking"]["uri"] == "http://alice:***@mlflow.example:5000"
    assert written["input"]["storage_options"] == {
        "endpoint_url": "http://minio:***@127.0.0.1:9000",
        "token": "anon",
    }
    runs.write_config(
        tmp_path / "plain", {"db": {"password": PASSWORD, "url": f"x://u:{PASSWORD}@h"}}
    )
    assert PASSWORD not in (tmp_path / "plain" / "config.yaml").read_text()
    # MLflow params and tags: the same masking, and the log line names no password.
    uri = default_tracking_uri(tmp_path)
    caplog.set_level(logging.INFO)
    with open_run(
        {**config.to_dict(), "extra": {"api_key": PASSWORD}},
        uri=uri,
        experiment="secrets",
        tags={"source": f"s3://k:{PASSWORD}@bucket/x"},
    ) as run:
        pass
    data = MlflowClient(tracking_uri=uri).get_run(run.run_id).data
    assert data.params["tracking.uri"] == "http://alice:***@mlflow.example:5000"
    assert data.params["extra.api_key"] == "***"
    assert all(PASSWORD not in v for v in [*data.params.values(), *data.tags.values()])
    assert PASSWORD not in caplog.text


def test_redact_masks_secrets_at_any_depth_and_leaves_the_rest():
    value = {
        "a": {"b": [{"password": PASSWORD, "user": "bob"}], "c": f"see https://u:{PASSWORD}@h/p"},
        "credentials": {"user": "bob", "pin": 1234},
        "query": f"https://h/x?token={PASSWORD}&page=2",
        "n_clusters": 5,
        "key_present": True,
    }
    masked = redact(value)
    assert PASSWORD not in repr(masked)
    assert masked["a"]["b"][0] == {"password": "***", "user": "bob"}
    assert masked["credentials"] == {"user": "***", "pin": "***"}
    assert masked["query"] == "https://h/x?token=***&page=2"
    assert masked["n_clusters"] == 5 and masked["key_present"] is True
    assert value["a"]["b"][0]["password"] == PASSWORD  # the argument is not changed
    assert redact_text("postgresql+psycopg2://u@db/x") == "postgresql+psycopg2://u@db/x"


def test_unreachable_tracking_server_fails_before_work_in_one_line(tmp_path):
    uri = f"http://alice:{PASSWORD}@127.0.0.1:{_closed_port()}"
    start = time.perf_counter()
    with pytest.raises(ConfigError) as caught:
        run_mlflow.check_tracking(Tracking(uri=uri), tmp_path / "run")
    assert time.perf_counter() - start < 10
    message = str(caught.value)
    assert "unreachable" in message and "alice:***@127.0.0.1" in message
    assert PASSWORD not in message and "\n" not in message
    run_mlflow.check_tracking(Tracking(uri=uri, enabled=False), tmp_path / "run")  # --no-mlflow


def test_cli_with_unreachable_tracking_server_exits_2_before_any_work(tmp_path, capsys):
    uri = f"http://alice:{PASSWORD}@127.0.0.1:{_closed_port()}"
    images, out = tmp_path / "images", tmp_path / "run"
    images.mkdir()
    import rayclust.pipeline  # noqa: F401 - imports (torch, sklearn) are not what is timed

    start = time.perf_counter()
    code = main(["cluster", str(images), "--output", str(out), "--tracking-uri", uri, "-q"])
    assert time.perf_counter() - start < 10
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "unreachable" in lines[0] and "alice:***@" in lines[0], lines
    assert PASSWORD not in captured.err + captured.out
    assert not out.exists()  # no run folder: nothing was done


def test_server_gone_at_the_end_keeps_the_folder_and_warns_once(tmp_path, caplog):
    folder = tmp_path / "run"
    runs.write_config(folder, {"name": "r"})
    runs.write_metrics(folder, {"n_images": 1})
    uri = f"http://alice:{PASSWORD}@127.0.0.1:{_closed_port()}"
    start = time.perf_counter()
    assert run_mlflow.record_in_mlflow(folder, {"a": 1}, {"m": 1.0}, Tracking(uri=uri), "r") is None
    assert time.perf_counter() - start < 10
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "not recorded in MLflow" in warnings[0].getMessage()
    assert PASSWORD not in caplog.text
    assert (folder / "config.yaml").is_file() and not (folder / runs.MLFLOW_FILE).exists()


def test_pointer_keeps_no_credentials(tmp_path):
    path = runs.write_mlflow_pointer(tmp_path, f"https://alice:{PASSWORD}@h:5000", "a" * 32)
    assert PASSWORD not in path.read_text() and "alice" not in path.read_text()


def test_run_config_defaults_carry_nothing_to_mask():
    config = RunConfig().to_dict()
    assert redact(config) == config
