import pytest
import yaml

from rayclust.config import ConfigError, load_config
from rayclust.train.config import TrainConfig


def test_yaml_and_overrides_load_into_train_config(tmp_path):
    path = tmp_path / "ft.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "mode": "episodic",
                "data": {
                    "source": "/x",
                    "train_classes": ["a", "b", "c"],
                    "val_classes": ["d", "e"],
                },
                "episodic": {"n_way": 3},
                "validation": {"n_way": 2},
            }
        )
    )
    config = load_config(path, ["episodic.alpha=0.25", "optim.lr=0.001"], schema=TrainConfig)
    assert isinstance(config, TrainConfig)
    assert config.episodic.alpha == 0.25 and config.episodic.n_way == 3
    assert config.optim.lr == pytest.approx(1e-3)
    config.to_yaml(tmp_path / "resolved.yaml")
    assert load_config(tmp_path / "resolved.yaml", schema=TrainConfig) == config


BASE = {
    "data": {"train_classes": ["a", "b", "c"], "val_classes": ["d", "e"]},
    "validation": {"n_way": 2},
    "episodic": {"n_way": 3},
}


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["episodic.alhpa=0.5"],
            r"unknown config key episodic\.alhpa; did you mean episodic\.alpha",
        ),
        (
            ["data.cluster_classes=[b, z]"],
            r"data\.train_classes and data\.cluster_classes share \['b'\]",
        ),
        (["data.val_classes=[d, d]"], r"data\.val_classes names \['d'\] more than once"),
        (["episodic.alpha=2"], r"episodic\.alpha=2\.0 should be in \[0, 1\]"),
        (["episodic.n_way=4"], r"episodic\.n_way=4 should be <= len\(data\.train_classes\)=3"),
        (["validation.n_way=3"], r"validation\.n_way=3 should be <= len\(data\.val_classes\)=2"),
        (["mode=finetune"], r"mode='finetune' is not one of 'classic', 'episodic', 'none'"),
        (["freeze_stages=-1"], r"freeze_stages=-1 should be >= 0"),
        (["optim.schedule=multistep"], r"optim\.schedule='multistep' needs optim\.milestones"),
        (
            ["optim.schedule=multistep", "optim.milestones=[12]", "epochs=10"],
            r"optim\.milestones=\[12\] should lie in 1\.\.epochs-1=9",
        ),
        (["optim.grad_accum_steps=0"], r"optim\.grad_accum_steps=0 should be >= 1"),
        (["data.train_classes=[]"], r"mode='episodic' needs data\.train_classes"),
        (["scaling.num_workers=0"], r"scaling\.num_workers=0 should be >= 1"),
    ],
)
def test_invalid_configs_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, _merge(BASE, overrides), schema=TrainConfig)


def _merge(base, overrides):
    from rayclust.config import deep_merge, parse_overrides

    return deep_merge(base, parse_overrides(overrides))


def test_mode_none_needs_no_training_classes():
    config = load_config(None, ["mode=none", "data.cluster_classes=[x, y]"], schema=TrainConfig)
    assert config.mode == "none"
