"""The CLI as users meet it: help texts, delegation, key=value anywhere, clear usage errors."""

import pytest

from rayclust.cli import _split_overrides, build_parser, main


def test_every_subcommand_has_help(capsys):
    for command in ("cluster", "run", "views", "train", "deep"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        assert "usage: rayclust" in capsys.readouterr().out


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
    rest, overrides = _split_overrides(["cluster", "imgs", "a.b=1", "--seeds", "2", "c=x"])
    assert rest == ["cluster", "imgs", "--seeds", "2"] and overrides == ["a.b=1", "c=x"]
    assert _split_overrides(["train", "cfg.yaml", "a=1"]) == (["train", "cfg.yaml", "a=1"], [])


def test_bad_config_key_exits_2_naming_it(tmp_path, capsys):
    assert main(["cluster", str(tmp_path), "clustering.sedes=3"]) == 2
    assert "clustering.sedes" in capsys.readouterr().err


def test_views_lists_the_offline_default(capsys):
    assert main(["views", "efficientnet_lite*"]) == 0
    assert "efficientnet_lite0" in capsys.readouterr().out.split()
