"""Shared fixtures: one small Ray session for the whole test run, the shipped sample, tmp caches."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DIR = REPO_ROOT / "data" / "sample"

# Keep torch from oversubscribing the 2-core CI machine.
os.environ.setdefault("OMP_NUM_THREADS", "2")


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except Exception:
        has_gpu = False
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU; none on this machine")
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for every test that needs it (starting Ray costs ~10 s)."""
    import ray

    if not ray.is_initialized():
        ray.init(
            address="local",  # never join a cluster someone started with `ray start`
            num_cpus=2,
            include_dashboard=False,
            object_store_memory=300 * 1024 * 1024,
            log_to_driver=False,
            configure_logging=False,
        )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    if not SAMPLE_DIR.is_dir():
        pytest.fail(f"shipped sample missing at {SAMPLE_DIR}; run scripts/build_sample.py")
    return SAMPLE_DIR


@pytest.fixture
def feature_cache(tmp_path) -> Path:
    path = tmp_path / "features"
    path.mkdir()
    return path
