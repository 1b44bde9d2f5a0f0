"""The training loop of every objective, run by Ray Train's TorchTrainer or in this process.

``train_loop`` is the function each Ray Train worker runs: it builds the objective's model,
wraps it for data parallelism (``ray.train.torch.prepare_model``: DDP across workers, device
from the ScalingConfig), trains for ``trainer.epochs`` plus the objective's extra stages,
reports the objective with ``ray.train.report`` every ``trainer.report_every`` epochs and, at
the end, a checkpoint with the weights, the objective's state and the per-epoch history.
``trainer.backend=local`` runs the very same loop in this process (no Ray), which tests and
quick experiments use. With ``features.mode=finetune`` the model is the view's backbone plus
the head and the rows are images (``rayclust.deep.finetune``); the loop is the same.

Worker context, precision and the TorchTrainer launch come from ``rayclust.train.runtime``,
the runtime ``rayclust train`` uses too.
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
from rayclust.deep.objective import FeatureData, Objective, TrainData, unwrap
from rayclust.ray_session import ensure_ray
from rayclust.train.runtime import (
    Precision,
    TrainerLaunch,
    WorkerContext,
    final_checkpoint,
    launch_trainer,
    local_context,
    ray_worker_context,
    resolve_precision,
)

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
        from rayclust.deep.finetune import BackboneHead, ImageData, ImagePreprocessor, load_backbone

        backbone = load_backbone(config)
        objective = create_objective(config, n_clusters, backbone.feature_dim)
        precision = resolve_precision(config.trainer.precision, ctx.device)
        model = BackboneHead(backbone.model, objective.build_model(), precision.dtype)
        if precision.needs_grad_scaler:
            objective.scaler = precision.grad_scaler(ctx.device)
        if ctx.rank == 0:
            log.info(
                "deep %s: fine-tuning %s at %d px on %s (autocast %s)",
                config.method,
                config.features.view,
                inputs.size,
                ctx.device,
                precision.name,
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
    if loop_config["backend"] == "ray":
        # Heads a pass does not use (MMDC's rotation head) get no gradient: DDP must know.
        ctx = ray_worker_context(find_unused_parameters=True)
    else:
        ctx = local_context(config.trainer.use_gpu)
    torch.manual_seed(config.trainer.seed)  # identical initial weights on every worker
    objective, net, data = build_worker_model(config, inputs, loop_config["n_clusters"], ctx)
    model = ctx.wrap_model(net.to(ctx.device))
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
            ctx.report({"epoch": entry["epoch"], "objective": entry["objective"]}, None)

    for epoch in range(config.trainer.epochs):
        model.train()
        record(objective.train_epoch(model, optimizer, epoch), "train")
    model.train()
    for stats in objective.finish(model, optimizer):
        record(stats, "refine")

    weights = {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
    state = objective.checkpoint_state()
    final = {"epoch": len(history) - 1, "objective": history[-1]["objective"], "done": True}
    runtime = {
        "device": str(ctx.device),
        "world_size": ctx.world_size,
        "autocast": Precision(getattr(net, "amp_dtype", None)).name,
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
        ctx.report(final, Path(tmp) if ctx.rank == 0 else None)
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

    ensure_ray(config.ray.address, config.ray.num_cpus)
    storage = config.trainer.storage_path or (
        str(Path(config.output) / "ray")
        if config.output
        else tempfile.mkdtemp(prefix="rayclust-deep-")
    )
    launch = TrainerLaunch(
        name=f"deep-{config.method}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
        storage_path=storage,
        num_workers=config.trainer.num_workers,
        use_gpu=config.trainer.use_gpu,
    )
    # The features go to the object store once; every worker reads the same copy.
    result = launch_trainer(train_loop, {**loop_config, "features": ray.put(features)}, launch)
    checkpoint = final_checkpoint(result)
    with checkpoint.as_directory() as folder:
        weights = torch.load(Path(folder, MODEL_FILE), weights_only=True)
        state = torch.load(Path(folder, STATE_FILE), weights_only=True)
        history = json.loads(Path(folder, HISTORY_FILE).read_text())
        runtime = json.loads(Path(folder, RUNTIME_FILE).read_text())
    return TrainingOutput(weights, state, history, checkpoint_path=checkpoint.path, runtime=runtime)
