"""Token authentication on a real local Ray head: job submissions without the token are
refused, with it they run.

The head is `ray start --head --block` in its own process group, the way cluster.yaml starts
it (RAY_AUTH_MODE=token, RAY_AUTH_TOKEN_PATH, dashboard on 127.0.0.1), with its own temp dir,
HOME and free loopback ports, so it never meets the shared ``ray_session`` of other tests.
The auth variables are set only in the subprocesses' environments: this test process's
own are left as they were. Teardown ends the head's process group by its id (never `ray
stop`, which would stop every Ray on the machine).

How Ray 2.60 passes the token (ray/_private/authentication/): servers and clients read it
from RAY_AUTH_TOKEN, else the file RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token, when
RAY_AUTH_MODE=token; over HTTP it travels as ``Authorization: Bearer <token>``; the
dashboard answers 401 without a token and 403 for a wrong one.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(300)]

VENV_BIN = Path(sys.executable).parent
START_TIMEOUT_S = 90
JOB_TIMEOUT_S = 150
AUTH_VARIABLES = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
JOB_SCRIPT = "import ray; ray.init(); print('answer', ray.get(ray.put(41)) + 1)"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _clean_env(home: Path) -> dict[str, str]:
    """This process's environment without any Ray setting, and a HOME of its own (Ray
    would otherwise pick up ~/.ray/auth_token, which the shared test session may write)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(home), OMP_NUM_THREADS="1", PATH=f"{VENV_BIN}:{env.get('PATH', '')}")
    return env


def _auth_env() -> dict[str, str | None]:
    return {name: os.environ.get(name) for name in AUTH_VARIABLES}


def _http(base: str, path: str, body: dict | None = None, token: str | None = None):
    request = urllib.request.Request(
        base + path,
        data=json.dumps(body).encode() if body is not None else None,
        method="POST" if body is not None else "GET",
        headers={"Content-Type": "application/json"},
    )
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


@pytest.fixture(scope="module")
def token_head():
    try:
        import ray.dashboard.optional_deps  # noqa: F401
    except ImportError as exc:
        pytest.fail(
            f"the dashboard needs ray[default] (a rayclust dependency; make install): {exc}"
        )
    auth_env_before = _auth_env()
    # A short temp path: Ray's session sockets must fit in a Unix socket path (107 bytes).
    root = Path(tempfile.mkdtemp(prefix="rc-auth-", dir="/tmp"))
    home = root / "home"
    home.mkdir()
    token = secrets.token_hex(32)
    token_file = root / "auth_token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    dashboard_port = _free_port()
    server_env = {
        **_clean_env(home),
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token_file),
    }
    ports = {
        "--port": _free_port(),
        "--dashboard-port": dashboard_port,
        "--ray-client-server-port": _free_port(),
        "--dashboard-agent-listen-port": _free_port(),
        "--dashboard-agent-grpc-port": _free_port(),
        "--metrics-export-port": _free_port(),
        "--runtime-env-agent-port": _free_port(),
        "--node-manager-port": _free_port(),
        "--object-manager-port": _free_port(),
    }
    command = [
        str(VENV_BIN / "ray"),
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        "--dashboard-host=127.0.0.1",
        "--include-dashboard=true",
        *[f"{flag}={port}" for flag, port in ports.items()],
        "--min-worker-port=0",  # 0: ports the OS picks, never the shared session's range
        "--max-worker-port=0",
        "--num-cpus=1",
        "--num-gpus=0",
        "--object-store-memory=100000000",
        f"--temp-dir={root / 'ray'}",
        "--disable-usage-stats",
    ]
    log = (root / "head.log").open("w")
    head = subprocess.Popen(
        command, env=server_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    base = f"http://127.0.0.1:{dashboard_port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if head.poll() is not None:
                pytest.fail(
                    f"ray start exited {head.returncode}: {(root / 'head.log').read_text()}"
                )
            try:
                if _http(base, "/api/version", token=token)[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"dashboard not up after {START_TIMEOUT_S} s")
            time.sleep(0.5)
        yield {
            "base": base,
            "token": token,
            "token_file": token_file,
            "home": home,
            "auth_env_before": auth_env_before,
        }
    finally:
        _end_process_group(head)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def _end_process_group(process: subprocess.Popen) -> None:
    """SIGTERM the head's own process group (raylet, GCS, dashboard, workers: all started by
    it), then SIGKILL whatever of the group is left after 5 s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            pass
    process.wait(10)


def _job_ids(head) -> list[str]:
    status, body = _http(head["base"], "/api/jobs/", token=head["token"])
    assert status == 200, body
    return [job["submission_id"] for job in json.loads(body)]


def _ray_job_submit(head, env: dict[str, str], submission_id: str):
    return subprocess.run(
        [
            str(VENV_BIN / "ray"),
            "job",
            "submit",
            "--address",
            head["base"],
            "--submission-id",
            submission_id,
            "--",
            sys.executable,
            "-c",
            JOB_SCRIPT,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=JOB_TIMEOUT_S,
    )


def test_rest_job_api_refuses_missing_and_wrong_tokens(token_head):
    job = {"entrypoint": f"{sys.executable} -c 'print(1)'"}
    assert _http(token_head["base"], "/api/jobs/", job)[0] == 401
    assert _http(token_head["base"], "/api/jobs/", job, token="0" * 64)[0] == 403
    assert _http(token_head["base"], "/api/jobs/")[0] == 401  # listing too
    assert _job_ids(token_head) == []  # nothing was submitted


def test_job_submission_without_the_token_is_refused(token_head):
    result = _ray_job_submit(token_head, _clean_env(token_head["home"]), "no-token-job")
    assert result.returncode != 0
    assert "Authentication required" in result.stdout + result.stderr
    assert "no-token-job" not in _job_ids(token_head)


def test_job_submission_with_the_token_runs_to_success(token_head):
    env = {
        **_clean_env(token_head["home"]),
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token_head["token_file"]),
    }
    result = _ray_job_submit(token_head, env, "with-token-job")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "answer 42" in output  # the job's driver joined the token-protected cluster
    status, body = _http(token_head["base"], "/api/jobs/with-token-job", token=token_head["token"])
    assert status == 200 and json.loads(body)["status"] == "SUCCEEDED", body
    # Nothing leaked into this test process. (Its value may be "token" anyway: since Ray
    # 2.59, ray.init() of a new local cluster, as the shared ray_session does, sets it.)
    assert _auth_env() == token_head["auth_env_before"]
