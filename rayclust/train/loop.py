"""The per-worker training loop that Ray Train runs (classic or episodic).

Reproducibility: every random draw is a pure function of ``(seed, epoch, step, rank)``
(episode choice, batch order, flips, dropout), and a checkpoint holds the model, optimizer,
LR schedule and loss scaler after a whole epoch. A worker group restarted from that
checkpoint therefore retraces the interrupted epoch exactly and ends with the same weights
as an undisturbed run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from rayclust.train.config import TrainConfig
from rayclust.train.data import ImageBatcher, LabeledImages
from rayclust.train.export import save_backbone
from rayclust.train.losses import EpisodicLoss, class_prototypes, prototype_logits
from rayclust.train.model import FineTuneNet, build_backbone, freeze_stages, set_train_mode
from rayclust.train.runtime import WorkerContext, ray_worker_context, resolve_precision
from rayclust.train.sampler import EpisodeSampler
from rayclust.train.schedule import LRFactor, build_scheduler

log = logging.getLogger("rayclust.train")

STATE_FILE = "state.pt"
BACKBONE_FILE = "backbone.safetensors"
HISTORY_FILE = "history.json"

# Called at the start of every micro-step as on_step(epoch, step, rank); used to inject
# faults in tests and to observe progress.
StepHook = Callable[[int, int, int], None]

_VAL_STREAM = 1_000_003  # validation episodes are drawn from their own seed stream


@dataclass(frozen=True)
class StepPlan:
    micro_steps_per_epoch: int  # per worker: batches (classic) or episodes (episodic)
    optimizer_steps_per_epoch: int
    images_per_micro_step: int  # per worker

    @property
    def images_per_epoch(self) -> int:  # per worker
        return self.micro_steps_per_epoch * self.images_per_micro_step


def plan_steps(config: TrainConfig, n_train_images: int, num_workers: int) -> StepPlan:
    """How an epoch divides into steps; raises ValueError when the data cannot fill one step.

    An epoch is the same amount of data whatever the worker count: one pass over the
    training images (classic) or ``episodic.episodes_per_epoch`` episodes (episodic).
    """
    accum = config.optim.grad_accum_steps
    if config.mode == "classic":
        global_batch = config.batch_size * num_workers
        micro = n_train_images // global_batch
        if micro < accum:
            raise ValueError(
                f"the training classes have {n_train_images} images, fewer than batch_size * "
                f"num_workers * grad_accum_steps = {config.batch_size} * {num_workers} * {accum}"
                f" = {global_batch * accum}; lower batch_size or grad_accum_steps"
            )
        per_step = config.batch_size
    elif config.mode == "episodic":
        episodes = config.episodic.episodes_per_epoch
        micro = episodes // num_workers
        if micro < accum:
            raise ValueError(
                f"episodic.episodes_per_epoch={episodes} should be >= num_workers * "
                f"grad_accum_steps = {num_workers} * {accum}"
            )
        ep = config.episodic
        per_step = ep.n_way * (ep.k_shot + ep.q_query)
    else:
        raise ValueError(f"mode={config.mode!r} does not train")
    micro -= micro % accum  # an epoch ends on an optimizer step
    return StepPlan(micro, micro // accum, per_step)


def derived_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integer parts (seed, epoch, step, rank, ...)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> 1)


def _param_groups(net: FineTuneNet, config: TrainConfig) -> list[dict[str, Any]]:
    """Backbone and head groups, without weight decay on biases and norm scales (1-D)."""
    optim = config.optim
    groups = []
    parts = [(net.backbone, optim.lr)]
    if net.head is not None:
        parts.append((net.head, optim.head_lr or optim.lr))
    for module, lr in parts:
        trainable = [p for p in module.parameters() if p.requires_grad]
        decay = [p for p in trainable if p.ndim > 1]
        no_decay = [p for p in trainable if p.ndim <= 1]
        if decay:
            groups.append({"params": decay, "lr": lr, "weight_decay": optim.weight_decay})
        if no_decay:
            groups.append({"params": no_decay, "lr": lr, "weight_decay": 0.0})
    return groups


def _optimizer(groups: list[dict[str, Any]], config: TrainConfig) -> torch.optim.Optimizer:
    if config.optim.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.optim.lr, momentum=config.optim.momentum)
    return torch.optim.AdamW(groups, lr=config.optim.lr)


class TrainWorker:
    """State and steps of one worker; ``run()`` is the whole loop.

    Without a context it runs alone on the CPU (rank 0 of 1), which is how tests drive the
    epoch logic without starting Ray.
    """

    def __init__(
        self,
        config: TrainConfig,
        splits: dict[str, LabeledImages],
        on_step: StepHook | None = None,
        context: WorkerContext | None = None,
    ):
        started = time.perf_counter()
        context = context or WorkerContext()
        self.context = context
        self.config = config
        self.on_step = on_step
        self.rank, self.world, self.device = context.rank, context.world_size, context.device
        self.precision = resolve_precision(config.precision, self.device)

        torch.manual_seed(config.seed)  # the new head starts the same on every worker and run
        backbone = build_backbone(config.view)
        self.arch = backbone.arch
        freeze_stages(backbone.model, config.freeze_stages)
        train = splits["train_classes"]
        n_classes = len(train.class_names) if config.mode == "classic" else None
        self.net = FineTuneNet(backbone.model, backbone.feature_dim, n_classes)
        self.feature_dim = int(backbone.feature_dim)

        def batcher(split: LabeledImages) -> ImageBatcher:
            return ImageBatcher(
                split.paths,
                config.data.image_size,
                backbone.mean,
                backbone.std,
                crop_pct=backbone.crop_pct,
                interpolation=backbone.interpolation,
                max_pixels=config.data.max_pixels,
            )

        self.train_split, self.train_images = train, batcher(train)
        self.plan = plan_steps(config, len(train), self.world)
        if config.mode == "episodic":
            ep = config.episodic
            self.sampler = EpisodeSampler(
                train.labels, ep.n_way, ep.k_shot, ep.q_query, episodes=0, seed=config.seed
            )
            self.episode_loss = EpisodicLoss(
                ep.alpha, ep.distance, ep.scale, scatter_on=ep.scatter_on
            )
        val = splits.get("val_classes")
        self.val_split = val if val is not None and len(val.class_names) else None
        if self.val_split is not None:
            vc = config.validation
            self.val_images = batcher(self.val_split)
            self.val_sampler = EpisodeSampler(
                self.val_split.labels,
                vc.n_way,
                vc.k_shot,
                vc.q_query,
                episodes=vc.episodes,
                seed=config.seed + _VAL_STREAM,
            )

        self.start_epoch, self.best_val, self.best_epoch = 0, -1.0, -1
        self.history: list[dict[str, Any]] = []
        state = self._load_checkpoint()
        self.model = context.wrap_model(self.net.to(self.device))
        self.optimizer = _optimizer(_param_groups(self.net, config), config)
        opt_steps = self.plan.optimizer_steps_per_epoch
        self.scheduler = build_scheduler(
            self.optimizer,
            LRFactor(
                schedule=config.optim.schedule,
                total_steps=opt_steps * config.epochs,
                warmup_steps=opt_steps * config.optim.warmup_epochs,
                milestones=[m * opt_steps for m in config.optim.milestones],
                gamma=config.optim.gamma,
                min_factor=config.optim.min_lr_factor,
            ),
        )
        self.scaler = self.precision.grad_scaler(self.device)
        if state is not None:
            # Optimizer before scheduler: loading the optimizer restores the current lr,
            # the scheduler then restores its step count.
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
        if self.rank == 0:
            log.info(
                "worker group of %d ready in %.1f s: %s on %s, %d micro-steps per epoch",
                self.world,
                time.perf_counter() - started,
                config.view,
                self.device,
                self.plan.micro_steps_per_epoch,
            )

    def _load_checkpoint(self) -> dict[str, Any] | None:
        if self.context.checkpoint_folder is None:
            return None
        with self.context.checkpoint_folder() as folder:
            state = torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)
        self.net.load_state_dict(state["model"])
        self.start_epoch = state["epoch"] + 1
        self.best_val, self.best_epoch = state["best_val"], state["best_epoch"]
        self.history = state["history"]
        if self.rank == 0:
            log.info("resuming after epoch %d", state["epoch"])
        return state

    def _autocast(self) -> contextlib.AbstractContextManager:
        return self.precision.autocast(self.device)

    def _classic_step(self, epoch: int, step: int, order: np.ndarray, flips: torch.Generator):
        size = self.config.batch_size
        start = (step * self.world + self.rank) * size
        rows = order[start : start + size]
        images = self.train_images.batch(rows, flips if self.config.data.augment else None)
        labels = torch.as_tensor(self.train_split.labels[rows], device=self.device)
        with self._autocast():
            logits = self.model(images.to(self.device))
        loss = F.cross_entropy(logits.float(), labels)
        accuracy = (logits.argmax(dim=1) == labels).float().mean()
        return loss, {"accuracy": accuracy.item()}

    def _episodic_step(self, epoch: int, step: int, flips: torch.Generator):
        per_epoch = self.config.episodic.episodes_per_epoch
        episode = self.sampler.episode(epoch * per_epoch + step * self.world + self.rank)
        rows = np.concatenate([episode.support, episode.query])
        images = self.train_images.batch(rows, flips if self.config.data.augment else None)
        with self._autocast():
            features = self.model(images.to(self.device))
        n_support = len(episode.support)
        out = self.episode_loss(
            features[:n_support],
            torch.as_tensor(episode.support_labels, device=self.device),
            features[n_support:],
            torch.as_tensor(episode.query_labels, device=self.device),
            episode.n_way,
        )
        stats = {
            "accuracy": out.accuracy.item(),
            "scatter": out.scatter.item(),
            "cross_entropy": out.cross_entropy.item(),
        }
        return out.loss, stats

    def train_epoch(self, epoch: int) -> dict[str, float]:
        config, plan = self.config, self.plan
        accum = config.optim.grad_accum_steps
        torch.manual_seed(derived_seed(config.seed, epoch, self.rank, 1))  # dropout, drop-path
        flips = torch.Generator().manual_seed(derived_seed(config.seed, epoch, self.rank, 2))
        order = np.random.default_rng([config.seed, epoch]).permutation(len(self.train_split))
        set_train_mode(self.model, True)
        self.optimizer.zero_grad(set_to_none=True)
        totals: dict[str, float] = {}
        for step in range(plan.micro_steps_per_epoch):
            if self.on_step is not None:
                self.on_step(epoch, step, self.rank)
            boundary = (step + 1) % accum == 0
            # Between optimizer steps DDP need not all-reduce: gradients just accumulate.
            no_sync = self.world > 1 and not boundary and hasattr(self.model, "no_sync")
            with self.model.no_sync() if no_sync else contextlib.nullcontext():
                if config.mode == "classic":
                    loss, stats = self._classic_step(epoch, step, order, flips)
                else:
                    loss, stats = self._episodic_step(epoch, step, flips)
                self.scaler.scale(loss / accum).backward()
            if boundary:
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
            for key, value in {"loss": loss.item(), **stats}.items():
                totals[key] = totals.get(key, 0.0) + value
        keys = sorted(totals)
        sums = self.context.all_sum([totals[k] for k in keys])
        count = plan.micro_steps_per_epoch * self.world
        return {f"train_{k}": s / count for k, s in zip(keys, sums, strict=True)}

    @torch.no_grad()
    def validate(self) -> float | None:
        """Few-shot accuracy over the validation episodes (shared out across workers)."""
        if self.val_split is None:
            return None
        net, vc = self.net, self.config.validation
        set_train_mode(net, False)
        episodes = [self.val_sampler.episode(i) for i in range(self.rank, vc.episodes, self.world)]
        rows = sorted({int(r) for e in episodes for r in np.concatenate([e.support, e.query])})
        features = {}
        size = max(self.config.batch_size, 1)
        for start in range(0, len(rows), size):
            chunk = rows[start : start + size]
            with self._autocast():
                out = net.backbone(self.val_images.batch(chunk).to(self.device)).float()
            features.update(zip(chunk, out, strict=True))
        correct = total = 0
        for episode in episodes:
            support = torch.stack([features[int(r)] for r in episode.support])
            query = torch.stack([features[int(r)] for r in episode.query])
            labels = torch.as_tensor(episode.support_labels, device=support.device)
            prototypes = class_prototypes(support, labels, episode.n_way)
            logits = prototype_logits(query, prototypes, vc.distance)
            truth = torch.as_tensor(episode.query_labels, device=query.device)
            correct += int((logits.argmax(dim=1) == truth).sum())
            total += len(truth)
        correct, total = self.context.all_sum([correct, total])
        return correct / total

    @torch.no_grad()
    def validate_kmeans(self) -> dict[str, float]:
        """ACC and NMI of K-means (k = the validation classes, seeded by ``config.seed``) on
        the features of every validation image: Bjerge et al.'s epoch selection.

        Each worker embeds a share of the images; the sum of the zero-padded shares is the
        whole matrix on every worker, so all of them cluster the same and agree."""
        from rayclust import metrics
        from rayclust.cluster.registry import create_estimator

        split = self.val_split
        net, size = self.net, max(self.config.batch_size, 1)
        set_train_mode(net, False)
        mine = list(range(self.rank, len(split), self.world))
        parts = []
        for start in range(0, len(mine), size):
            with self._autocast():
                out = net.backbone(
                    self.val_images.batch(mine[start : start + size]).to(self.device)
                )
            parts.append(out.float().cpu().numpy())
        dim = self.feature_dim
        features = np.zeros((len(split), dim))
        if parts:
            features[mine] = np.concatenate(parts)
        if self.world > 1:
            features = np.asarray(self.context.all_sum(features.ravel())).reshape(len(split), dim)
        estimator = create_estimator(
            "kmeans", len(split.class_names), random_state=self.config.seed, backend="sklearn"
        )
        labels = estimator.fit_predict(features.astype(np.float32))
        scores = metrics.external_scores(split.labels, labels)
        return {"val_kmeans_acc": scores["acc"], "val_kmeans_nmi": scores["nmi"]}

    def _save(self, folder: Path, epoch: int) -> None:
        state = {
            "model": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": epoch,
            "best_val": self.best_val,
            "best_epoch": self.best_epoch,
            "history": self.history,
        }
        torch.save(state, folder / STATE_FILE)
        save_backbone(
            self.net.backbone,
            folder / BACKBONE_FILE,
            arch=self.arch,
            metadata={
                "view": self.config.view,
                "mode": self.config.mode,
                "epoch": str(epoch),
                "image_size": str(self.config.data.image_size),
            },
        )
        (folder / HISTORY_FILE).write_text(json.dumps(self.history, indent=1))

    def run(self) -> None:
        for epoch in range(self.start_epoch, self.config.epochs):
            started = time.perf_counter()
            # The backbone's learning rate at the epoch's first step.
            metrics: dict[str, Any] = {"epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"]}
            metrics.update(self.train_epoch(epoch))
            train_seconds = time.perf_counter() - started
            val_accuracy = self.validate()
            if val_accuracy is not None:
                metrics["val_accuracy"] = val_accuracy
                if self.config.validation.kmeans:
                    metrics.update(self.validate_kmeans())
            score = self.config.score_metric
            if score is None:
                self.best_epoch = epoch  # the last-epoch rule (or no validation classes)
            elif metrics[score] >= self.best_val:  # a tie goes to the later epoch, as in Ray
                self.best_val, self.best_epoch = metrics[score], epoch
            images = self.plan.images_per_epoch * self.world
            metrics.update(
                samples_per_s=images / train_seconds,
                epoch_time_s=time.perf_counter() - started,
                best_epoch=self.best_epoch,
                world_size=self.world,
            )
            self.history.append(metrics)
            if self.rank == 0:
                log.info("epoch %d: %s", epoch, _format_metrics(metrics))
                with tempfile.TemporaryDirectory() as tmp:
                    self._save(Path(tmp), epoch)
                    self.context.report(metrics, Path(tmp))
            else:
                self.context.report(metrics, None)


def _format_metrics(metrics: dict[str, Any]) -> str:
    return " ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()
    )


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Entry point for ``TorchTrainer``: ``loop_config`` holds config, splits and on_step."""
    TrainWorker(
        loop_config["config"],
        loop_config["splits"],
        loop_config.get("on_step"),
        ray_worker_context(),
    ).run()
