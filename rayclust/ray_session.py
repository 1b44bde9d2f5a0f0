"""One way to get a Ray session, for every stage that needs one (extraction, training, tuning).

A bare ``ray.init()`` joins whatever cluster was last started on this machine (its
``/tmp/ray/ray_current_cluster``), which may be somebody else's. So only join a cluster that
was asked for, by config or ``RAY_ADDRESS`` (as ``ray job submit`` sets it); otherwise start
our own local one. ``num_cpus`` only sizes a local session: Ray refuses it when joining.

A local session listens on loopback only. On Linux Ray takes the machine's own address as
the node address and its GCS, raylet, workers and metrics agent listen on every interface
('::' / 0.0.0.0): anyone on the network could reach a session whose only user is this
process. Ray's single-machine mode (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, read when Ray is
imported) makes the node address 127.0.0.1 and every server, the metrics export port
included, binds there. It is set before Ray is imported, for a local session only (a driver
joining a cluster must advertise a reachable address); if Ray was imported earlier by the
caller it cannot take effect, and a warning says so.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import sys

log = logging.getLogger("rayclust")

LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": node address 127.0.0.1
# A new local session turns token authentication on when this is unset, and logs a notice
# saying so on every start (through Ray's own handler, so even under --quiet). Setting the
# very mode Ray would choose keeps the protection and drops the notice; a mode the user set
# is kept, and a joined cluster's mode is never touched.
AUTH_MODE_ENV = "RAY_AUTH_MODE"


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or an IPv4-mapped loopback (``::ffff:127.0.0.1``)."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host == "localhost"
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def ensure_ray(
    address: str | None = None, num_cpus: int | None = None, log_to_driver: bool = False
) -> None:
    """Start or join Ray unless this process already has a session (then it is kept as is).

    A session started here (no address, no ``RAY_ADDRESS``) listens on 127.0.0.1 only."""
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    if address == "local" and "ray" not in sys.modules:
        # Both are read when Ray is imported, so only a process that has not imported it yet
        # gets them. Set later, in a process already joined to a cluster without tokens,
        # the auth mode made it expect tokens on its next connections (a restarted actor on
        # another node could no longer be reached).
        os.environ[LOCAL_ONLY_ENV] = "0"
        os.environ.setdefault(AUTH_MODE_ENV, "token")
    import ray

    if ray.is_initialized():
        return
    ray.init(
        address=address,
        num_cpus=num_cpus if address == "local" else None,
        include_dashboard=False,
        log_to_driver=log_to_driver,
        configure_logging=False,
    )
    if address == "local":
        node_ip = ray.util.get_node_ip_address()
        if not is_loopback(node_ip):
            log.warning(
                "the local Ray session listens on %s, not only on 127.0.0.1: Ray was imported "
                "before rayclust could ask for loopback; set %s=0 before importing ray",
                node_ip,
                LOCAL_ONLY_ENV,
            )


def cluster_gpus(address: str | None = None) -> float:
    """GPUs in the Ray cluster (started or joined with ``ensure_ray`` if need be)."""
    import ray

    ensure_ray(address)
    return float(ray.cluster_resources().get("GPU", 0))


def current_node_id() -> str:
    """The Ray node this process runs on; "" outside a Ray session.

    Never imports or starts Ray itself: code that runs with and without Ray (the view
    worker) can call it freely.
    """
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return ""
    return ray.get_runtime_context().get_node_id()
