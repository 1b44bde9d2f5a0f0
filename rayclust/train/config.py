"""Typed configuration of a fine-tuning run (``rayclust train CONFIG``).

Loaded with ``rayclust.config.load_config(path, overrides, schema=TrainConfig)``: defaults
<- YAML <- ``key.sub=value`` overrides, unknown keys fail naming the key. Each check says
which value is wrong and how to fix it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from rayclust.config import (
    ClassFolderSource,
    ConfigError,
    ConfigSection,
    RayConfig,
    TrackingConfig,
)


@dataclass
class TrainDataConfig(ClassFolderSource):
    """Where the images are and which classes serve training, validation and clustering.

    Classes are the top-level folder names under ``source`` (the shared source section's
    ``source`` and ``max_pixels`` apply). The three lists must be disjoint: the clustering
    classes stay unseen until the fine-tuned view is evaluated.
    """

    train_classes: list[str] = field(default_factory=list)
    val_classes: list[str] = field(default_factory=list)
    cluster_classes: list[str] = field(default_factory=list)
    image_size: int = 128  # training and validation resolution (square)
    augment: bool = True  # random horizontal flips of training images

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_at_least(image_size=16)
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
class EpisodeShape(ConfigSection):
    """An N-way K-shot episode with Q queries per class (training and validation alike)."""

    n_way: int = 5
    k_shot: int = 5
    q_query: int = 10

    def __post_init__(self) -> None:
        self.check_at_least(n_way=2, k_shot=1, q_query=1)


@dataclass
class EpisodicConfig(EpisodeShape, section="episodic"):
    episodes_per_epoch: int = 50  # over all workers together
    alpha: float = 0.5  # weight of the scatter loss S_W / S_B; 1 - alpha weights the CE
    distance: Literal["euclidean", "cosine"] = "euclidean"
    scale: float = 10.0  # cosine logits are multiplied by this before the softmax
    # cosine mode: the scatter terms on the same L2-normalised features ("same") or on the
    # raw features ("raw", as Bjerge et al.'s code); euclidean mode: both are the raw features
    scatter_on: Literal["same", "raw"] = "same"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_at_least(episodes_per_epoch=1)
        self.check_in_range("alpha", 0, 1)
        self.check_above(scale=0)


# validation.select_epoch -> the metric of each epoch the kept backbone maximises (None: the
# last epoch's backbone)
EPOCH_SCORES: dict[str, str | None] = {
    "few_shot": "val_accuracy",
    "kmeans_acc": "val_kmeans_acc",
    "kmeans_nmi": "val_kmeans_nmi",
    "last": None,
}


def select_epoch(history: list[dict[str, Any]], rule: str) -> int:
    """The epoch ``validation.select_epoch=rule`` keeps, chosen after training from the
    per-epoch ``history`` (as ``history.json`` holds it): the argmax of the rule's metric,
    a tie going to the later epoch as during training, or the last epoch.

    One run recorded with a K-means rule (so every epoch has every validation score) and
    all its epochs' backbones kept thus serves every rule without training again.
    """
    if rule not in EPOCH_SCORES:
        raise ValueError(f"rule={rule!r} is not one of {', '.join(map(repr, EPOCH_SCORES))}")
    if not history:
        raise ValueError("history is empty: no epoch to select")
    metric = EPOCH_SCORES[rule]
    if metric is None:
        return int(history[-1]["epoch"])
    missing = [int(m["epoch"]) for m in history if metric not in m]
    if missing:
        raise ValueError(
            f"epochs {missing} did not record {metric!r}; train with "
            f"validation.select_epoch={rule!r} (or another K-means rule) to record it"
        )
    best = max(float(m[metric]) for m in history)
    return int([m for m in history if float(m[metric]) == best][-1]["epoch"])


@dataclass
class ValidationConfig(EpisodeShape, section="validation"):
    """Scores of the validation classes after every epoch, and which epoch's backbone is kept.

    Few-shot accuracy on episodes is always recorded. ``select_epoch``: the epoch with the
    best few-shot accuracy (``few_shot``), with the best ACC or NMI of K-means on all the
    validation images' features, k = their number of classes (``kmeans_acc`` /
    ``kmeans_nmi``, Bjerge et al.'s rule), or the last epoch (``last``).
    """

    episodes: int = 20  # the same episodes every epoch, so epochs are comparable
    distance: Literal["euclidean", "cosine"] = "euclidean"
    select_epoch: Literal["few_shot", "kmeans_acc", "kmeans_nmi", "last"] = "few_shot"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_at_least(episodes=1)

    @property
    def kmeans(self) -> bool:
        """Whether each epoch clusters the validation images with K-means."""
        return self.select_epoch.startswith("kmeans")


@dataclass
class OptimConfig(ConfigSection, section="optim"):
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
        self.check_above(lr=0, head_lr=0)
        self.check_at_least(weight_decay=0, warmup_epochs=0, grad_accum_steps=1)
        self.check_in_range("min_lr_factor", 0, 1)
        if self.schedule == "multistep" and not self.milestones:
            raise ConfigError("optim.schedule='multistep' needs optim.milestones, e.g. [10, 20]")


@dataclass
class ScalingSection(ConfigSection, section="scaling"):
    """Ray Train's workers (data parallel: each takes a share of every step's batch)."""

    num_workers: int = 1
    cpus_per_worker: float = 1.0
    use_gpu: bool | None = None  # None: one GPU per worker when the Ray cluster has GPUs

    def __post_init__(self) -> None:
        self.check_at_least(num_workers=1)
        self.check_above(cpus_per_worker=0)


@dataclass
class ClusterEvalConfig(ConfigSection, section="evaluation"):
    """Clustering of data.cluster_classes with the resulting view, after training."""

    enabled: bool = True  # runs only when data.cluster_classes is set
    algorithm: str = "kmeans"  # a name of rayclust.cluster.registry: kmeans, spectral, ...
    seeds: int = 5  # scores are AVG(SD) over this many clustering seeds
    batch_size: int = 32
    backend: str = "auto"

    def __post_init__(self) -> None:
        self.check_algorithm("algorithm")
        self.check_at_least(seeds=1, batch_size=1)


@dataclass
class TrainConfig(ConfigSection):
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
    data: TrainDataConfig
    episodic: EpisodicConfig
    validation: ValidationConfig
    optim: OptimConfig
    scaling: ScalingSection
    evaluation: ClusterEvalConfig
    tracking: TrackingConfig
    ray: RayConfig

    @property
    def score_metric(self) -> str | None:
        """The per-epoch metric whose best epoch is kept; None: the last epoch."""
        return EPOCH_SCORES[self.validation.select_epoch] if self.data.val_classes else None

    def __post_init__(self) -> None:
        self.check_at_least(
            epochs=1, batch_size=1, freeze_stages=0, max_failures=0, keep_checkpoints=1
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
        if self.validation.kmeans and len(val) < 2:
            raise ConfigError(
                f"validation.select_epoch={self.validation.select_epoch!r} clusters the "
                f"validation classes: data.val_classes needs >= 2 classes, has {len(val)}"
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
