"""MVEC's scheme: each view clustered as soon as its features are stored (rayclust.pipeline's
EarlyViews over extract_views' on_view_done), with the same labels as clustering afterwards."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from rayclust.clustering import cluster_features, cluster_view, load_features
from rayclust.config import load_config
from rayclust.images import ImageSet, SkippedImage
from rayclust.views import extract_views

VIEWS = ["pixels16", "test_tiny"]  # a resize vs a network forward: very different costs


@pytest.fixture(scope="module")
def small_sample(tmp_path_factory, sample_dir):
    """Six images of each of three classes of the shipped sample."""
    root = tmp_path_factory.mktemp("overlap") / "sample"
    for category in sorted(p for p in sample_dir.iterdir() if p.is_dir())[:3]:
        (root / category.name).mkdir(parents=True)
        for image in sorted(category.iterdir())[:6]:
            shutil.copy(image, root / category.name / image.name)
    return root


def _config(root, tmp_path, cache, engine):
    return load_config(
        overrides={
            "input": {"source": str(root), "labels_from_folders": True},
            "output": str(tmp_path / "run"),
            "views": VIEWS,
            "extraction": {"cache_dir": str(cache), "engine": engine, "batch_size": 4},
            "clustering": {"seeds": 2},
            "report": {"enabled": False},
            "tracking": {"enabled": False},
        }
    )


def test_local_engine_reports_every_view_done_together(small_sample, feature_cache):
    done = {}
    records = ImageSet.from_source(str(small_sample), labels_from_folders=True).records
    results = extract_views(
        records,
        VIEWS,
        feature_cache,
        progress=False,
        engine="local",
        on_view_done=lambda view, result: done.setdefault(view, result),
    )
    assert list(done) == VIEWS  # once per view, in this process
    for view, result in done.items():
        assert result.n_remaining == 0
        assert result.n_extracted == results[view].n_extracted == len(records)


def test_cheap_view_is_clustered_while_the_costly_one_extracts(
    small_sample, feature_cache, tmp_path, ray_session
):
    from rayclust.pipeline import run

    records = ImageSet.from_source(str(small_sample), labels_from_folders=True).records
    # pixels16 already stored (extraction cost ~0): done the moment the actors engine starts,
    # so it is clustered while test_tiny's actors start up and run their forwards.
    extract_views(records, "pixels16", feature_cache, progress=False, engine="local")
    config = _config(small_sample, tmp_path, feature_cache, "actors")
    result = run(config, progress=False)

    timing = result.metrics["mvec_time"]
    assert timing["overlap"] is True
    spans = timing["views"]
    assert set(spans) == set(VIEWS)
    for span in spans.values():
        assert span["t1_start"] <= span["t1_end"] <= span["t2_start"] < span["t2_end"]
    assert spans["pixels16"]["t2_start"] < spans["test_tiny"]["t1_end"], spans
    # The time model max_j(t1j + t2j) + t3 against the wall: the wall cannot beat it, and a
    # view waits for nothing but its own features, so it is not far above either.
    assert timing["model_s"] <= timing["wall_s"] + 1e-6
    assert timing["wall_s"] <= 1.5 * timing["model_s"] + 1.0, timing

    # The same labels per seed as clustering after the extraction, every row.
    ids = [r.image_id for r in result.records]
    features = load_features(
        config, ids, result.metrics["view_keys"], [r.label for r in result.records]
    )
    after = cluster_features(features, config, parallel=False)
    np.testing.assert_array_equal(result.labels, after.labels)
    assert result.metrics["table"] == after.table()


def test_cluster_view_gives_the_stage_s_partitions(small_sample, feature_cache, tmp_path):
    config = _config(small_sample, tmp_path, feature_cache, "local")
    records = ImageSet.from_source(str(small_sample), labels_from_folders=True).records
    results = extract_views(records, VIEWS, feature_cache, progress=False, engine="local")
    ids = [r.image_id for r in records]
    keys = {view: r.spec_key for view, r in results.items()}
    stage = cluster_features(load_features(config, ids, keys), config, 3, parallel=False)
    for view in VIEWS:
        early = cluster_view(config, view, keys[view], ids, 3)
        assert len(early.clustered["partitions"]) == 2
        for mine, theirs in zip(
            early.clustered["partitions"], stage.rows[f"view:{view}"]["partitions"], strict=True
        ):
            np.testing.assert_array_equal(mine, theirs)


def test_a_view_clustered_on_other_rows_is_clustered_again(small_sample, feature_cache, tmp_path):
    # Another view failed to decode an image after this one was clustered: the early
    # partitions do not cover the run's rows, so the stage must not take them.
    from rayclust.view_overlap import EarlyViews

    config = _config(small_sample, tmp_path, feature_cache, "local")
    image_set = ImageSet.from_source(str(small_sample), labels_from_folders=True)
    early = EarlyViews(config, image_set, 3)
    results = extract_views(
        image_set.records,
        VIEWS,
        feature_cache,
        progress=False,
        engine="local",
        on_view_done=early.on_view_done,
    )
    try:
        keys = {view: result.spec_key for view, result in results.items()}
        ids = image_set.image_ids
        features, clustered = early.collect(ids, keys, image_set.labels, 3)
        assert features is not None and set(clustered) == set(VIEWS)
        assert early.spans(clustered)["test_tiny"]["t2_end"] is not None

        lost = SkippedImage(image_set.records[0].path, "a later view could not decode it")
        fewer = image_set.without([lost])
        features, clustered = early.collect(fewer.image_ids, keys, fewer.labels, 3)
        assert features is None and clustered == {}
        assert early.collect(ids, keys, image_set.labels, 2) == (None, {})  # k changed
    finally:
        early.close()
