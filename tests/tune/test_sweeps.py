"""Real sweeps on the shared Ray session: clustering on features extracted once, fine-tuning
with ASHA and per-epoch checkpoints, deep heads; each checked in the sweep folder and MLflow."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from rayclust import tracking
from rayclust.config import ConfigError, config_from_dict, load_config
from rayclust.tune import load_sweeps, run_sweep
from rayclust.tune.objective import FAIL_AFTER_EPOCH_ENV, FAIL_ONCE_ENV, TRIAL_LOG_ENV

VIEWS = ["pixels", "test_tiny"]
N_SAMPLE = 120


def _sweep(tmp_path: Path, body: dict, name: str):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    ((sweep, base_dir),) = load_sweeps(path).values()
    return sweep, base_dir


def _trial_events(path: Path) -> Counter:
    return Counter(tuple(line.split()) for line in path.read_text().splitlines())


def _children(sweep_dir: Path) -> list:
    record = json.loads((sweep_dir / "mlflow.json").read_text())
    return tracking.child_runs(record["tracking_uri"], record["run_id"])


@pytest.fixture(scope="module")
def cluster_sweep(ray_session, sample_dir, tmp_path_factory):
    """A 6-trial sweep over two views, k and PCA; one trial fails once and is retried."""
    tmp = tmp_path_factory.mktemp("cluster-sweep")
    body = {
        "stage": "cluster",
        "output": str(tmp / "runs" / "views-k"),
        "config": {
            "input": {"source": str(sample_dir), "labels_from_folders": True},
            "views": ["pixels"],
            "extraction": {"cache_dir": str(tmp / "features"), "batch_size": 32},
            "clustering": {"seeds": 2},
            "report": {"enabled": False},
        },
        "search": {
            "views": {"grid": VIEWS},
            "clustering.n_clusters": {"randint": [4, 6]},
            "clustering.pca_dim": {"choice": [8, None]},
        },
        "num_samples": 3,
        "max_concurrent_trials": 2,
        "max_failures": 1,
        "objective": {"metric": "ari", "mode": "max"},
        "tracking": {"uri": tracking.default_tracking_uri(tmp / "runs")},
    }
    sweep, base_dir = _sweep(tmp, body, "views-k")
    log = tmp / "trials.log"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(TRIAL_LOG_ENV, str(log))
        mp.setenv(FAIL_ONCE_ENV, str(tmp / "failed-once"))
        result = run_sweep(sweep, base_dir, progress=False)
    return {"result": result, "log": log, "tmp": tmp, "body": body, "sweep": sweep}


def test_each_view_is_extracted_once_for_the_whole_sweep(cluster_sweep):
    result = cluster_sweep["result"]
    features = json.loads((result.sweep_dir / "features.json").read_text())
    # Every image went through each view's forward pass exactly once, before any trial ran;
    # the trials (6 of them, 3 per view) only read those features.
    assert {view: f["n_extracted"] for view, f in features["views"].items()} == {
        view: N_SAMPLE for view in VIEWS
    }
    assert all(f["n_cached"] == 0 for f in features["views"].values())
    rows = _rows(result.sweep_dir)
    assert Counter(r["views"] for r in rows) == {"pixels": 3, "test_tiny": 3}

    # A second sweep over the same cache runs no forward pass at all; without labels it
    # optimises a label-free score, and asking for ARI there fails before any trial.
    tmp = cluster_sweep["tmp"]
    body = json.loads(json.dumps(cluster_sweep["body"]))
    body["output"] = str(tmp / "runs" / "unlabelled")
    body["config"]["input"]["labels_from_folders"] = False
    body["config"]["clustering"]["n_clusters"] = 5
    body["search"] = {"views": {"choice": VIEWS}, "clustering.pca_dim": {"grid": [4, 16]}}
    body["num_samples"] = 1
    body["objective"] = {"metric": "ari", "mode": "max"}
    sweep, base_dir = _sweep(tmp, body, "unlabelled")
    with pytest.raises(ConfigError, match="'ari' needs labels and these images have none"):
        run_sweep(sweep, base_dir, progress=False)
    body["objective"] = {"metric": "stability", "mode": "max"}
    sweep, base_dir = _sweep(tmp, body, "unlabelled")
    again = run_sweep(sweep, base_dir, progress=False)
    assert all(f["n_extracted"] == 0 and f["n_cached"] == N_SAMPLE
               for f in again.features["views"].values())  # fmt: skip
    assert again.n_trials == 2 and 0 <= again.best_metrics["objective"] <= 1
    assert "ari" not in again.best_metrics


def _rows(sweep_dir: Path) -> list[dict]:
    import csv

    with (sweep_dir / "trials.csv").open() as fh:
        return list(csv.DictReader(fh))


def test_an_errored_trial_is_retried_and_every_trial_has_one_child_run(cluster_sweep):
    result = cluster_sweep["result"]
    assert result.n_trials == 6 and result.n_errored == 0
    events = _trial_events(cluster_sweep["log"])
    started = Counter({trial: n for (event, trial), n in events.items() if event == "start"})
    done = Counter({trial: n for (event, trial), n in events.items() if event == "done"})
    assert len(done) == 6 and set(done.values()) == {1}
    assert sorted(started.values()) == [1, 1, 1, 1, 1, 2]  # the injected failure, retried

    children = _children(result.sweep_dir)
    assert sorted(c.data.tags["rayclust.trial_id"] for c in children) == sorted(done)
    assert {c.info.status for c in children} == {"FINISHED"}
    uri = json.loads((result.sweep_dir / "mlflow.json").read_text())["tracking_uri"]
    client = MlflowClient(tracking_uri=uri)
    by_trial = {r["trial_id"]: r for r in _rows(result.sweep_dir)}
    for child in children:
        params = child.data.params
        searched = json.loads(child.data.tags["rayclust.searched"])
        assert params["clustering.n_clusters"] == str(searched["clustering.n_clusters"])
        row = by_trial[child.data.tags["rayclust.trial_id"]]
        assert child.data.metrics["ari"] == pytest.approx(float(row["ari"]))
    parent = client.get_run(result.mlflow_parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["n_trials"] == 6
    assert parent.data.metrics["best_ari"] == pytest.approx(result.best_metrics["objective"])
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"best_config.yaml", "trials.csv", "results.md", "plots"} <= artifacts


def test_summary_table_plots_and_a_best_config_that_reruns_to_the_same_score(cluster_sweep):
    from rayclust.pipeline import run

    result = cluster_sweep["result"]
    rows = _rows(result.sweep_dir)
    scores = [float(r["objective"]) for r in rows]
    assert scores == sorted(scores, reverse=True) and len(rows) == 6
    for key in ("views", "clustering.n_clusters", "clustering.pca_dim"):
        png = result.sweep_dir / "plots" / f"{key}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (result.sweep_dir / "results.md").read_text()
    assert table.count("\n| ") == 7  # header + one row per trial

    config = load_config(result.best_config_path)  # a plain `rayclust run` config
    assert config.views == [result.best_params["views"]]
    assert config.clustering.n_clusters == result.best_params["clustering.n_clusters"]
    config = config_from_dict(
        type(config),
        {**config.to_dict(), "output": str(cluster_sweep["tmp"] / "rerun"),
         "tracking": {"enabled": False}, "report": {"enabled": False}},
    )  # fmt: skip
    rerun = run(config, progress=False)
    assert rerun.extraction[config.views[0]]["n_extracted"] == 0  # the sweep's cache
    assert rerun.metrics["summary"]["ari"]["mean"] == pytest.approx(result.best_metrics["ari"])


def test_finetuning_sweep_with_asha_reports_every_epoch_and_logs_the_best_checkpoint(
    ray_session, sample_dir, tmp_path
):
    from rayclust.train.config import TrainConfig

    body = {
        "stage": "train",
        "output": str(tmp_path / "runs" / "alpha"),
        "config": {
            "view": "test_tiny",
            "mode": "episodic",
            "epochs": 3,
            "data": {
                "source": str(sample_dir),
                "train_classes": ["computers", "flowers", "mammals"],
                "val_classes": ["road_signs", "smileys"],
                "image_size": 32,
            },
            "episodic": {"n_way": 3, "k_shot": 2, "q_query": 2, "episodes_per_epoch": 2},
            "validation": {"n_way": 2, "k_shot": 2, "q_query": 2, "episodes": 3},
            "optim": {"lr": 1e-9},  # ~0: see below
            "evaluation": {"enabled": False},
        },
        # Deterministic, so that ASHA must stop a trial: with a learning rate of ~0 every
        # trial trains the same model on the same episodes (same seed), and its train_loss,
        # alpha * scatter + (1 - alpha) * CE, is linear in the searched alpha. Run one after
        # the other in the order 0.5, 0.0, 1.0, one of the extremes is worse than the middle
        # at the first rung (epoch 1; keep the top half) whichever of scatter and CE is the
        # larger, and ASHA must stop it there; the other two run all 3 epochs.
        "search": {"episodic.alpha": {"grid": [0.5, 0.0, 1.0]}},
        "scheduler": "asha",
        "asha": {"grace_period": 1, "reduction_factor": 2},
        "objective": {"metric": "train_loss", "mode": "min"},
        "num_samples": 1,  # grid: the three alphas once, in this order
        "max_concurrent_trials": 1,
        "tracking": {"uri": tracking.default_tracking_uri(tmp_path / "runs")},
    }
    sweep, base_dir = _sweep(tmp_path, body, "alpha")
    result = run_sweep(sweep, base_dir, progress=False)
    assert result.n_trials == 3 and result.n_errored == 0
    rows = _rows(result.sweep_dir)
    iterations = {float(r["episodic.alpha"]): int(float(r["iterations"])) for r in rows}
    assert iterations[0.5] == 3, iterations  # first at every rung: never stopped
    assert sorted(iterations.values()) == [1, 3, 3], iterations  # ASHA stopped one early
    stopped = next(alpha for alpha, n in iterations.items() if n == 1)
    assert result.best_params["episodic.alpha"] == 1.0 - stopped  # the better extreme
    client = MlflowClient(tracking_uri=body["tracking"]["uri"])
    children = _children(result.sweep_dir)
    assert len(children) == 3
    for child in children:
        history = client.get_metric_history(child.info.run_id, "val_accuracy")
        assert len(history) >= 1 and {m.step for m in history} == set(range(len(history)))
        files = {a.path for a in client.list_artifacts(child.info.run_id, "best_checkpoint")}
        assert "best_checkpoint/backbone.safetensors" in files
    best = load_config(result.best_config_path, schema=TrainConfig)
    assert best.episodic.alpha == result.best_params["episodic.alpha"]
    assert best.epochs == 3 and best.view == "test_tiny"


def test_retried_training_trial_continues_from_its_checkpoint(
    ray_session, sample_dir, tmp_path, monkeypatch
):
    """A trial that fails after epoch 0 (its checkpoint reported) is retried and trains
    epochs 1 and 2 only: MLflow's history holds each epoch once."""
    marker = tmp_path / "failed-after-epoch"
    monkeypatch.setenv(FAIL_AFTER_EPOCH_ENV, str(marker))
    log = tmp_path / "trials.log"
    monkeypatch.setenv(TRIAL_LOG_ENV, str(log))
    body = {
        "stage": "train",
        "output": str(tmp_path / "runs" / "retry"),
        "config": {
            "view": "test_tiny",
            "mode": "episodic",
            "epochs": 3,
            "data": {
                "source": str(sample_dir),
                "train_classes": ["computers", "flowers", "mammals"],
                "val_classes": ["road_signs", "smileys"],
                "image_size": 32,
            },
            "episodic": {"n_way": 3, "k_shot": 2, "q_query": 2, "episodes_per_epoch": 2},
            "validation": {"n_way": 2, "k_shot": 2, "q_query": 2, "episodes": 3},
            "evaluation": {"enabled": False},
        },
        "search": {"optim.lr": {"grid": [0.001]}},
        "objective": {"metric": "val_accuracy", "mode": "max"},
        "num_samples": 1,
        "max_failures": 1,
        "tracking": {"uri": tracking.default_tracking_uri(tmp_path / "runs")},
    }
    sweep, base_dir = _sweep(tmp_path, body, "retry")
    result = run_sweep(sweep, base_dir, progress=False)
    assert marker.exists()  # the trial really failed once, after its first epoch
    assert result.n_trials == 1 and result.n_errored == 0
    assert _trial_events(log)[("start", _rows(result.sweep_dir)[0]["trial_id"])] == 2
    (child,) = _children(result.sweep_dir)
    history = MlflowClient(tracking_uri=body["tracking"]["uri"]).get_metric_history(
        child.info.run_id, "lr"
    )
    # From scratch the retry would log epoch 0 again (four entries); from the checkpoint it
    # continues at epoch 1.
    assert sorted(m.step for m in history) == [0, 1, 2]
    assert int(float(_rows(result.sweep_dir)[0]["iterations"])) == 3


def test_deep_sweep_over_diversity_target_and_heads(ray_session, tmp_path):
    from rayclust.deep.config import DeepConfig

    body = {
        "stage": "deep",
        "output": str(tmp_path / "runs" / "divclust"),
        "config": {
            "method": "divclust",
            "data": {"source": "digits", "max_images": 300, "holdout_fraction": 0.2},
            "features": {
                "view": "pixels",
                "image_size": 8,
                "grayscale": True,
                "augmentations": ["crop"],
                "n_augmented": 2,
                "cache_dir": str(tmp_path / "deep-cache"),
            },
            "trainer": {"epochs": 3, "batch_size": 120, "hidden_dim": 32},
            "divclust": {"memory_bank": 200, "update_interval": 2, "consensus_heads": 2},
        },
        "search": {
            "divclust.diversity_target": {"grid": [0.8, 0.95]},
            "divclust.n_heads": {"choice": [2, 3]},
        },
        "objective": {"metric": "ari", "mode": "max"},
        "num_samples": 1,
        "max_concurrent_trials": 2,
        "tracking": {"uri": tracking.default_tracking_uri(tmp_path / "runs")},
    }
    sweep, base_dir = _sweep(tmp_path, body, "divclust")
    result = run_sweep(sweep, base_dir, progress=False)
    assert result.n_trials == 2 and result.n_errored == 0
    assert len(result.features["feature_settings"]) == 1  # one feature set for every trial
    assert {float(r["divclust.diversity_target"]) for r in _rows(result.sweep_dir)} == {0.8, 0.95}
    best = load_config(result.best_config_path, schema=DeepConfig)
    assert best.divclust.diversity_target == result.best_params["divclust.diversity_target"]
    assert best.trainer.backend == "ray"  # as in the base: the trial's local backend is not kept
    children = _children(result.sweep_dir)
    assert len(children) == 2 and all("diversity_reached" in c.data.metrics for c in children)
    # fit_deep's own MLflow run is off in trials: the sweep's store is the only one.
    assert list(tmp_path.rglob("mlflow.db")) == [tmp_path / "runs" / "mlflow.db"]


