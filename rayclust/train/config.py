"""Typed configuration of a fine-tuning run (``rayclust train CONFIG``).

Loaded with ``rayclust.config.load_config(path, overrides, schema=TrainConfig)``: defaults
<- YAML <- ``key.sub=value`` overrides, unknown keys fail naming the key. Each check says
which value is wrong and how to fix it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from rayclust.config import ConfigError, RayConfig, TrackingConfig
from rayclust.images import DEFAULT_MAX_PIXELS


def _at_least(section: str, **values: float) -> None:
    """``_at_least("optim", lr=(0.1, 0))`` raises unless each value >= its bound."""
    for key, (value, low) in values.items():
        if value < low:
            raise ConfigError(f"{section}{key}={value} should be >= {low}")


@dataclass
class TrainDataConfig:
    """Where the images are and which classes serve training, validation and clustering.

    Classes are the top-level folder names under ``source``. The three lists must be
    disjoint: the clustering classes stay unseen until the fine-tuned view is evaluated.
    """

    source: str | None = None
    train_classes: list[str] = field(default_factory=list)
    val_classes: list[str] = field(default_factory=list)
    cluster_classes: list[str] = field(default_factory=list)
    image_size: int = 128  # training and validation resolution (square)
    augment: bool = True  # random horizontal flips of training images
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        _at_least("data.", image_size=(self.image_size, 16), max_pixels=(self.max_pixels, 1))
        splits = {
            "train_classes": self.train_classes,
            "val_classes": self.val_classes,
            "cluster_classes": self.cluster_classes,
        }
        for name, classes in splits.items():
            repeated = sorted({c for c in classes if classes.count(c) > 1})
            if repeated:
                raise ConfigError(f"data.{name} names {repeated} more than once")
        names = list(splits)
        for i, first in enumerate(names):
            for second in names[i + 1 :]:
                shared = sorted(set(splits[first]) & set(splits[second]))
                if shared:
                    raise ConfigError(
                        f"data.{first} and data.{second} share {shared}; the class splits "
                        "must be disjoint (a class is trained on, validated on, or clustered)"
                    )


@dataclass
class EpisodicConfig:
    n_way: int = 5
    k_shot: int = 5
    q_query: int = 10
    episodes_per_epoch: int = 50  # over all workers together
    alpha: float = 0.5  # weight of the scatter loss S_W / S_B; 1 - alpha weights the CE
    distance: Literal["euclidean", "cosine"] = "euclidean"
    scale: float = 10.0  # cosine logits are multiplied by this before the softmax

    def __post_init__(self) -> None:
        _at_least(
            "episodic.",
            n_way=(self.n_way, 2),
            k_shot=(self.k_shot, 1),
            q_query=(self.q_query, 1),
            episodes_per_epoch=(self.episodes_per_epoch, 1),
        )
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"episodic.alpha={self.alpha} should be in [0, 1]")
        if self.scale <= 0:
            raise ConfigError(f"episodic.scale={self.scale} should be > 0")


@dataclass
class ValidationConfig:
    """Few-shot accuracy on episodes of the validation classes, after every epoch."""

    n_way: int = 5
    k_shot: int = 5
    q_query: int = 10
    episodes: int = 20  # the same episodes every epoch, so epochs are comparable
    distance: Literal["euclidean", "cosine"] = "euclidean"

    def __post_init__(self) -> None:
        _at_least(
            "validation.",
            n_way=(self.n_way, 2),
            k_shot=(self.k_shot, 1),
            q_query=(self.q_query, 1),
            episodes=(self.episodes, 1),
        )


@dataclass
class OptimConfig:
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = 1e-4
    head_lr: float | None = None  # classic mode's new linear head; None: same as lr
    weight_decay: float = 1e-4
    momentum: float = 0.9  # sgd only
    schedule: Literal["constant", "multistep", "cosine"] = "cosine"
    milestones: list[int] = field(default_factory=list)  # multistep: epochs where lr *= gamma
    gamma: float = 0.1
    warmup_epochs: int = 0
    min_lr_factor: float = 0.0  # cosine ends at lr * min_lr_factor
    grad_accum_steps: int = 1  # micro-batches (or episodes) per optimizer step

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"optim.lr={self.lr} should be > 0")
        if self.head_lr is not None and self.head_lr <= 0:
            raise ConfigError(f"optim.head_lr={self.head_lr} should be > 0 or null")
        _at_least(
            "optim.",
            weight_decay=(self.weight_decay, 0),
            warmup_epochs=(self.warmup_epochs, 0),
            grad_accum_steps=(self.grad_accum_steps, 1),
        )
        if not 0.0 <= self.min_lr_factor <= 1.0:
            raise ConfigError(f"optim.min_lr_factor={self.min_lr_factor} should be in [0, 1]")
        if self.schedule == "multistep" and not self.milestones:
            raise ConfigError("optim.schedule='multistep' needs optim.milestones, e.g. [10, 20]")


@dataclass
class ScalingSection:
    num_workers: int = 1
    use_gpu: bool | None = None  # None: one GPU per worker when the Ray cluster has GPUs
    cpus_per_worker: float = 1.0

    def __post_init__(self) -> None:
        _at_least("scaling.", num_workers=(self.num_workers, 1))
        if self.cpus_per_worker <= 0:
            raise ConfigError(f"scaling.cpus_per_worker={self.cpus_per_worker} should be > 0")


@dataclass
class ClusterEvalConfig:
    """Clustering of data.cluster_classes with the resulting view, after training."""

    enabled: bool = True  # runs only when data.cluster_classes is set
    algorithm: Literal["kmeans", "spectral"] = "kmeans"
    seeds: int = 5  # scores are AVG(SD) over this many clustering seeds
    batch_size: int = 32
    backend: str = "auto"

    def __post_init__(self) -> None:
        _at_least("evaluation.", seeds=(self.seeds, 1), batch_size=(self.batch_size, 1))


@dataclass
class TrainConfig:
    name: str | None = None  # None: derived from the mode and the time
    output: str | None = None  # run folder; None: runs/train/<name>
    view: str = "efficientnet_lite0"  # the backbone, any registered view
    mode: Literal["classic", "episodic", "none"] = "episodic"  # none: evaluate the view as is
    epochs: int = 10
    batch_size: int = 32  # classic mode: images per worker per micro-batch
    freeze_stages: int = 0  # stem = stage 1, then the backbone's blocks in order
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    seed: int = 0
    max_failures: int = 3  # worker failures survived by restarting from the last checkpoint
    keep_checkpoints: int = 1  # best ones kept besides the latest
    data: TrainDataConfig = field(default_factory=TrainDataConfig)
    episodic: EpisodicConfig = field(default_factory=EpisodicConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    scaling: ScalingSection = field(default_factory=ScalingSection)
    evaluation: ClusterEvalConfig = field(default_factory=ClusterEvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    def __post_init__(self) -> None:
        _at_least(
            "",
            epochs=(self.epochs, 1),
            batch_size=(self.batch_size, 1),
            freeze_stages=(self.freeze_stages, 0),
            max_failures=(self.max_failures, 0),
            keep_checkpoints=(self.keep_checkpoints, 1),
        )
        if self.mode == "none":
            return
        train, val = self.data.train_classes, self.data.val_classes
        if not train:
            raise ConfigError(f"mode={self.mode!r} needs data.train_classes (class folder names)")
        if self.mode == "classic" and len(train) < 2:
            raise ConfigError(f"data.train_classes has {len(train)} class; classic mode needs >= 2")
        if self.mode == "episodic" and self.episodic.n_way > len(train):
            raise ConfigError(
                f"episodic.n_way={self.episodic.n_way} should be <= "
                f"len(data.train_classes)={len(train)}"
            )
        if val and self.validation.n_way > len(val):
            raise ConfigError(
                f"validation.n_way={self.validation.n_way} should be <= "
                f"len(data.val_classes)={len(val)}"
            )
        milestones = self.optim.milestones
        if self.optim.schedule == "multistep" and any(not 0 < m < self.epochs for m in milestones):
            raise ConfigError(
                f"optim.milestones={milestones} should lie in 1..epochs-1={self.epochs - 1}"
            )
        if self.optim.warmup_epochs >= self.epochs:
            raise ConfigError(
                f"optim.warmup_epochs={self.optim.warmup_epochs} should be < epochs={self.epochs}"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
