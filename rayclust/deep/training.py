"""The training loop of every objective, run by Ray Train's TorchTrainer or in this process.

``train_loop`` is the function each Ray Train worker runs: it builds the objective's model,
wraps it for data parallelism (``ray.train.torch.prepare_model``: DDP across workers, device
from the ScalingConfig), trains for ``trainer.epochs`` plus the objective's extra stages,
reports the objective with ``ray.train.report`` every ``trainer.report_every`` epochs and, at
the end, a checkpoint with the weights, the objective's state and the per-epoch history.
``trainer.backend=local`` runs the very same loop in this process (no Ray), which tests and
quick experiments use. With ``features.mode=finetune`` the model is the view's backbone plus
the head and the rows are images (``rayclust.deep.finetune``); the loop is the same.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rayclust.deep.config import DeepConfig
from rayclust.deep.objective import FeatureData, Objective, TrainData, WorkerContext, unwrap
from rayclust.ray_session import ensure_ray

log = logging.getLogger(__name__)

MODEL_FILE = "model.pt"
STATE_FILE = "objective_state.pt"
HISTORY_FILE = "history.json"
RUNTIME_FILE = "runtime.json"  # where rank 0 trained: device, backbone autocast dtype


def create_objective(config: DeepConfig, n_clusters: int, in_dim: int) -> Objective:
    """The objective named by ``config.method`` (a registry, not an if-chain in callers)."""
    from rayclust.deep.divclust import DivClustObjective
    from rayclust.deep.icbpl import ICBPLObjective
    from rayclust.deep.mmdc import MMDCObjective

    registry: dict[str, type[Objective]] = {
        "divclust": DivClustObjective,
        "mmdc": MMDCObjective,
        "icbpl": ICBPLObjective,
    }
    return registry[config.method](config, n_clusters, in_dim)


class LocalContext:
    """One worker, this process."""

    rank, world_size = 0, 1

    def __init__(self, use_gpu: bool) -> None:
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")

    def all_mean(self, values: dict[str, float]) -> dict[str, float]:
        return values

    def prepare(self, model: nn.Module) -> nn.Module:
        return model.to(self.device)

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None = None) -> None:
        pass


class RayContext:
    """A Ray Train worker: rank, device and collectives from Ray Train's process group."""

    def __init__(self) -> None:
        import ray.train
        import ray.train.torch

        context = ray.train.get_context()
        self.rank = context.get_world_rank()
        self.world_size = context.get_world_size()
        self.device = ray.train.torch.get_device()

    def all_mean(self, values: dict[str, float]) -> dict[str, float]:
        if self.world_size == 1:
            return values
        import torch.distributed as dist

        keys = sorted(values)
        buffer = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
        if dist.get_backend() == "nccl":
            buffer = buffer.to(self.device)
        dist.all_reduce(buffer)
        return {
            k: float(v) / self.world_size for k, v in zip(keys, buffer.cpu().tolist(), strict=True)
        }

    def prepare(self, model: nn.Module) -> nn.Module:
        import ray.train.torch

        # Heads a pass does not use (MMDC's rotation head in clustering passes) get no
        # gradient; DDP must be told, or it waits for them forever.
        return ray.train.torch.prepare_model(
            model, parallel_strategy_kwargs={"find_unused_parameters": True}
        )

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None = None) -> None:
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)


def _optimizer(model: nn.Module, config: DeepConfig) -> torch.optim.Optimizer:
    """Adam or SGD; a backbone being fine-tuned gets ``features.backbone_lr``."""
    t = config.trainer
    net = unwrap(model)
    if hasattr(net, "backbone"):
        backbone = [p for p in net.backbone.parameters() if p.requires_grad]
        params = [
            {"params": backbone, "lr": config.features.backbone_lr or t.lr},
            {"params": list(net.head.parameters()), "lr": t.lr},
        ]
    else:
        params = [{"params": list(model.parameters()), "lr": t.lr}]
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)


def build_worker_model(
    config: DeepConfig, inputs: Any, n_clusters: int, ctx: WorkerContext
) -> tuple[Objective, nn.Module, TrainData]:
    """The objective, its (unwrapped) model and its training data, for either mode:
    a head on frozen feature rows, or the view's backbone + head on images."""
    if config.features.mode == "finetune":
        from rayclust.deep.finetune import (
            BackboneHead,
            ImageData,
            ImagePreprocessor,
            autocast_dtype,
            load_backbone,
        )

        backbone = load_backbone(config)
        objective = create_objective(config, n_clusters, backbone.feature_dim)
        amp = autocast_dtype(config.trainer.precision, ctx.device)
        model = BackboneHead(backbone.model, objective.build_model(), amp)
        if amp == torch.float16:
            objective.scaler = torch.amp.GradScaler("cuda")
        if ctx.rank == 0:
            log.info(
                "deep %s: fine-tuning %s at %d px on %s (autocast %s)",
                config.method,
                config.features.view,
                inputs.size,
                ctx.device,
                amp,
            )
        preprocess = ImagePreprocessor(config, backbone, ctx.device)
        data = ImageData(inputs, config, ctx, preprocess, config.needs_rotations)
        return objective, model, data
    objective = create_objective(config, n_clusters, inputs.dim)
    return objective, objective.build_model(), FeatureData.from_features(inputs, config, ctx)


