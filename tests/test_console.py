"""What a user of `rayclust cluster` sees: a short console, an MLflow run that reads well, a
run folder whose config.yaml re-runs from anywhere.

Two real runs on the shipped sample: the issue's demo command (default view, label-free
selection), then its written config re-run from another directory as a two-view consensus
on the features the first run cached.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tqdm import tqdm

from rayclust import __version__
from rayclust.cli import main
from rayclust.cli_common import TqdmLogHandler
from rayclust.provenance import git_commit

REPO_ROOT = Path(__file__).resolve().parents[1]
# Progress, not messages: tqdm bars in a terminal, their plain-line stand-ins in a log.
PROGRESS = re.compile(r"extract \S+: \d+/\d+ images|scanning .*: \d+(/\d+)? files")
MAX_LINES = 12


def _rayclust(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "RAY_ADDRESS": ""}
    env.pop("RAY_AUTH_MODE", None)
    return subprocess.run(
        [sys.executable, "-m", "rayclust", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def _lines(proc: subprocess.CompletedProcess) -> list[str]:
    text = (proc.stdout + proc.stderr).replace("\r", "\n")
    return [line for line in text.splitlines() if line.strip() and not PROGRESS.search(line)]


def _mlflow_run(uri: str, run_dir: Path):
    from mlflow import MlflowClient

    run_id = json.loads((run_dir / "mlflow.json").read_text())["run_id"]
    return MlflowClient(tracking_uri=uri).get_run(run_id)


@pytest.fixture(scope="module")
def demo(sample_dir, tmp_path_factory):
    """`rayclust cluster data/sample --labels-from-folders --output runs/demo`, from the
    repository's parent folder's view: a relative source and output."""
    work = tmp_path_factory.mktemp("console")
    (work / "data").symlink_to(sample_dir.parent)
    uri = f"sqlite:///{work / 'mlflow.db'}"
    cache = work / "cache"
    proc = _rayclust(
        ["cluster", "data/sample", "--labels-from-folders", "--output", "runs/demo",
         "--cache-dir", "cache", "--tracking-uri", uri],
        cwd=work,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = work / "runs" / "demo"
    return {"proc": proc, "run_dir": run_dir, "uri": uri, "cache": cache, "work": work,
            "run": _mlflow_run(uri, run_dir)}  # fmt: skip


@pytest.fixture(scope="module")
def rerun(demo, tmp_path_factory):
    """The demo's config.yaml, run from elsewhere as a consensus of two cached views."""
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    out = demo["work"] / "consensus"
    proc = _rayclust(
        ["run", str(demo["run_dir"] / "config.yaml"), f"output={out}",
         "views=[efficientnet_lite0,pixels]", "clustering.select=off", "clustering.seeds=2",
         f"tracking.uri={demo['uri']}"],
        cwd=elsewhere,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not any(elsewhere.iterdir()), "a run wrote into the directory it was started from"
    return {"proc": proc, "run_dir": out, "run": _mlflow_run(demo["uri"], out)}


def test_a_small_run_prints_a_dozen_lines_with_the_row_and_directions(demo):
    proc, run_dir = demo["proc"], demo["run_dir"]
    lines = _lines(proc)
    assert len(lines) <= MAX_LINES, "\n".join(lines)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    chosen = metrics["selection"]["chosen"]
    out = proc.stdout
    assert f"report:     {run_dir / 'report.html'}" in out and (run_dir / "report.html").is_file()
    assert f"scores of {chosen} (row 'selected', chosen without labels)" in out
    assert "higher is better: acc" in out and "lower is better: davies_bouldin" in out
    # One skipped count (PROVENANCE.md), said the same way at the scan and at the end.
    assert metrics["n_skipped"] == 1
    assert "; 1 file skipped" in proc.stderr and "; 1 skipped (see skipped.csv)" in out
    assert "0 skipped" not in proc.stdout + proc.stderr
    for chatter in ("faiss.loader", "ModuleNotFoundError", "backend for KMeans", "KMeans: k="):
        assert chatter not in proc.stderr


def test_the_mlflow_run_covers_the_work_and_reads_well(demo):
    run, run_dir = demo["run"], demo["run_dir"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert run.info.run_name == "demo"  # the --output folder's name
    # Opened before the extraction (the cached features' files), ended after the record.
    shards = [p.stat().st_mtime for p in demo["cache"].rglob("*") if p.is_file()]
    assert shards and run.info.start_time <= min(shards) * 1000
    assert run.info.end_time >= (run_dir / "metrics.json").stat().st_mtime * 1000 - 1
    tags = run.data.tags
    assert tags["rayclust.version"] == __version__
    assert tags.get("rayclust.git_commit") == git_commit()
    assert tags["rayclust.backend"] == metrics["backend"]
    assert tags["rayclust.primary"] == metrics["selection"]["chosen"]
    assert json.loads(tags["rayclust.view_weights"]) == {
        metrics["selection"]["representation"]: 1.0
    }
    params = run.data.params
    assert params["input.source"] == str(demo["work"] / "data" / "sample")
    assert params["output"] == str(run_dir) and params["extraction.cache_dir"] == str(demo["cache"])
    assert params["views"] == '["efficientnet_lite0"]' and params["clustering.pca_dim"] == "null"
    assert not [v for v in params.values() if v in ("None", "True", "False") or v[:2] == "['"]
    (dataset,) = run.inputs.dataset_inputs
    assert dataset.dataset.name == "sample"
    assert json.loads(dataset.dataset.profile)["num_rows"] == metrics["n_images"]


def test_every_row_has_mean_and_std_in_mlflow(rerun):
    run, run_dir = rerun["run"], rerun["run_dir"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    logged = run.data.metrics
    assert {"view:efficientnet_lite0", "view:pixels", "concat"} <= set(metrics["table"])
    for row, summary in metrics["table"].items():
        for metric, stats in summary.items():
            key = f"{row.replace(':', '.')}.{metric}"
            assert logged[f"{key}_mean"] == pytest.approx(stats["mean"]), key
            assert logged[f"{key}_std"] == pytest.approx(stats["std"]), key
    assert run.info.run_name == "demo"  # the config's name, written by the first run
    weights = json.loads(run.data.tags["rayclust.view_weights"])
    assert weights == pytest.approx(metrics["view_weights"]) and len(weights) == 2


def test_the_written_config_reruns_from_another_directory_on_the_cache(demo, rerun):
    proc = rerun["proc"]
    assert "efficientnet_lite0: 120 images from the cache" in proc.stderr
    assert "pixels: 120 images from the cache" in proc.stderr
    metrics = json.loads((rerun["run_dir"] / "metrics.json").read_text())
    assert metrics["n_images"] == 120 and all(
        counts["n_extracted"] == 0 for counts in metrics["extraction"].values()
    )
    assert len(_lines(proc)) <= MAX_LINES, proc.stdout + proc.stderr


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"rayclust {__version__}")
    commit = git_commit()
    assert (f"(git {commit[:7]}" in out) if commit else out == f"rayclust {__version__}"


def test_views_say_what_each_needs(capsys):
    assert main(["views"]) == 0
    rows = {
        line.split()[0]: line.split()[1]
        for line in capsys.readouterr().out.splitlines()
        if line and not line.startswith("offline:")
    }
    assert rows["efficientnet_lite0"] == "offline" and rows["pixels16"] == "offline"
    assert rows["resnet50"] == "network" and rows["vit_small_patch16_224.dino"] == "network"
    assert rows["test_tiny"] == "test"
    assert set(rows.values()) == {"offline", "network", "test"}


def test_log_lines_go_above_a_progress_bar_not_into_it():
    stream = io.StringIO()
    logger = logging.getLogger("rayclust.test_console")
    handler = TqdmLogHandler(stream)
    logger.addHandler(handler)
    try:
        with tqdm(total=4, file=stream, desc="extract", ascii=True) as bar:
            bar.update(2)
            logger.warning("a line in the middle")
            bar.update(2)
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().replace("\r", "\n").splitlines()
    assert "a line in the middle" in lines  # a whole line, no bar text on it
    assert any("4/4" in line for line in lines)
