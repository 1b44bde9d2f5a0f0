"""extract_views on Ray: caching, resuming, actor faults, concurrent views, decode failures.

Every run uses real Ray actors (or, for the local engine, none) and the seeded random-init
``test_tiny`` views on small generated PNGs; the expected features come from building the
same view in this process. The local engine is also checked against the actor engine with a
real network on the shipped sample.
"""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
from PIL import Image, ImageDraw

from rayclust.config import ExtractionConfig
from rayclust.images import ImageRecord, content_id, decode_image
from rayclust.views import ViewSpec, build_view, get_view_spec
from rayclust.views.extract import (
    BATCH_DELAY_ENV,
    FAULT_KILL_ENV,
    FAULT_MARKER_ENV,
    extract_views,
    extraction_specs,
)
from rayclust.views.store import FeatureStore

pytestmark = pytest.mark.timeout(300)

N_GOOD = 30
BATCH = 8
VIEW = "test_tiny"


def _record(path) -> ImageRecord:
    return ImageRecord(str(path), content_id(path.read_bytes()))


def _draw_image(index: int) -> Image.Image:
    rng = np.random.default_rng(index)
    width, height = (int(v) for v in rng.integers(40, 96, size=2))
    img = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        x0, y0 = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
        x1, y1 = x0 + int(rng.integers(5, width // 2)), y0 + int(rng.integers(5, height // 2))
        draw.ellipse((x0, y0, x1, y1), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return img


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """30 distinct PNGs, a byte-identical duplicate of the first, and two undecodable files."""
    folder = tmp_path_factory.mktemp("images")
    good = []
    for index in range(N_GOOD):
        path = folder / f"img{index:02d}.png"
        _draw_image(index).save(path)
        good.append(path)
    duplicate = folder / "copy_of_img00.png"
    shutil.copyfile(good[0], duplicate)
    not_an_image = folder / "notes.png"
    not_an_image.write_text("a text file with an image extension\n" * 10)
    truncated = folder / "truncated.png"
    truncated.write_bytes(good[1].read_bytes()[:200])
    records = [_record(p) for p in [*good, duplicate, not_an_image, truncated]]
    return {
        "records": records,
        "good_ids": [r.image_id for r in records[:N_GOOD]],
        "bad_paths": {str(not_an_image), str(truncated)},
        "duplicate": (str(good[0]), str(duplicate)),
    }


@pytest.fixture(scope="module")
def expected_features(collection):
    """The same view built in this process: what the actors must return, row for row."""
    view = build_view(get_view_spec(VIEW))
    images = [decode_image(r.path) for r in collection["records"][:N_GOOD]]
    return view.encode(images)


@pytest.fixture(scope="module")
def first_run(ray_session, collection, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache-first")
    config = ExtractionConfig(precision="fp32", batch_size=BATCH)
    results = extract_views(collection["records"], [VIEW], cache, config, progress=False)
    return cache, results[VIEW]


def _shard_ids(store: FeatureStore) -> list[str]:
    ids = []
    for path in sorted(store.path.glob("shard-*.ids.json")):
        ids.extend(json.loads(path.read_text()))
    return ids


def test_first_run_extracts_unique_images_once(first_run, collection, expected_features):
    cache, result = first_run
    assert result.view == VIEW
    assert result.n_extracted == N_GOOD  # the duplicate file is not forwarded twice
    assert result.n_cached == 0 and result.n_remaining == 0
    assert result.dim == 256 and result.devices == ["cpu"]
    store = FeatureStore(cache, result.spec_key)
    assert sorted(_shard_ids(store)) == sorted(collection["good_ids"])
    features = store.get(collection["good_ids"])
    np.testing.assert_allclose(features, expected_features, rtol=1e-4, atol=1e-5)
    original, copy = collection["duplicate"]
    by_path = {r.path: r.image_id for r in collection["records"]}
    np.testing.assert_array_equal(store.get([by_path[copy]]), store.get([by_path[original]]))


def test_decode_failures_are_reported_and_persisted(first_run, collection):
    cache, result = first_run
    assert {f.path for f in result.failed} == collection["bad_paths"]
    assert {f.stage for f in result.failed} == {"decode"}
    assert all(f.reason for f in result.failed)
    store = FeatureStore(cache, result.spec_key)
    bad_ids = {r.image_id for r in collection["records"] if r.path in collection["bad_paths"]}
    assert set(store.failures()) == bad_ids


def test_second_run_does_no_forward_pass(first_run, collection):
    cache, first = first_run
    again = extract_views(collection["records"], [VIEW], cache, ExtractionConfig(precision="fp32"), progress=True)
    result = again[VIEW]
    assert result.n_extracted == 0 and result.n_cached == N_GOOD
    assert result.devices == []  # no actor was started
    assert {f.path for f in result.failed} == collection["bad_paths"]  # not retried
    assert result.spec_key == first.spec_key


def test_changed_image_is_extracted_again(first_run, collection, tmp_path, caplog):
    cache, _ = first_run
    changed = tmp_path / "img05.png"
    image = Image.open(collection["records"][5].path).convert("RGB")
    image.putpixel((0, 0), (1, 2, 3))
    image.save(changed)
    records = [*collection["records"][:N_GOOD], _record(changed)]
    with caplog.at_level(logging.INFO, logger="rayclust"):
        result = extract_views(records, [VIEW], cache, ExtractionConfig(precision="fp32"), progress=True)[VIEW]
    assert result.n_extracted == 1 and result.n_cached == N_GOOD
    # Not a terminal under pytest: progress comes as plain log lines.
    assert "extract test_tiny: 1/1 images" in caplog.text


def test_stopped_run_resumes_without_redoing_written_shards(
    ray_session, collection, expected_features, tmp_path
):
    records = collection["records"][:N_GOOD]
    config = ExtractionConfig(precision="fp32", batch_size=BATCH)
    written = []
    stopped = extract_views(
        records,
        [VIEW],
        tmp_path,
        config,
        progress=False,
        stop_after_shards=1,
        on_shard=lambda view, rows: written.append((view, rows)),
    )[VIEW]
    assert written == [(VIEW, BATCH)]
    assert stopped.n_extracted == BATCH and stopped.n_remaining == N_GOOD - BATCH
    store = FeatureStore(tmp_path, stopped.spec_key)
    assert len(store) == BATCH and store.n_shards == 1

    resumed = extract_views(records, [VIEW], tmp_path, config, progress=False)[VIEW]
    assert resumed.n_cached == BATCH
    assert resumed.n_extracted == N_GOOD - BATCH  # the stored shard is not forwarded again
    assert resumed.n_remaining == 0
    store.refresh()
    assert sorted(_shard_ids(store)) == sorted(collection["good_ids"])
    np.testing.assert_allclose(
        store.get(collection["good_ids"]), expected_features, rtol=1e-4, atol=1e-5
    )


def test_killed_actor_is_restarted_and_each_image_stored_once(
    ray_session, collection, first_run, tmp_path, monkeypatch
):
    marker_prefix = tmp_path / "killed"
    monkeypatch.setenv(FAULT_KILL_ENV, "2")
    monkeypatch.setenv(FAULT_MARKER_ENV, str(marker_prefix))
    cache = tmp_path / "cache"
    config = ExtractionConfig(precision="fp32", batch_size=BATCH, max_restarts=2)
    result = extract_views(collection["records"], [VIEW], cache, config, progress=False)[VIEW]

    markers = list(tmp_path.glob("killed-*"))
    assert len(markers) == 1, "the actor was never killed: the test proves nothing"
    assert result.n_extracted == N_GOOD and result.n_remaining == 0
    store = FeatureStore(cache, result.spec_key)
    stored = _shard_ids(store)
    assert len(stored) == len(set(stored)) == N_GOOD
    # Same batches as the undisturbed first run: the same numbers, up to float rounding
    # (oneDNN kernels are not bit-reproducible across processes; differences are ~1e-8).
    undisturbed = FeatureStore(first_run[0], result.spec_key)
    np.testing.assert_allclose(
        store.get(collection["good_ids"]),
        undisturbed.get(collection["good_ids"]),
        rtol=1e-5,
        atol=1e-7,
    )
    assert {f.path for f in result.failed} == collection["bad_paths"]


def test_actor_dying_for_good_raises_and_keeps_finished_shards(
    ray_session, collection, tmp_path, monkeypatch
):
    monkeypatch.setenv(FAULT_KILL_ENV, "1")
    monkeypatch.setenv(FAULT_MARKER_ENV, str(tmp_path / "killed"))
    cache = tmp_path / "cache"
    config = ExtractionConfig(precision="fp32", batch_size=BATCH, max_restarts=0)
    with pytest.raises(
        RuntimeError, match=r"every extraction actor of view test_tiny died \(max_restarts=0"
    ):
        extract_views(collection["records"][:N_GOOD], [VIEW], cache, config, progress=False)
    store = FeatureStore(cache, extraction_specs(VIEW, config)[0].key())
    kept = _shard_ids(store)  # whatever reached the driver before the crash (0 or 1 batch)
    assert len(kept) == len(set(kept)) and len(kept) in (0, BATCH)

    monkeypatch.delenv(FAULT_KILL_ENV)
    rerun = extract_views(collection["records"][:N_GOOD], [VIEW], cache, config, progress=False)
    assert rerun[VIEW].n_cached == len(kept)
    assert rerun[VIEW].n_extracted == N_GOOD - len(kept)
    store.refresh()
    assert sorted(_shard_ids(store)) == sorted(collection["good_ids"])


def test_views_run_concurrently(ray_session, collection, tmp_path, monkeypatch):
    # Each forward also sleeps, so a view takes ~2 s even with tiny models; run one view
    # after the other and their forward-pass timelines could not overlap.
    monkeypatch.setenv(BATCH_DELAY_ENV, "0.25")
    views = ["test_tiny", "test_tiny_resnet"]
    config = ExtractionConfig(precision="fp32", batch_size=4)
    results = extract_views(collection["records"][:N_GOOD], views, tmp_path, config, progress=False)
    assert set(results) == set(views)
    spans = {}
    for name, result in results.items():
        assert result.n_extracted == N_GOOD
        assert len(result.timeline) == -(-N_GOOD // 4)
        spans[name] = (result.timeline[0][0], result.timeline[-1][1])
    (start_a, end_a), (start_b, end_b) = spans.values()
    overlap = min(end_a, end_b) - max(start_a, start_b)
    assert overlap > 0, f"views ran one after the other: {spans}"
    assert results["test_tiny"].dim != results["test_tiny_resnet"].dim  # really two views


def test_argument_errors(tmp_path, collection):
    records = collection["records"][:2]
    with pytest.raises(ValueError, match="stop_after_shards=0 should be >= 1"):
        extract_views(records, [VIEW], tmp_path, stop_after_shards=0)
    with pytest.raises(ValueError, match="views is empty"):
        extract_views(records, [], tmp_path)
    with pytest.raises(ValueError, match=r"name the same view twice"):
        extract_views(records, [VIEW, VIEW], tmp_path)


def test_view_that_cannot_be_built_names_the_view(ray_session, collection, tmp_path):
    broken = ViewSpec("broken_view", "no_such_architecture", "random", weights_id="none")
    with pytest.raises(RuntimeError, match=r"could not build view broken_view in its actor"):
        extract_views(collection["records"][:2], [broken], tmp_path, progress=False)


@pytest.mark.parametrize(
    ("cluster", "options", "expected"),
    [
        # CPUs shared among all actors (min 1), no GPU: one decode thread beside the forward.
        ({"CPU": 8.0}, {}, (4.0, 0.0, 4, 1)),
        ({"CPU": 1.0}, {}, (1.0, 0.0, 1, 1)),
        # A GPU in the cluster: one per actor, decoding gets every CPU of the actor.
        ({"CPU": 16.0, "GPU": 2.0}, {}, (8.0, 1.0, 8, 8)),
        (
            {"CPU": 16.0, "GPU": 2.0},
            {"gpus_per_actor": 0.0, "cpus_per_actor": 0.5},
            (0.5, 0.0, 1, 1),
        ),
    ],
)
def test_actor_resources_follow_the_cluster(cluster, options, expected):
    from rayclust.views.actors import plan_actor_resources

    plan = plan_actor_resources(ExtractionConfig(**options), 2, cluster, cluster)
    assert (plan.cpus, plan.gpus, plan.threads, plan.decode_workers) == expected


@pytest.mark.gpu
def test_gpu_cluster_extracts_on_cuda(ray_session, collection, tmp_path):
    result = extract_views(collection["records"][:N_GOOD], [VIEW], tmp_path, progress=False)[VIEW]
    assert result.devices == ["cuda"]
    assert result.n_extracted == N_GOOD
    features = FeatureStore(tmp_path, result.spec_key).get(collection["good_ids"])
    assert np.isfinite(features).all() and features.shape == (N_GOOD, result.dim)


# -- the local engine (engine="local"): same features, cache and resume, no Ray ---------------


def _cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.sum(a * b, axis=1)


def test_local_engine_gives_the_features_of_the_actor_engine_on_real_images(
    ray_session, sample_dir, tmp_path
):
    # A real ImageNet network on real photos (the shipped sample), not only a random toy.
    from rayclust.images import ImageSet

    records = ImageSet.from_source(sample_dir, progress=False).records[:24]
    view = "efficientnet_lite0"
    stores = {}
    for engine in ("actors", "local"):
        config = ExtractionConfig(precision="fp32", batch_size=BATCH)
        (result,) = extract_views(
            records, view, tmp_path / engine, config, progress=False, engine=engine
        ).values()
        assert result.n_extracted == len(records) and result.devices == ["cpu"]
        stores[engine] = FeatureStore(tmp_path / engine, result.spec_key)
    ids = [r.image_id for r in records]
    actors, local = stores["actors"].get(ids), stores["local"].get(ids)
    assert _cosine_rows(actors, local).min() > 0.9999
    np.testing.assert_allclose(local, actors, rtol=1e-4, atol=1e-4)


def test_local_engine_caches_resumes_and_stores_each_image_once(
    collection, expected_features, tmp_path
):
    config = ExtractionConfig(precision="fp32", batch_size=BATCH, engine="local")
    written = []
    stopped = extract_views(
        collection["records"], [VIEW, "pixels"], tmp_path, config, progress=False,
        stop_after_shards=1, on_shard=lambda view, rows: written.append((view, rows)),
    )  # fmt: skip
    assert written == [(VIEW, BATCH)]
    assert stopped[VIEW].n_extracted == BATCH
    assert stopped["pixels"].n_extracted == 0 and stopped["pixels"].devices == []

    resumed = extract_views(collection["records"], [VIEW, "pixels"], tmp_path, config)
    result = resumed[VIEW]
    assert result.n_cached == BATCH and result.n_extracted == N_GOOD - BATCH
    assert result.n_remaining == 0 and result.devices == ["cpu"]
    assert {f.path for f in result.failed} == collection["bad_paths"]
    assert len(result.timeline) == -(-(N_GOOD + 2 - BATCH) // BATCH)
    store = FeatureStore(tmp_path, result.spec_key)
    stored = _shard_ids(store)  # the duplicate file and the resumed batch: stored once
    assert len(stored) == len(set(stored)) == N_GOOD
    np.testing.assert_allclose(
        store.get(collection["good_ids"]), expected_features, rtol=1e-4, atol=1e-5
    )
    assert resumed["pixels"].n_extracted == N_GOOD and resumed["pixels"].dim == 3 * 32 * 32

    again = extract_views(collection["records"], VIEW, tmp_path, config, progress=False)[VIEW]
    assert again.n_extracted == 0 and again.n_cached == N_GOOD and again.devices == []


def test_view_encoder_matches_the_stored_features(collection, expected_features, tmp_path):
    from rayclust.views import ViewEncoder, resolve_view

    encoder = ViewEncoder(VIEW)
    assert encoder.key == resolve_view(VIEW).key() == get_view_spec(VIEW).key()
    assert resolve_view(encoder.spec) is encoder.spec
    images = [decode_image(r.path) for r in collection["records"][:N_GOOD]]
    features = encoder.encode(images, batch_size=7)
    assert features.dtype == np.float32 and features.shape == (N_GOOD, encoder.feature_dim)
    np.testing.assert_allclose(features, expected_features, rtol=1e-4, atol=1e-5)
    # Grayscale in, as a decoded file would be: converted to RGB first.
    gray = ViewEncoder("pixels16").encode([images[0].convert("L")])
    assert gray.shape == (1, 3 * 16 * 16)
    assert ViewEncoder("pixels").encode([]).shape == (0, 3 * 32 * 32)


def test_local_engine_starts_no_ray(collection, tmp_path):
    # A fresh interpreter: the test session's own Ray would hide a Ray started by the engine.
    import subprocess
    import sys

    paths = [r.path for r in collection["records"][:6]]
    script = f"""
import json, sys
from rayclust.config import ExtractionConfig
from rayclust.images import ImageRecord, content_id
from pathlib import Path
from rayclust.views import extract_views
records = [ImageRecord(p, content_id(Path(p).read_bytes())) for p in {paths!r}]
config = ExtractionConfig(precision="fp32", batch_size=4, engine="local")
(result,) = extract_views(records, "{VIEW}", {str(tmp_path)!r}, config, progress=False).values()
ray = sys.modules.get("ray")
print(json.dumps({{"n": result.n_extracted, "ray_imported": ray is not None,
                  "ray_initialized": bool(ray and ray.is_initialized())}}))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=240, check=True
    )
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome == {"n": 6, "ray_imported": False, "ray_initialized": False}


def test_unknown_engine_lists_the_engines(collection, tmp_path):
    with pytest.raises(
        ValueError, match=r"engine='spark' is not one of 'auto', 'actors', 'stream', 'local'"
    ):
        extract_views(collection["records"][:2], VIEW, tmp_path, engine="spark")
