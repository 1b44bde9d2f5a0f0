"""Is a `ray up` cluster config safe to start? Offline checks, before anything reaches a cloud.

Ray runs whatever code reaches its dashboard / job API (8265), client server (10001) or GCS
(6379): the ShadowRay attacks took over clusters whose ports faced the internet. So a config
is refused when

- a security-group ingress rule opens a Ray port (GCS, dashboard, client server, object and
  node manager, dashboard agent, the worker port range), or all ports, to a public range;
- SSH is open to the whole internet (0.0.0.0/0, ::/0 or anything wider than a /8), or has no
  rule at all (a group Ray creates then gets SSH from 0.0.0.0/0);
- a `ray start` runs without ``RAY_AUTH_MODE=token``, or its node gets no token (the token
  file is not in ``file_mounts``), or the token itself is written in the config;
- the dashboard is bound to anything but loopback (reach it through ``ray dashboard``'s SSH
  tunnel), or a container publishes a port.

``check_cluster_schema`` runs Ray's own autoscaler schema and cross-field checks;
``check_cluster_security`` the rules above; both return a list of ``ClusterProblem`` (empty:
fine). ``security_group_commands`` prints the `aws ec2` commands that create the security
group with exactly the config's rules, because a group Ray creates itself gets Ray's default
rules added, and those include SSH from 0.0.0.0/0 (ray/autoscaler/_private/aws/config.py).

Command line: ``rayclust check-cluster cluster.yaml [--security-group-commands]``
(``rayclust.cli``).
"""

from __future__ import annotations

import copy
import ipaddress
import json
import logging
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rayclust.config import load_yaml_text

Severity = Literal["error", "todo", "note"]

# Ray's defaults for `ray start` (ray/scripts/scripts.py); overridden by flags we parse.
_PORT_FLAGS: dict[str, tuple[str, int]] = {
    "--port": ("GCS", 6379),
    "--dashboard-port": ("dashboard / job API", 8265),
    "--ray-client-server-port": ("Ray client server", 10001),
    "--dashboard-agent-listen-port": ("dashboard agent", 52365),
    "--object-manager-port": ("object manager", 8076),
    "--node-manager-port": ("node manager", 0),
    "--metrics-export-port": ("metrics export", 0),
    "--runtime-env-agent-port": ("runtime env agent", 0),
}
_WORKER_PORTS_DEFAULT = (10002, 19999)
_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
# Addresses that do not reach the public internet: a rule from these is not "open".
_NON_PUBLIC_NETS = [
    ipaddress.ip_network(n)
    for n in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "fc00::/7",
        "fe80::/10",
        "::1/128",
    )
]
# RFC 5737 / RFC 3849 documentation ranges: placeholders that a user must replace.
_DOCUMENTATION_NETS = [
    ipaddress.ip_network(n)
    for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")
]
_SSH_MIN_PREFIX = {4: 8, 6: 32}  # an SSH rule wider than this is "the whole internet"
_TOKEN_FILE = ".ray/auth_token"  # Ray's default token path under $HOME


@dataclass(frozen=True)
class ClusterProblem:
    """One finding: ``where`` is the config path, ``severity`` says whether it blocks.

    error: unsafe or invalid; todo: a placeholder to replace before ``ray up``; note: a step
    the config cannot show (it does not fail the check).
    """

    where: str
    message: str
    severity: Severity = "error"

    def __str__(self) -> str:
        return f"{self.severity}: {self.where}: {self.message}"


def load_cluster_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"cluster config {path} does not exist")
    # Aliases refused: a "billion laughs" in a cluster file would expand in memory here.
    config = load_yaml_text(path.read_text(), str(path))
    if not isinstance(config, dict):
        raise ValueError(f"{path} should hold a YAML mapping (a ray up config), not {config!r}")
    return config


def blocking(problems: Sequence[ClusterProblem]) -> list[ClusterProblem]:
    """The problems that should stop ``ray up`` (errors and unreplaced placeholders)."""
    return [p for p in problems if p.severity != "note"]


# --- schema ---------------------------------------------------------------------------------


