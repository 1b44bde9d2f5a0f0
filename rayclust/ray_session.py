"""One way to get a Ray session, for every stage that needs one (extraction, training, tuning).

A bare ``ray.init()`` joins whatever cluster was last started on this machine (its
``/tmp/ray/ray_current_cluster``), which may be somebody else's. So only join a cluster that
was asked for, by config or ``RAY_ADDRESS`` (as ``ray job submit`` sets it); otherwise start
our own local one. ``num_cpus`` only sizes a local session: Ray refuses it when joining.
"""

from __future__ import annotations

import os
import sys


def ensure_ray(
    address: str | None = None, num_cpus: int | None = None, log_to_driver: bool = False
) -> None:
    """Start or join Ray unless this process already has a session (then it is kept as is)."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    ray.init(
        address=address,
        num_cpus=num_cpus if address == "local" else None,
        include_dashboard=False,
        log_to_driver=log_to_driver,
        configure_logging=False,
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
