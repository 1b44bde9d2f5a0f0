"""Issue 18 item 13: the driver of `rayclust cluster` killed with SIGKILL in the middle of
extraction; the rerun resumes from the FeatureStore: nothing lost, nothing stored twice."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rayclust.views.store import FeatureStore
from rayclust.views.worker import BATCH_DELAY_ENV
from tests.processes import descendants, end_tree

BATCH = 8


def _shard_ids(cache: Path) -> list[str]:
    """Every id in every complete shard, duplicates included (the store's index hides them)."""
    ids: list[str] = []
    for ids_path in sorted(cache.glob("*/shard-*.ids.json")):
        if ids_path.with_name(ids_path.name.replace(".ids.json", ".npy")).is_file():
            ids += json.loads(ids_path.read_text())
    return ids


@pytest.mark.timeout(420)
def test_driver_killed_mid_extraction_resumes_without_loss_or_duplicates(sample_dir, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(sample_dir, images, ignore=shutil.ignore_patterns("*.md"))
    n_images = sum(1 for p in images.rglob("*") if p.is_file())
    cache = tmp_path / "cache"
    command = [
        sys.executable, "-m", "rayclust", "cluster", str(images), "--view", "pixels",
        "--clusters", "3", "--seeds", "1", "--batch-size", str(BATCH), "--cache-dir", str(cache),
        "--no-mlflow", "-q", "report.enabled=false", "ray.num_cpus=2",
    ]  # fmt: skip
    env = {**os.environ, BATCH_DELAY_ENV: "0.4", "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    driver = subprocess.Popen(
        [*command, "--output", str(tmp_path / "killed")], env=env, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    known = []
    try:
        deadline = time.monotonic() + 180
        while len(_shard_ids(cache)) < 2 * BATCH:  # some batches stored, most still to do
            assert driver.poll() is None, driver.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "extraction never stored two batches"
            known = descendants(driver.pid) or known
            time.sleep(0.05)
        known = descendants(driver.pid) or known
        os.kill(driver.pid, signal.SIGKILL)  # the driver dies mid-extraction, no cleanup
    finally:
        end_tree(driver, known)
    stored_before = set(_shard_ids(cache))
    assert 2 * BATCH <= len(stored_before) < n_images, len(stored_before)
    assert not (tmp_path / "killed" / "assignments.csv").exists()

    resumed = subprocess.Popen(
        [*command, "--output", str(tmp_path / "resumed")], env=env, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        output, _ = resumed.communicate(timeout=200)
    finally:
        end_tree(resumed)
    assert resumed.returncode == 0, output[-3000:]
    metrics = json.loads((tmp_path / "resumed" / "metrics.json").read_text())
    (extraction,) = metrics["extraction"].values()
    assert extraction["n_cached"] >= len(stored_before)  # what the killed run stored is reused
    assert extraction["n_extracted"] + extraction["n_cached"] == metrics["n_images"]
    all_ids = _shard_ids(cache)
    assert len(all_ids) == len(set(all_ids)) == metrics["n_images"]  # none lost, none twice
    (spec_key,) = metrics["view_keys"].values()
    store = FeatureStore(cache, spec_key)
    assert sorted(store.ids()) == sorted(all_ids)
    assert np.isfinite(store.get(all_ids)).all()
