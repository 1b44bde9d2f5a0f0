"""Issue 18 item 10: a YAML alias bomb is refused when a config is read, in one line."""

from __future__ import annotations

import time

import pytest

from rayclust.cli import main
from rayclust.config import ConfigError, load_config, parse_overrides


def _alias_bomb(levels: int = 9) -> str:
    """A "billion laughs": 10**levels strings from a dozen lines."""
    lines = [
        "input:",
        "  source: images",
        "  storage_options:",
        "    a0: &a0 [x, x, x, x, x, x, x, x, x, x]",
    ]
    for i in range(1, levels):
        lines.append(f"    a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    return "\n".join(lines) + "\n"


def test_alias_bomb_in_a_config_file_is_refused_before_anything_expands(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(_alias_bomb())
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"bomb\.yaml: YAML alias \*a0 at line 5"):
        load_config(path)
    assert time.perf_counter() - start < 2


def test_alias_bomb_in_the_cli_is_one_line_exit_2(tmp_path, capsys):
    path = tmp_path / "bomb.yaml"
    path.write_text(_alias_bomb())
    assert main(["run", str(path), "--no-mlflow", f"output={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "aliases are not accepted" in err, err
    assert not (tmp_path / "run").exists()


def test_alias_in_an_override_is_refused():
    with pytest.raises(ConfigError, match=r"override input\.storage_options: YAML alias \*a"):
        parse_overrides(["input.storage_options={a: &a [1, 2], b: [*a, *a]}"])


def test_broken_yaml_is_one_line_naming_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("clustering: [seeds: 3\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml is not valid YAML: .* at line \d+"):
        load_config(path)


def test_an_anchor_alone_still_loads(tmp_path):
    path = tmp_path / "anchor.yaml"
    path.write_text("clustering: &c\n  seeds: 3\n")
    assert load_config(path).clustering.seeds == 3
