"""Tiny real data for the deep objectives: 600 of scikit-learn's digits on their own pixels,
features (with augmented copies and rotations) extracted once per test session."""

from __future__ import annotations

import pytest

from rayclust.deep import load_deep_config


@pytest.fixture(scope="session")
def deep_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("deep-features")


@pytest.fixture
def digits_config(deep_cache):
    def make(method: str, *overrides: str):
        base = [
            f"method={method}",
            "data.source=digits",
            "data.max_images=600",
            "data.holdout_fraction=0.25",
            "features.view=pixels",
            "features.image_size=8",
            "features.grayscale=true",
            "features.augmentations=[crop]",
            "features.rotations=true",  # one cached extraction serves every test
            f"features.cache_dir={deep_cache}",
            "trainer.backend=local",
            "trainer.epochs=12",
            "trainer.batch_size=128",
            "trainer.hidden_dim=128",
            "tracking.enabled=false",  # tests/deep/test_tracking.py checks MLflow on its own
        ]
        return load_deep_config(None, base + list(overrides))

    return make
