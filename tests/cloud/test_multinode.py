"""A worker node lost mid-extraction: the run completes and every image is stored once.

A simulated cluster (``ray.cluster_utils.Cluster``): a head that runs no work (0 CPUs) and
two worker nodes, once per extraction engine (``stream``: Ray Data, whose tasks and actors
Ray Data retries; ``actors``: the actor pools, whose actors Ray restarts up to
``max_restarts``). The sample is extracted with a tiny view whose forward passes also sleep
(``RAYCLUST_TEST_BATCH_DELAY_S``), so the run lasts long enough to lose a node in the middle:
as soon as a few forward passes are logged (``RAYCLUST_TEST_FORWARD_LOG``: one file per
forward pass, naming its node), the worker node that ran the latest one is removed, with
whatever tasks, actors and objects it held.

What must hold afterwards: the extraction returns; the FeatureStore holds every usable
image exactly once (ids across all shard files, no repeats); the driver counted each image
once; every image went through a forward pass, and only images whose forward pass ran on the
removed node went through a second one (their results died with it). Work ran on the
removed node before it went and on the other one after.

The cluster lives in a subprocess (this file run as a script), as in
``tests/test_parallel_views.py``: the rest of the suite shares one local Ray in-process.
Both engines run on the same cluster (a fresh worker replaces the removed one in between):
starting a cluster costs more than either run.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.cluster_scenario import run_scenario_process

REPO_ROOT = Path(__file__).resolve().parents[2]
VIEW = "test_tiny"
BATCH_SIZE = 4
BATCH_DELAY_S = 0.3  # 120 images / 4 = 30 forward passes >= 9 s of forwards in all
REMOVE_AFTER_FORWARDS = 4
SCENARIO_TIMEOUT_S = 300
ENGINES = ("stream", "actors")


def _forward_log(folder: Path) -> list[dict]:
    entries = []
    for path in sorted(folder.glob("*.json")):
        try:
            entries.append(json.loads(path.read_text()) | {"mtime": path.stat().st_mtime})
        except (json.JSONDecodeError, OSError):  # being written right now
            continue
    return entries


def _extract_losing_a_node(cluster, workers: list, records, workdir: Path, engine: str) -> dict:
    """One extraction with ``engine``; removes the worker that ran the latest forward pass."""
    from rayclust.config import ExtractionConfig
    from rayclust.views import FeatureStore, extract_views

    forward_log = workdir / f"forwards-{engine}"
    os.environ["RAYCLUST_TEST_FORWARD_LOG"] = str(forward_log)  # read by extract_views
    config = ExtractionConfig(
        batch_size=BATCH_SIZE, engine=engine, actors_per_view=2, cpus_per_actor=1,
        max_restarts=3,
    )  # fmt: skip
    cache = workdir / f"cache-{engine}"
    outcome: dict = {}

    def extract() -> None:
        try:
            outcome["results"] = extract_views(records, VIEW, cache, config, progress=False)
        except BaseException as exc:  # reported by the main thread
            outcome["error"] = repr(exc)

    thread = threading.Thread(target=extract, daemon=True)
    started = time.time()
    thread.start()
    removed_id, removed_at = None, None
    while thread.is_alive() and removed_id is None:
        log = _forward_log(forward_log)
        if len(log) >= REMOVE_AFTER_FORWARDS:
            latest = max(log, key=lambda entry: entry["mtime"])
            victim = next((w for w in workers if w.node_id == latest["node_id"]), None)
            if victim is not None:
                removed_at = time.time()
                cluster.remove_node(victim, allow_graceful=False)
                workers.remove(victim)
                removed_id = victim.node_id
        time.sleep(0.1)
    thread.join(timeout=SCENARIO_TIMEOUT_S / 2)
    if thread.is_alive():
        raise TimeoutError(f"{engine}: extraction did not finish after the node was removed")
    if "error" in outcome:
        raise RuntimeError(f"{engine}: extraction failed: {outcome['error']}")
    (result,) = outcome["results"].values()
    store = FeatureStore(cache, result.spec_key)
    shard_ids = [
        image_id
        for path in sorted(store.path.glob("shard-*.ids.json"))
        for image_id in json.loads(path.read_text())
    ]
    return {
        "n_records": len({record.image_id for record in records}),
        "n_extracted": result.n_extracted,
        "n_failed": len(result.failed),
        "n_remaining": result.n_remaining,
        "store_ids": store.ids(),
        "shard_ids": shard_ids,
        "removed_node": removed_id,
        "removed_at": removed_at,
        "seconds": time.time() - started,
        "forwards": _forward_log(forward_log),
    }


def run_scenario(workdir: Path) -> dict:
    """Each engine in turn on head + 2 workers, losing a worker mid-run (in a subprocess).

    One cluster for both engines (starting one costs most of this test's time): after the
    first run a fresh worker node replaces the one removed.
    """
    import ray
    from ray.cluster_utils import Cluster

    from rayclust.images import ImageSet

    records = ImageSet.from_source(REPO_ROOT / "data" / "sample", progress=False).records
    node_args = {"num_cpus": 2, "object_store_memory": 100 * 1024**2}
    head_args = {"num_cpus": 0, "object_store_memory": 100 * 1024**2}  # the head runs no work
    cluster = Cluster(initialize_head=True, head_node_args=head_args)
    try:
        workers = [cluster.add_node(**node_args) for _ in range(2)]
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        cluster.wait_for_nodes()
        runs = {}
        for engine in ENGINES:
            while len(workers) < 2:
                workers.append(cluster.add_node(**node_args))
            cluster.wait_for_nodes()
            runs[engine] = _extract_losing_a_node(cluster, workers, records, workdir, engine)
        return runs
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory) -> dict:
    workdir = tmp_path_factory.mktemp("lost-node")
    return run_scenario_process(__file__, workdir, BATCH_DELAY_S, SCENARIO_TIMEOUT_S, "lost-node")


@pytest.fixture(params=ENGINES)
def scenario(request, scenarios) -> dict:
    return scenarios[request.param]


@pytest.mark.distributed
@pytest.mark.timeout(SCENARIO_TIMEOUT_S + 30)
def test_every_image_is_stored_once_after_losing_a_node(scenario):
    n = scenario["n_records"]
    assert scenario["removed_node"] is not None, "the run ended before a node could be removed"
    assert scenario["n_remaining"] == 0 and scenario["n_failed"] == 0
    assert len(scenario["shard_ids"]) == len(set(scenario["shard_ids"])) == n  # stored once
    assert len(scenario["store_ids"]) == n
    assert scenario["n_extracted"] == n  # the driver took each image once


@pytest.mark.distributed
@pytest.mark.timeout(SCENARIO_TIMEOUT_S + 30)
def test_only_work_lost_with_the_node_was_done_twice(scenario):
    forwards = scenario["forwards"]
    removed = scenario["removed_node"]
    counts = Counter(image_id for entry in forwards for image_id in entry["ids"])
    assert set(counts) == set(scenario["store_ids"])  # every stored image had a forward pass
    on_removed = {i for entry in forwards if entry["node_id"] == removed for i in entry["ids"]}
    twice = {image_id for image_id, count in counts.items() if count > 1}
    assert twice <= on_removed, f"redone without cause: {sorted(twice - on_removed)[:5]}"
    assert on_removed, "the removed node had run no forward pass"
    after = [e for e in forwards if e["mtime"] > scenario["removed_at"] and e["node_id"] != removed]
    assert after, "no forward pass ran on the remaining node after the removal"


if __name__ == "__main__":
    workdir = Path(sys.argv[1])
    result = run_scenario(workdir)
    (workdir / "result.json").write_text(json.dumps(result))
