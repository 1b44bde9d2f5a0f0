"""The shipped cluster.yaml: valid for Ray's autoscaler, and safe by default.

Every check runs offline. Each security rule has a negative control: a mutated copy of the
shipped config that opens exactly one hole must be refused, naming the hole, so these tests
can fail. Ray's own AWS defaults (dashboard on 0.0.0.0, no token) are refused too.
"""

from __future__ import annotations

import copy
import json
import shlex
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml

from rayclust.cli import main as cli_main
from rayclust.cloud import (
    blocking,
    check_cluster_schema,
    check_cluster_security,
    load_cluster_config,
    security_group_commands,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
CLUSTER_YAML = REPO_ROOT / "cluster.yaml"
RAY_AWS_DEFAULTS = Path(ray.autoscaler.__file__).parent / "aws" / "defaults.yaml"
A_REAL_SSH_RANGE = "81.2.69.160/32"  # a public /32, as an operator would put there
RAY_PORTS_BY_NAME = {"GCS": 6379, "dashboard": 8265, "client server": 10001}


@pytest.fixture
def config() -> dict:
    return load_cluster_config(CLUSTER_YAML)


def _with_real_ssh_range(config: dict) -> dict:
    fixed = copy.deepcopy(config)
    fixed["provider"]["security_group"]["IpPermissions"][0]["IpRanges"][0]["CidrIp"] = (
        A_REAL_SSH_RANGE
    )
    return fixed


def _errors(config: dict) -> list[str]:
    return [str(p) for p in check_cluster_security(config) if p.severity == "error"]


# --- schema -------------------------------------------------------------------------------


def test_cluster_yaml_matches_rays_autoscaler_schema(config):
    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    jsonschema.validate(config, json.loads(schema_path.read_text()))  # the raw file, as-is
    assert check_cluster_schema(config) == []  # + Ray's own fill-out and cross-field checks


def test_cluster_yaml_has_a_cpu_head_and_autoscaling_gpu_workers(config):
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    gpu_types = {name: spec for name, spec in types.items() if spec["resources"].get("GPU", 0)}
    assert {spec["node_config"]["InstanceType"].split(".")[0] for spec in gpu_types.values()} >= {
        "g5",
        "g6",
        "p4d",
    }
    for spec in gpu_types.values():
        assert spec["min_workers"] == 0 < spec["max_workers"] <= config["max_workers"]
    assert config["provider"]["type"] == "aws" and config["provider"]["region"]
    assert any("constraints.txt" in cmd for cmd in config["setup_commands"])


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda c: c.update(not_a_ray_key=1), "Additional properties"),
        (lambda c: c.update(head_node_type="no.such.type"), "head_node_type"),
        (
            lambda c: c["available_node_types"]["gpu.g5.4xlarge"].update(min_workers=99),
            "min_workers",
        ),
        (lambda c: c["provider"].pop("type"), "'type' is a required property"),
    ],
    ids=["unknown key", "unknown head type", "min over max", "no provider type"],
)
def test_schema_check_refuses_broken_configs(config, mutate, expected):
    broken = copy.deepcopy(config)
    mutate(broken)
    problems = check_cluster_schema(broken)
    assert problems and any(expected in str(p) for p in problems), problems


# --- security: the shipped file -----------------------------------------------------------


def test_shipped_config_is_safe_once_the_ssh_placeholder_is_replaced(config):
    problems = check_cluster_security(config)
    # As shipped, the only blocker is the placeholder SSH range the user must replace.
    stop = blocking(problems)
    assert [p.severity for p in stop] == ["todo"], stop
    assert "203.0.113.0/24" in stop[0].message and "placeholder" in stop[0].message
    assert blocking(check_cluster_security(_with_real_ssh_range(config))) == []


def test_shipped_config_settings_read_directly(config):
    """The same properties read straight off the YAML, without the checker's parser."""
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [cmd for cmd in config[key] if "ray start" in cmd]
        assert starts, key
        for cmd in starts:
            assert "RAY_AUTH_MODE=token" in cmd.split("ray start")[0], cmd
    head_start = next(c for c in config["head_start_ray_commands"] if "ray start" in c)
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "/home/ubuntu/.ray/auth_token" in config["file_mounts"]
    rules = config["provider"]["security_group"]["IpPermissions"]
    assert [(r["FromPort"], r["ToPort"]) for r in rules] == [(22, 22)]  # SSH only, nothing else
    assert all(r["CidrIp"] != "0.0.0.0/0" for rule in rules for r in rule["IpRanges"])