def check_cluster_schema(config: dict[str, Any]) -> list[ClusterProblem]:
    """Ray's autoscaler JSON schema (ray/autoscaler/ray-schema.json), then Ray's own
    cross-field checks on the config as `ray up` fills it out; offline."""
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    schema = json.loads(schema_path.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    problems = [
        ClusterProblem("/".join(map(str, err.absolute_path)) or "<top>", err.message)
        for err in sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    ]
    if problems:
        return problems
    ray_util_log = logging.getLogger("ray.autoscaler._private.util")
    level = ray_util_log.level
    ray_util_log.setLevel(logging.WARNING)  # its INFO lines narrate the defaults it fills in
    try:
        validate_config(prepare_config(copy.deepcopy(config)))
    except (ValueError, RuntimeError, jsonschema.ValidationError) as exc:
        problems.append(ClusterProblem("<config>", f"Ray refuses it: {exc}"))
    finally:
        ray_util_log.setLevel(level)
    return problems


# --- security -------------------------------------------------------------------------------


def check_cluster_security(config: dict[str, Any]) -> list[ClusterProblem]:
    """Every security finding (see the module docstring); an empty list means safe to start."""
    head_starts = _ray_starts(config, "head_start_ray_commands")
    worker_starts = _ray_starts(config, "worker_start_ray_commands")
    problems: list[ClusterProblem] = []
    if not head_starts:
        problems.append(
            ClusterProblem("head_start_ray_commands", "no `ray start --head` command found")
        )
    if not worker_starts and _has_workers(config):
        problems.append(
            ClusterProblem("worker_start_ray_commands", "no `ray start --address` command found")
        )
    problems += _check_token_auth(config, head_starts + worker_starts)
    problems += _check_dashboard_host(head_starts)
    problems += _check_docker(config)
    problems += _check_ingress(config, _ray_ports(head_starts + worker_starts))
    return problems


@dataclass(frozen=True)
class _RayStart:
    where: str  # e.g. head_start_ray_commands[1]
    env: dict[str, str]  # variables set for this `ray start` (prefix or earlier export)
    args: list[str]  # the arguments after `ray start`

    def flag(self, name: str) -> str | None:
        """The value `ray start` uses for option ``name``: Ray's CLI (click) takes the LAST
        of repeated options, written ``--name value`` or ``--name=value``."""
        value = None
        args = iter(self.args)
        for arg in args:
            if arg == name:
                value = next(args, value)
            elif arg.startswith(name + "="):
                value = arg.split("=", 1)[1]
        return value


_ASSIGNMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", re.S)


def _ray_starts(config: dict[str, Any], key: str) -> list[_RayStart]:
    """Each `ray start` in a command list, with the environment it runs with. Each list item
    runs in its own shell, so an export counts only inside its own item."""
    found = []
    for index, command in enumerate(config.get(key) or []):
        exported: dict[str, str] = {}
        for segment in re.split(r";|&&|\|\||\n", str(command)):
            try:
                tokens = shlex.split(segment)
            except ValueError:
                continue
            if tokens[:1] == ["export"]:
                exported.update(_assignments(tokens[1:]))
                continue
            prefix = _assignments(tokens)
            rest = tokens[len(prefix) :]
            if rest[:2] == ["ray", "start"]:
                found.append(_RayStart(f"{key}[{index}]", {**exported, **prefix}, rest[2:]))
    return found


def _assignments(tokens: list[str]) -> dict[str, str]:
    env = {}
    for token in tokens:
        match = _ASSIGNMENT.match(token)
        if not match:
            break
        env[match.group(1)] = match.group(2)
    return env


def _has_workers(config: dict[str, Any]) -> bool:
    head = config.get("head_node_type")
    return any(
        (spec or {}).get("max_workers", 1) > 0
        for name, spec in (config.get("available_node_types") or {}).items()
        if name != head
    )


def _home(config: dict[str, Any]) -> str:
    user = (config.get("auth") or {}).get("ssh_user", "ubuntu")
    return "/root" if user == "root" else f"/home/{user}"


def _remote_path(config: dict[str, Any], path: str) -> str:
    path = path.strip()
    if path == "~" or path.startswith("~/"):
        path = _home(config) + path[1:]
    return path.rstrip("/")


def _check_token_auth(config: dict[str, Any], starts: list[_RayStart]) -> list[ClusterProblem]:
    mounted = {_remote_path(config, remote) for remote in (config.get("file_mounts") or {})}
    docker_env = _docker_env(config)
    problems = []
    for start in starts:
        env = {**docker_env, **start.env}
        mode = env.get("RAY_AUTH_MODE")
        if mode != "token":
            problems.append(
                ClusterProblem(
                    start.where,
                    "`ray start` runs without token authentication"
                    + (f" (RAY_AUTH_MODE={mode})" if mode else "")
                    + ": put RAY_AUTH_MODE=token in front of it, so every node refuses "
                    "callers without the cluster's token",
                )
            )
        token = env.get("RAY_AUTH_TOKEN")
        if token and not token.startswith("$"):
            problems.append(
                ClusterProblem(
                    start.where,
                    "the auth token is written in the config (RAY_AUTH_TOKEN=...): it ends up "
                    "in version control and logs; mount a token file instead",
                )
            )
            continue
        if token:
            continue  # read from the node's own environment: cannot be checked here
        token_path = _remote_path(
            config, env.get("RAY_AUTH_TOKEN_PATH", f"{_home(config)}/{_TOKEN_FILE}")
        )
        if token_path not in mounted:
            problems.append(
                ClusterProblem(
                    start.where,
                    f"this node reads its token from {token_path}, which no file_mounts entry "
                    f"provides: add  {token_path}: ~/{_TOKEN_FILE}  to file_mounts",
                )
            )
    return problems


def _check_dashboard_host(head_starts: list[_RayStart]) -> list[ClusterProblem]:
    problems = []
    for start in head_starts:
        host = start.flag("--dashboard-host")
        if host is not None and host not in _LOOPBACK_HOSTS:
            problems.append(
                ClusterProblem(
                    start.where,
                    f"--dashboard-host={host} serves the dashboard and job API beyond the head "
                    "node; use --dashboard-host=127.0.0.1 and reach it with `ray dashboard "
                    "cluster.yaml` (an SSH tunnel)",
                )
            )
    return problems


def _docker_options(config: dict[str, Any]) -> list[str]:
    docker = config.get("docker") or {}
    options: list[str] = []
    for key in ("run_options", "head_run_options", "worker_run_options"):
        for option in docker.get(key) or []:
            options += shlex.split(str(option))
    return options


def _docker_env(config: dict[str, Any]) -> dict[str, str]:
    options, env = _docker_options(config), {}
    for i, option in enumerate(options):
        value = None
        if option in ("-e", "--env") and i + 1 < len(options):
            value = options[i + 1]
        elif option.startswith("--env="):
            value = option.split("=", 1)[1]
        if value and "=" in value:
            name, val = value.split("=", 1)
            env[name] = val
    return env


def _check_docker(config: dict[str, Any]) -> list[ClusterProblem]:
    options = _docker_options(config)
    published = [
        options[i + 1] if opt in ("-p", "--publish") and i + 1 < len(options) else opt
        for i, opt in enumerate(options)
        if opt in ("-p", "--publish") or opt.startswith(("--publish=", "-p="))
    ]
    return [
        ClusterProblem(
            "docker.run_options",
            f"the container publishes {spec}: Ray's ports stay inside the cluster's network",
        )
        for spec in published
    ]


def _ray_ports(starts: list[_RayStart]) -> list[tuple[str, int, int]]:
    """(service, first port, last port) for every port Ray listens on, flags over defaults."""
    ports: dict[str, tuple[int, int]] = {}
    for flag, (service, default) in _PORT_FLAGS.items():
        values = {start.flag(flag) for start in starts} - {None}
        for value in values or {str(default)}:
            port = _int(value)
            if port:  # 0: a random port, covered by no fixed rule
                ports[f"{service} ({flag})"] = (port, port)
    low = [_int(s.flag("--min-worker-port")) for s in starts if s.flag("--min-worker-port")]
    high = [_int(s.flag("--max-worker-port")) for s in starts if s.flag("--max-worker-port")]
    ports["worker ports"] = (
        min(low, default=_WORKER_PORTS_DEFAULT[0]),
        max(high, default=_WORKER_PORTS_DEFAULT[1]),
    )
    return [(service, lo, hi) for service, (lo, hi) in ports.items()]


def _int(value: str | None) -> int:
    try:
        return int(str(value))
    except ValueError:
        return 0


def _is_public(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    return not any(net.version == n.version and net.subnet_of(n) for n in _NON_PUBLIC_NETS)


def _rule_ports(rule: dict[str, Any]) -> tuple[int, int] | None:
    protocol = str(rule.get("IpProtocol", "")).lower()
    if protocol in ("-1", "all"):
        return (0, 65535)
    if protocol in ("tcp", "udp", "6", "17"):
        return (int(rule.get("FromPort", 0)), int(rule.get("ToPort", 65535)))
    return None  # icmp and friends carry no ports


def _sources(rule: dict[str, Any]) -> list[str]:
    return [r.get("CidrIp", "") for r in rule.get("IpRanges") or []] + [
        r.get("CidrIpv6", "") for r in rule.get("Ipv6Ranges") or []
    ]


def _check_ingress(
    config: dict[str, Any], ray_ports: list[tuple[str, int, int]]
) -> list[ClusterProblem]:
    provider = config.get("provider") or {}
    if provider.get("type") != "aws":
        return [
            ClusterProblem(
                "provider.type",
                f"firewall rules of provider {provider.get('type')!r} are not checked: make "
                "sure only SSH is reachable from outside the cluster",
                "note",
            )
        ]
    node_types = config.get("available_node_types") or {}
    external = sorted(
        name
        for name, spec in node_types.items()
        if "SecurityGroupIds" in spec.get("node_config", {})
    )
    problems = [
        ClusterProblem(
            f"available_node_types.{name}.node_config.SecurityGroupIds",
            "uses security groups made outside this config; their rules cannot be checked "
            "offline: allow SSH from your range only and all traffic only from the group itself",
            "note",
        )
        for name in external
    ]
    if len(external) == len(node_types):
        return problems
    rules = (provider.get("security_group") or {}).get("IpPermissions") or []
    ssh_rules = 0
    for index, rule in enumerate(rules):
        where = f"provider.security_group.IpPermissions[{index}]"
        try:
            ports = _rule_ports(rule)
        except (TypeError, ValueError):
            problems.append(ClusterProblem(where, f"FromPort/ToPort are not integers: {rule}"))
            continue
        if ports is None:
            continue
        problems += _check_prefix_lists(where, rule, ports, ray_ports)
        if ports[0] <= 22 <= ports[1] and _prefix_lists(rule):
            ssh_rules += 1
        for source in _sources(rule):
            try:
                net = ipaddress.ip_network(source, strict=False)
            except ValueError:
                problems.append(ClusterProblem(where, f"{source!r} is not an address range"))
                continue
            if ports[0] <= 22 <= ports[1]:
                ssh_rules += 1
                problems += _check_ssh_source(where, net)
            if _is_public(net):
                problems += _opened_ray_ports(
                    where,
                    ports,
                    ray_ports,
                    f"the public range {net}: anyone who reaches it can run code on the "
                    "cluster (ShadowRay); remove the rule and use the SSH tunnel "
                    "(`ray dashboard cluster.yaml`)",
                )
    if ssh_rules == 0:
        problems.append(
            ClusterProblem(
                "provider.security_group.IpPermissions",
                "no SSH rule: the security group Ray creates then allows SSH from 0.0.0.0/0; "
                "add a tcp 22 rule from your own address range",
            )
        )
    else:
        group = (provider.get("security_group") or {}).get("GroupName") or (
            f"ray-autoscaler-{config.get('cluster_name', 'default')}"
        )
        problems.append(
            ClusterProblem(
                "provider.security_group",
                f"create the group {group!r} with exactly these rules before `ray up` "
                "(`rayclust check-cluster CONFIG --security-group-commands` prints the aws "
                "commands): a group Ray creates itself also gets SSH from 0.0.0.0/0",
                "note",
            )
        )
    return problems


def _opened_ray_ports(
    where: str, ports: tuple[int, int], ray_ports: list[tuple[str, int, int]], to: str
) -> list[ClusterProblem]:
    """One error per Ray service whose ports the rule's range ``ports`` opens to ``to``."""
    problems = []
    for service, low, high in ray_ports:
        if ports[0] <= high and low <= ports[1]:
            span = f"port {low}" if low == high else f"ports {low}-{high}"
            problems.append(ClusterProblem(where, f"opens the {service}, {span}, to {to}"))
    return problems


def _prefix_lists(rule: dict[str, Any]) -> list[str]:
    return [str(p.get("PrefixListId", "?")) for p in rule.get("PrefixListIds") or []]


def _check_prefix_lists(
    where: str, rule: dict[str, Any], ports: tuple[int, int], ray_ports: list[tuple[str, int, int]]
) -> list[ClusterProblem]:
    """A managed prefix list is a set of ranges kept outside the config: offline it may as
    well be 0.0.0.0/0, so one on a Ray port is refused; on SSH it is a note to check."""
    problems = []
    for prefix_list in _prefix_lists(rule):
        problems += _opened_ray_ports(
            where,
            ports,
            ray_ports,
            f"the prefix list {prefix_list}, whose ranges cannot be checked offline (any of "
            "them may be public): Ray ports stay closed to everything outside the cluster's "
            "own group; use the SSH tunnel (`ray dashboard cluster.yaml`)",
        )
        if ports[0] <= 22 <= ports[1]:
            problems.append(
                ClusterProblem(
                    where,
                    f"SSH from the prefix list {prefix_list}: make sure it holds only your own "
                    "ranges (it cannot be checked offline)",
                    "note",
                )
            )
    return problems


def _check_ssh_source(where: str, net) -> list[ClusterProblem]:
    if any(net.version == d.version and net.subnet_of(d) for d in _DOCUMENTATION_NETS):
        return [
            ClusterProblem(
                where,
                f"SSH source {net} is a documentation placeholder: replace it with the address "
                "range you connect from (e.g. your IP + /32)",
                "todo",
            )
        ]
    if _is_public(net) and net.prefixlen < _SSH_MIN_PREFIX[net.version]:
        return [
            ClusterProblem(
                where,
                f"SSH is open to {net}, (nearly) the whole internet: limit it to the address "
                "range you connect from",
            )
        ]
    return []


# --- creating the security group ------------------------------------------------------------


def security_group_commands(config: dict[str, Any], vpc_id: str = "$VPC_ID") -> list[str]:
    """`aws ec2` commands that create the config's security group with exactly its rules plus
    all traffic between the cluster's own nodes. Ray uses an existing group that already has
    rules as it is, and adds nothing to it."""
    provider = config.get("provider") or {}
    region = provider.get("region", "us-west-2")
    group = (provider.get("security_group") or {}).get("GroupName") or (
        f"ray-autoscaler-{config.get('cluster_name', 'default')}"
    )
    rules = (provider.get("security_group") or {}).get("IpPermissions") or []
    commands = []
    if vpc_id == "$VPC_ID":
        commands.append(
            f"VPC_ID=$(aws ec2 describe-vpcs --region {region} --filters Name=isDefault,"
            "Values=true --query 'Vpcs[0].VpcId' --output text)  # or the VPC of your SubnetIds"
        )
    commands += [
        f"SG_ID=$(aws ec2 create-security-group --region {region} --vpc-id {vpc_id} "
        f"--group-name {shlex.quote(group)} --description "
        f"{shlex.quote('rayclust: SSH from the operator, all traffic between cluster nodes')} "
        "--query GroupId --output text)",
        f'aws ec2 authorize-security-group-ingress --region {region} --group-id "$SG_ID" '
        '--protocol -1 --source-group "$SG_ID"',
    ]
    if rules:
        commands.append(
            f'aws ec2 authorize-security-group-ingress --region {region} --group-id "$SG_ID" '
            f"--ip-permissions {shlex.quote(json.dumps(rules, separators=(',', ':')))}"
        )
    return commands
