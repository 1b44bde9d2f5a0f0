"""Configs (the shipped experiments load; bad values fail naming the key), data sources and
the ``rayclust deep`` command."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from rayclust.config import ConfigError
from rayclust.deep import DatasetUnavailableError, extract_frozen_features, load_deep_config
from rayclust.deep.cli import main
from rayclust.deep.config import DeepDataConfig, DeepFeaturesConfig
from rayclust.deep.data import digits_source, load_image_source

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


@pytest.mark.parametrize("method", ["divclust", "mmdc", "icbpl"])
def test_shipped_experiment_configs_load(method):
    config = load_deep_config(EXPERIMENTS / f"{method}.yaml")
    assert config.method == method
    assert config.data.source == "digits"


def test_divclust_paper_defaults():
    c = load_deep_config(None, ["method=divclust"]).divclust
    assert (c.memory_bank, c.update_interval, c.threshold_momentum) == (10_000, 20, 0.01)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["divclust.diversity_target=1.5"], r"divclust.diversity_target=1.5 should be in \(0, 1\]"),
        (
            ["method=icbpl", "n_clusters=20", "icbpl.latent_dim=8"],
            r"icbpl.latent_dim=8 should be >= n_clusters - 1 = 19",
        ),
        (["features.n_augmented=1"], r"features.n_augmented=1 should be >= 2"),
        (["features.augmentations=[crop,zoom]"], r"unknown \['zoom'\]"),
        (["trainer.epoch=3"], r"unknown config key trainer.epoch; did you mean trainer.epochs\?"),
        (["method=kmeans"], r"method='kmeans' is not one of"),
        (
            ["method=mmdc", "features.rotations=false"],
            r"mmdc.rotation=true needs features.rotations=true",
        ),
    ],
)
def test_bad_configs_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_deep_config(None, overrides)


@pytest.mark.parametrize("name", ["cifar10", "stl10"])
def test_torchvision_dataset_offline_fails_clearly(tmp_path, name):
    with pytest.raises(
        DatasetUnavailableError,
        match=rf"{name} is not under .* could not be downloaded .* set data.download=true",
    ):
        load_image_source(DeepDataConfig(source=name, root=str(tmp_path)))


@pytest.mark.parametrize("method", ["divclust", "mmdc", "icbpl"])
@pytest.mark.parametrize("name", ["cifar10", "stl10"])
def test_shipped_configs_take_a_torchvision_source(method, name, tmp_path):
    """The YAML headers' CIFAR-10 / STL-10 overrides load; without the files (and with
    download off, so that a machine with a network does not fetch 170 MB in a test) the
    run stops with the message saying what to do."""
    config = load_deep_config(
        EXPERIMENTS / f"{method}.yaml",
        [
            f"data.source={name}",
            f"data.root={tmp_path}",
            "features.view=efficientnet_lite0",
            "features.mode=finetune",
        ],
    )
    assert config.data.source == name and config.features.mode == "finetune"
    with pytest.raises(DatasetUnavailableError, match="With a network set data.download=true"):
        load_image_source(config.data)


def test_missing_folder_fails_clearly(tmp_path):
    with pytest.raises(DatasetUnavailableError, match="nor an existing folder"):
        load_image_source(DeepDataConfig(source=str(tmp_path / "nowhere")))


def test_folder_source_through_a_real_view(tmp_path):
    """A labelled folder (first-level sub-folders = classes) through the test_tiny view."""
    digits = digits_source()
    for i in range(12):
        folder = tmp_path / "images" / f"class_{digits.labels[i]}"
        folder.mkdir(parents=True, exist_ok=True)
        digits.load(i).save(folder / f"{i}.png")
    source = load_image_source(DeepDataConfig(source=str(tmp_path / "images")))
    assert len(source) == 12 and len(source.class_names) == len(set(digits.labels[:12]))
    config = DeepFeaturesConfig(view="test_tiny", cache_dir=str(tmp_path / "cache"))
    features = extract_frozen_features(source, config)
    assert features.base.shape[0] == 12
    assert features.augmented.shape == (12, 2, features.dim)
    assert features.rotated is None
    # Augmented copies are different images, so their features differ from the original's.
    assert not np.allclose(features.augmented[:, 0], features.base)
    again = extract_frozen_features(source, config)  # from the cache this time
    np.testing.assert_array_equal(again.augmented, features.augmented)


def test_cli_bad_override_exits_2(capsys):
    assert main([str(EXPERIMENTS / "mmdc.yaml"), "mmdc.refine_epochs=-1"]) == 2
    assert "mmdc.refine_epochs=-1" in capsys.readouterr().err


def test_cli_runs_an_experiment(tmp_path, capsys, deep_cache):
    out = tmp_path / "run"
    code = main(
        [
            str(EXPERIMENTS / "icbpl.yaml"),
            "trainer.backend=local",
            "trainer.epochs=3",
            "data.max_images=600",
            "data.holdout_fraction=0.25",
            "trainer.batch_size=128",
            "trainer.hidden_dim=128",
            f"features.cache_dir={deep_cache}",
            f"output={out}",
            "--no-mlflow",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "icbpl: 450 train / 150 held-out images, 10 clusters, 3 epochs" in printed
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["n_holdout"] == 150 and "holdout" in summary["metrics"]
    assert len((out / "assignments.csv").read_text().splitlines()) == 601
    assert load_deep_config(out / "config.yaml").trainer.epochs == 3


def test_standard_error_from_population_std():
    from rayclust.deep.cli import standard_error
    from rayclust.metrics import summarize

    # values 1, 2, 3: population std sqrt(2/3); sample std 1; SE = 1 / sqrt(3)
    stats = summarize([{"nmi": 1.0}, {"nmi": 2.0}, {"nmi": 3.0}])["nmi"]
    assert standard_error(stats) == pytest.approx(1 / 3**0.5)
    assert math.isnan(standard_error(summarize([{"nmi": 1.0}])["nmi"]))


def test_deep_scores_carry_geometric_nmi():
    from rayclust.deep.api import split_scores

    # classes [0,0,1,1], clusters [0,0,0,1]: I = 1.5 log 2 - 0.75 log 3 nats,
    # H(y) = log 2, H(c) = 2 log 2 - 0.75 log 3; geometric NMI = I / sqrt(H(y) H(c))
    scores = split_scores(np.array([0, 0, 1, 1]), np.array([0, 0, 0, 1]))
    mi = 1.5 * math.log(2) - 0.75 * math.log(3)
    h_y, h_c = math.log(2), 2 * math.log(2) - 0.75 * math.log(3)
    assert scores["nmi_geometric"] == pytest.approx(mi / math.sqrt(h_y * h_c))
    assert scores["nmi"] == pytest.approx(mi / ((h_y + h_c) / 2))
