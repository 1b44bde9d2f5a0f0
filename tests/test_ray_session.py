"""Issue 18 item 11: the local Ray session a command starts listens on loopback only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rayclust.ray_session import is_loopback
from tests.processes import end_tree

REPO_ROOT = Path(__file__).resolve().parents[1]

# Run in a fresh interpreter: ensure_ray must import Ray itself, and the test session's
# shared Ray (conftest) must not be reused.
PROBE = r"""
import json, os, psutil
from rayclust.ray_session import ensure_ray
ensure_ray(num_cpus=1)  # as the CLI does: Ray is first imported here
import ray
ray.get(ray.remote(lambda: 1).remote())  # a worker process is up too
listening = []
for process in [psutil.Process(), *psutil.Process().children(recursive=True)]:
    try:
        for conn in process.net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN:
                listening.append([process.name(), conn.laddr.ip, conn.laddr.port])
    except psutil.Error:
        pass
print(json.dumps({"node_ip": ray.util.get_node_ip_address(), "listening": listening,
                  "auth": os.environ.get("RAY_AUTH_MODE")}))
ray.shutdown()
"""


def test_local_ray_session_listens_on_loopback_only(tmp_path):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_AUTH_MODE")
    }
    env.update(RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=str(REPO_ROOT))
    probe = subprocess.Popen(
        [sys.executable, "-c", PROBE], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=env, cwd=REPO_ROOT, start_new_session=True,
    )  # fmt: skip
    try:
        stdout, stderr = probe.communicate(timeout=180)
    finally:
        end_tree(probe)  # a probe that hangs leaves no Ray processes behind
    assert probe.returncode == 0, stderr[-3000:]
    found = json.loads(stdout.strip().splitlines()[-1])
    names = {name for name, _, _ in found["listening"]}
    # The servers Ray starts: GCS, raylet, the metrics / dashboard agent, the driver's worker.
    assert {"gcs_server", "raylet"} <= names, found
    exposed = [entry for entry in found["listening"] if not is_loopback(entry[1])]
    assert exposed == [], f"listening beyond loopback: {exposed}"
    assert is_loopback(found["node_ip"])
    # Token authentication on, as Ray would choose, without its notice (even under -q).
    assert found["auth"] == "token"
    assert "Token authentication" not in stderr, stderr[-2000:]


@pytest.mark.parametrize(
    "host, loopback",
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("::", False),
        ("0.0.0.0", False),
        ("192.0.2.2", False),
        ("localhost", True),
    ],
)
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback
