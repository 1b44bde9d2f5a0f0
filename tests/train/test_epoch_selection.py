"""Bjerge et al.'s epoch selection: K-means on the validation classes every epoch, the kept
epoch the best of those scores; beside it the few-shot and last-epoch rules."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from rayclust.config import ConfigError, load_config
from rayclust.train.config import TrainConfig, select_epoch
from rayclust.train.data import load_splits
from rayclust.train.loop import TrainWorker, WorkerContext
from rayclust.train.runtime import best_checkpoint


def _config(sample_classes, **validation) -> TrainConfig:
    return load_config(
        None,
        {
            "view": "test_tiny",
            "mode": "classic",
            "epochs": 4,
            "batch_size": 8,
            "seed": 3,
            "data": {
                "source": str(sample_classes.source),
                "train_classes": sample_classes.train,
                "val_classes": sample_classes.val,
                "image_size": 32,
            },
            "validation": {"n_way": 2, "k_shot": 1, "q_query": 1, "episodes": 2, **validation},
            "optim": {"lr": 0.05, "schedule": "constant"},
        },
        schema=TrainConfig,
    )


def test_select_epoch_is_validated(sample_classes):
    with pytest.raises(ConfigError, match="select_epoch"):
        _config(sample_classes, select_epoch="kmeans")
    with pytest.raises(ConfigError, match=r"select_epoch='kmeans_nmi'.*val_classes"):
        load_config(
            None,
            {
                "view": "test_tiny",
                "mode": "classic",
                "data": {"source": str(sample_classes.source), "train_classes": ["a", "b"]},
                "validation": {"select_epoch": "kmeans_nmi"},
            },
            schema=TrainConfig,
        )
    assert _config(sample_classes).score_metric == "val_accuracy"
    assert _config(sample_classes, select_epoch="kmeans_acc").score_metric == "val_kmeans_acc"
    assert _config(sample_classes, select_epoch="last").score_metric is None


def test_kept_epoch_is_the_argmax_of_the_kmeans_validation_scores(sample_classes):
    config = _config(sample_classes, select_epoch="kmeans_nmi")
    names = {"train_classes": config.data.train_classes, "val_classes": config.data.val_classes}
    reports = []
    worker = TrainWorker(
        config,
        load_splits(config.data.source, names),
        context=WorkerContext(report=lambda metrics, folder: reports.append(dict(metrics))),
    )
    worker.run()

    nmi = [m["val_kmeans_nmi"] for m in reports]
    assert len(nmi) == 4
    for m in reports:
        assert 0.0 <= m["val_kmeans_acc"] <= 1.0 and 0.0 <= m["val_kmeans_nmi"] <= 1.0
        assert m["val_kmeans_acc"] >= 0.5  # two classes: matching the better way round
    assert len(set(nmi)) > 1, f"training did not change the validation clustering: {nmi}"
    chosen = len(nmi) - 1 - int(np.argmax(nmi[::-1]))  # the argmax; a tie to the later epoch
    assert worker.best_epoch == reports[-1]["best_epoch"] == chosen
    # Chosen after training from the same history: every rule from this one run.
    assert select_epoch(reports, "kmeans_nmi") == chosen
    assert select_epoch(reports, "last") == 3
    accuracy = [m["val_accuracy"] for m in reports]
    assert accuracy[select_epoch(reports, "few_shot")] == max(accuracy)
    # Re-scoring the final weights gives the last recorded scores (seeded K-means).
    again = worker.validate_kmeans()
    assert again["val_kmeans_nmi"] == pytest.approx(nmi[-1])

    # What fit() keeps: Ray's checkpoints ranked by the same metric.
    kept = SimpleNamespace(
        best_checkpoints=[(f"ckpt{m['epoch']}", m) for m in reports],
        checkpoint="ckpt-last",
        metrics=reports[-1],
    )
    assert best_checkpoint(kept, config.score_metric)[0] == f"ckpt{chosen}"
    last = _config(sample_classes, select_epoch="last")
    assert best_checkpoint(kept, last.score_metric)[0] == "ckpt-last"


def test_select_epoch_after_training_by_hand():
    history = [
        {"epoch": 0, "val_accuracy": 0.5, "val_kmeans_acc": 0.6, "val_kmeans_nmi": 0.30},
        {"epoch": 1, "val_accuracy": 0.7, "val_kmeans_acc": 0.8, "val_kmeans_nmi": 0.20},
        {"epoch": 2, "val_accuracy": 0.7, "val_kmeans_acc": 0.8, "val_kmeans_nmi": 0.10},
        {"epoch": 3, "val_accuracy": 0.6, "val_kmeans_acc": 0.4, "val_kmeans_nmi": 0.25},
    ]
    assert select_epoch(history, "kmeans_acc") == 2  # tie at 0.8: the later epoch
    assert select_epoch(history, "kmeans_nmi") == 0
    assert select_epoch(history, "few_shot") == 2
    assert select_epoch(history, "last") == 3
    with pytest.raises(ValueError, match="kmeans_acc"):
        select_epoch([{"epoch": 0, "val_accuracy": 0.5}], "kmeans_acc")
    with pytest.raises(ValueError, match="rule='best'"):
        select_epoch(history, "best")
