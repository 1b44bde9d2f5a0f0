"""The training runtime shared by ``rayclust train`` and ``rayclust deep``.

Both train a torch model on Ray Train workers (or, for tests and quick runs, in this
process) and need the same few things from their runtime; they get them from here.

Worker side:

- ``WorkerContext``: rank, world size, device, collectives (``all_sum`` / ``all_mean``), the
  checkpoint to resume from, data-parallel wrapping of the model and ``report(metrics,
  folder)``. ``local_context(use_gpu)`` is this process as the only worker;
  ``ray_worker_context()`` is a Ray Train worker's (device from ``ray.train.torch``).
- ``resolve_precision(name, device) -> Precision``: ``auto`` / ``fp32`` / ``bf16`` / ``fp16``
  to an autocast dtype (None: fp32, always on a CPU), the autocast context and whether the
  loss needs a gradient scaler (fp16 only).
- ``choose_device(use_gpu)``: the device a process uses by itself (the driver, a local run).

Driver side:

- ``TrainerLaunch`` + ``launch_trainer(loop, loop_config, launch)``: one ``TorchTrainer`` run
  (``ScalingConfig``, ``RunConfig``, ``FailureConfig``, ``CheckpointConfig``) from plain
  settings; ``resolve_use_gpu(requested)`` declares GPUs (None: when the cluster has some).
- ``final_checkpoint(result)`` / ``best_checkpoint(result, metric)``: the checkpoint a run
  ended with (an error naming the run when there is none), or the best-scoring kept one.

Ray is imported only inside the functions that need it: the local path runs without it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

log = logging.getLogger(__name__)

PrecisionName = Literal["auto", "fp32", "bf16", "fp16"]
# report(metrics, folder): folder (rank 0 only) holds the checkpoint files, valid during the call
Reporter = Callable[[dict[str, Any], Path | None], None]


def _no_report(metrics: dict[str, Any], folder: Path | None) -> None:
    """Reports go nowhere in a local run."""


def _unwrapped(model: nn.Module) -> nn.Module:
    return model


def choose_device(use_gpu: bool) -> torch.device:
    """CUDA when asked for and present, else the CPU (a local run or the driver's own work)."""
    return torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")


@dataclass
class WorkerContext:
    """What a training loop needs from its runtime, whichever it is.

    The defaults are rank 0 of 1 on the CPU with nothing to resume and reports dropped, which
    is how tests drive a loop without Ray. ``checkpoint_folder``, when set, opens the
    checkpoint to resume from; ``wrap_model`` wraps a model already on ``device`` for data
    parallelism; ``report(metrics, folder)`` hands each report (and, on rank 0, a folder of
    checkpoint files) to the runtime.
    """

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    checkpoint_folder: Callable[[], contextlib.AbstractContextManager[str]] | None = None
    wrap_model: Callable[[nn.Module], nn.Module] = _unwrapped
    report: Reporter = _no_report

    def all_sum(self, values: Sequence[float]) -> list[float]:
        """Each value summed over all workers (as floats; unchanged with one worker)."""
        if self.world_size == 1:
            return [float(v) for v in values]
        import torch.distributed as dist

        # float64: sums of per-worker counts and losses stay exact enough to compare runs.
        buffer = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(buffer)
        return buffer.cpu().tolist()

    def all_mean(self, values: dict[str, float]) -> dict[str, float]:
        """Each value averaged over all workers (the dict itself with one worker)."""
        if self.world_size == 1:
            return values
        keys = sorted(values)
        sums = self.all_sum([values[k] for k in keys])
        return {k: s / self.world_size for k, s in zip(keys, sums, strict=True)}


def local_context(use_gpu: bool = False) -> WorkerContext:
    """This process as the only worker, on the GPU when asked for and present."""
    return WorkerContext(device=choose_device(use_gpu))


def ray_worker_context(find_unused_parameters: bool = False) -> WorkerContext:
    """The context of a Ray Train worker: rank, device, checkpoint to resume from, report.

    ``find_unused_parameters``: models with heads a pass does not use (MMDC's rotation head in
    clustering passes) get no gradient there; DDP must be told, or it waits for them forever.
    """
    import ray.train
    import ray.train.torch

    context = ray.train.get_context()
    checkpoint = ray.train.get_checkpoint()

    def report(metrics: dict[str, Any], folder: Path | None) -> None:
        saved = None if folder is None else ray.train.Checkpoint.from_directory(str(folder))
        ray.train.report(metrics, checkpoint=saved)

    def wrap_model(model: nn.Module) -> nn.Module:
        if not find_unused_parameters:
            return ray.train.torch.prepare_model(model)
        return ray.train.torch.prepare_model(
            model, parallel_strategy_kwargs={"find_unused_parameters": True}
        )

    return WorkerContext(
        rank=context.get_world_rank(),
        world_size=context.get_world_size(),
        device=ray.train.torch.get_device(),
        checkpoint_folder=None if checkpoint is None else checkpoint.as_directory,
        wrap_model=wrap_model,
        report=report,
    )


# ----------------------------------------------------------------------------- precision


def autocast_dtype(precision: PrecisionName | str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``, or None for fp32 (always on a CPU).

    ``auto`` is bf16 where the GPU has it, else fp16 (which then needs a gradient scaler).
    """
    if device.type != "cuda" or precision == "fp32":
        if precision in ("bf16", "fp16") and device.type != "cuda":
            log.warning("precision=%s needs a GPU; training in fp32 on %s", precision, device)
        return None
    if precision == "fp16":
        return torch.float16
    if precision == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


@dataclass(frozen=True)
class Precision:
    """A resolved precision: the autocast dtype (None: fp32) and what follows from it."""

    dtype: torch.dtype | None = None

    @property
    def name(self) -> str:
        """``bfloat16`` / ``float16``, or ``none`` for fp32 (as run records show it)."""
        return "none" if self.dtype is None else str(self.dtype).removeprefix("torch.")

    @property
    def needs_grad_scaler(self) -> bool:
        return self.dtype == torch.float16  # bf16 has fp32's range: no scaling needed

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.dtype)

    def grad_scaler(self, device: torch.device) -> torch.amp.GradScaler:
        """A loss scaler, enabled only for fp16 (disabled it passes gradients through)."""
        return torch.amp.GradScaler(device.type, enabled=self.needs_grad_scaler)


def resolve_precision(precision: PrecisionName | str, device: torch.device) -> Precision:
    return Precision(autocast_dtype(precision, device))


# ----------------------------------------------------------------------------- launching


def resolve_use_gpu(requested: bool | None) -> bool:
    """Declared, never picked by hand: as asked, or (None) when the Ray cluster has a GPU."""
    if requested is not None:
        return requested
    import ray

    return ray.cluster_resources().get("GPU", 0) >= 1


@dataclass(frozen=True)
class TrainerLaunch:
    """Everything ``TorchTrainer`` needs besides the loop, as plain values."""

    name: str  # the run's folder under storage_path
    storage_path: str | Path
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float | None = None  # None: Ray Train's default
    max_failures: int = 0  # worker-group restarts from the latest checkpoint
    keep_checkpoints: int | None = None  # None: keep every checkpoint
    score_metric: str | None = None  # which checkpoints are kept: the highest of this metric


def launch_trainer(
    loop: Callable[[dict[str, Any]], Any], loop_config: dict[str, Any], launch: TrainerLaunch
):
    """Run ``loop(loop_config)`` on ``launch.num_workers`` Ray Train workers; the Result.

    Ray must already be running (``rayclust.ray_session.ensure_ray``).
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    resources = None if launch.cpus_per_worker is None else {"CPU": launch.cpus_per_worker}
    checkpoints = ray.train.CheckpointConfig(
        num_to_keep=launch.keep_checkpoints,
        checkpoint_score_attribute=launch.score_metric,
        checkpoint_score_order="max",
    )
    trainer = TorchTrainer(
        loop,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=launch.num_workers,
            use_gpu=launch.use_gpu,
            resources_per_worker=resources,
        ),
        run_config=ray.train.RunConfig(
            name=launch.name,
            storage_path=str(Path(launch.storage_path).expanduser().absolute()),
            failure_config=ray.train.FailureConfig(max_failures=launch.max_failures),
            checkpoint_config=checkpoints,
        ),
    )
    return trainer.fit()


def final_checkpoint(result):
    """The checkpoint the run ended with; an error naming the run (and its error) if none."""
    if result.checkpoint is None:
        raise RuntimeError(
            f"Ray Train run {result.path} finished without a checkpoint: {result.error}"
        )
    return result.checkpoint


def best_checkpoint(result, score_metric: str | None) -> tuple[Any, dict[str, Any]]:
    """(checkpoint, its metrics) with the highest ``score_metric`` among those kept (the later
    epoch on a tie); the final one when there is no metric or nothing was scored."""
    if score_metric is None or not result.best_checkpoints:
        return final_checkpoint(result), result.metrics
    return max(
        result.best_checkpoints,
        key=lambda pair: (pair[1][score_metric], pair[1].get("epoch", 0)),
    )


__all__ = [
    "Precision",
    "TrainerLaunch",
    "WorkerContext",
    "autocast_dtype",
    "best_checkpoint",
    "choose_device",
    "final_checkpoint",
    "launch_trainer",
    "local_context",
    "ray_worker_context",
    "resolve_precision",
    "resolve_use_gpu",
]
