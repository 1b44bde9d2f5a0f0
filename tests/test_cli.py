"""The CLI as users meet it: help texts, one skeleton, key=value anywhere, clear usage errors."""

import subprocess
import sys

import pytest

from rayclust.cli import COMMANDS, build_parser, main, register_cluster, register_views
from rayclust.cli_common import new_parser, split_overrides
from rayclust.cluster.registry import ALGORITHMS


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: rayclust {command}" in capsys.readouterr().out


def test_top_level_help_lists_every_command_without_importing_the_stages():
    code = (
        "import sys\n"
        "from rayclust.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit as exit_info:\n"
        "    assert exit_info.code == 0\n"
        "heavy = sorted(m for m in ('torch', 'ray', 'rayclust.train', 'rayclust.deep') "
        "if m in sys.modules)\n"
        "print('imported:', heavy)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    assert all(name in out for name in COMMANDS)
    assert "imported: []" in out


def test_every_command_registers_a_handler():
    parser = build_parser()
    commands = {
        "cluster": ["imgs"], "run": ["c.yaml"], "views": [], "train": ["c.yaml"],
        "deep": ["c.yaml"], "tune": ["c.yaml"], "report": ["runs/x"],
        "check-cluster": ["cluster.yaml"], "predict": ["runs/x", "new"],
        "export": ["runs/x", "out"], "fetch-weights": ["clip_b16"],
    }
    assert set(commands) == set(COMMANDS)
    for command, argv in commands.items():
        assert callable(parser.parse_args([command, *argv]).handler)


def test_algorithm_choices_come_from_the_registry(capsys):
    assert {"agglomerative", "hierarchical_kmeans"} <= set(ALGORITHMS)
    for name in ALGORITHMS:
        assert build_parser().parse_args(["cluster", "x", "--algorithm", name]).algorithm == name
    with pytest.raises(SystemExit) as exit_info:
        main(["cluster", "x", "--algorithm", "dbscan"])
    assert exit_info.value.code == 2 and "invalid choice: 'dbscan'" in capsys.readouterr().err


def test_cluster_flags_from_the_issue_parse():
    args = build_parser().parse_args(
        [
            "cluster",
            "imgs",
            "--clusters",
            "7",
            "--labels-from-folders",
            "--output",
            "out",
            "--view",
            "a",
            "--view",
            "b",
            "--algorithm",
            "spectral",
            "--seeds",
            "3",
        ]
    )
    assert (args.clusters, args.labels_from_folders, args.output) == (7, True, "out")
    assert args.views == ["a", "b"] and args.algorithm == "spectral" and args.seeds == 3
    assert build_parser().parse_args(["cluster", "x", "--clusters", "auto"]).clusters == "auto"


@pytest.mark.parametrize("bad", ["0", "many"])
def test_bad_cluster_count_is_a_usage_error(bad, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["cluster", "imgs", "--clusters", bad])
    assert exit_info.value.code == 2
    assert "--clusters" in capsys.readouterr().err


def test_overrides_are_taken_from_anywhere():
    _, subparsers = new_parser()
    register_cluster(subparsers)
    register_views(subparsers)
    commands = subparsers.choices
    rest, overrides = split_overrides(["cluster", "imgs", "a.b=1", "--seeds", "2", "c=x"], commands)
    assert rest == ["cluster", "imgs", "--seeds", "2"] and overrides == ["a.b=1", "c=x"]
    # A command without overrides gets its line untouched.
    assert split_overrides(["views", "a=1"], commands) == (["views", "a=1"], [])


@pytest.mark.parametrize("command, option", [("train", "-q"), ("deep", "--no-mlflow"), ("tune", "-q")])
def test_stage_commands_take_overrides_after_options_too(command, option, tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("{}\n")
    # A misspelt key after an option is still read as an override, and named.
    assert main([command, str(path), option, "nmae=x"]) == 2
    assert "unknown config key nmae; did you mean name" in capsys.readouterr().err


def test_bad_config_key_exits_2_naming_it(tmp_path, capsys):
    assert main(["cluster", str(tmp_path), "clustering.sedes=3"]) == 2
    assert "clustering.sedes" in capsys.readouterr().err


def test_usage_mistakes_are_one_line_with_exit_2(tmp_path, capsys):
    from rayclust.deep.cli import main as deep_main

    assert deep_main([str(tmp_path / "c.yaml"), "--seeds", "0"]) == 2
    assert capsys.readouterr().err.strip() == "rayclust deep: error: --seeds=0 should be >= 1"
    assert main(["run", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing.yaml does not exist" in err


def test_views_lists_the_offline_default(capsys):
    assert main(["views", "efficientnet_lite*"]) == 0
    assert "efficientnet_lite0" in capsys.readouterr().out.split()
