"""A clustering sweep over an s3:// collection whose endpoint is given only in the config
(``input.storage_options``): the sweep's scan and extraction get the whole input section.

The bucket is served by moto on loopback. Credentials cannot go in a config (it is written
out) and the shared Ray's workers did not inherit any from this test: the objects are made
public-read and read anonymously, as a public bucket would be.
"""

from __future__ import annotations

import csv
import json

import pytest
import yaml

from rayclust import remote
from rayclust.tune import load_sweeps, run_sweep
from tests.moto_s3 import s3_server

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")

pytestmark = pytest.mark.timeout(600)

BUCKET = "rayclust-sweep"
CATEGORIES = ("flowers", "smileys")
PER_CATEGORY = 8


@pytest.fixture(scope="module")
def s3_endpoint():
    with s3_server() as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def public_collection(s3_endpoint, sample_dir) -> str:
    owner = remote.filesystem(
        f"s3://{BUCKET}", {"endpoint_url": s3_endpoint, "key": "testing", "secret": "testing"}
    )
    owner.mkdir(BUCKET)
    for category in CATEGORIES:
        for path in sorted((sample_dir / category).glob("*.png"))[:PER_CATEGORY]:
            key = f"{BUCKET}/collection/{category}/{path.name}"
            owner.pipe_file(key, path.read_bytes())
            owner.chmod(key, "public-read")
    return f"s3://{BUCKET}/collection"


def test_a_cluster_sweep_reads_a_bucket_whose_endpoint_is_in_the_config(
    ray_session, public_collection, s3_endpoint, tmp_path
):
    options = {"endpoint_url": s3_endpoint, "anon": True}
    body = {
        "stage": "cluster",
        "output": str(tmp_path / "sweep"),
        "config": {
            "input": {
                "source": public_collection,
                "labels_from_folders": True,
                "storage_options": options,
            },
            "views": ["test_tiny"],
            "extraction": {"cache_dir": str(tmp_path / "features"), "batch_size": 8},
            "clustering": {"seeds": 1},
            "report": {"enabled": False},
        },
        "search": {"clustering.n_clusters": {"grid": [2, 3]}},
        "num_samples": 1,
        "objective": {"metric": "ari", "mode": "max"},
        "tracking": {"enabled": False},
    }
    path = tmp_path / "bucket.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    ((sweep, base_dir),) = load_sweeps(path).values()
    result = run_sweep(sweep, base_dir, progress=False)

    assert result.n_trials == 2 and result.n_errored == 0
    n_images = len(CATEGORIES) * PER_CATEGORY
    assert result.features["n_images"] == n_images
    assert result.features["views"]["test_tiny"]["n_extracted"] == n_images
    base = yaml.safe_load((result.sweep_dir / "base.yaml").read_text())
    assert base["input"]["source"] == public_collection  # a URI, not made a local path
    assert base["input"]["storage_options"] == options
    with (result.sweep_dir / "trials.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(int(float(r["clustering.n_clusters"])) for r in rows) == [2, 3]
    assert all(0.0 <= float(r["ari"]) <= 1.0 for r in rows)
    assert json.loads((result.sweep_dir / "features.json").read_text()) == result.features