# --- security: negative controls ----------------------------------------------------------


def _open(port_from: int, port_to: int, cidr: str = "0.0.0.0/0", protocol: str = "tcp"):
    def mutate(c):
        c["provider"]["security_group"]["IpPermissions"].append(
            {
                "IpProtocol": protocol,
                "FromPort": port_from,
                "ToPort": port_to,
                "IpRanges": [{"CidrIp": cidr}],
            }
        )

    return mutate


def _set_ssh(cidr: str, v6: bool = False):
    def mutate(c):
        rule = c["provider"]["security_group"]["IpPermissions"][0]
        if v6:
            rule["Ipv6Ranges"] = [{"CidrIpv6": cidr}]
        else:
            rule["IpRanges"] = [{"CidrIp": cidr}]

    return mutate


def _edit_start(key: str, old: str, new: str):
    def mutate(c):
        c[key] = [cmd.replace(old, new) for cmd in c[key]]

    return mutate


def _prefix_list(port_from: int, port_to: int):
    def mutate(c):
        c["provider"]["security_group"]["IpPermissions"].append(
            {
                "IpProtocol": "tcp",
                "FromPort": port_from,
                "ToPort": port_to,
                "PrefixListIds": [{"PrefixListId": "pl-0123456789abcdef0"}],
            }
        )

    return mutate


HOLES = {
    "ssh open to the world": (_set_ssh("0.0.0.0/0"), "SSH is open to 0.0.0.0/0"),
    "ssh open to the world (ipv6)": (_set_ssh("::/0", v6=True), "SSH is open to ::/0"),
    "ssh open as two halves": (_set_ssh("0.0.0.0/1"), "SSH is open to 0.0.0.0/1"),
    "dashboard port opened": (_open(8265, 8265), "dashboard / job API"),
    "client port opened": (_open(10001, 10001, "8.8.8.0/24"), "Ray client server"),
    "gcs port opened": (_open(6379, 6379), "GCS"),
    "part of the worker port range opened": (_open(12000, 12010), "worker ports"),
    "all traffic opened": (_open(-1, -1, protocol="-1"), "port 6379"),
    "no ssh rule": (
        lambda c: c["provider"]["security_group"].update(IpPermissions=[]),
        "no SSH rule",
    ),
    "head without token auth": (
        _edit_start("head_start_ray_commands", "RAY_AUTH_MODE=token ", ""),
        "head_start_ray_commands[1]: `ray start` runs without token authentication",
    ),
    "worker with auth disabled": (
        _edit_start("worker_start_ray_commands", "RAY_AUTH_MODE=token", "RAY_AUTH_MODE=disabled"),
        "(RAY_AUTH_MODE=disabled)",
    ),
    "token exported in another shell": (
        lambda c: c.update(
            head_start_ray_commands=[
                "export RAY_AUTH_MODE=token",
                c["head_start_ray_commands"][1].replace("RAY_AUTH_MODE=token ", ""),
            ]
        ),
        "head_start_ray_commands[1]: `ray start` runs without token authentication",
    ),
    "token file not mounted": (
        lambda c: c["file_mounts"].pop("/home/ubuntu/.ray/auth_token"),
        "no file_mounts entry provides",
    ),
    "token written in the config": (
        _edit_start(
            "worker_start_ray_commands",
            "RAY_AUTH_MODE=token",
            "RAY_AUTH_MODE=token RAY_AUTH_TOKEN=abc123",
        ),
        "the auth token is written in the config",
    ),
    "dashboard on all interfaces": (
        _edit_start(
            "head_start_ray_commands", "--dashboard-host=127.0.0.1", "--dashboard-host=0.0.0.0"
        ),
        "--dashboard-host=0.0.0.0",
    ),
    # issue 18 item 6: Ray's CLI takes the last of a repeated option, in either form
    "dashboard host repeated, the last one public": (
        _edit_start(
            "head_start_ray_commands",
            "--dashboard-host=127.0.0.1",
            "--dashboard-host=127.0.0.1 --dashboard-host 0.0.0.0",
        ),
        "--dashboard-host=0.0.0.0",
    ),
    "dashboard host given as two tokens": (
        _edit_start(
            "head_start_ray_commands", "--dashboard-host=127.0.0.1", "--dashboard-host 0.0.0.0"
        ),
        "--dashboard-host=0.0.0.0",
    ),
    "gcs port moved by a repeated --port, then opened": (
        lambda c: (
            _edit_start("head_start_ray_commands", "--port=6379", "--port=6379 --port 7000")(c),
            _open(7000, 7000)(c),
        ),
        "GCS (--port), port 7000",
    ),
    "prefix list on the dashboard port": (
        _prefix_list(8265, 8265),
        "dashboard / job API (--dashboard-port), port 8265, to the prefix list pl-0123456789abcdef0",
    ),
    "prefix list on all ports": (_prefix_list(0, 65535), "to the prefix list pl-"),
    "container publishes the dashboard": (
        lambda c: c.update(
            docker={
                "image": "rayproject/ray:2.60.0-py311-gpu",
                "container_name": "ray",
                "run_options": ["-p 8265:8265"],
            }
        ),
        "publishes 8265:8265",
    ),
}


