"""Forward precision (auto / pinned, in the cache key, features near fp32 with real weights)
and the engine choice (``auto``: local on one machine, no Ray started by ``rayclust cluster``)."""

from __future__ import annotations

import sys
from dataclasses import replace

import numpy as np
import pytest

from rayclust import metrics
from rayclust.clustering import cluster_features, load_features
from rayclust.config import ConfigError, ExtractionConfig, load_config
from rayclust.images import ImageSet
from rayclust.views import (
    extract_views,
    extraction_specs,
    get_view_spec,
    resolve_engine,
    resolve_precision,
)
from rayclust.views import precision as precision_module

pytestmark = pytest.mark.timeout(300)


def _cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.sum(a * b, axis=1)


def test_auto_precision_follows_the_device(monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: True)
    assert resolve_precision("auto", "cpu") == "bf16"
    assert resolve_precision("auto", "cuda") == "fp16"
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: False)
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"  # pinned: as it is
    with pytest.raises(ValueError, match="precision='fp8' should be auto or one of"):
        resolve_precision("fp8", "cpu")


def test_precision_is_a_checked_config_key():
    assert load_config(overrides=["extraction.precision=bf16"]).extraction.precision == "bf16"
    assert ExtractionConfig().precision == "auto" and ExtractionConfig().engine == "auto"
    with pytest.raises(ConfigError, match=r"extraction.precision='fp8' is not one of 'auto'"):
        load_config(overrides=["extraction.precision=fp8"])
    with pytest.raises(ConfigError, match=r"extraction.precision='fp8' is not one of 'auto'"):
        ExtractionConfig(precision="fp8")


def test_precision_and_decode_rule_are_in_the_cache_key():
    spec = get_view_spec("test_tiny")
    keys = {
        (p, d): replace(spec, precision=p, decode=d).key()
        for p in ("fp32", "bf16", "fp16")
        for d in ("full", "draft-v1")
    }
    assert len(set(keys.values())) == 6
    assert keys[("fp32", "full")] == spec.key()  # the defaults keep the keys written before
    pinned = extraction_specs(["test_tiny", "pixels"], ExtractionConfig(precision="bf16"))
    assert [(s.precision, s.decode) for s in pinned] == [("bf16", "draft-v1"), ("fp32", "draft-v1")]
    with pytest.raises(ValueError, match="precision='int8' should be one of"):
        replace(spec, precision="int8")


def test_auto_engine_is_local_unless_ray_brings_something(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not imported
    config = ExtractionConfig()
    assert resolve_engine(config) == "local"
    assert resolve_engine(config, address="ray://head:10001") == "actors"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert resolve_engine(config) == "actors"
    assert resolve_engine(ExtractionConfig(engine="stream")) == "stream"


def test_cluster_command_starts_no_ray_on_one_machine(tmp_path, sample_dir, monkeypatch):
    from rayclust import pipeline
    from rayclust.cli import main

    def no_ray(*args, **kwargs):
        raise AssertionError("rayclust cluster started Ray on one machine")

    monkeypatch.setattr(pipeline, "ensure_ray", no_ray)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` anywhere now fails
    code = main(
        [
            "cluster", str(sample_dir / "smileys"), "--view", "test_tiny", "--clusters", "2",
            "--seeds", "1", "--no-mlflow", "--output", str(tmp_path / "run"),
            "--cache-dir", str(tmp_path / "cache"), "report.enabled=false",
        ]
    )  # fmt: skip
    assert code == 0
    assert (tmp_path / "run" / "assignments.csv").exists()


@pytest.fixture(scope="module")
def sample_features(sample_dir, tmp_path_factory):
    """efficientnet_lite0 on the shipped sample (real weights, real images), fp32 and bf16."""
    images = ImageSet.from_source(sample_dir, labels_from_folders=True, progress=False)
    cache = tmp_path_factory.mktemp("precision-cache")
    keys = {}
    for precision in ("fp32", "bf16"):
        config = ExtractionConfig(precision=precision, engine="local")
        (result,) = extract_views(
            images.records, "efficientnet_lite0", cache, config, progress=False
        ).values()
        assert result.n_extracted == len(images.records)
        keys[precision] = result.spec_key
    assert keys["fp32"] != keys["bf16"]
    return images, cache, keys


def _features(images, cache, key):
    # One algorithm for both runs: the comparison is of precisions, not of selections.
    config = load_config(
        overrides={"extraction": {"cache_dir": str(cache)}, "clustering": {"select": "off"}}
    )
    return config, load_features(
        config, images.image_ids, {"efficientnet_lite0": key}, images.labels
    )


def test_bf16_features_are_within_cosine_0999_of_fp32(sample_features):
    images, cache, keys = sample_features
    fp32 = _features(images, cache, keys["fp32"])[1].combined
    bf16 = _features(images, cache, keys["bf16"])[1].combined
    cosine = _cosine_rows(fp32, bf16)
    assert cosine.min() >= 0.999, f"worst image at cosine {cosine.min():.5f}"


def test_bf16_assignments_match_the_fp32_run(sample_features):
    images, cache, keys = sample_features
    labels = {}
    for precision in ("fp32", "bf16"):
        config, features = _features(images, cache, keys[precision])
        result = cluster_features(features, config, n_clusters=5)
        labels[precision] = result.labels
    ari = metrics.external_scores(labels["fp32"], labels["bf16"])["ari"]
    assert ari >= 0.98, f"ARI of the bf16 run against the fp32 run: {ari:.3f}"


@pytest.mark.gpu
def test_fp16_on_cuda_is_within_cosine_0999_of_fp32_on_the_cpu(sample_dir):
    import torch

    from rayclust.images import decode_image
    from rayclust.views import ViewEncoder

    images = ImageSet.from_source(sample_dir, progress=False).records[::8]
    spec = extraction_specs("efficientnet_lite0", ExtractionConfig(precision="fp32"))[0]
    cpu = ViewEncoder(spec)
    cuda = ViewEncoder(replace(spec, precision=resolve_precision("auto", "cuda")), "cuda")
    assert torch.cuda.is_available() and cuda.precision == "fp16"
    tensors = [cpu.transform(decode_image(r.path, target_size=cpu.decode_size)) for r in images]
    cosine = _cosine_rows(cpu.encode_tensors(tensors), cuda.encode_tensors(tensors))
    assert cosine.min() >= 0.999, f"worst image at cosine {cosine.min():.5f}"
