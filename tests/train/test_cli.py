"""``rayclust train CONFIG [--resume] [key=value ...]`` wiring, on a run that trains nothing."""

import json

import yaml

from rayclust.train.cli import main


def write_config(tmp_path, sample_classes):
    path = tmp_path / "ft.yaml"
    config = {
        "view": "test_tiny",
        "mode": "none",
        "output": str(tmp_path / "run"),
        "data": {"source": str(sample_classes.source)},
        "tracking": {"enabled": False},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def test_mode_none_records_the_view_as_is(tmp_path, sample_classes, capsys):
    path = write_config(tmp_path, sample_classes)
    assert main([str(path), "seed=3"]) == 0
    out = capsys.readouterr().out
    assert "view: test_tiny" in out
    record = json.loads((tmp_path / "run" / "result.json").read_text())
    assert record["view"] == "test_tiny" and record["best_epoch"] is None
    resolved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert resolved["seed"] == 3 and resolved["output"] == str(tmp_path / "run")


def test_resume_without_checkpoints_is_a_usage_error(tmp_path, sample_classes, capsys):
    path = write_config(tmp_path, sample_classes)
    assert main([str(path), "--resume"]) == 2
    assert "holds no checkpoint to resume from; run without --resume" in capsys.readouterr().err


def test_unknown_key_is_a_usage_error(tmp_path, sample_classes, capsys):
    path = write_config(tmp_path, sample_classes)
    assert main([str(path), "episodic.alhpa=0.5"]) == 2
    assert (
        "unknown config key episodic.alhpa; did you mean episodic.alpha?" in capsys.readouterr().err
    )
