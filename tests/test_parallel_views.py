"""Per-view actor pools run side by side on a (simulated) multi-node Ray cluster.

MVEC's total time is ``max_j(t_extract_j) + t_consensus`` only if every view extracts on its
own device at the same time (paper 001, section 4.4). This test builds that situation with
``ray.cluster_utils.Cluster``: a head without GPUs and two worker nodes with one fake GPU
each, and three views. ``extract_views`` asks one GPU per actor (its default when the
cluster has GPUs), so Ray can run two views at once, each on its own node, and the third
must wait until one of them hands its GPU back. The forward-pass timelines of
``ExtractionResult`` show both: the first two overlap, the third starts after one ended.

The cluster lives in a subprocess (this file run as a script): the test session shares one
local Ray (``ray_session``), and a second ``ray.init`` in this process would collide with it.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tests.cluster_scenario import run_scenario_process

VIEWS = ["pixels", "test_tiny", "test_tiny_resnet"]
N_GPU_NODES = 2
N_IMAGES = 24
BATCH_SIZE = 4
# Each forward also sleeps, so a view's forwards span >= 6 s even with tiny models: longer
# than the start-up skew of two actors on a busy machine.
BATCH_DELAY_S = 1.0
SCENARIO_TIMEOUT_S = 240


def _write_images(folder: Path, n: int) -> list[Path]:
    paths = []
    for index in range(n):
        rng = np.random.default_rng(index)
        image = Image.new("RGB", (48, 40), tuple(int(v) for v in rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(image)
        x, y = (int(v) for v in rng.integers(0, 24, 2))
        draw.rectangle((x, y, x + 20, y + 14), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        path = folder / f"img{index:02d}.png"
        image.save(path)
        paths.append(path)
    return paths


def _wait_for_gpus(ray, expected: float, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while ray.cluster_resources().get("GPU", 0) != expected:
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"cluster shows GPU={ray.cluster_resources().get('GPU', 0)}, expected {expected}"
            )
        time.sleep(0.5)


def run_scenario(workdir: Path) -> dict:
    """Three views on a head + two one-GPU nodes; returns what each view did (subprocess)."""
    import ray
    from ray.cluster_utils import Cluster

    from rayclust.config import ExtractionConfig
    from rayclust.images import ImageSet
    from rayclust.views import extract_views

    images = workdir / "images"
    images.mkdir()
    _write_images(images, N_IMAGES)
    records = ImageSet.from_source(str(images)).records
    config = ExtractionConfig(batch_size=BATCH_SIZE, cpus_per_actor=1)

    # The head has no GPU: an actor asking for one can only go to a worker node.
    small_store = {"object_store_memory": 100 * 1024**2}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, **small_store})
    try:
        for _ in range(N_GPU_NODES):
            cluster.add_node(num_cpus=1, num_gpus=1, **small_store)
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        cluster.wait_for_nodes()
        _wait_for_gpus(ray, N_GPU_NODES)
        start = time.time()
        results = extract_views(records, VIEWS, workdir / "cache", config, progress=False)
        return {
            "n_nodes": len(ray.nodes()),
            "wall_s": time.time() - start,
            "views": {
                name: {
                    "timeline": result.timeline,
                    "n_extracted": result.n_extracted,
                    "devices": result.devices,
                    "dim": result.dim,
                }
                for name, result in results.items()
            },
        }
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture(scope="module")
def scenario(tmp_path_factory) -> dict:
    workdir = tmp_path_factory.mktemp("parallel-views")
    return run_scenario_process(__file__, workdir, BATCH_DELAY_S, SCENARIO_TIMEOUT_S, "cluster")


def _span(view: dict) -> tuple[float, float]:
    """First forward's start and last forward's end, epoch seconds."""
    return view["timeline"][0][0], view["timeline"][-1][1]


@pytest.mark.distributed
@pytest.mark.timeout(SCENARIO_TIMEOUT_S + 30)
def test_every_view_is_extracted_on_the_simulated_cluster(scenario):
    assert scenario["n_nodes"] == 1 + N_GPU_NODES
    views = scenario["views"]
    assert set(views) == set(VIEWS)
    n_batches = -(-N_IMAGES // BATCH_SIZE)
    for view in views.values():
        assert view["n_extracted"] == N_IMAGES
        assert len(view["timeline"]) == n_batches
        assert view["devices"] == ["cpu"]  # fake GPUs: Ray reserves them, torch sees none
        start, end = _span(view)
        assert end - start >= n_batches * BATCH_DELAY_S
    assert views["pixels"]["dim"] == 3 * 32 * 32


@pytest.mark.distributed
@pytest.mark.timeout(SCENARIO_TIMEOUT_S + 30)
def test_views_run_at_once_up_to_the_number_of_gpus(scenario):
    spans = sorted(_span(view) for view in scenario["views"].values())
    (start_a, end_a), (start_b, end_b), (start_c, _) = spans
    # The first two views got a GPU node each and ran side by side: one after the other,
    # their spans would not overlap at all.
    overlap = min(end_a, end_b) - start_b
    assert overlap > 0, f"the first two views ran one after the other: {spans}"
    # Two GPUs, three views: the third could only start once one of the others finished.
    # (Its actor starts only then, so its span begins well after; no bound on the gap.)
    assert start_c >= min(end_a, end_b), f"a third view ran on a GPU in use: {spans}"


if __name__ == "__main__":
    workdir = Path(sys.argv[1])
    result = run_scenario(workdir)
    (workdir / "result.json").write_text(json.dumps(result))
