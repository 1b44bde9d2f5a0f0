"""Search spaces and sweep files: parsed, and checked against the stage config at load."""

from __future__ import annotations

import numpy as np
import pytest
from ray import tune

from rayclust.clustering import seed_stability
from rayclust.config import ConfigError, RunConfig
from rayclust.deep.config import DeepConfig
from rayclust.train.config import TrainConfig
from rayclust.tune.config import ObjectiveConfig, load_sweeps
from rayclust.tune.objective import check_objective
from rayclust.tune.space import SearchSpace

RUN_BASE = RunConfig(views=["pixels"]).to_dict()


def test_every_kind_becomes_its_tune_domain_and_randint_includes_high():
    space = SearchSpace.from_yaml(
        {
            "clustering.n_clusters": {"randint": [3, 8]},
            "clustering.algorithm": {"choice": ["kmeans", "spectral"]},
            "clustering.pca_dim": {"grid": [16, None]},
            "evaluation.silhouette_sample": {"randint": [100, 100]},
        },
        RunConfig,
        RUN_BASE,
    )
    domains = space.param_space()
    assert domains["clustering.pca_dim"] == {"grid_search": [16, None]}
    assert isinstance(domains["clustering.algorithm"], tune.search.sample.Categorical)
    draws = {domains["clustering.n_clusters"].sample() for _ in range(400)}
    assert draws == set(range(3, 9))  # both bounds, as written in the YAML
    config = space.trial_config({"clustering.n_clusters": 8, "clustering.pca_dim": None})
    assert config.clustering.n_clusters == 8 and config.clustering.pca_dim is None
    assert config.views == ["pixels"]  # the base is kept where the trial draws nothing


def test_continuous_ranges_for_train_and_deep_keys():
    train = SearchSpace.from_yaml(
        {"episodic.alpha": {"uniform": [0.0, 1.0]}, "optim.lr": {"loguniform": [1e-5, 1e-3]}},
        TrainConfig,
        TrainConfig(mode="none").to_dict(),
    )
    lr = train.param_space()["optim.lr"]
    assert all(1e-5 <= lr.sample() <= 1e-3 for _ in range(100))
    deep = SearchSpace.from_yaml(
        {
            "divclust.diversity_target": {"choice": [0.7, 0.95]},
            "icbpl.lambda_augmentation": {"uniform": [1, 10]},
            "divclust.n_heads": {"randint": [2, 6]},
        },
        DeepConfig,
        DeepConfig().to_dict(),
    )
    assert deep.trial_config({"divclust.diversity_target": 0.7}).divclust.diversity_target == 0.7


def test_a_misspelt_key_fails_naming_it_and_its_closest_match():
    with pytest.raises(ConfigError, match=r"clustering\.n_cluster.*did you mean clustering\.n_clusters"):
        SearchSpace.from_yaml({"clustering.n_cluster": {"randint": [3, 8]}}, RunConfig, RUN_BASE)
    with pytest.raises(ConfigError, match=r"'clustering' is a whole section"):
        SearchSpace.from_yaml({"clustering": {"choice": [1]}}, RunConfig, RUN_BASE)
    with pytest.raises(ConfigError, match=r"seeds is a value, not a section"):
        SearchSpace.from_yaml({"clustering.seeds.x": {"choice": [1]}}, RunConfig, RUN_BASE)


def test_values_a_trial_could_draw_are_checked_by_the_config_itself():
    with pytest.raises(ConfigError, match=r"search\.episodic\.alpha value 2.*should be in \[0, 1\]"):
        SearchSpace.from_yaml(
            {"episodic.alpha": {"uniform": [0, 2]}}, TrainConfig, TrainConfig(mode="none").to_dict()
        )
    with pytest.raises(ConfigError, match=r"clustering\.algorithm value 'dbscan'.*not a clust"):
        SearchSpace.from_yaml(
            {"clustering.algorithm": {"choice": ["kmeans", "dbscan"]}}, RunConfig, RUN_BASE
        )
    with pytest.raises(ConfigError, match=r"'normal' is not one of grid, choice"):
        SearchSpace.from_yaml({"clustering.seeds": {"normal": [1, 2]}}, RunConfig, RUN_BASE)
    with pytest.raises(ConfigError, match=r"randint bounds should be integers"):
        SearchSpace.from_yaml({"clustering.seeds": {"randint": [1, 2.5]}}, RunConfig, RUN_BASE)
    with pytest.raises(ConfigError, match=r"low=5 should be < high=1"):
        SearchSpace.from_yaml({"clustering.seeds": {"uniform": [5, 1]}}, RunConfig, RUN_BASE)


