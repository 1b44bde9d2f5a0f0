"""The feature store on an s3:// prefix, through an S3-compatible server on loopback (moto).

The store's guarantees must hold in a bucket as in a folder: each image stored once, a shard
counted only once its ids object exists, a damaged shard set aside and its images extracted
again; and a run must resume from a bucket store and cluster from it on Ray workers.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from rayclust import remote
from rayclust.config import ConfigError, load_config
from rayclust.views import FeatureStore
from rayclust.views.store import CacheDamageWarning
from tests.moto_s3 import s3_server

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")

BUCKET = "rayclust-store"
# A config holds no credentials, and the workers of the shared Ray session (started before
# this module) did not inherit any: the bucket is made public-read-write by its owner and
# the store reaches it unsigned, as moto serves a public bucket.
OWNER = {"key": "testing", "secret": "testing"}


@pytest.fixture(scope="module")
def options():
    with s3_server() as endpoint:
        owner = remote.filesystem(f"s3://{BUCKET}", {"endpoint_url": endpoint, **OWNER})
        owner.mkdir(BUCKET, acl="public-read-write")
        yield {"endpoint_url": endpoint, "anon": True}


def _objects(options, prefix: str) -> list[str]:
    fs = remote.filesystem(f"s3://{BUCKET}", options)
    fs.invalidate_cache()
    return sorted(key.rsplit("/", 1)[1] for key in fs.find(f"{BUCKET}/{prefix}"))


def _rows(n: int, dim: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, dim), dtype=np.float32)


def test_a_bucket_store_keeps_each_image_once_and_reopens(options):
    root = f"s3://{BUCKET}/once"
    ids = [f"id{i}" for i in range(6)]
    store = FeatureStore(root, "k", dim=8, storage_options=options)
    assert store.write(ids[:4], _rows(4)) == 4
    assert store.write(ids, _rows(6, seed=1)) == 2  # the first four are stored already
    again = FeatureStore(root, "k", storage_options=options)  # a new reader
    assert again.dim == 8 and len(again) == 6 and again.n_shards == 2
    assert again.missing(ids) == []
    np.testing.assert_array_equal(again.get(ids[:4]), _rows(4))
    np.testing.assert_array_equal(again.get(ids[4:]), _rows(6, seed=1)[4:])
    assert again.write(ids, _rows(6)) == 0  # nothing new, nothing written
    assert len(_objects(options, "once/k")) == 1 + 3 * 2  # meta + three objects per shard


def test_a_shard_without_its_ids_object_does_not_count(options):
    """A writer killed between the features' PUT and the ids' PUT."""
    root = f"s3://{BUCKET}/killed"
    ids = ["a", "b", "c"]
    store = FeatureStore(root, "k", dim=8, storage_options=options)
    store.write(ids[:1], _rows(1))
    fs = remote.filesystem(root, options)
    fs.pipe_file(f"{BUCKET}/killed/k/shard-0123456789abcdef0123.npy", b"only the features")
    again = FeatureStore(root, "k", storage_options=options)
    assert again.n_shards == 1
    assert again.missing(ids) == ["b", "c"]


def test_a_damaged_shard_in_a_bucket_is_set_aside_and_extracted_again(options):
    root = f"s3://{BUCKET}/damaged"
    ids = ["a", "b", "c"]
    FeatureStore(root, "k", dim=8, storage_options=options).write(ids, _rows(3))
    (npy,) = [name for name in _objects(options, "damaged/k") if name.endswith(".npy")]

    fs = remote.filesystem(root, options)
    other = io.BytesIO()
    np.save(other, _rows(3, seed=9))  # a well-formed array of other floats
    fs.pipe_file(f"{BUCKET}/damaged/k/{npy}", other.getvalue())
    store = FeatureStore(root, "k", storage_options=options)
    with pytest.warns(CacheDamageWarning, match=r"s3://.*do not match their checksum"):
        assert store.missing(ids) == ids
    names = _objects(options, "damaged/k")
    assert npy not in names and npy + ".damaged" in names
    assert not [name for name in names if name.endswith(".ids.json")]
    store.write(ids, _rows(3))  # what the re-extraction does
    np.testing.assert_array_equal(
        FeatureStore(root, "k", storage_options=options).get(ids), _rows(3)
    )


def test_compact_merges_the_shards_of_a_bucket_store(options):
    root = f"s3://{BUCKET}/compact"
    store = FeatureStore(root, "k", dim=8, storage_options=options)
    for part in range(3):
        store.write([f"{part}-{i}" for i in range(2)], _rows(2, seed=part))
    assert store.compact() == 2
    again = FeatureStore(root, "k", storage_options=options)
    assert again.n_shards == 1 and len(again) == 6
    np.testing.assert_array_equal(again.get(["2-0", "2-1"]), _rows(2, seed=2))


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory, sample_dir) -> Path:
    """Three categories of eight images: a run small enough for two loaded cores."""
    folder = tmp_path_factory.mktemp("small")
    for category in ("flowers", "road_signs", "smileys"):
        (folder / category).mkdir()
        for image in sorted((sample_dir / category).iterdir())[:8]:
            shutil.copy(image, folder / category / image.name)
    return folder


def _run_config(folder, cache: str, options, out, scan: str = "workers", **clustering):
    return load_config(
        overrides={
            "input": {
                "source": str(folder),
                "labels_from_folders": True,
                "storage_options": options,  # the store's too: one set for the run's buckets
            },
            "views": ["pixels16"],
            "clustering": {"seeds": 1, "select": "off", "n_clusters": 3, **clustering},
            "extraction": {
                "cache_dir": cache,
                "engine": "stream" if scan == "workers" else "local",
                "scan": scan,
            },
            "report": {"enabled": False},
            "tracking": {"enabled": False},
            "output": str(out),
        }
    )


def test_a_worker_scan_resumes_and_clusters_from_a_bucket_store(
    ray_session, small_folder, options, tmp_path
):
    from rayclust.pipeline import run, scan_on_workers

    cache = f"s3://{BUCKET}/features"
    config = _run_config(small_folder, cache, options, tmp_path / "out")
    (first,) = scan_on_workers(config, tmp_path / "scan1").results.values()
    assert first.n_extracted == 24 and first.n_cached == 0 and not first.failed
    names = _objects(options, f"features/{first.spec_key}")
    assert sum(name.endswith(".ids.json") for name in names) >= 1  # the workers wrote shards
    assert len(FeatureStore(cache, first.spec_key, storage_options=options)) == 24

    (second,) = scan_on_workers(config, tmp_path / "scan2").results.values()
    assert second.n_extracted == 0 and second.n_cached == 24  # all from the bucket

    labels = {}
    for engine in ("local", "ray"):
        config = _run_config(
            small_folder, cache, options, tmp_path / engine, "driver", engine=engine, shards=2
        )
        result = run(config, progress=False)
        labels[engine] = result.labels
    assert len(labels["local"]) == 24
    assert adjusted_rand_score(labels["local"], labels["ray"]) == 1.0
    assert _objects(options, f"features/{first.spec_key}") == names  # nothing extracted again


def test_a_missing_bucket_is_one_line_before_any_extraction(
    small_folder, options, tmp_path, monkeypatch
):
    from rayclust import pipeline

    def no_extraction(*args, **kwargs):
        raise AssertionError("extraction started")

    monkeypatch.setattr(pipeline, "scan_on_workers", no_extraction)
    monkeypatch.setattr(pipeline, "scan", no_extraction)
    config = _run_config(small_folder, "s3://no-such-bucket/features", options, tmp_path / "run")
    run = pipeline.run
    with pytest.raises(
        ConfigError, match=r"extraction.cache_dir.*bucket 'no-such-bucket' not found"
    ) as exc:
        run(config, progress=False)
    assert "\n" not in str(exc.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("cache_dir", "problem"),
    [
        ("ftp://host/features", r"scheme ftp:// is not supported"),
        ("s3:///features", r"names no bucket"),
        ("s3://key:secret@bucket/features", r"credential"),
    ],
)
def test_bad_store_uris_are_refused_at_load(cache_dir, problem):
    with pytest.raises(ConfigError, match=problem):
        load_config(overrides={"extraction": {"cache_dir": cache_dir}})
