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
        (["extraction.store=s3://b/f"], r"extraction\.store; did you mean extraction\.cache_dir"),
        (["clustering.seeds=three"], r"clustering\.seeds='three' should be int"),
        (["clustering.seeds=true"], r"clustering\.seeds=True should be int, not a boolean"),
        (["clustering.algorithm=dbscan"], r"clustering\.algorithm='dbscan' is not a clustering algo"),
        (["clustering.algorithm=kmaens"], r"did you mean kmeans"),
        (["ensemble.view_algorithm=spectra"], r"ensemble\.view_algorithm='spectra'.*spectral"),
        (["clustering.pca_dim=0"], r"clustering\.pca_dim=0 should be >= 1 or null"),
        (["ensemble.min_relative_quality=2"], r"min_relative_quality=2\.0 should be in \[0, 1\]"),
        (["input.max_pixels=0"], r"input\.max_pixels=0 should be >= 1"),
        (["input.storage_options.secret=x"], r"input\.storage_options\.secret looks like a cred"),
        (["ray.num_cpus=0"], r"ray\.num_cpus=0 should be >= 1 or null"),
        (["clustering.n_clusters=0"], r"clustering\.n_clusters=0 should be >= 1"),
        (["clustering.n_clusters=many"], r"clustering\.n_clusters='many' has the wrong type"),
        (["views=efficientnet_lite0"], r"views='efficientnet_lite0' should be a list"),
        (["views=[]"], r"views is empty"),
        (["input=3"], r"input should be a mapping"),
        (["clustering.seeds"], r"should look like key\.sub=value"),
        (["clustering.kmeans_levels=3"], r"clustering\.kmeans_levels=3 is not one of 'auto', 1, 2"),
        (["clustering.kmeans_levels=true"], r"clustering\.kmeans_levels=True should be auto, 1 or 2"),
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


# --- one config shell: shared source section, base class, dotted keys, algorithm names ------

from pathlib import Path  # noqa: E402

from rayclust.cluster.registry import ALGORITHMS  # noqa: E402
from rayclust.config import (  # noqa: E402
    ConfigSection,
    SourceConfig,
    deep_merge,
    get_dotted,
    nest_dotted,
    set_dotted,
)
from rayclust.deep.config import DeepConfig  # noqa: E402
from rayclust.images import DEFAULT_MAX_PIXELS  # noqa: E402
from rayclust.train.config import TrainConfig  # noqa: E402
from rayclust.tune.config import SweepConfig, load_sweeps  # noqa: E402

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
# Every shipped experiment and the schema it is written for; a new file must be added here.
EXPERIMENT_SCHEMAS = {
    "digits.yaml": RunConfig,
    "mvec.yaml": RunConfig,
    "mvec_paper.yaml": RunConfig,
    "finetune.yaml": TrainConfig,
    "divclust.yaml": DeepConfig,
    "mmdc.yaml": DeepConfig,
    "icbpl.yaml": DeepConfig,
    "sweep.yaml": SweepConfig,
}


def test_every_shipped_experiment_loads():
    assert {p.name for p in EXPERIMENTS.glob("*.yaml")} == set(EXPERIMENT_SCHEMAS)
    for name, schema in EXPERIMENT_SCHEMAS.items():
        if schema is SweepConfig:
            sweeps = load_sweeps(EXPERIMENTS / name)
            assert sweeps and all(isinstance(s, SweepConfig) for s, _ in sweeps.values())
        else:
            assert isinstance(load_config(EXPERIMENTS / name, schema=schema), schema)


@pytest.mark.parametrize("schema", [RunConfig, TrainConfig, DeepConfig])
def test_every_stage_reads_images_through_the_shared_source_section(schema):
    section = "input" if schema is RunConfig else "data"
    base = ["mode=none"] if schema is TrainConfig else []  # no training classes needed

    def load(*overrides):
        return load_config(overrides=[*base, *overrides], schema=schema)

    source = getattr(load(f"{section}.source=/images", f"{section}.max_pixels=1000"), section)
    assert isinstance(source, SourceConfig)
    assert (source.source, source.max_pixels) == ("/images", 1000)
    assert load().to_dict()[section]["max_pixels"] == DEFAULT_MAX_PIXELS == 89_478_485
    with pytest.raises(ConfigError, match=rf"{section}\.max_pixels=0 should be >= 1"):
        load(f"{section}.max_pixels=0")
    with pytest.raises(ConfigError, match=rf"{section}\.storage_options\.password looks like a"):
        load(f"{section}.storage_options.password=x")