def test_every_registered_algorithm_can_be_searched_and_a_typo_names_the_key(tmp_path):
    path = tmp_path / "algorithms.yaml"
    path.write_text(
        "stage: cluster\n"
        "search: {clustering.algorithm: {choice: [kmeans, hierarchical_kmeans, agglomerative]}}\n"
    )
    ((sweep, _),) = load_sweeps(path).values()
    space = SearchSpace.from_yaml(sweep.search, RunConfig, RUN_BASE)
    assert space.dimension("clustering.algorithm").args == (
        "kmeans", "hierarchical_kmeans", "agglomerative"
    )
    with pytest.raises(
        ConfigError,
        match=r"search\.clustering\.algorithm value 'kmaens'.*did you mean kmeans",
    ):
        SearchSpace.from_yaml(
            {"clustering.algorithm": {"choice": ["kmeans", "kmaens"]}}, RunConfig, RUN_BASE
        )


def test_a_single_view_name_is_a_one_view_list():
    space = SearchSpace.from_yaml({"views": {"choice": ["pixels", "test_tiny"]}}, RunConfig, RUN_BASE)
    assert space.trial_config({"views": "test_tiny"}).views == ["test_tiny"]
    assert space.discrete_product(("views",)) == [{"views": "pixels"}, {"views": "test_tiny"}]


def test_search_alg_and_feature_keys_must_fit_the_space():
    space = SearchSpace.from_yaml(
        {"clustering.seeds": {"randint": [1, 3]}, "clustering.pca_dim": {"grid": [8, 16]}},
        RunConfig,
        RUN_BASE,
    )
    with pytest.raises(ConfigError, match=r"search_alg=grid needs grid or choice.*clustering\.seeds"):
        space.check_search_alg("grid")
    with pytest.raises(ConfigError, match=r"optuna cannot take grid values \(clustering\.pca_dim\)"):
        space.check_search_alg("optuna")
    with pytest.raises(ConfigError, match=r"clustering\.seeds is randint.*must be choice or grid"):
        space.discrete_product(("clustering.seeds",))


def test_objective_needs_labels_for_external_scores():
    check_objective("cluster", ObjectiveConfig("silhouette"), has_labels=False)
    check_objective("cluster", ObjectiveConfig("stability"), has_labels=False)
    with pytest.raises(ConfigError, match=r"'ari' needs labels and these images have none"):
        check_objective("cluster", ObjectiveConfig("ari"), has_labels=False)
    with pytest.raises(ConfigError, match=r"'val_accuracy' needs data\.val_classes"):
        check_objective("train", ObjectiveConfig("val_accuracy"), has_labels=False)
    with pytest.raises(ConfigError, match=r"'accuracy' is not one of"):
        check_objective("cluster", ObjectiveConfig("accuracy"), has_labels=True)
    check_objective("deep", ObjectiveConfig("holdout_acc"), has_labels=True)


def test_seed_stability_is_one_for_identical_partitions_up_to_renaming():
    a = np.array([0, 0, 1, 1, 2, 2])
    assert seed_stability([a, (a + 1) % 3, a]) == pytest.approx(1.0)
    assert seed_stability([a, np.array([0, 1, 0, 1, 0, 1])]) < 0.1


def test_sweep_file_with_several_sweeps_and_overrides(tmp_path):
    path = tmp_path / "sweeps.yaml"
    path.write_text(
        "defaults: {max_concurrent_trials: 2}\n"
        "sweeps:\n"
        "  k: {stage: cluster, search: {clustering.n_clusters: {randint: [3, 5]}}}\n"
        "  alpha: {stage: train, scheduler: asha, objective: {metric: val_accuracy},\n"
        "          search: {episodic.alpha: {grid: [0.0, 1.0]}}}\n"
    )
    sweeps = load_sweeps(path, ["num_samples=7"])
    assert list(sweeps) == ["k", "alpha"]
    k, base_dir = sweeps["k"]
    assert base_dir == tmp_path and k.name == "sweeps-k"
    assert k.num_samples == 7 and k.max_concurrent_trials == 2
    assert sweeps["alpha"][0].scheduler == "asha"
    path.write_text("sweeps:\n  d: {stage: deep, scheduler: asha, search: {n_clusters: {choice: [3]}}}\n")
    with pytest.raises(ConfigError, match=r"sweep 'd'.*scheduler=asha needs trials that report"):
        load_sweeps(path)
    path.write_text("stage: cluster\nsearch: {}\n")
    with pytest.raises(ConfigError, match=r"search is empty"):
        load_sweeps(path)
    path.write_text("stage: cluster\nnum_sample: 3\nsearch: {clustering.seeds: {choice: [1]}}\n")
    with pytest.raises(ConfigError, match=r"unknown config key num_sample; did you mean num_samples"):
        load_sweeps(path)


def test_cli_names_a_missing_sweep_and_a_bad_key(tmp_path, capsys):
    from rayclust.cli import main

    path = tmp_path / "s.yaml"
    path.write_text("sweeps:\n  k: {stage: cluster, search: {clustering.seeds: {choice: [1, 2]}}}\n")
    assert main(["tune", str(path), "--sweep", "nope", "num_samples=2"]) == 2
    assert "--sweep 'nope' is not in" in capsys.readouterr().err
    assert main(["tune", str(path), "--sweep", "k", "num_sampels=2"]) == 2
    assert "unknown config key num_sampels; did you mean num_samples" in capsys.readouterr().err