@pytest.mark.parametrize("hole", list(HOLES))
def test_checker_refuses_each_hole(config, hole):
    mutate, expected = HOLES[hole]
    holed = _with_real_ssh_range(config)
    mutate(holed)
    errors = _errors(holed)
    assert any(expected in e for e in errors), f"{hole}: {errors}"
    assert check_cluster_schema(holed) == []  # still a valid Ray config: only the checker stops it


@pytest.mark.parametrize(
    "mutate",
    [
        _open(6379, 6379, cidr="10.0.0.0/16"),  # the VPC's own range is not public
        _open(443, 443),  # a port Ray does not listen on
        _set_ssh("192.168.1.0/24"),  # SSH through a VPN range
        lambda c: c.update(
            head_start_ray_commands=[
                "ray stop",
                "export RAY_AUTH_MODE=token; "
                + c["head_start_ray_commands"][1].replace("RAY_AUTH_MODE=token ", ""),
            ]
        ),  # an export in the same shell counts
        _edit_start(
            "head_start_ray_commands",
            "--dashboard-host=127.0.0.1",
            "--dashboard-host=0.0.0.0 --dashboard-host=127.0.0.1",
        ),  # repeated: the last (loopback) wins, as in Ray
        _prefix_list(22, 22),  # SSH from a managed list: a note, not an error
    ],
    ids=[
        "private range to gcs",
        "https port",
        "ssh from vpn",
        "export in same shell",
        "dashboard host repeated, last loopback",
        "prefix list on ssh",
    ],
)
def test_checker_accepts_safe_variants(config, mutate):
    variant = _with_real_ssh_range(config)
    mutate(variant)
    assert _errors(variant) == []


def test_rays_own_aws_defaults_are_refused():
    errors = _errors(load_cluster_config(RAY_AWS_DEFAULTS))
    text = "\n".join(errors)
    assert "--dashboard-host=0.0.0.0" in text
    assert "runs without token authentication" in text
    assert "no SSH rule" in text


# --- the security group and the command line -----------------------------------------------


def test_security_group_commands_carry_exactly_the_configs_rules(config):
    fixed = _with_real_ssh_range(config)
    commands = security_group_commands(fixed)
    ingress = shlex.split(commands[-1])
    rules = json.loads(ingress[ingress.index("--ip-permissions") + 1])
    assert rules == fixed["provider"]["security_group"]["IpPermissions"]
    assert "0.0.0.0/0" not in " ".join(commands)
    assert any("--source-group" in c for c in commands)  # nodes reach each other, nothing else
    assert any("--group-name rayclust-sg" in c for c in commands)


def test_check_cluster_command(config, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["check-cluster", "--help"])
    assert exit_info.value.code == 0 and "usage: rayclust check-cluster" in capsys.readouterr().out
    assert cli_main(["check-cluster", str(CLUSTER_YAML)]) == 1  # the placeholder blocks
    assert "203.0.113.0/24" in capsys.readouterr().out
    fixed = tmp_path / "cluster.yaml"
    fixed.write_text(yaml.safe_dump(_with_real_ssh_range(config)))
    assert cli_main(["check-cluster", str(fixed), "--security-group-commands"]) == 0
    out = capsys.readouterr().out
    assert "checks passed" in out and A_REAL_SSH_RANGE in out
    holed = _with_real_ssh_range(config)
    _open(8265, 8265)(holed)
    fixed.write_text(yaml.safe_dump(holed))
    assert cli_main(["check-cluster", str(fixed)]) == 1
    assert "dashboard / job API" in capsys.readouterr().out
    assert cli_main(["check-cluster", str(tmp_path / "missing.yaml")]) == 2


def test_check_cluster_refuses_a_yaml_alias_bomb(tmp_path, capsys):
    from rayclust.cli import main

    lines = ["cluster_name: bomb", "a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    assert main(["check-cluster", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "YAML alias *a0 at line 3" in err, err