@pytest.mark.parametrize("schema", [TrainConfig, DeepConfig])
def test_class_folder_sources_refuse_what_they_cannot_read(schema):
    base = ["mode=none"] if schema is TrainConfig else []
    with pytest.raises(ConfigError, match=r"data\.storage_options=.*copy the images to local"):
        load_config(overrides=[*base, "data.storage_options.endpoint_url=http://x"], schema=schema)
    with pytest.raises(ConfigError, match=r"data\.labels_from_folders=False: the classes are"):
        load_config(overrides=[*base, "data.labels_from_folders=false"], schema=schema)


def test_s3_input_keeps_its_endpoint():
    config = load_config(
        overrides=["input.source=s3://bucket/images", "input.storage_options.endpoint_url=http://h:9"]
    )
    assert config.input.storage_options == {"endpoint_url": "http://h:9"}


@pytest.mark.parametrize("source", ["digits", "cifar10", "stl10", "/some/folder"])
def test_deep_sources_take_dataset_names(source):
    assert load_config(overrides=[f"data.source={source}"], schema=DeepConfig).data.source == source


def test_deep_config_has_a_ray_section(tmp_path):
    config = load_config(overrides=["ray.address=auto", "ray.num_cpus=2"], schema=DeepConfig)
    assert (config.ray.address, config.ray.num_cpus) == ("auto", 2)
    config.to_yaml(tmp_path / "deep.yaml")
    assert load_config(tmp_path / "deep.yaml", schema=DeepConfig) == config
    with pytest.raises(ConfigError, match=r"ray\.num_cpus=0 should be >= 1"):
        load_config(overrides=["ray.num_cpus=0"], schema=DeepConfig)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_registered_algorithm_is_accepted_everywhere(algorithm):
    assert {"kmeans", "spectral", "agglomerative", "hierarchical_kmeans"} <= set(ALGORITHMS)
    run = load_config(
        overrides=[f"clustering.algorithm={algorithm}", f"ensemble.view_algorithm={algorithm}"]
    )
    assert run.clustering.algorithm == run.ensemble.view_algorithm == algorithm
    train = load_config(overrides=["mode=none", f"evaluation.algorithm={algorithm}"],
                        schema=TrainConfig)
    assert train.evaluation.algorithm == algorithm


def test_train_evaluation_algorithm_is_checked():
    with pytest.raises(ConfigError, match=r"evaluation\.algorithm='kmeans\+\+'.*did you mean"):
        load_config(overrides=["mode=none", "evaluation.algorithm=kmeans++"], schema=TrainConfig)


@pytest.mark.parametrize("schema", [RunConfig, TrainConfig, DeepConfig, SweepConfig])
def test_every_config_shares_one_base(schema, tmp_path):
    data = {
        SweepConfig: {"search": {"clustering.seeds": {"choice": [1, 2]}}},
        TrainConfig: {"mode": "none"},
    }.get(schema, {})
    config = schema.from_dict(data)
    assert isinstance(config, ConfigSection)
    path = tmp_path / "resolved.yaml"
    config.to_yaml(path)
    assert schema.from_dict(yaml.safe_load(path.read_text())) == config
    with pytest.raises(ConfigError, match="unknown config key nmae; did you mean name"):
        schema.from_dict({**data, "nmae": "x"})


def test_dotted_helpers():
    nested = {"a": {"b": 1, "c": {"d": 2}}}
    assert deep_merge(nested, {"a": {"c": {"e": 3}}}, {"f": 4}) == {
        "a": {"b": 1, "c": {"d": 2, "e": 3}}, "f": 4,
    }
    assert nested == {"a": {"b": 1, "c": {"d": 2}}}  # inputs are left alone
    assert set_dotted({}, "x.y.z", 5) == {"x": {"y": {"z": 5}}}
    with pytest.raises(ConfigError, match=r"a\.b: a is a value, not a section"):
        set_dotted({"a": 1}, "a.b", 2)
    assert nest_dotted({"a.b": 1, "a.c": 2}) == {"a": {"b": 1, "c": 2}}
    assert get_dotted(nested, "a.c.d") == 2
    config = load_config(overrides=["clustering.seeds=3"])
    assert get_dotted(config, "clustering.seeds") == 3
    assert get_dotted(config, "clustering.nope", default=None) is None
    with pytest.raises(KeyError, match="clustering.check_at_least"):
        get_dotted(config, "clustering.check_at_least")  # fields only, not methods
