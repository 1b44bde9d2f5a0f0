"""Ray Train runs on the shipped sample: two CPU workers, a killed worker, a killed driver.

All three runs use the same config and seeds, so the disturbed ones must end with exactly
the weights of the undisturbed one.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import cloudpickle
import pytest
import torch

from rayclust.config import ConfigError, load_config
from rayclust.train import TrainConfig, fit
from rayclust.train.loop import BACKBONE_FILE, HISTORY_FILE, STATE_FILE
from tests.conftest import REPO_ROOT
from tests.train import faults
from tests.train.faults import StepLog, read_steps

cloudpickle.register_pickle_by_value(faults)  # Ray workers cannot import the tests package

EPOCHS = 3


def tiny_config(sample_classes, output: Path, **overrides) -> TrainConfig:
    base = {
        "view": "test_tiny",
        "mode": "episodic",
        "epochs": EPOCHS,
        "seed": 11,
        "output": str(output),
        "freeze_stages": 1,
        "max_failures": 2,
        "data": {
            "source": str(sample_classes.source),
            "train_classes": sample_classes.train,
            "val_classes": sample_classes.val,
            "image_size": 64,
        },
        "episodic": {"n_way": 2, "k_shot": 2, "q_query": 3, "episodes_per_epoch": 8},
        "validation": {"n_way": 2, "k_shot": 2, "q_query": 3, "episodes": 4},
        "optim": {"lr": 0.002, "grad_accum_steps": 2, "schedule": "cosine"},
        "scaling": {"num_workers": 2},
        "tracking": {"enabled": False},
    }
    return load_config(None, base | overrides, schema=TrainConfig)


def final_state(result) -> dict[str, torch.Tensor]:
    """Model weights after the last epoch (the latest checkpoint, not the best one)."""
    folders = [p for p in result.output_dir.glob("ray/checkpoint_*") if p.is_dir()]
    folder = max(folders, key=_epoch_of)
    return torch.load(folder / STATE_FILE, weights_only=True)["model"]


def _epoch_of(folder: Path) -> int:
    return json.loads((folder / HISTORY_FILE).read_text())[-1]["epoch"]


def assert_same_weights(first: dict, second: dict) -> None:
    assert first.keys() == second.keys()
    different = [k for k in first if not torch.equal(first[k], second[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


@pytest.fixture(scope="module")
def undisturbed(ray_session, sample_classes, tmp_path_factory):
    output = tmp_path_factory.mktemp("undisturbed") / "run"
    config = tiny_config(sample_classes, output, tracking={"enabled": True})
    return fit(config, progress=False)


def test_two_workers_report_metrics_and_checkpoints(undisturbed):
    result = undisturbed
    assert [m["epoch"] for m in result.history] == list(range(EPOCHS))
    for metrics in result.history:
        assert metrics["world_size"] == 2
        assert 0.0 <= metrics["val_accuracy"] <= 1.0
        assert math.isfinite(metrics["train_loss"]) and metrics["train_scatter"] >= 0
        assert metrics["samples_per_s"] > 0
    # The best epoch is the highest validation accuracy (the later one on a tie).
    best = max(result.history, key=lambda m: (m["val_accuracy"], m["epoch"]))
    assert result.best_epoch == best["epoch"]
    assert result.best_metrics["val_accuracy"] == best["val_accuracy"]
    output = result.output_dir
    for name in ("config.yaml", HISTORY_FILE, "result.json", BACKBONE_FILE, "mlflow.json"):
        assert (output / name).is_file(), name
    kept = [p for p in output.glob("ray/checkpoint_*") if p.is_dir()]
    assert 1 <= len(kept) <= 2  # keep_checkpoints=1 best, plus the latest
    best_folder = Path(result.checkpoint_path)
    assert _epoch_of(best_folder) == result.best_epoch
    assert (output / BACKBONE_FILE).read_bytes() == (best_folder / BACKBONE_FILE).read_bytes()
    # The learning-rate schedule ran: cosine decays to 0 at the end.
    assert result.history[0]["lr"] > result.history[-1]["lr"] >= 0.0


def test_trained_backbone_is_a_view(undisturbed):
    from rayclust.views import build_view, get_view_spec

    result = undisturbed
    assert result.view == f"test_efficientnet@{result.output_dir / BACKBONE_FILE}"
    view = build_view(get_view_spec(result.view))
    state = torch.load(Path(result.checkpoint_path) / STATE_FILE, weights_only=True)["model"]
    for name, tensor in view.model.state_dict().items():
        assert torch.equal(tensor, state[f"backbone.{name}"]), name


def test_metrics_are_tracked_in_mlflow(undisturbed):
    from mlflow import MlflowClient

    record = json.loads((undisturbed.output_dir / "mlflow.json").read_text())
    client = MlflowClient(tracking_uri=record["tracking_uri"])
    history = client.get_metric_history(record["run_id"], "val_accuracy")
    assert sorted(m.step for m in history) == list(range(EPOCHS))
    run = client.get_run(record["run_id"])
    assert run.data.params["episodic.alpha"] == "0.5"
    assert run.data.metrics["best_val_accuracy"] == undisturbed.best_metrics["val_accuracy"]


def test_killed_worker_then_killed_driver_resume_to_identical_weights(
    ray_session, undisturbed, sample_classes, tmp_path
):
    """One disturbed run, two faults: a worker process dies (os._exit) half-way through
    epoch 1, Ray Train restarts the worker group from epoch 0's checkpoint; then the driver
    is SIGKILLed at the start of epoch 2, and ``resume=True`` finishes the run."""
    output = tmp_path / "run"
    address = ray_session.get_runtime_context().gcs_address
    config = tiny_config(sample_classes, output, ray={"address": address})
    config_path = tmp_path / "finetune.yaml"
    config.to_yaml(config_path)
    steps = tmp_path / "steps.log"
    script = textwrap.dedent(
        """
        import os, sys
        import cloudpickle
        from tests.train import faults
        cloudpickle.register_pickle_by_value(faults)
        from rayclust.config import load_config
        from rayclust.train import TrainConfig, fit
        config = load_config(sys.argv[1], schema=TrainConfig)
        hook = faults.StepLog(
            sys.argv[2], exit_at=(1, 1, 1), kill_pid_at=(2, 0, 0), kill_pid=os.getpid()
        )
        fit(config, on_step=hook, progress=False)
        """
    )
    driver = subprocess.run(
        [sys.executable, "-c", script, str(config_path), str(steps)],
        cwd=REPO_ROOT,
        env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert driver.returncode == -signal.SIGKILL, driver.stderr[-3000:]
    assert (tmp_path / "steps.log.exited").exists() and (tmp_path / "steps.log.killed").exists()
    seen = read_steps(steps)
    print("steps of the killed run:", seen)  # shown when an assertion fails
    # The killed worker: epoch 0 ran once (restored from its checkpoint, not retrained),
    # epoch 1 ran twice; the killed driver: epoch 2 had just begun.
    assert seen.count((0, 0, 0)) == seen.count((0, 0, 1)) == 1
    assert seen.count((1, 0, 0)) == seen.count((1, 0, 1)) == 2
    assert (2, 0, 0) in seen and (2, 3, 0) not in seen
    assert not (output / "result.json").exists()

    config = load_config(config_path, schema=TrainConfig)
    with pytest.raises(
        ConfigError, match=r"already holds checkpoints of an earlier run; pass --resume"
    ):
        fit(config, progress=False)
    resumed_steps = tmp_path / "resumed.log"
    result = fit(config, resume=True, on_step=StepLog(str(resumed_steps)), progress=False)

    assert result.resumed
    assert {epoch for epoch, _, _ in read_steps(resumed_steps)} == {2}  # after epoch 1's checkpoint
    assert [m["epoch"] for m in result.history] == list(range(EPOCHS))
    assert_same_weights(final_state(result), final_state(undisturbed))


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_on_gpu_trains_and_round_trips(
    ray_session, sample_classes, tmp_path, precision
):
    from rayclust.views import build_view, get_view_spec

    config = tiny_config(
        sample_classes,
        tmp_path / "run",
        epochs=2,
        precision=precision,
        scaling={"num_workers": 1, "use_gpu": True},
    )
    result = fit(config, progress=False)
    assert [m["epoch"] for m in result.history] == [0, 1]
    assert all(math.isfinite(m["train_loss"]) for m in result.history)
    view = build_view(get_view_spec(result.view))  # the exported weights are plain fp32
    assert all(
        t.dtype == torch.float32 for t in view.model.state_dict().values() if t.is_floating_point()
    )
