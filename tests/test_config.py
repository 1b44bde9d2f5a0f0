import pytest
import yaml

from rayclust.config import ConfigError, RunConfig, load_config, parse_overrides


def test_defaults_are_valid_and_round_trip(tmp_path):
    config = load_config()
    assert isinstance(config, RunConfig)
    path = tmp_path / "resolved.yaml"
    config.to_yaml(path)
    assert load_config(path) == config


def test_yaml_then_overrides_win(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({"clustering": {"seeds": 3, "algorithm": "spectral"}}))
    config = load_config(path, ["clustering.seeds=7", "views=[efficientnet_lite0, efficientnet_lite1]"])
    assert config.clustering.seeds == 7
    assert config.clustering.algorithm == "spectral"  # kept from the file
    assert config.views == ["efficientnet_lite0", "efficientnet_lite1"]
    assert config.extraction.batch_size == 32  # untouched default


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["clustering.sedes=3"], r"unknown config key clustering\.sedes; did you mean clustering\.seeds"),
        (["extracton.batch_size=3"], r"unknown config key extracton; did you mean extraction"),
        (["clustering.seeds=three"], r"clustering\.seeds='three' should be int"),
        (["clustering.seeds=true"], r"clustering\.seeds=True should be int, not a boolean"),
        (["clustering.algorithm=dbscan"], r"clustering\.algorithm='dbscan' is not one of"),
        (["clustering.n_clusters=0"], r"clustering\.n_clusters=0 should be >= 1"),
        (["clustering.n_clusters=many"], r"clustering\.n_clusters='many' has the wrong type"),
        (["views=efficientnet_lite0"], r"views='efficientnet_lite0' should be a list"),
        (["views=[]"], r"views is empty"),
        (["input=3"], r"input should be a mapping"),
        (["clustering.seeds"], r"should look like key\.sub=value"),
    ],
)
def test_bad_config_fails_at_load_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=overrides)


def test_auto_clusters_and_int_to_float():
    config = load_config(overrides=["clustering.n_clusters=auto", "extraction.cpus_per_actor=1"])
    assert config.clustering.n_clusters == "auto"
    assert config.extraction.cpus_per_actor == 1.0 and isinstance(config.extraction.cpus_per_actor, float)


def test_exponent_floats_from_yaml_are_numbers():
    # PyYAML reads "1e-3" as a string; a float field takes it as the number.
    config = load_config(overrides=["input.max_pixels=5", "extraction.cpus_per_actor=5e-1"])
    assert config.extraction.cpus_per_actor == 0.5
    with pytest.raises(ConfigError, match="cpus_per_actor='lots'"):
        load_config(overrides=["extraction.cpus_per_actor=lots"])


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(bad)


def test_parse_overrides_nests_and_parses_yaml_values():
    assert parse_overrides(["a.b=1", "a.c=x", "d=[1, 2]", "e="]) == {
        "a": {"b": 1, "c": "x"}, "d": [1, 2], "e": None,
    }