def train_loop(loop_config: dict[str, Any]) -> dict[str, Any] | None:
    """Train one objective; Ray Train's ``train_loop_per_worker`` (and the local runner)."""
    config: DeepConfig = loop_config["config"]
    inputs = loop_config["features"]  # FrozenFeatures, or ImageArrays when fine-tuning
    if not hasattr(inputs, "names"):  # an ObjectRef: fetched by each worker
        import ray

        inputs = ray.get(inputs)
    ctx = RayContext() if loop_config["backend"] == "ray" else LocalContext(config.trainer.use_gpu)
    torch.manual_seed(config.trainer.seed)  # identical initial weights on every worker
    objective, net, data = build_worker_model(config, inputs, loop_config["n_clusters"], ctx)
    model = ctx.prepare(net)
    optimizer = _optimizer(model, config)
    objective.setup(data, ctx)

    history: list[dict[str, Any]] = []
    started = time.perf_counter()

    def record(stats: dict[str, float], stage: str) -> None:
        stats = ctx.all_mean(stats)
        entry = {
            "epoch": len(history),
            "stage": stage,
            **stats,
            "seconds": time.perf_counter() - started,
        }
        history.append(entry)
        if ctx.rank == 0 and (len(history) % 10 == 0 or len(history) == 1):
            log.info(
                "%s epoch %d: objective %.4f", objective.name, entry["epoch"], entry["objective"]
            )
        every = config.trainer.report_every
        if every and len(history) % every == 0:
            ctx.report({"epoch": entry["epoch"], "objective": entry["objective"]})

    for epoch in range(config.trainer.epochs):
        model.train()
        record(objective.train_epoch(model, optimizer, epoch), "train")
    model.train()
    for stats in objective.finish(model, optimizer):
        record(stats, "refine")

    weights = {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
    state = objective.checkpoint_state()
    final = {"epoch": len(history) - 1, "objective": history[-1]["objective"], "done": True}
    amp = getattr(net, "amp_dtype", None)
    runtime = {
        "device": str(ctx.device),
        "world_size": ctx.world_size,
        "autocast": str(amp).replace("torch.", "") if amp is not None else "none",
        "seconds": time.perf_counter() - started,
    }
    if loop_config["backend"] != "ray":
        return {"weights": weights, "state": state, "history": history, "runtime": runtime}
    with tempfile.TemporaryDirectory() as tmp:
        if ctx.rank == 0:
            torch.save(weights, os.path.join(tmp, MODEL_FILE))
            torch.save(state, os.path.join(tmp, STATE_FILE))
            Path(tmp, HISTORY_FILE).write_text(json.dumps(history))
            Path(tmp, RUNTIME_FILE).write_text(json.dumps(runtime))
        ctx.report(final, tmp if ctx.rank == 0 else None)
    return None


@dataclass
class TrainingOutput:
    weights: dict[str, torch.Tensor]
    state: dict[str, Any]
    history: list[dict[str, Any]]
    checkpoint_path: str | None = None
    runtime: dict[str, Any] | None = None  # rank 0's device and autocast dtype


def run_training(config: DeepConfig, features: Any, n_clusters: int) -> TrainingOutput:
    """Train ``config.method`` on ``features`` (FrozenFeatures, or ImageArrays when
    fine-tuning) with the configured backend."""
    loop_config = {"config": config, "n_clusters": n_clusters, "backend": config.trainer.backend}
    if config.trainer.backend == "local":
        out = train_loop({**loop_config, "features": features})
        return TrainingOutput(out["weights"], out["state"], out["history"], runtime=out["runtime"])
    return _run_ray(config, features, loop_config)


def _run_ray(config: DeepConfig, features: Any, loop_config: dict[str, Any]) -> TrainingOutput:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    ensure_ray()
    storage = config.trainer.storage_path or (
        str(Path(config.output) / "ray")
        if config.output
        else tempfile.mkdtemp(prefix="rayclust-deep-")
    )
    name = f"deep-{config.method}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={**loop_config, "features": ray.put(features)},
        scaling_config=ScalingConfig(
            num_workers=config.trainer.num_workers, use_gpu=config.trainer.use_gpu
        ),
        run_config=RunConfig(name=name, storage_path=str(Path(storage).expanduser().absolute())),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"Ray Train run {name} finished without a checkpoint: {result.error}")
    with result.checkpoint.as_directory() as folder:
        weights = torch.load(Path(folder, MODEL_FILE), weights_only=True)
        state = torch.load(Path(folder, STATE_FILE), weights_only=True)
        history = json.loads(Path(folder, HISTORY_FILE).read_text())
        runtime = json.loads(Path(folder, RUNTIME_FILE).read_text())
    return TrainingOutput(
        weights, state, history, checkpoint_path=result.checkpoint.path, runtime=runtime
    )