def test_optuna_tpe_sweep(cluster_sweep):
    import optuna  # noqa: F401 - a dev dependency (pyproject [dev]): missing is a failure, not a skip

    tmp = cluster_sweep["tmp"]
    body = json.loads(json.dumps(cluster_sweep["body"]))  # the same cached features
    body["output"] = str(tmp / "runs" / "tpe")
    body["search"] = {
        "clustering.n_clusters": {"randint": [3, 7]},
        "clustering.pca_dim": {"choice": [4, 8, 16]},
    }
    body["search_alg"] = "optuna"
    body["num_samples"] = 4
    sweep, base_dir = _sweep(tmp, body, "tpe")
    result = run_sweep(sweep, base_dir, progress=False)
    assert result.n_trials == 4 and result.n_errored == 0
    assert all(f["n_extracted"] == 0 for f in result.features["views"].values())
    drawn = [int(r["clustering.n_clusters"]) for r in _rows(result.sweep_dir)]
    assert all(3 <= k <= 7 for k in drawn)
    assert len(_children(result.sweep_dir)) == 4


def test_unreachable_tracking_server_stops_a_sweep_before_any_work(sample_dir, tmp_path):
    """Issue 18 item 5, for `rayclust tune`: no Ray, no extraction, no sweep folder."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    body = {
        "stage": "cluster",
        "output": str(tmp_path / "runs" / "down"),
        "config": {"input": {"source": str(sample_dir)}, "views": ["pixels"]},
        "search": {"clustering.n_clusters": {"grid": [2, 3]}},
        "tracking": {"uri": f"http://bob:hunter2@127.0.0.1:{port}"},
    }
    sweep, base_dir = _sweep(tmp_path, body, "down")
    with pytest.raises(ConfigError, match=r"bob:\*\*\*@127\.0\.0\.1.* is unreachable") as caught:
        run_sweep(sweep, base_dir, progress=False)
    assert "hunter2" not in str(caught.value)
    assert not (tmp_path / "runs" / "down").exists()
