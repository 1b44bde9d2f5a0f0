"""The Ray Data engine (``extraction.engine: stream``) against the actor engine.

Same images in, same features out (the sample plus a truncated file that only a full decode
catches), written shard by shard so a stopped run resumes, each image stored once, and Ray
Data's memory budget applied during the run only.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from rayclust.config import ConfigError, ExtractionConfig, load_config
from rayclust.images import ImageSet
from rayclust.views import FeatureStore, extract_views
from tests.image_factory import write_truncated

VIEW = "test_tiny"
BATCH = 16


N_BAD = 2 * BATCH + 1  # the first two batches fail whole, the third in part


@pytest.fixture(scope="module")
def images(sample_dir, tmp_path_factory) -> ImageSet:
    extra = tmp_path_factory.mktemp("stream-extra")
    for index in range(N_BAD):  # cut at different lengths: distinct contents, distinct ids
        write_truncated(extra / f"truncated{index:02d}.png", "PNG", keep=0.3 + 0.01 * index)
    sample = ImageSet.from_source(sample_dir, progress=False)
    bad = ImageSet.from_source(extra, progress=False)
    assert len(bad) == N_BAD  # they pass the scan: only a full decode finds them out
    return ImageSet(bad.records + sample.records, sample.skipped)


def _shard_ids(store: FeatureStore) -> list[str]:
    return [
        i
        for path in sorted(store.path.glob("shard-*.ids.json"))
        for i in json.loads(path.read_text())
    ]


def test_stream_gives_the_features_of_the_actor_engine(ray_session, images, tmp_path):
    results = {}
    for engine in ("actors", "stream"):
        config = ExtractionConfig(batch_size=BATCH, engine=engine)
        (result,) = extract_views(
            images.records, VIEW, tmp_path / engine, config, progress=False
        ).values()
        store = FeatureStore(tmp_path / engine, result.spec_key)
        results[engine] = (result, store)
    (actors, actor_store), (stream, stream_store) = results["actors"], results["stream"]
    assert stream.spec_key == actors.spec_key
    n_good = len(images) - N_BAD
    assert stream.n_extracted == actors.n_extracted == n_good
    assert sorted(stream_store.ids()) == sorted(actor_store.ids())
    good = images.without(actors.failed).image_ids
    np.testing.assert_allclose(stream_store.get(good), actor_store.get(good), rtol=0, atol=1e-6)
    assert [(f.path, f.reason) for f in stream.failed] == [
        (f.path, f.reason) for f in actors.failed
    ]
    assert len(stream.failed) == N_BAD
    assert all("truncated" in failure.reason for failure in stream.failed)
    assert stream.devices == ["cpu"]
    assert len(stream.timeline) >= -(-n_good // BATCH)  # one forward per batch at least
    assert stream.decode_seconds > 0 and stream.forward_seconds > 0


def test_a_stopped_stream_resumes_and_stores_every_image_once(ray_session, images, tmp_path):
    config = ExtractionConfig(batch_size=BATCH, engine="stream", stream_memory_mb=128)
    from ray.data import DataContext

    default_limit = DataContext.get_current().execution_options.resource_limits
    limits_seen = []

    def on_shard(view: str, added: int) -> None:
        limits_seen.append(DataContext.get_current().execution_options.resource_limits)

    (first,) = extract_views(
        images.records, VIEW, tmp_path, config, progress=False, stop_after_shards=2,
        on_shard=on_shard,
    ).values()  # fmt: skip
    store = FeatureStore(tmp_path, first.spec_key)
    assert store.n_shards == 2
    assert first.n_remaining == len(images) - len(store) - len(store.failures()) > 0
    # The budget held while the pipeline ran and was handed back afterwards.
    assert [limit.object_store_memory for limit in limits_seen] == [128 * 1024**2] * 2
    assert DataContext.get_current().execution_options.resource_limits == default_limit

    (second,) = extract_views(images.records, VIEW, tmp_path, config, progress=False).values()
    store.refresh()
    assert second.n_cached == len(store) - second.n_extracted
    assert second.n_remaining == 0
    assert len(store) == len(images) - N_BAD
    stored = _shard_ids(store)
    assert len(stored) == len(set(stored)) == len(images) - N_BAD  # no image stored twice

    (third,) = extract_views(images.records, VIEW, tmp_path, config, progress=False).values()
    assert third.n_extracted == 0 and third.n_cached == len(images) - N_BAD
    assert len(third.failed) == N_BAD  # recorded failures are reported, not retried


def test_the_engine_is_a_checked_config_key():
    assert load_config(overrides=["extraction.engine=stream"]).extraction.engine == "stream"
    assert load_config(overrides=["extraction.engine=local"]).extraction.engine == "local"
    assert ExtractionConfig().engine == "auto"
    with pytest.raises(
        ConfigError,
        match=r"extraction.engine='spark' is not one of 'auto', 'actors', 'stream', 'local'",
    ):
        load_config(overrides=["extraction.engine=spark"])
    with pytest.raises(ConfigError, match=r"extraction.stream_memory_mb=8 should be >= 64"):
        ExtractionConfig(stream_memory_mb=8)
