"""The per-worker loop run in-process (rank 0 of 1, no Ray): classic mode, gradient
accumulation, a multistep schedule, and resuming from a saved epoch to the same weights."""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from rayclust.config import load_config
from rayclust.train.config import TrainConfig
from rayclust.train.data import load_splits
from rayclust.train.loop import (
    BACKBONE_FILE,
    HISTORY_FILE,
    STATE_FILE,
    TrainWorker,
    WorkerContext,
    plan_steps,
)


@pytest.fixture(scope="module")
def classic_setup(sample_classes):
    config = load_config(
        None,
        {
            "view": "test_tiny",
            "mode": "classic",
            "epochs": 3,
            "batch_size": 8,
            "seed": 5,
            "data": {
                "source": str(sample_classes.source),
                "train_classes": sample_classes.train,
                "val_classes": sample_classes.val,
                "image_size": 48,
            },
            "validation": {"n_way": 2, "k_shot": 2, "q_query": 2, "episodes": 3},
            "optim": {
                "lr": 0.01,
                "head_lr": 0.05,
                "schedule": "multistep",
                "milestones": [2],
                "gamma": 0.1,
                "grad_accum_steps": 2,
            },
        },
        schema=TrainConfig,
    )
    names = {"train_classes": config.data.train_classes, "val_classes": config.data.val_classes}
    splits = load_splits(config.data.source, names)
    return config, splits


class Recorder:
    """A report() that keeps every epoch's metrics and a copy of its checkpoint folder."""

    def __init__(self, root: Path):
        self.root, self.metrics, self.folders = root, [], []

    def __call__(self, metrics, folder):
        self.metrics.append(metrics)
        copy = self.root / f"epoch{metrics['epoch']}"
        shutil.copytree(folder, copy)
        self.folders.append(copy)


@pytest.fixture(scope="module")
def full_run(classic_setup, tmp_path_factory):
    config, splits = classic_setup
    recorder = Recorder(tmp_path_factory.mktemp("full"))
    worker = TrainWorker(config, splits, context=WorkerContext(report=recorder))
    start = {k: v.clone() for k, v in worker.net.state_dict().items()}
    worker.run()
    return worker, recorder, start


def test_classic_epochs_report_metrics_and_checkpoints(classic_setup, full_run):
    config, splits = classic_setup
    worker, recorder, start = full_run
    assert [m["epoch"] for m in recorder.metrics] == [0, 1, 2]
    n_train = len(splits["train_classes"])
    plan = plan_steps(config, n_train, 1)
    assert plan.micro_steps_per_epoch == (n_train // 8) - (n_train // 8) % 2
    for metrics in recorder.metrics:
        assert 0.0 <= metrics["train_accuracy"] <= 1.0 and metrics["train_loss"] > 0
        assert 0.0 <= metrics["val_accuracy"] <= 1.0
    # multistep: the backbone lr (at each epoch start) drops by gamma from epoch 2
    assert recorder.metrics[0]["lr"] == recorder.metrics[1]["lr"] == pytest.approx(0.01)
    assert recorder.metrics[2]["lr"] == pytest.approx(0.001)
    assert worker.optimizer.param_groups[-1]["lr"] == pytest.approx(0.005)  # head, after epoch 2
    for folder in recorder.folders:
        assert {STATE_FILE, BACKBONE_FILE, HISTORY_FILE} <= {p.name for p in folder.iterdir()}
    history = json.loads((recorder.folders[-1] / HISTORY_FILE).read_text())
    assert [m["epoch"] for m in history] == [0, 1, 2]
    # training moved the weights, including the new head
    trained = worker.net.state_dict()
    assert not torch.equal(start["head.weight"], trained["head.weight"])
    assert not torch.equal(start["backbone.conv_head.weight"], trained["backbone.conv_head.weight"])


def test_resuming_from_an_epoch_checkpoint_ends_with_the_same_weights(
    classic_setup, full_run, tmp_path
):
    config, splits = classic_setup
    _, full, _ = full_run
    resumed = Recorder(tmp_path)
    after_epoch0 = full.folders[0]
    context = WorkerContext(
        report=resumed, checkpoint_folder=lambda: contextlib.nullcontext(str(after_epoch0))
    )
    worker = TrainWorker(config, splits, context=context)
    assert worker.start_epoch == 1
    worker.run()
    assert [m["epoch"] for m in resumed.metrics] == [1, 2]
    expected = torch.load(full.folders[-1] / STATE_FILE, weights_only=True)
    got = torch.load(resumed.folders[-1] / STATE_FILE, weights_only=True)
    for name, tensor in expected["model"].items():
        assert torch.equal(tensor, got["model"][name]), name
    assert got["scheduler"]["last_epoch"] == expected["scheduler"]["last_epoch"]
    assert [m["epoch"] for m in got["history"]] == [0, 1, 2]
