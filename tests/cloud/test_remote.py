"""s3:// collections, read through an S3-compatible server on loopback (moto).

The same files live in a local folder and under ``s3://<bucket>/collection/``: two categories
of the shipped sample plus bad files of every stage. Reading either must give the same
records (content ids, labels, order), the same skipped files for the same reasons, and the
same features, whichever extraction engine ran.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from rayclust import remote
from rayclust.config import ConfigError, ExtractionConfig, load_config
from rayclust.images import ImageSet
from rayclust.views import FeatureStore, extract_views
from tests.image_factory import write_empty, write_text_as_image, write_truncated
from tests.moto_s3 import s3_server

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")

BUCKET = "rayclust-test"
CATEGORIES = ("flowers", "smileys")
VIEW = "test_tiny"
# moto accepts any credentials; botocore only needs some to sign with. Passed as options so
# the Ray workers of the shared session (started before this module) get them too.
CREDENTIALS = {"key": "testing", "secret": "testing"}


@pytest.fixture(scope="module")
def s3_endpoint():
    with s3_server() as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def options(s3_endpoint) -> dict:
    return {"endpoint_url": s3_endpoint, **CREDENTIALS}


@pytest.fixture(scope="module")
def collection(tmp_path_factory, sample_dir, options) -> tuple[Path, str]:
    """(local folder, s3 URI) holding the same files."""
    local = tmp_path_factory.mktemp("remote") / "collection"
    for category in CATEGORIES:
        shutil.copytree(sample_dir / category, local / category)
    shutil.copy(sample_dir / "PROVENANCE.md", local / "PROVENANCE.md")  # not an image
    write_truncated(local / "flowers" / "zz_truncated.png", "PNG")  # fails at decode
    write_text_as_image(local / "smileys" / "text.jpg")  # fails at scan (not an image)
    write_empty(local / "smileys" / "empty.png")
    (local / "smileys" / ".hidden.png").write_bytes(b"ignored like a local hidden file")

    fs = remote.filesystem("s3://" + BUCKET, options)
    fs.mkdir(BUCKET)
    for path in sorted(local.rglob("*")):
        if path.is_file():
            fs.pipe_file(
                f"{BUCKET}/collection/{path.relative_to(local).as_posix()}", path.read_bytes()
            )
    # A neighbour whose key starts with the same letters must not be listed with it.
    fs.pipe_file(
        f"{BUCKET}/collection-old/flowers/old.png",
        (local / "flowers").iterdir().__next__().read_bytes(),
    )
    return local, f"s3://{BUCKET}/collection"


def _relative(path: str, root: str) -> str:
    return path[len(root) :].lstrip("/")


def test_a_bucket_lists_like_its_local_copy(collection, options):
    local, uri = collection
    from_disk = ImageSet.from_source(local, labels_from_folders=True, progress=False)
    from_bucket = ImageSet.from_source(
        uri, labels_from_folders=True, progress=False, storage_options=options
    )
    assert len(from_bucket) == len(from_disk) > 20
    assert from_bucket.image_ids == from_disk.image_ids  # same content hashes, same order
    assert from_bucket.labels == from_disk.labels
    assert set(from_bucket.labels) == set(CATEGORIES)
    assert [_relative(p, uri) for p in from_bucket.paths] == [
        _relative(p, str(local)) for p in from_disk.paths
    ]
    assert all(path.startswith(uri + "/") for path in from_bucket.paths)  # not collection-old
    skipped = [(_relative(s.path, uri), s.reason, s.stage) for s in from_bucket.skipped]
    assert skipped == [
        (_relative(s.path, str(local)), s.reason, s.stage) for s in from_disk.skipped
    ]
    assert {name for name, _, _ in skipped} == {
        "PROVENANCE.md",
        "smileys/text.jpg",
        "smileys/empty.png",
    }


@pytest.mark.parametrize("engine", ["actors", "stream"])
def test_a_bucket_gives_the_features_of_its_local_copy(
    ray_session, collection, options, tmp_path, engine
):
    local, uri = collection
    config = ExtractionConfig(batch_size=8, engine=engine)
    per_source = {}
    for name, source, storage in (("disk", local, None), ("bucket", uri, options)):
        images = ImageSet.from_source(source, progress=False, storage_options=storage)
        cache = tmp_path / name  # separate caches: the bucket run must really read the bucket
        (result,) = extract_views(
            images.records, VIEW, cache, config, progress=False, storage_options=storage
        ).values()
        assert result.n_cached == 0
        good = images.without(result.failed)
        features = FeatureStore(cache, result.spec_key).get(good.image_ids)
        failed = [(_relative(f.path, str(source)), f.reason) for f in result.failed]
        per_source[name] = (good.image_ids, features, failed, result.n_extracted)
    disk, bucket = per_source["disk"], per_source["bucket"]
    assert bucket[0] == disk[0]
    assert bucket[3] == disk[3] == len(disk[0])
    np.testing.assert_allclose(bucket[1], disk[1], rtol=0, atol=1e-6)
    if engine == "actors":  # same batches in the same order: bit for bit
        assert np.array_equal(bucket[1], disk[1])
    assert bucket[2] == disk[2]
    assert [name for name, _ in bucket[2]] == ["flowers/zz_truncated.png"]
    assert "truncated" in bucket[2][0][1]


def test_a_list_file_in_the_bucket_names_keys_next_to_it(collection, options):
    local, uri = collection
    fs = remote.filesystem(uri, options)
    names = sorted(p.name for p in (local / "flowers").glob("*.png"))[:3]
    lines = ["path,label"] + [f"../collection/flowers/{n},flower" for n in names[:2]]
    lines.append(f"{uri}/flowers/{names[2]},flower")  # a full URI works as well
    fs.pipe_file(f"{BUCKET}/lists/set.csv", "\n".join(lines).encode())
    image_set = ImageSet.from_source(
        f"s3://{BUCKET}/lists/set.csv", progress=False, storage_options=options
    )
    assert image_set.labels == ["flower"] * 3
    local_ids = ImageSet.from_list(
        _write(local / "set.txt", "\n".join(f"flowers/{n}" for n in names)), progress=False
    ).image_ids
    assert image_set.image_ids == local_ids


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_the_listing_is_read_page_by_page(options):
    fs = remote.filesystem(f"s3://{BUCKET}", options)
    n_keys = 2 * remote.PAGE_SIZE + 100  # three pages of ListObjectsV2
    fs.pipe({f"{BUCKET}/many/{i:05d}.png": b"x" for i in range(n_keys)})
    calls = []
    call_s3 = fs._call_s3

    async def counting(method, *args, **kwargs):
        calls.append(method)
        return await call_s3(method, *args, **kwargs)

    fs._call_s3 = counting
    try:
        objects = remote.iter_objects(f"s3://{BUCKET}/many", options)
        first = next(objects)
        assert first.uri == f"s3://{BUCKET}/many/00000.png"
        assert calls.count("list_objects_v2") == 1  # the rest of the listing is not read yet
        rest = list(objects)
        assert calls.count("list_objects_v2") == 3
    finally:
        del fs._call_s3
    assert len(rest) + 1 == n_keys


def test_the_endpoint_can_come_from_the_environment(collection, s3_endpoint, monkeypatch):
    _, uri = collection
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_endpoint)  # botocore's own variable
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", CREDENTIALS["key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", CREDENTIALS["secret"])
    # Another option set than the other tests, so fsspec builds a fresh client that reads
    # the environment now.
    image_set = ImageSet.from_source(uri, progress=False, storage_options={"use_ssl": False})
    assert len(image_set) > 20


def test_missing_buckets_and_bad_uris_are_named(options):
    with pytest.raises(FileNotFoundError, match=r"cannot list 's3://no-such-bucket/x'"):
        ImageSet.from_source("s3://no-such-bucket/x", progress=False, storage_options=options)
    with pytest.raises(ValueError, match=r"has no usable images \(0 files skipped\)"):
        ImageSet.from_source(f"s3://{BUCKET}/nothing-here", progress=False, storage_options=options)
    with pytest.raises(ValueError, match=r"names no bucket"):
        ImageSet.from_source("s3:///images")


def test_credentials_are_refused_in_the_config():
    config = load_config(overrides=["input.storage_options.endpoint_url=http://127.0.0.1:9000"])
    assert config.input.storage_options == {"endpoint_url": "http://127.0.0.1:9000"}
    with pytest.raises(ConfigError, match=r"input.storage_options.secret looks like a credential"):
        load_config(overrides=["input.storage_options.secret=abc"])
    assert load_config(overrides=["input.storage_options.token=anon"])  # gcsfs's public mode


def test_a_run_reads_the_bucket_from_its_config(ray_session, collection, s3_endpoint, tmp_path):
    """The whole pipeline from s3://, the endpoint in the config. Credentials cannot go in a
    config (it is written out), and the shared Ray's workers did not inherit any from this
    test: moto serves unsigned (anonymous) requests, as a public bucket would."""
    from rayclust.pipeline import run

    _, uri = collection
    owner = remote.filesystem(uri, {"endpoint_url": s3_endpoint, **CREDENTIALS})
    for key in owner.find(f"{BUCKET}/collection"):  # make it a public collection
        owner.chmod(key, "public-read")
    options = {"endpoint_url": s3_endpoint, "anon": True}
    config = load_config(
        overrides={
            "input": {"source": uri, "labels_from_folders": True, "storage_options": options},
            "views": [VIEW],
            "clustering": {"seeds": 1},
            "extraction": {"cache_dir": str(tmp_path / "cache"), "batch_size": 16},
            "tracking": {"enabled": False},
            "output": str(tmp_path / "run"),
        }
    )
    result = run(config, progress=False)
    manifest = (tmp_path / "run" / "manifest.csv").read_text().splitlines()
    assert all(line.startswith(uri + "/") for line in manifest[1:])
    skipped = (tmp_path / "run" / "skipped.csv").read_text()
    assert "zz_truncated.png" in skipped and "text.jpg" in skipped
    assert result.metrics["summary"]["ari"] is not None
    # The report's thumbnails are read from the bucket with the same options.
    assert "data:image/jpeg;base64," in (tmp_path / "run" / "report.html").read_text()


def test_a_worker_scan_of_the_bucket_reads_no_object_in_the_driver(
    ray_session, collection, s3_endpoint, tmp_path, monkeypatch
):
    """extraction.scan=workers on S3: the driver lists pages of keys, the workers read
    (anonymously, as in the test above: a config holds no credentials)."""
    from rayclust.pipeline import scan_on_workers
    from tests.driver_reads import DriverReads

    local, uri = collection
    owner = remote.filesystem(uri, {"endpoint_url": s3_endpoint, **CREDENTIALS})
    for key in owner.find(f"{BUCKET}/collection"):
        owner.chmod(key, "public-read")
    options = {"endpoint_url": s3_endpoint, "anon": True}
    config = load_config(
        overrides={
            "input": {"source": uri, "labels_from_folders": True, "storage_options": options},
            "views": [VIEW],
            "extraction": {
                "cache_dir": str(tmp_path / "cache"),
                "engine": "stream",
                "scan": "workers",
            },
        }
    )
    counted = DriverReads(local, monkeypatch)  # the counter catches a driver scan
    driver = ImageSet.from_source(uri, labels_from_folders=True, storage_options=options)
    monkeypatch.undo()
    assert len(counted.files) > len(driver) > 10 and counted.bytes > 10_000

    reads = DriverReads(local, monkeypatch)
    extraction = scan_on_workers(config, tmp_path / "run")
    monkeypatch.undo()
    assert reads.files == [] and reads.bytes == 0

    (result,) = extraction.results.values()
    decode_failed = {item.path for item in result.failed}
    assert decode_failed == {f"{uri}/flowers/zz_truncated.png"}
    assert [r for r in driver.records if r.path not in decode_failed] == extraction.images.records
    by_stage = {(s.path, s.reason, s.stage) for s in extraction.images.skipped}
    assert {(s.path, s.reason, s.stage) for s in driver.skipped} < by_stage
